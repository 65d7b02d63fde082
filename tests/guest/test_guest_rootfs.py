"""The audit and the fix on a real Debian 12 root made by debootstrap (real unit files as Debian ships them).

Expected facts come from Debian's own files, read here independently of the code under test
(grep-level reads of the shipped units and chrony.conf), not from the audit's output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vmcrash.guest.audit import audit
from vmcrash.guest.fix import DROPIN_NAME

pytestmark = pytest.mark.lab

SERVICES = ("cron.service", "nginx.service", "mariadb.service", "ssh.service")
#: The application services among them (ssh is infrastructure: the fix leaves it alone).
APPS = ("cron.service", "nginx.service", "mariadb.service")


def unit_text(root: Path, name: str) -> str:
    return (root / "lib/systemd/system" / name).read_text()


def tree_state(root: Path) -> dict[str, tuple[str, int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = f"type {stat.S_IFMT(st.st_mode):o}"
            out[str(p.relative_to(root))] = (what, st.st_mode, st.st_uid, st.st_gid)
    return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrash.guest", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_debian_files_say_what_the_audit_must_find(debian_root: object) -> None:
    """Ground truth from the shipped files: chrony orders itself before time-sync.target, is a forking
    daemon, chrony-wait exists but is not enabled, chrony.conf reads confdir before 'makestep 1 3'."""
    root: Path = debian_root.root  # type: ignore[attr-defined]
    chrony = unit_text(root, "chrony.service")
    assert re.search(r"(?m)^Before=time-sync\.target", chrony) and re.search(r"(?m)^Type=forking", chrony)
    assert re.search(r"(?m)^ExecStart=.*waitsync", unit_text(root, "chrony-wait.service"))
    assert not list((root / "etc/systemd/system").glob("*.wants/chrony-wait.service"))
    conf = (root / "etc/chrony/chrony.conf").read_text()
    lines = [ln.split()[0] for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines.index("confdir") < lines.index("makestep")
    assert re.search(r"(?m)^makestep 1 3$", conf)
    for name in SERVICES:
        text = unit_text(root, name)
        assert "time-sync" not in text, name
        assert (root / "etc/systemd/system/multi-user.target.wants" / name).is_symlink(), name

    report = audit(root)
    assert report.exit_code == 1
    assert report.time_sync_in_transaction
    assert [e.dst for e in report.time_sync_pulled_in_by or ()][-2:] == ["chrony.service", "time-sync.target"]
    assert report.time_sync_held_by == ()
    clock = {c.unit: c for c in report.clock_units}
    assert clock["chrony.service"].role == "daemon" and clock["chrony.service"].before_time_sync
    assert clock["chrony-wait.service"].role == "waits" and not clock["chrony-wait.service"].in_transaction
    verdicts = {s.unit: s for s in report.services}
    for name in APPS:
        assert name in verdicts and not verdicts[name].after_time_sync, name
        assert verdicts[name].pulled_in_by, name
    infra = {r.unit: r.kind.value for r in report.infrastructure}
    assert infra["ssh.service"] == "ssh" and infra["getty@tty1.service"] == "login"
    assert infra["systemd-user-sessions.service"] == "login"
    (chrony_report,) = [d for d in report.daemons if d.daemon == "chrony"]
    assert chrony_report.data["makestep"]["limit"] == 3
    assert chrony_report.data["slew_seconds_for_reference_offset"] == pytest.approx(4320, rel=1e-3)
    assert {"time-sync-not-held", "chrony-makestep-limited"} <= {f.code for f in report.findings}
    assert report.problems == ()
    # systemd-logind needs D-Bus (Type=dbus via BusName=), which this root lacks: it cannot start
    assert "systemd-logind.service" in dict(report.failed)


def test_fix_then_reaudit_passes_then_undo_restores_every_byte(debian_copy: Path) -> None:
    before = tree_state(debian_copy)
    dry = cli("fix", "--root", str(debian_copy), "--all-enabled", "--dry-run")
    assert dry.returncode == 0 and "-makestep 1 3" in dry.stdout
    assert tree_state(debian_copy) == before

    done = cli("fix", "--root", str(debian_copy), "--all-enabled")
    assert done.returncode == 0, done.stderr
    for name in APPS:
        assert (debian_copy / f"etc/systemd/system/{name}.d/{DROPIN_NAME}").is_file()
    for name in ("ssh.service", "getty@tty1.service", "systemd-user-sessions.service", "getty-static.service"):
        assert not (debian_copy / f"etc/systemd/system/{name}.d").exists(), name
        assert f"left alone: {name}" in done.stdout, done.stdout
    timeout = (debian_copy / "etc/systemd/system/chrony-wait.service.d/50-vmcrash-wait-timeout.conf").read_text()
    assert "TimeoutStartSec=90\n" in timeout
    assert "audit after the fix: no findings" in done.stdout
    link = debian_copy / "etc/systemd/system/multi-user.target.wants/chrony-wait.service"
    assert os.readlink(link) == "/lib/systemd/system/chrony-wait.service"

    re_audit = cli("audit", "--root", str(debian_copy), "--json")
    assert re_audit.returncode == 0, re_audit.stdout[-3000:]
    doc = json.loads(re_audit.stdout)
    assert doc["time_sync"]["held_by"] == ["chrony-wait.service"]
    assert doc["findings"] == [] and all(s["after_time_sync"] for s in doc["services"])
    assert doc["time_sync"]["max_wait_s"] == 90 and not doc["time_sync"]["waits_forever"]
    (chrony_doc,) = [d for d in doc["daemons"] if d["daemon"] == "chrony"]
    assert chrony_doc["makestep"]["limit"] == -1 and chrony_doc["steps_offset_after_start"]

    fixed = tree_state(debian_copy)
    again = cli("fix", "--root", str(debian_copy), "--all-enabled")
    assert again.returncode == 0 and again.stdout.startswith("nothing to change\n")
    assert tree_state(debian_copy) == fixed

    undo = cli("fix", "--root", str(debian_copy), "--undo")
    assert undo.returncode == 0, undo.stderr
    assert tree_state(debian_copy) == before

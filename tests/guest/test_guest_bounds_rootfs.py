"""Issue 15 on the real debootstrapped Debian 12 roots (chrony layout, and systemd-timesyncd layout).

Ground truth comes from the shipped unit files, read here with plain text matching, not from the
audit: systemd-time-wait-sync.service ships TimeoutStartSec=infinity, chrony-wait.service 180 s,
getty@.service and systemd-user-sessions.service are the console login.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_guest_rootfs import tree_state

from vmcrash.guest.fix import DROPIN_NAME, DROPIN_TEXT, TIMEOUT_DROPIN_NAME

pytestmark = pytest.mark.lab

APPS = {"cron.service", "nginx.service", "mariadb.service", "e2scrub_reap.service"}
LOGIN = {"getty@tty1.service", "systemd-user-sessions.service", "getty-static.service"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrash.guest", *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def timesyncd_root(debian_root: object) -> object:
    from vmcrash.lab.rootfs import build_variant

    return build_variant(debian_root, "timesyncd")  # type: ignore[arg-type]


@pytest.fixture
def timesyncd_copy(timesyncd_root: object, tmp_path: Path) -> Path:
    from vmcrash.lab.rootfs import copy_tree

    copy_tree(timesyncd_root.root, tmp_path / "root")  # type: ignore[attr-defined]
    return tmp_path / "root"


def test_the_shipped_files_say_what_the_bound_must_be(timesyncd_root: object, debian_root: object) -> None:
    ts: Path = timesyncd_root.root  # type: ignore[attr-defined]
    deb: Path = debian_root.root  # type: ignore[attr-defined]
    assert re.search(r"(?m)^TimeoutStartSec=infinity$", (ts / "lib/systemd/system/systemd-time-wait-sync.service")
                     .read_text())
    assert re.search(r"(?m)^TimeoutStartSec=180$", (deb / "lib/systemd/system/chrony-wait.service").read_text())
    assert not (ts / "lib/systemd/system/chrony.service").exists()
    assert (ts / "etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service").is_symlink()


def test_the_old_fix_on_timesyncd_is_flagged_and_the_new_one_is_bounded(timesyncd_copy: Path) -> None:
    """The issue's report, as it was: wait unit enabled as shipped (infinity) and the login units ordered."""
    root = timesyncd_copy
    before = tree_state(root)
    link = root / "etc/systemd/system/sysinit.target.wants/systemd-time-wait-sync.service"
    link.symlink_to("/lib/systemd/system/systemd-time-wait-sync.service")
    for unit in (*LOGIN, "cron.service"):
        d = root / f"etc/systemd/system/{unit}.d"
        d.mkdir()
        (d / DROPIN_NAME).write_text(DROPIN_TEXT)
    old = cli("audit", "--root", str(root), "--json")
    assert old.returncode == 1
    doc = json.loads(old.stdout)
    codes = {(f["code"], f["unit"]) for f in doc["findings"]}
    assert ("wait-unbounded", "systemd-time-wait-sync.service") in codes
    assert {u for c, u in codes if c == "infrastructure-after-time-sync"} == LOGIN
    assert doc["time_sync"]["waits_forever"] is True
    # back to the stock root, then the fix as it is now
    link.unlink()
    for unit in (*LOGIN, "cron.service"):
        (root / f"etc/systemd/system/{unit}.d" / DROPIN_NAME).unlink()
        (root / f"etc/systemd/system/{unit}.d").rmdir()
    assert tree_state(root) == before
    done = cli("fix", "--root", str(root), "--all-enabled")
    assert done.returncode == 0, done.stdout + done.stderr
    ordered = re.search(r"(?m)^ordered after time-sync.target: (.*)$", done.stdout)
    assert ordered and set(ordered.group(1).split(", ")) == APPS
    assert "wait unit: systemd-time-wait-sync.service" in done.stdout
    drop = root / f"etc/systemd/system/systemd-time-wait-sync.service.d/{TIMEOUT_DROPIN_NAME}"
    assert "TimeoutStartSec=90\n" in drop.read_text()
    for unit in (*LOGIN, "ssh.service"):
        assert f"left alone: {unit}" in done.stdout
        assert not (root / f"etc/systemd/system/{unit}.d").exists()
    new = json.loads(cli("audit", "--root", str(root), "--json").stdout)
    assert new["findings"] == [] and new["time_sync"]["max_wait_s"] == 90
    undo = cli("fix", "--root", str(root), "--undo")
    assert undo.returncode == 0
    assert tree_state(root) == before


def test_strict_and_ssh_opt_in_on_the_real_root(debian_copy: Path) -> None:
    assert cli("fix", "--root", str(debian_copy), "--strict", "--unit", "ssh.service").returncode == 2
    assert cli("fix", "--root", str(debian_copy), "--unit", "getty@tty1.service").returncode == 2
    done = cli("fix", "--root", str(debian_copy), "--strict", "--unit", "nginx.service", "--wait-timeout", "45")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (debian_copy / f"etc/systemd/system/nginx.service.d/{DROPIN_NAME}").read_text()
    assert "Requires=chrony-wait.service\nAfter=chrony-wait.service\n" in text
    assert "TimeoutStartSec=45\n" in (debian_copy / "etc/systemd/system/chrony-wait.service.d"
                                      / TIMEOUT_DROPIN_NAME).read_text()
    opt_in = cli("fix", "--root", str(debian_copy), "--unit", "ssh.service", "--wait-timeout", "45")
    assert opt_in.returncode == 0, opt_in.stdout + opt_in.stderr
    audit = json.loads(cli("audit", "--root", str(debian_copy), "--json").stdout)
    assert any("ssh.service is ordered after time-sync.target" in n for n in audit["notes"])

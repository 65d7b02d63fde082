"""Real boots of fixed guests whose NTP server is unreachable: the boot is never crippled, only bounded.

Three guests, each fixed beforehand with ``python3 -m vmcrash.guest fix --all-enabled`` and its
default bound (90 s), clock 10 minutes behind. They boot at the same time as
test_guest_boot_proof.py's three (one ``boot_all`` call for both modules, six guests, one vCPU each
on a 2-core host: conftest.py ``systemd_boots``; run alone, this module boots its own three). The
bound is far enough off to tell "not ordered after the wait" from "slow": under that load the
serial getty started 50-55 s into these guests' boot and the login prompt reached the host 73-78 s
after the domains started, while the wait gave up only 60-90 s after the getty had started.

* ``chrony-unreachable``: the debootstrapped Debian 12 root (chrony + chrony-wait), its only
  server an address on QEMU's user network where nothing answers;
* ``timesyncd-unreachable``: the same root with systemd-timesyncd instead of chrony
  (systemd-time-wait-sync as the wait unit, which ships ``TimeoutStartSec=infinity``), same dead
  server, and ``--strict --unit mariadb.service`` on top;
* ``timesyncd-reachable``: the timesyncd root with the lab NTP server (a chronyd on this host's
  127.0.0.1:123) reachable, the same fix: every application still starts after the clock step.

(The chrony layout with a reachable server is booted by test_guest_boot_proof.py, after the same
fix.) While ``timesyncd-reachable`` runs, the host audits it through its guest agent with the real
CLI (``vmcrash guest audit --domain NAME --json``) and the result is compared with the audit the
guest ran itself. Ground truth: the serial console as the host saw it while the guests ran (when the login
prompt appeared, by the host clock), and what each guest's systemd and journal recorded.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from _systemd_boots import BootContext, Booted, Staged
from test_guest_boot_proof import parse_show, wall_us

from vmcrash.lab.systemd_guest import HOLD_MARK

pytestmark = pytest.mark.lab
log = logging.getLogger(__name__)

#: the fix's default wait bound (``--wait-timeout`` left out: the default is what is proven)
WAIT_S = 90
CLOCK_OFFSET_S = -600
LOGIN = "vmcrash-guest login:"
APPS = ("cron.service", "nginx.service", "mariadb.service")
WAIT_UNIT = {"chrony": "chrony-wait.service", "timesyncd": "systemd-time-wait-sync.service"}
LABELS = ("chrony-unreachable", "timesyncd-unreachable", "timesyncd-reachable")
DAEMON = {"chrony-unreachable": "chrony", "timesyncd-unreachable": "timesyncd", "timesyncd-reachable": "timesyncd"}


@dataclass
class BoundBoot:
    label: str
    daemon: str
    evidence: dict[str, Any]
    units: dict[str, dict[str, str]]
    journal: list[tuple[int, int, str, str, str]]
    console: str
    login_seen_s: float | None
    fixed: tuple[str, ...]
    fix_output: str
    run_seconds: float
    host: dict[str, Any]

    @property
    def wait_unit(self) -> str:
        return WAIT_UNIT[self.daemon]

    def mono(self, unit: str, prop: str = "InactiveExitTimestampMonotonic") -> int:
        return int(self.units.get(unit, {}).get(prop) or 0)

    def entries(self, pattern: str) -> list[tuple[int, int, str, str, str]]:
        return [e for e in self.journal if re.search(pattern, e[4])]


def _host_side(guest: Any, config: Path, into: dict[str, Any]) -> None:
    """While the guest waits: the real CLI audits it through its agent; then let it go on."""
    from vmcrash.errors import EnvironmentProblem
    from vmcrash.host.guest_exec import run_guest_cli

    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(config), "guest", "audit",
                           "--domain", guest.name, "--json", "--timeout", "240"],
                          capture_output=True, text=True, timeout=400, check=False)
    into["cli"] = {"rc": done.returncode, "out": done.stdout, "err": done.stderr,
                   "seconds": time.monotonic() - t0}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(config), "doctor",
                           "--guest-audit", "--json", guest.name], capture_output=True, text=True, timeout=400,
                          check=False)
    into["doctor"] = {"rc": done.returncode, "out": done.stdout, "err": done.stderr,
                      "seconds": time.monotonic() - t0}
    agent = guest.agent(timeout_s=10)
    try:
        run_guest_cli(agent, ["audit"], python="python3-not-there", timeout_s=30)
    except EnvironmentProblem as exc:
        into["no_python"] = str(exc)
    agent.command("guest-exec", {"path": "/bin/touch", "arg": ["/run/vmcrash-host-done"]})


def _fix(root: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "vmcrash.guest", "fix", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _cached(path: Path) -> dict[str, BoundBoot]:
    doc = json.loads(path.read_text())
    return {k: BoundBoot(**{**v, "journal": [tuple(e) for e in v["journal"]], "fixed": tuple(v["fixed"])})
            for k, v in doc.items()}


#: re-check the assertions on evidence kept by VMCRASH_KEEP_EVIDENCE (bound-boots.json) without booting
REUSE = "VMCRASH_REUSE_BOUND_EVIDENCE"


@dataclass(frozen=True)
class BoundStaged:
    """This module's state between staging and its fixture: per label the fix's output and the units it
    ordered; what the host-side audit brought back (filled while the reachable guest runs)."""

    fix_output: dict[str, str]
    fixed: dict[str, tuple[str, ...]]
    host: dict[str, Any]


def stage(ctx: BootContext) -> Staged:
    """This module's three guests for the concurrent boot (conftest.py ``systemd_boots``): each root fixed
    beforehand; the host audits ``timesyncd-reachable`` through its agent when its console says it waits.
    No guest when :data:`REUSE` names kept evidence."""
    from vmcrash.lab.rootfs import build_variant
    from vmcrash.lab.systemd_guest import HOST_ALIAS, UNREACHABLE_NTP, LabBootPlan, prepare_lab_root

    state = BoundStaged({}, {}, {})
    if os.environ.get(REUSE):
        return Staged([], timeout_s=0, state=state)
    timesyncd_root = build_variant(ctx.debian_root, "timesyncd")
    plan = {
        "chrony-unreachable": (ctx.debian_root.root, UNREACHABLE_NTP),
        "timesyncd-unreachable": (timesyncd_root.root, UNREACHABLE_NTP),
        "timesyncd-reachable": (timesyncd_root.root, HOST_ALIAS),
    }
    config = ctx.tmp_path_factory.mktemp("guest-host") / "vmcrash.toml"
    config.write_text(f'libvirt_uri = "{ctx.hv.uri}"\n')
    plans = []
    for label in LABELS:
        base, address = plan[label]
        reachable = label == "timesyncd-reachable"
        root = prepare_lab_root(base, ctx.work / label, ntp_port=ctx.ntp.port, ntp_host=address,
                                hold_for_host=reachable)
        text = _fix(root, "--all-enabled")
        if DAEMON[label] == "timesyncd":
            text += _fix(root, "--strict", "--unit", "mariadb.service")
        ordered = re.findall(r"(?m)^ordered after time-sync.target[^:]*: (.*)$", text)[0]
        state.fix_output[label], state.fixed[label] = text, tuple(ordered.split(", "))
        host_side = {HOLD_MARK: lambda g: _host_side(g, config, state.host)} if reachable else {}
        plans.append(LabBootPlan(root, label=label, clock_offset_s=CLOCK_OFFSET_S, watch=(LOGIN,),
                                 on_console=host_side))
    return Staged(plans, timeout_s=900, state=state)


@pytest.fixture(scope="module")
def bound_boots(systemd_boots: dict[str, Booted]) -> Iterator[dict[str, BoundBoot]]:
    """This module's guests, booted together with test_guest_boot_proof.py's (conftest.py ``systemd_boots``)."""
    reuse = os.environ.get(REUSE)
    if reuse:
        yield _cached(Path(reuse))
        return
    booted = systemd_boots[__name__]
    state: BoundStaged = booted.state
    out: dict[str, BoundBoot] = {}
    try:
        for label in LABELS:
            result = booted.results[label]
            ev = result.evidence
            log.warning("%s boot: %.1f s, login prompt seen at %s s", label, result.run_seconds,
                        result.console_seen_s.get(LOGIN))
            journal = sorted((int(m), int(r), str(i), str(u), str(msg)) for m, r, i, u, msg in ev["journal"])
            out[label] = BoundBoot(label, DAEMON[label], ev, parse_show(ev["show"]["out"]), journal,
                                   result.serial, result.console_seen_s.get(LOGIN), state.fixed[label],
                                   state.fix_output[label], result.run_seconds,
                                   state.host if label == "timesyncd-reachable" else {})
        keep = os.environ.get("VMCRASH_KEEP_EVIDENCE")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / "bound-boots.json").write_text(json.dumps({k: asdict(v) for k, v in out.items()}))
        yield out
    finally:
        shutil.rmtree(booted.work, ignore_errors=True)


def _timed_out_us(boot: BoundBoot) -> int:
    """Monotonic time at which systemd gave up on the wait unit (its own journal line)."""
    found = boot.entries(rf"^{re.escape(boot.wait_unit)}: start operation timed out")
    assert found, [e[4] for e in boot.journal if boot.wait_unit in e[4]][-10:]
    return found[0][0]


@pytest.mark.parametrize("label", ["chrony-unreachable", "timesyncd-unreachable"])
def test_without_a_time_source_the_wait_times_out_at_the_bound_and_the_journal_says_so(
        bound_boots: dict[str, BoundBoot], label: str) -> None:
    boot = bound_boots[label]
    started = boot.mono(boot.wait_unit)
    timed_out = _timed_out_us(boot)
    assert started > 0
    assert abs((timed_out - started) / 1e6 - WAIT_S) < 3, (started, timed_out)
    assert boot.units[boot.wait_unit]["ActiveState"] == "failed"
    ours = [e for e in boot.journal if e[2] == "vmcrash-guest"]
    assert ours and f"gave up after {WAIT_S} s without a synchronized clock (result: timeout)" in ours[0][4], ours
    assert ours[0][0] >= timed_out
    # nothing ever synchronized the clock: no step in the journal
    for prev, cur in itertools.pairwise(e for e in boot.journal if e[0] > 0):
        assert abs((cur[1] - cur[0]) - (prev[1] - prev[0])) < 300_000_000, (prev, cur)
    ts = boot.mono("time-sync.target", "ActiveEnterTimestampMonotonic")
    assert ts >= timed_out  # reached only once the wait gave up (ordering, not requirement)


@pytest.mark.parametrize("label", ["chrony-unreachable", "timesyncd-unreachable"])
def test_without_a_time_source_the_login_prompt_appears_before_the_bound(
        bound_boots: dict[str, BoundBoot], label: str) -> None:
    boot = bound_boots[label]
    timed_out = _timed_out_us(boot)
    # the prompt is on the serial console (seen by the host while the guest ran) ...
    assert boot.login_seen_s is not None, boot.console[-2000:]
    # ... and systemd started its getty, on the guest's own monotonic clock, before the wait gave up
    getty = boot.mono("serial-getty@ttyS0.service", "ExecMainStartTimestampMonotonic")
    assert 0 < getty < timed_out, (getty, timed_out)
    assert boot.units["serial-getty@ttyS0.service"]["ActiveState"] == "active"
    # systemd's own ordering of the console login: neither the target nor the wait unit
    for unit in ("serial-getty@ttyS0.service", "getty@tty1.service", "systemd-user-sessions.service"):
        after = set(boot.units[unit].get("After", "").split())
        assert not after & {"time-sync.target", boot.wait_unit}, (unit, after)
    # the host clock counts from the domain's start (firmware and kernel included), so it is only
    # an upper bound of the guest's time; logged, not compared (a starved TCG guest skews it)
    log.warning("%s: getty started at %.1f s, wait gave up at %.1f s (guest clock; margin %.1f s); prompt seen by "
                "the host at %.1f s after domain start", label, getty / 1e6, timed_out / 1e6,
                (timed_out - getty) / 1e6, boot.login_seen_s)
    # ssh, the operator's way in, is left alone and not delayed either
    assert "ssh.service" not in boot.fixed and "left alone: ssh.service" in boot.fix_output
    assert 0 < boot.mono("ssh.service") < timed_out


@pytest.mark.parametrize("label", ["chrony-unreachable", "timesyncd-unreachable"])
def test_without_a_time_source_the_applications_start_after_the_bound(
        bound_boots: dict[str, BoundBoot], label: str) -> None:
    boot = bound_boots[label]
    timed_out = _timed_out_us(boot)
    getty = boot.mono("serial-getty@ttyS0.service", "ExecMainStartTimestampMonotonic")
    assert set(APPS) <= set(boot.fixed)
    strict = {"mariadb.service"} if boot.daemon == "timesyncd" else set()
    for unit in boot.fixed:
        if unit in strict:
            continue
        start = boot.mono(unit)
        if unit not in APPS and start == 0:
            continue  # condition-skipped (e.g. systemd-pcrphase without a TPM)
        assert start >= timed_out > getty, (unit, start, timed_out)
    for unit in strict:
        # --strict: requires the wait unit, which failed: never started, and systemd says why
        assert boot.mono(unit) == 0, boot.units[unit]
        assert boot.entries(r"^Dependency failed for .*MariaDB"), [e[4] for e in boot.journal if "MariaDB" in e[4]]


def test_with_the_server_reachable_every_application_starts_after_the_clock_step(
        bound_boots: dict[str, BoundBoot]) -> None:
    boot = bound_boots["timesyncd-reachable"]
    entries = [e for e in boot.journal if e[0] > 0]
    jumps = [(prev, cur) for prev, cur in itertools.pairwise(entries)
             if abs((cur[1] - cur[0]) - (prev[1] - prev[0])) > 300_000_000]
    assert len(jumps) == 1, jumps
    (prev, cur), = jumps
    size_s = ((cur[1] - cur[0]) - (prev[1] - prev[0])) / 1e6
    assert 590 <= size_s <= 615, size_s
    assert boot.entries(r"(?i)synchroniz"), "timesyncd logged no synchronization"
    wait = boot.units[boot.wait_unit]
    assert wait["ActiveState"] == "active"
    assert int(wait["ActiveEnterTimestampMonotonic"]) >= cur[0]
    log.warning("margin timesyncd-reachable: %s started at %.1f s, the step at %.1f s: %.1f s left of its %d s "
                "bound", boot.wait_unit, boot.mono(boot.wait_unit) / 1e6, cur[0] / 1e6,
                (boot.mono(boot.wait_unit) - cur[0]) / 1e6 + WAIT_S, WAIT_S)
    assert not boot.entries(r"start operation timed out")
    assert set(APPS) <= set(boot.fixed)
    for unit in APPS:  # mariadb with --strict too: the clock was synchronized
        props = boot.units[unit]
        mono = boot.mono(unit)
        assert mono >= cur[0], (unit, mono, cur)
        base = wall_us(props["InactiveExitTimestamp"]) - mono
        assert abs(base - (prev[1] - prev[0])) > 300_000_000, unit  # started on the corrected clock


@pytest.mark.parametrize("label", LABELS)
def test_in_guest_audit_of_the_fixed_guest_reports_the_bound(bound_boots: dict[str, BoundBoot], label: str) -> None:
    boot = bound_boots[label]
    res = boot.evidence["audit"]
    doc = json.loads(res["out"])
    codes = {f["code"] for f in doc["findings"]}
    assert not codes & {"wait-unbounded", "infrastructure-after-time-sync"}, doc["findings"]
    late = {f["unit"] for f in doc["findings"] if f["code"] == "service-before-time-sync"}
    assert not late & set(boot.fixed), doc["findings"]
    assert doc["time_sync"]["held_by"] == [boot.wait_unit]
    assert doc["time_sync"]["max_wait_s"] == WAIT_S
    infra = {i["unit"]: i["role"] for i in doc["infrastructure"]}
    # the running system shows the generator's serial-getty@ttyS0, which an image cannot
    assert infra.get("serial-getty@ttyS0.service") == "login"


def test_host_side_audit_through_the_agent_shows_what_the_guest_sees(bound_boots: dict[str, BoundBoot]) -> None:
    boot = bound_boots["timesyncd-reachable"]
    assert boot.evidence["host_done"] is True
    cli = boot.host["cli"]
    assert cli["rc"] in (0, 1), cli
    host_doc = json.loads(cli["out"])
    for key in ("audit", "audit_after_host"):  # the guest's own audits, just before and just after
        guest_doc = json.loads(boot.evidence[key]["out"])
        assert cli["rc"] == boot.evidence[key]["rc"]
        assert ({(f["code"], f["unit"]) for f in host_doc["findings"]}
                == {(f["code"], f["unit"]) for f in guest_doc["findings"]})
        assert host_doc["time_sync"] == guest_doc["time_sync"]
        assert ({(s["unit"], s["after_time_sync"]) for s in host_doc["services"]}
                == {(s["unit"], s["after_time_sync"]) for s in guest_doc["services"]})
    assert host_doc["root"] == "/"
    assert host_doc["time_sync"]["held_by"] == ["systemd-time-wait-sync.service"]
    log.warning("host-side audit through the agent: %.1f s", cli["seconds"])
    assert "the guest has no python3-not-there" in boot.host["no_python"]


def test_doctor_guest_audit_on_a_booted_guest_reports_what_the_guest_audit_finds(
        bound_boots: dict[str, BoundBoot]) -> None:
    """``vmcrash doctor --guest-audit`` on its success path: the guest has python3 and an agent, the audit
    runs inside it, and the doctor check says what the guest's own audit (run in the guest itself just
    before and just after) found: ok exactly when that audit found nothing, else its finding codes."""
    boot = bound_boots["timesyncd-reachable"]
    doctor = boot.host["doctor"]
    (entry,) = json.loads(doctor["out"])
    (check,) = [c for c in entry["checks"] if c["name"] == "guest-boot-order"]
    assert "not audited" not in check["detail"], check
    for key in ("audit", "audit_after_host"):
        guest_doc = json.loads(boot.evidence[key]["out"])
        codes = sorted({f["code"] for f in guest_doc["findings"]})
        assert check["ok"] is (boot.evidence[key]["rc"] == 0 and not codes), (check, codes)
        if codes:
            assert check["detail"].startswith(f"{len(guest_doc['findings'])} finding(s): {', '.join(codes)}"), check
        else:
            assert check["detail"] == "services start after the clock is stepped, every wait bounded", check
    # doctor's exit code covers every check of the domain, the guest audit among them
    assert doctor["rc"] == (0 if entry["ok"] else 1), doctor
    log.warning("doctor --guest-audit on a booted guest: %.1f s, check %s", doctor["seconds"], check)

"""Bounded waits and infrastructure that is never delayed (issue 15), on miniature systems written to disk.

Pure-logic tests on literal trees (modelled on systemd 252's and Debian 12's own unit files);
the same rules are checked on the real debootstrapped roots in test_guest_bounds_rootfs.py and on
real boots in test_guest_boot_bound.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _guestsys import ETC, LIB, system, write_tree

from vmcrash.errors import UsageError
from vmcrash.guest.audit import audit
from vmcrash.guest.bounds import command_bound_s, parse_timespan_s, start_timeout_s, wait_bound
from vmcrash.guest.cli import run_fix
from vmcrash.guest.fix import (
    DROPIN_NAME,
    DROPIN_TEXT,
    TIMEOUT_DROPIN_NAME,
    apply_fix,
    plan_fix,
    undo_fix,
)
from vmcrash.guest.sources import Link, MemorySource
from vmcrash.guest.units import UnitLoader

TIME_WAIT_SYNC = (
    "[Unit]\nDescription=Wait Until Kernel Time Synchronized\nDefaultDependencies=no\n"
    "Before=time-sync.target shutdown.target\nWants=time-sync.target\nConflicts=shutdown.target\n"
    "[Service]\nType=oneshot\nExecStart=/lib/systemd/systemd-time-wait-sync\nTimeoutStartSec=infinity\n"
    "RemainAfterExit=yes\n[Install]\nWantedBy=sysinit.target\n"
)
TIMESYNCD = (
    "[Unit]\nDescription=Network Time Synchronization\nDefaultDependencies=no\nAfter=systemd-sysusers.service\n"
    "Before=time-set.target sysinit.target shutdown.target\nConflicts=shutdown.target\nWants=time-set.target\n"
    "[Service]\nType=notify\nExecStart=!!/lib/systemd/systemd-timesyncd\n[Install]\nWantedBy=sysinit.target\n"
)
GETTY = (
    "[Unit]\nDescription=Getty on %I\nAfter=systemd-user-sessions.service getty-pre.target\n"
    "After=rc-local.service\nBefore=getty.target\n[Service]\nExecStart=-/sbin/agetty -o '-p -- \\\\u' "
    "--noclear - $TERM\nType=idle\n[Install]\nWantedBy=getty.target\n"
)
USER_SESSIONS = ("[Unit]\nDescription=Permit User Sessions\nAfter=remote-fs.target network.target\n"
                 "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/lib/systemd/systemd-user-sessions start\n")
SSH = ("[Unit]\nDescription=OpenBSD Secure Shell server\nAfter=network.target\n[Service]\n"
       "ExecStart=/usr/sbin/sshd -D\nType=notify\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n")
RESOLVER = ("[Unit]\nDescription=local resolver\nBefore=nss-lookup.target\nWants=nss-lookup.target\n"
            "[Service]\nExecStart=/usr/sbin/unbound -d\n[Install]\nWantedBy=multi-user.target\n")


def timesyncd_system(extra: dict[str, str | Link] | None = None) -> dict[str, str | bytes | Link]:
    files = system(chrony=False, services=("web", "db", "rc-local", "unbound"))
    files.update({
        f"{LIB}/systemd-timesyncd.service": TIMESYNCD,
        f"{ETC}/sysinit.target.wants/systemd-timesyncd.service": Link(f"{LIB}/systemd-timesyncd.service"),
        f"{LIB}/systemd-time-wait-sync.service": TIME_WAIT_SYNC,
        f"{LIB}/getty@.service": GETTY,
        f"{LIB}/getty.target": "[Unit]\nDescription=Login Prompts\n",
        f"{LIB}/multi-user.target.wants/getty.target": Link("../getty.target"),
        f"{ETC}/getty.target.wants/getty@tty1.service": Link(f"{LIB}/getty@.service"),
        f"{LIB}/systemd-user-sessions.service": USER_SESSIONS,
        f"{LIB}/multi-user.target.wants/systemd-user-sessions.service": Link("../systemd-user-sessions.service"),
        f"{LIB}/ssh.service": SSH,
        f"{ETC}/multi-user.target.wants/ssh.service": Link(f"{LIB}/ssh.service"),
        f"{LIB}/unbound.service": RESOLVER,
        f"{LIB}/nss-lookup.target": "[Unit]\nDescription=Host and Network Name Lookups\n",
    })
    files[f"{LIB}/rc-local.service"] = ("[Unit]\nDescription=rc.local\n[Service]\nType=forking\n"
                                        "ExecStart=/etc/rc.local start\n")
    files.update(extra or {})
    return files


def codes(report: object) -> set[str]:
    return {f.code for f in report.findings}  # type: ignore[attr-defined]


def unit_from(text: str, name: str = "w.service", dropins: dict[str, str] | None = None) -> object:
    files: dict[str, str | bytes | Link] = {f"{LIB}/{name}": text}
    for fname, body in (dropins or {}).items():
        files[f"{ETC}/{name}.d/{fname}"] = body
    return UnitLoader(MemorySource(files)).load(name)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("3min", 180.0), ("1min 30s", 90.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2.5s", 2.5),
    ("infinity", math.inf), ("", None), ("soon", None), ("5 parsecs", None),
])
def test_systemd_time_spans(text: str, seconds: float | None) -> None:
    assert parse_timespan_s(text) == seconds


def test_effective_start_timeout_per_type_and_drop_in() -> None:
    oneshot = "[Service]\nType=oneshot\nExecStart=/bin/true\n"
    assert start_timeout_s(unit_from(oneshot))[0] == math.inf  # type: ignore[arg-type]
    assert start_timeout_s(unit_from("[Service]\nExecStart=/bin/true\n"), 42.0)[0] == 42.0  # type: ignore[arg-type]
    assert start_timeout_s(unit_from(oneshot + "TimeoutSec=2min\n"))[0] == 120.0  # type: ignore[arg-type]
    assert start_timeout_s(unit_from(oneshot + "TimeoutStartSec=0\n"))[0] == math.inf  # type: ignore[arg-type]
    capped = unit_from(TIME_WAIT_SYNC, "systemd-time-wait-sync.service",
                       {"50-x.conf": "[Service]\nTimeoutStartSec=45\n"})
    timeout, why = start_timeout_s(capped)  # type: ignore[arg-type]
    assert timeout == 45.0 and "50-x.conf" in why


def test_wait_commands_that_give_up_by_themselves() -> None:
    def bound(cmd: str) -> float:
        return command_bound_s(unit_from(f"[Service]\nType=oneshot\nExecStart={cmd}\n"))[0]  # type: ignore[arg-type]

    assert bound("/usr/bin/chronyc -h 127.0.0.1,::1 waitsync 0 0.1 0.0 1") == math.inf
    assert bound("/usr/bin/chronyc waitsync 30 0.1 0.0 2") == 60.0
    assert bound("/usr/bin/chronyc waitsync 6") == 60.0  # default interval 10 s
    assert bound("/usr/sbin/ntp-wait -n 10 -s 3") == 30.0
    # RHEL/CentOS 7's ntp-wait.service runs it bare: ntp-4.2.6p5's defaults, 1000 tries, 6 s apart
    assert bound("/usr/sbin/ntp-wait") == 6000.0
    # Debian 12's ntpsec-wait.service (ntpsec 1.2.2): NTPsec's ntpwait, range(1, tries) queries
    assert bound("/usr/sbin/ntpwait -s 1 -n 30000") == 29999.0
    assert bound("/usr/sbin/ntpwait") == 594.0  # its defaults: 100 tries, 6 s
    assert bound("/lib/systemd/systemd-time-wait-sync") == math.inf
    # ntpdate gives up by itself: ntp-4.2.6p5's 4 samples, at least 2 s apart (-t is raised to 2 s)
    assert bound("/usr/sbin/ntpdate -s -b pool.ntp.org") == 8.0
    assert bound("/usr/sbin/ntpdate -p 1 -t 5 a b") == 5.0
    assert bound("/usr/sbin/ntpdate -p 2 -t 0.2 a") == 4.0
    assert bound("/usr/sbin/ntpdate -p 99 a") == 16.0  # ntpdate takes 1 to 8 samples
    # RHEL/CentOS 7's ntpdate.service: the wrapper runs ntpdate once with OPTIONS="-p 2"
    assert bound("/usr/libexec/ntpdate-wrapper") == 4.0
    text = command_bound_s(unit_from("[Service]\nExecStart=/usr/libexec/ntpdate-wrapper\n"))[1]  # type: ignore[arg-type]
    assert "plus name resolution" in text
    chrony_wait = unit_from("[Service]\nType=oneshot\nExecStart=/usr/bin/chronyc waitsync 0 0.1 0.0 1\n"
                            "TimeoutStartSec=180\n")
    assert wait_bound(chrony_wait).bound_s == 180.0  # type: ignore[arg-type]


def test_the_old_fix_is_flagged_infinite_wait_and_login_after_time_sync(tmp_path: Path) -> None:
    """What 'fix --all-enabled' used to write on a timesyncd guest: the audit must not pass it."""
    old = {f"{ETC}/sysinit.target.wants/systemd-time-wait-sync.service": Link(f"{LIB}/systemd-time-wait-sync.service")}
    for unit in ("getty@tty1.service", "systemd-user-sessions.service", "web.service", "db.service",
                 "ssh.service"):
        old[f"{ETC}/{unit}.d/{DROPIN_NAME}"] = DROPIN_TEXT
    write_tree(tmp_path, timesyncd_system(old))  # type: ignore[arg-type]
    report = audit(tmp_path)
    assert report.exit_code == 1
    assert report.max_wait_s == math.inf
    found = codes(report)
    assert {"wait-unbounded", "infrastructure-after-time-sync"} <= found, report.render_text()
    infra_units = {f.unit for f in report.findings if f.code == "infrastructure-after-time-sync"}
    assert infra_units == {"getty@tty1.service", "systemd-user-sessions.service"}
    assert any("ssh.service" in n for n in report.notes)  # ssh ordered: a note, an explicit choice
    text = report.render_text()
    assert "waits forever without a time source" in text and "the boot waits forever" in text
    doc = report.to_json()
    assert doc["time_sync"]["waits_forever"] is True and doc["time_sync"]["max_wait_s"] is None


def test_fix_orders_only_applications_and_bounds_the_wait(tmp_path: Path) -> None:
    write_tree(tmp_path, timesyncd_system())
    stock = audit(tmp_path)
    assert "time-sync-not-pulled-in" in codes(stock)
    plan = plan_fix(tmp_path, all_enabled=True, wait_timeout_s=45)
    assert plan.wait_unit == "systemd-time-wait-sync.service"
    assert set(plan.services) == {"web.service", "db.service"}
    left = {r.unit: r.kind.value for r in plan.left_alone}
    assert left["getty@tty1.service"] == "login" and left["systemd-user-sessions.service"] == "login"
    assert left["ssh.service"] == "ssh"
    assert left["unbound.service"] == "network"  # name resolution: nss-lookup.target waits for it
    assert left["rc-local.service"] == "needed"  # getty@tty1 is ordered after it
    summary = "\n".join(plan.summary())
    assert "left alone: getty@tty1.service (login" in summary and "after 45 s" in summary
    apply_fix(plan)
    timeout = (tmp_path / f"etc/systemd/system/systemd-time-wait-sync.service.d/{TIMEOUT_DROPIN_NAME}").read_text()
    assert "TimeoutStartSec=45\n" in timeout and "$$SERVICE_RESULT" in timeout
    after = audit(tmp_path)
    assert after.exit_code == 0, after.render_text()
    assert after.max_wait_s == 45.0
    assert after.time_sync_held_by == ("systemd-time-wait-sync.service",)
    assert {r.unit for r in after.infrastructure} >= {"getty@tty1.service", "ssh.service", "unbound.service"}
    for unit in ("getty@tty1.service", "ssh.service", "unbound.service", "rc-local.service"):
        assert not (tmp_path / f"etc/systemd/system/{unit}.d").exists(), unit


def test_a_unit_the_wait_needs_is_time_infrastructure(tmp_path: Path) -> None:
    """chrony reaching its server through a VPN it pulls in (Wants= without After=: not a prerequisite of
    time-sync.target by ordering): the VPN must still not wait for the clock."""
    files = system({f"{LIB}/vpn.service": "[Unit]\nDescription=vpn\n[Service]\nExecStart=/usr/sbin/vpnd\n"
                                          "[Install]\nWantedBy=multi-user.target\n",
                    f"{ETC}/multi-user.target.wants/vpn.service": Link(f"{LIB}/vpn.service"),
                    f"{ETC}/chrony.service.d/vpn.conf": "[Unit]\nWants=vpn.service\n"})
    write_tree(tmp_path, files)
    plan = plan_fix(tmp_path, all_enabled=True)
    assert "vpn.service" not in plan.services
    assert {r.unit: r.kind.value for r in plan.left_alone}["vpn.service"] == "time"


def test_fix_refuses_infrastructure_and_strict_ssh_and_unbounded_timeouts(tmp_path: Path) -> None:
    write_tree(tmp_path, timesyncd_system())
    with pytest.raises(UsageError, match="login infrastructure"):
        plan_fix(tmp_path, ["getty@tty1.service"])
    with pytest.raises(UsageError, match="network infrastructure"):
        plan_fix(tmp_path, ["unbound.service"])
    with pytest.raises(UsageError, match="--strict"):
        plan_fix(tmp_path, ["ssh.service"], strict=True)
    for bad in (0, -1, 10**6):
        with pytest.raises(UsageError, match="--wait-timeout"):
            plan_fix(tmp_path, all_enabled=True, wait_timeout_s=bad)
    assert plan_fix(tmp_path, ["ssh.service"]).services == ("ssh.service",)  # explicit opt-in


def test_strict_requires_the_wait_unit_and_undo_restores_byte_for_byte(tmp_path: Path) -> None:
    from test_guest_audit_fix import tree_state

    write_tree(tmp_path, timesyncd_system())
    before = tree_state(tmp_path)
    assert run_fix(str(tmp_path), all_enabled=True) == 0
    assert run_fix(str(tmp_path), ["db.service"], strict=True) == 0
    db = (tmp_path / f"etc/systemd/system/db.service.d/{DROPIN_NAME}").read_text()
    assert "Requires=systemd-time-wait-sync.service\nAfter=systemd-time-wait-sync.service\n" in db
    web = (tmp_path / f"etc/systemd/system/web.service.d/{DROPIN_NAME}").read_text()
    assert web == DROPIN_TEXT
    report = audit(tmp_path)
    assert report.exit_code == 0, report.render_text()
    assert run_fix(str(tmp_path), undo=True) == 0
    assert tree_state(tmp_path) == before


def test_fix_exits_1_when_its_result_does_not_pass_the_audit(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A masked wait unit: nothing can hold time-sync.target; the fix says so and exits 1."""
    write_tree(tmp_path, system({f"{ETC}/chrony-wait.service": Link("/dev/null")}))
    assert run_fix(str(tmp_path), all_enabled=True) == 1
    out = capsys.readouterr().out
    assert "audit after the fix still finds" in out and "[time-sync-not-held]" in out
    undo_fix(tmp_path)

"""Each distribution family's time-service layout (issue 12): a correct audit, and a fix after which it passes.

Fixture roots are in _distros.py (the distributions' own unit files and defaults, package and
version cited there). Expected facts are stated from those files, not from the audit's output.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _distros import ETC, FAMILIES, USR_LIB, centos7
from _guestsys import write_tree
from test_guest_audit_fix import tree_state

from vmcrash.errors import UsageError
from vmcrash.guest.audit import audit
from vmcrash.guest.cli import run_fix
from vmcrash.guest.fix import DROPIN_NAME, TIMEOUT_DROPIN_NAME, plan_fix
from vmcrash.guest.sources import Link


def codes(report: object) -> set[str]:
    return {f.code for f in report.findings}  # type: ignore[attr-defined]


@pytest.fixture
def centos(tmp_path: Path) -> Path:
    write_tree(tmp_path, centos7())
    return tmp_path


def test_centos7_audit_sees_ntpd_and_the_uninstalled_ntpdate_step(centos: Path) -> None:
    report = audit(centos)
    assert report.exit_code == 1
    daemons = {d.unit: d for d in report.daemons}
    assert set(daemons) == {"ntpd.service"}  # recognised by its ExecStart, not "no time daemon"
    ntpd = daemons["ntpd.service"]
    assert ntpd.daemon == "ntp" and ntpd.in_transaction and ntpd.data["g"] is True
    story = "\n".join(ntpd.summary)
    # the original case: 18 minutes (1080 s) over the 1000 s panic threshold after a freeze
    assert "1080 s behind" in story and "ntpd exits" in story and "18 min" in story
    assert "stepout 900 s" in story
    clock = {c.unit: c for c in report.clock_units}
    assert clock["ntpdate.service"].role == "steps" and not clock["ntpdate.service"].in_transaction
    assert clock["ntpd.service"].role == "daemon"
    # nothing pulls time-sync.target in: ntpd.service neither wants nor precedes it
    assert "time-sync-not-pulled-in" in codes(report)
    assert [s.unit for s in report.services if not s.after_time_sync] == ["app.service"]


def test_centos7_fix_enables_ntpdate_never_orders_ntpd_and_passes_its_audit(centos: Path) -> None:
    before = tree_state(centos)
    plan = plan_fix(centos, all_enabled=True)
    assert plan.wait_unit == "ntpdate.service"
    assert plan.services == ("app.service",)
    paths = {c.path: c for c in plan.changes}
    link = paths[f"{ETC}/multi-user.target.wants/ntpdate.service"]
    assert link.action == "symlink" and link.target == f"{USR_LIB}/ntpdate.service"
    assert f"{ETC}/ntpd.service.d/{DROPIN_NAME}" not in paths
    timeout = paths[f"{ETC}/ntpdate.service.d/{TIMEOUT_DROPIN_NAME}"].content.decode()
    assert "ExecStopPost=-/bin/sh" in timeout  # systemd 219 has no '+' prefix: none written
    assert run_fix(str(centos), all_enabled=True) == 0  # re-audits the result itself
    after = audit(centos)
    assert after.exit_code == 0, after.render_text()
    assert after.time_sync_held_by == ("ntpdate.service",)
    assert "ntpd.service" not in {s.unit for s in after.services}  # a clock unit, never audited as an app
    assert "ntpdate.service (enabled) steps the clock once at boot" in "\n".join(after.daemons[0].summary)
    assert run_fix(str(centos), undo=True) == 0
    assert tree_state(centos) == before


def test_centos7_fix_refuses_ntpdate_without_servers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tree(tmp_path, centos7(step_tickers="# List of NTP servers used by the ntpdate service.\n\n",
                                 ntp_conf="driftfile /var/lib/ntp/drift\n"))
    report = audit(tmp_path)
    assert "it has no server" in "\n".join(report.daemons[0].summary)
    assert run_fix(str(tmp_path), all_enabled=True) == 2
    assert "ntpdate" in capsys.readouterr().err
    assert not (tmp_path / "etc/vmcrash").exists()


def test_centos7_ntpdate_takes_servers_from_ntp_conf_when_step_tickers_is_empty(tmp_path: Path) -> None:
    write_tree(tmp_path, centos7(step_tickers="# List of NTP servers used by the ntpdate service.\n\n"))
    plan = plan_fix(tmp_path, all_enabled=True)
    assert plan.wait_unit == "ntpdate.service"
    assert any("0.centos.pool.ntp.org" in w and "/etc/ntp.conf" in w for w in plan.warnings), plan.warnings
    summary = "\n".join(audit(tmp_path).daemons[0].summary)
    assert "servers: 0.centos.pool.ntp.org" in summary and "/etc/ntp.conf" in summary


@pytest.mark.parametrize(("family", "daemon_unit", "wait_unit"), [
    ("fedora", "chronyd.service", "chrony-wait.service"),
    ("rhel9", "chronyd.service", "chrony-wait.service"),
    ("rhel8", "chronyd.service", "chrony-wait.service"),
    ("suse", "chronyd.service", "chrony-wait.service"),
    ("timesyncd", "systemd-timesyncd.service", "systemd-time-wait-sync.service"),
    ("ubuntu2204", "systemd-timesyncd.service", "systemd-time-wait-sync.service"),
    ("ubuntu2404", "systemd-timesyncd.service", "systemd-time-wait-sync.service"),
    ("ntpsec", "ntpsec.service", "ntpsec-wait.service"),
])
def test_each_family_audit_then_fix_with_its_own_wait_unit(tmp_path: Path, family: str, daemon_unit: str,
                                                           wait_unit: str) -> None:
    write_tree(tmp_path, FAMILIES[family]())
    before = tree_state(tmp_path)
    stock = audit(tmp_path)
    assert stock.exit_code == 1
    assert daemon_unit in {d.unit for d in stock.daemons}
    assert "service-before-time-sync" in codes(stock)
    plan = plan_fix(tmp_path, all_enabled=True)
    assert plan.wait_unit == wait_unit
    assert plan.services == ("app.service",)
    assert daemon_unit not in plan.services and wait_unit not in plan.services
    assert run_fix(str(tmp_path), all_enabled=True) == 0
    after = audit(tmp_path)
    assert after.exit_code == 0, after.render_text()
    assert after.time_sync_held_by == (wait_unit,)
    assert after.max_wait_s == 90.0
    if daemon_unit == "chronyd.service":
        (d,) = [d for d in after.daemons if d.unit == daemon_unit]
        assert d.data["makestep"]["limit"] == -1  # steps after a freeze too
    assert run_fix(str(tmp_path), undo=True) == 0
    assert tree_state(tmp_path) == before


def test_centos7_with_ntpd_and_chronyd_both_enabled_is_a_conflict_the_fix_refuses(tmp_path: Path) -> None:
    files = centos7()
    files[f"{ETC}/multi-user.target.wants/chronyd.service"] = Link(f"{USR_LIB}/chronyd.service")
    write_tree(tmp_path, files)
    report = audit(tmp_path)
    clash = [f for f in report.findings if f.code == "time-daemons-conflict"]
    assert len(clash) == 1 and "chronyd.service" in clash[0].message and "ntpd.service" in clash[0].message
    with pytest.raises(UsageError, match="Conflicts"):
        plan_fix(tmp_path, all_enabled=True)


@pytest.mark.parametrize("direction", ["app-conflicts", "wait-conflicts"])
def test_a_unit_that_conflicts_with_the_wait_unit_is_found_in_either_direction(tmp_path: Path, direction: str) -> None:
    """Conflicts= between a clock unit and any other unit of the boot transaction: systemd keeps one of
    the two start jobs, so the wait unit may not run (the audit cannot say which one survives)."""
    files = FAMILIES["fedora"]()
    files[f"{ETC}/multi-user.target.wants/chrony-wait.service"] = Link(f"{USR_LIB}/chrony-wait.service")
    write_tree(tmp_path, files)
    clean = audit(tmp_path)
    assert "clock-unit-conflict" not in codes(clean)
    app = ("[Unit]\nDescription=legacy clock tool\n"
           + ("Conflicts=chrony-wait.service\n" if direction == "app-conflicts" else "")
           + "[Service]\nExecStart=/usr/bin/true\n[Install]\nWantedBy=multi-user.target\n")
    (tmp_path / "etc/systemd/system/legacy.service").write_text(app)
    (tmp_path / "etc/systemd/system/multi-user.target.wants/legacy.service").symlink_to(
        "/etc/systemd/system/legacy.service")
    if direction == "wait-conflicts":
        drop = tmp_path / "etc/systemd/system/chrony-wait.service.d"
        drop.mkdir(parents=True)
        (drop / "local.conf").write_text("[Unit]\nConflicts=legacy.service\n")
    report = audit(tmp_path)
    clash = [f for f in report.findings if f.code == "clock-unit-conflict"]
    assert len(clash) == 1, report.findings
    assert "chrony-wait.service" in clash[0].message and "legacy.service" in clash[0].message
    assert report.exit_code == 1


def test_a_wait_unit_skipped_by_its_condition_holds_nothing(tmp_path: Path) -> None:
    files = FAMILIES["fedora"]()
    files[f"{ETC}/multi-user.target.wants/chrony-wait.service"] = Link(f"{USR_LIB}/chrony-wait.service")
    files[f"{ETC}/chrony-wait.service.d/local.conf"] = "[Unit]\nConditionPathExists=/etc/chrony-wait-enabled\n"
    write_tree(tmp_path, files)
    report = audit(tmp_path)
    assert report.time_sync_held_by == ()
    (wait,) = [c for c in report.clock_units if c.unit == "chrony-wait.service"]
    assert "skipped at boot" in wait.note and "ConditionPathExists=/etc/chrony-wait-enabled" in wait.note
    assert "time-sync-not-held" in codes(report)
    (tmp_path / "etc/chrony-wait-enabled").write_text("")
    assert audit(tmp_path).time_sync_held_by == ("chrony-wait.service",)


def test_ntpsec_as_debian_12_ships_it_pulls_in_no_time_sync_target_and_the_fix_enables_its_wait(
        tmp_path: Path) -> None:
    """ntpsec 1.2.2+dfsg1-1+deb12u1: ntpsec.service wants no time-sync.target; ntpsec-wait.service is
    WantedBy=time-sync.target (not Before= it) and runs ntpwait -s 1 -n 30000; NTPsec's stepout is 300 s."""
    write_tree(tmp_path, FAMILIES["ntpsec"]())
    report = audit(tmp_path)
    assert not report.time_sync_in_transaction and "time-sync-not-pulled-in" in codes(report)
    (wait,) = [c for c in report.clock_units if c.unit == "ntpsec-wait.service"]
    assert wait.role == "waits" and not wait.in_transaction and not wait.before_time_sync
    assert wait.bound is not None and wait.bound.command_s == 29999.0 and "ntpwait gives up" in wait.bound.why
    assert wait.bound.timeout_s == math.inf  # a oneshot without TimeoutStartSec=
    (daemon,) = report.daemons
    assert daemon.daemon == "ntpsec" and daemon.data["stepout_s"] == 300.0 and daemon.data["g"] is True
    plan = plan_fix(tmp_path, all_enabled=True)
    links = {c.path: c.target for c in plan.changes if c.action == "symlink"}
    assert links == {f"{ETC}/time-sync.target.wants/ntpsec-wait.service": "/lib/systemd/system/ntpsec-wait.service"}
    assert run_fix(str(tmp_path), all_enabled=True) == 0
    after = audit(tmp_path)
    (wait,) = [c for c in after.clock_units if c.unit == "ntpsec-wait.service"]
    # ordered before time-sync.target only because the target is ordered after what it wants
    assert wait.holds and wait.before_time_sync and wait.bound is not None and wait.bound.bound_s == 90.0


def test_centos7_ntpd_keeps_ntp_4_2_6s_900_s_stepout_and_ntpdate_wants_the_network_online(centos: Path) -> None:
    report = audit(centos)
    (ntpd,) = report.daemons
    assert ntpd.data["stepout_s"] == 900.0  # CLOCK_MINSTEP of ntp-4.2.6p5
    run_fix(str(centos), all_enabled=True)
    after = audit(centos)
    chain = [e.dst for e in after.services[0].chain]
    assert chain == ["time-sync.target"]
    (step,) = [c for c in after.clock_units if c.unit == "ntpdate.service"]
    assert step.holds and step.in_transaction


def test_suse_chronyd_of_chrony_4_1_is_ordered_before_time_sync_target_but_holds_nothing(tmp_path: Path) -> None:
    """openSUSE's 4.1-era chrony-service-ordering.patch: chronyd.service Wants= and Before=time-sync.target
    (as Debian's chrony.service), so the target is in the transaction and reached as soon as chronyd has
    forked, before any clock update; only chrony-wait.service (installed, not enabled) would hold it."""
    write_tree(tmp_path, FAMILIES["suse"]())
    report = audit(tmp_path)
    assert report.time_sync_in_transaction and report.time_sync_held_by == ()
    clock = {c.unit: c for c in report.clock_units}
    assert clock["chronyd.service"].role == "daemon" and clock["chronyd.service"].before_time_sync
    assert clock["chronyd.service"].in_transaction and not clock["chronyd.service"].holds
    assert not clock["chrony-wait.service"].in_transaction
    (held,) = [f for f in report.findings if f.code == "time-sync-not-held"]
    assert "chronyd.service" in held.message and "chrony-wait.service" in held.message
    (d,) = report.daemons
    assert d.data["files"] == ["/etc/chrony.conf", "/etc/chrony.d/pool.conf"]  # the include of /etc/chrony.d


def test_fedora_42_chronyd_is_type_notify_and_chronyd_restricted_is_installed_only(tmp_path: Path) -> None:
    """chrony 4.8-1.fc42: chronyd.service Type=notify, ExecStart=chronyd -n $OPTIONS (READY=1 is sent where
    4.6 released its forking parent: before the first clock update); chronyd-restricted.service installed,
    not enabled (90-default.preset enables chronyd.service only)."""
    write_tree(tmp_path, FAMILIES["fedora"]())
    report = audit(tmp_path)
    assert [d.unit for d in report.daemons] == ["chronyd.service"]
    clock = {c.unit: c for c in report.clock_units}
    assert clock["chronyd.service"].in_transaction and "active before its first clock update" in clock[
        "chronyd.service"].note
    assert "chronyd-restricted.service" not in report.time_sync_held_by
    plan = plan_fix(tmp_path, all_enabled=True)
    assert "chronyd-restricted.service" not in {c.path.rsplit("/", 1)[-1] for c in plan.changes}


def test_fedora_with_chronyd_restricted_enabled_the_fix_does_not_enable_chrony_wait(tmp_path: Path) -> None:
    """chrony-wait.service Requires=chronyd.service, which chronyd-restricted.service Conflicts= (and chronyc
    -h 127.0.0.1 could not reach chronyd -U anyway): enabling it would start both daemons. The fix takes the
    next wait unit (systemd-time-wait-sync: chronyd keeps the kernel's STA_UNSYNC), or none."""
    files = FAMILIES["fedora"]()
    del files[f"{ETC}/multi-user.target.wants/chronyd.service"]
    files[f"{ETC}/multi-user.target.wants/chronyd-restricted.service"] = Link(
        f"{USR_LIB}/chronyd-restricted.service")
    write_tree(tmp_path, files)
    plan = plan_fix(tmp_path, all_enabled=True)
    assert plan.wait_unit is None
    assert any("chrony-wait.service not used" in w and "chronyd.service" in w for w in plan.warnings), plan.warnings
    assert not [c for c in plan.changes if c.action == "symlink"]
    # with systemd's generic wait unit installed, that one is enabled and the fixed boot passes
    (tmp_path / USR_LIB.lstrip("/") / "systemd-time-wait-sync.service").write_text(FAMILIES["timesyncd"]()[
        "/lib/systemd/system/systemd-time-wait-sync.service"])  # type: ignore[arg-type]
    plan = plan_fix(tmp_path, all_enabled=True)
    assert plan.wait_unit == "systemd-time-wait-sync.service"
    assert run_fix(str(tmp_path), all_enabled=True) == 0
    after = audit(tmp_path)
    assert after.exit_code == 0, after.render_text()
    assert after.time_sync_held_by == ("systemd-time-wait-sync.service",)
    assert "chronyd.service" not in {c.unit for c in after.clock_units if c.in_transaction}


@pytest.mark.parametrize("family", ["ubuntu2204", "ubuntu2404"])
def test_ubuntu_fix_enables_time_wait_sync_on_the_path_the_package_uses(tmp_path: Path, family: str) -> None:
    """Ubuntu 22.04 ships units in /lib/systemd/system (split-usr build on a merged-/usr root), 24.04 in
    /usr/lib/systemd/system: the new link names the same directory as the package's own links."""
    write_tree(tmp_path, FAMILIES[family]())
    plan = plan_fix(tmp_path, all_enabled=True)
    links = {c.path: c.target for c in plan.changes if c.action == "symlink"}
    lib = "/lib/systemd/system" if family == "ubuntu2204" else USR_LIB
    assert links == {f"{ETC}/sysinit.target.wants/systemd-time-wait-sync.service":
                     f"{lib}/systemd-time-wait-sync.service"}
    (d,) = audit(tmp_path).daemons
    assert d.daemon == "timesyncd" and d.data["servers"] == []  # timesyncd.conf: all commented out

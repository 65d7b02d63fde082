"""Audit findings, time-daemon configuration, fix / re-audit / undo, on miniature systems written to disk."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from _guestsys import CHRONY_WAIT, ETC, LIB, system, write_tree

from vmcrash.errors import UsageError
from vmcrash.guest.audit import audit
from vmcrash.guest.fix import (
    DROPIN_NAME,
    MANIFEST_PATH,
    TIMEOUT_DROPIN_NAME,
    apply_fix,
    plan_fix,
    render_plan,
    undo_fix,
)
from vmcrash.guest.sources import Link, MemorySource
from vmcrash.guest.timecfg import read_chrony, read_ntpd, slew_seconds

CHRONY_WAIT_SIMPLE = CHRONY_WAIT.replace("Type=oneshot", "Type=simple")


def tree_state(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every path under ``root``: (content hash or link target, mode, uid, gid)."""
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
                what = "dir"
            out[str(p.relative_to(root))] = (what, st.st_mode, st.st_uid, st.st_gid)
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_tree(tmp_path, system())
    return tmp_path


def codes(report: object) -> list[str]:
    return [f.code for f in report.findings]  # type: ignore[attr-defined]


def test_stock_chrony_system_has_every_finding(root: Path) -> None:
    report = audit(root)
    assert report.exit_code == 1
    assert report.time_sync_in_transaction
    assert report.time_sync_held_by == ()
    assert codes(report).count("service-before-time-sync") == 2
    assert {"time-sync-not-held", "chrony-makestep-limited"} <= set(codes(report))
    by_unit = {s.unit: s for s in report.services}
    assert set(by_unit) == {"web.service", "db.service"}
    web = by_unit["web.service"]
    assert not web.after_time_sync and {e.dst for e in web.waits_for} >= {"basic.target", "sysinit.target"}
    clock = {c.unit: c for c in report.clock_units}
    assert clock["chrony.service"].role == "daemon" and clock["chrony.service"].in_transaction
    assert clock["chrony-wait.service"].role == "waits" and not clock["chrony-wait.service"].in_transaction
    text = report.render_text()
    assert "FAIL  web.service" in text and "installed but not pulled in: chrony-wait.service" in text
    doc = report.to_json()
    assert json.loads(json.dumps(doc)) == doc and doc["exit_code"] == 1


def test_time_sync_not_pulled_in_without_a_daemon(tmp_path: Path) -> None:
    write_tree(tmp_path, system(chrony=False))
    report = audit(tmp_path)
    assert not report.time_sync_in_transaction
    assert "time-sync-not-pulled-in" in codes(report)


def test_a_service_after_time_sync_through_the_graph_with_its_proof(tmp_path: Path) -> None:
    files = system({f"{LIB}/web.service": "[Unit]\nAfter=db.service\n[Service]\nExecStart=/w\n",
                    f"{ETC}/db.service.d/t.conf": "[Unit]\nAfter=time-sync.target\n",
                    f"{ETC}/multi-user.target.wants/chrony-wait.service": Link(f"{LIB}/chrony-wait.service")})
    write_tree(tmp_path, files)
    report = audit(tmp_path)
    web = {s.unit: s for s in report.services}["web.service"]
    assert web.after_time_sync
    assert [(e.src, e.dst) for e in web.chain] == [("web.service", "db.service"), ("db.service", "time-sync.target")]
    assert web.chain[1].origin == f"After= at {ETC}/db.service.d/t.conf:2"
    assert report.time_sync_held_by == ("chrony-wait.service",)


def test_unit_selection_and_unknown_units(root: Path) -> None:
    report = audit(root, ["web.service", "nope.service"])
    assert [s.unit for s in report.services] == ["web.service"]
    assert ("unit-not-loaded", "nope.service") in [(f.code, f.unit) for f in report.findings]


def test_malformed_unit_files_are_reported_with_line_and_the_audit_goes_on(root: Path) -> None:
    (root / "lib/systemd/system/db.service").write_text("[Unit]\nAfter network.target\n[Service]\nExecStart=/x\n")
    report = audit(root)
    assert [(p.path, p.line) for p in report.problems] == [(f"{LIB}/db.service", 2)]
    assert "db.service" in {s.unit for s in report.services}
    assert report.exit_code == 1


def test_chrony_makestep_last_one_wins_and_slew_time() -> None:
    src = MemorySource({"/etc/chrony/chrony.conf": "confdir /etc/chrony/conf.d\nmakestep 1 3\n",
                        "/etc/chrony/conf.d/a.conf": "makestep 0.5 -1\nmaxslewrate 500\n"})
    cfg = read_chrony(src, "/etc/chrony/chrony.conf")
    assert cfg.makestep is not None and (cfg.makestep.threshold_s, cfg.makestep.limit) == (1.0, 3)
    assert cfg.makestep.where == "/etc/chrony/chrony.conf:2"
    assert [d.where for d in cfg.makesteps] == ["/etc/chrony/conf.d/a.conf:1", "/etc/chrony/chrony.conf:2"]
    assert not cfg.steps_offset_after_start()
    assert cfg.slew_seconds(360) == pytest.approx(720_000)  # 360 s at 500 ppm
    assert slew_seconds(360, 83333.333) == pytest.approx(4320, rel=1e-6)  # chrony's default rate: 72 min


def test_ntpd_options() -> None:
    src = MemorySource({"/etc/ntpsec/ntp.conf": "tinker panic 0\n"})
    cfg = read_ntpd(src, ("/etc/ntpsec/ntp.conf",), "-g -x -N")
    assert cfg.slew_only and cfg.allow_first_big and cfg.panic_s == 0 and not cfg.steps(360)
    assert read_ntpd(src, ("/etc/ntpsec/ntp.conf",), "").steps(360)


def test_fix_reaudit_idempotent_and_undo_byte_for_byte(root: Path) -> None:
    os.chmod(root / "etc/chrony/chrony.conf", 0o640)
    before = tree_state(root)
    plan = plan_fix(root, all_enabled=True)
    assert plan.services == ("db.service", "web.service")
    assert plan.wait_unit == "chrony-wait.service"
    paths = {c.path: c.action for c in plan.changes}
    assert paths == {
        f"{ETC}/db.service.d/{DROPIN_NAME}": "create",
        f"{ETC}/web.service.d/{DROPIN_NAME}": "create",
        f"{ETC}/multi-user.target.wants/chrony-wait.service": "symlink",
        f"{ETC}/chrony-wait.service.d/{TIMEOUT_DROPIN_NAME}": "create",
        "/etc/chrony/conf.d/vmcrash-makestep.conf": "create",
        "/etc/chrony/chrony.conf": "edit",  # its makestep 1 3 is read after confdir and would win
    }
    diff = render_plan(plan)
    assert "-makestep 1 3" in diff and "+After=time-sync.target" in diff
    assert tree_state(root) == before  # planning and --dry-run write nothing

    result = apply_fix(plan)
    assert len(result.written) == 6
    after_fix = audit(root)
    assert after_fix.exit_code == 0, after_fix.render_text()
    assert after_fix.time_sync_held_by == ("chrony-wait.service",)
    assert all(s.after_time_sync for s in after_fix.services)
    cfg = read_chrony(MemorySource({"/etc/chrony/chrony.conf": (root / "etc/chrony/chrony.conf").read_text(),
                                    "/etc/chrony/conf.d/vmcrash-makestep.conf":
                                        (root / "etc/chrony/conf.d/vmcrash-makestep.conf").read_text()}),
                      "/etc/chrony/chrony.conf")
    assert cfg.makestep is not None and cfg.makestep.unlimited
    assert stat.S_IMODE((root / "etc/chrony/chrony.conf").stat().st_mode) == 0o640

    state_fixed = tree_state(root)
    again = plan_fix(root, all_enabled=True)
    assert again.changes == ()
    assert tree_state(root) == state_fixed

    undone = undo_fix(root)
    assert "/etc/chrony/chrony.conf" in undone.restored
    assert tree_state(root) == before
    with pytest.raises(UsageError):
        undo_fix(root)


def test_fix_refuses_a_cycle_and_undo_leaves_changed_files(root: Path) -> None:
    with pytest.raises(UsageError, match="ordering cycle"):
        plan_fix(root, ["chrony.service"])
    plan = plan_fix(root, ["web.service"])
    assert plan.services == ("web.service",)
    apply_fix(plan)
    dropin = root / f"etc/systemd/system/web.service.d/{DROPIN_NAME}"
    dropin.write_text(dropin.read_text() + "# local edit\n")
    result = undo_fix(root)
    assert dropin.exists() and any("changed since" in w for w in result.warnings)
    manifest = json.loads((root / MANIFEST_PATH.lstrip("/")).read_text())
    assert [e["path"] for e in manifest["entries"] if e["action"] == "create"] == [
        f"{ETC}/web.service.d/{DROPIN_NAME}"]


NTPSEC = ("[Unit]\nDescription=ntpsec\nWants=time-sync.target\nBefore=time-sync.target\nAfter=network.target\n"
          "[Service]\nType=forking\nEnvironmentFile=-/etc/default/ntpsec\nExecStart=/usr/libexec/ntpsec/ntp-systemd-wrapper\n"
          "[Install]\nWantedBy=multi-user.target\n")
TIME_WAIT_SYNC = ("[Unit]\nDefaultDependencies=no\nBefore=time-sync.target shutdown.target\nWants=time-sync.target\n"
                  "Conflicts=shutdown.target\n[Service]\nType=oneshot\nExecStart=/lib/systemd/systemd-time-wait-sync\n"
                  "RemainAfterExit=yes\n[Install]\nWantedBy=sysinit.target\n")


def test_ntpsec_slewing_is_a_finding_and_fix_uses_the_generic_wait_unit(tmp_path: Path) -> None:
    files = system({f"{LIB}/ntpsec.service": NTPSEC,
                    f"{ETC}/multi-user.target.wants/ntpsec.service": Link(f"{LIB}/ntpsec.service"),
                    f"{LIB}/systemd-time-wait-sync.service": TIME_WAIT_SYNC,
                    "/etc/default/ntpsec": 'NTPD_OPTS="-g -N -x"\n',
                    "/etc/ntpsec/ntp.conf": "pool 0.debian.pool.ntp.org iburst\n"}, chrony=False)
    write_tree(tmp_path, files)
    report = audit(tmp_path)
    assert {"ntpd-slews", "time-sync-not-held"} <= set(codes(report))
    (daemon,) = report.daemons
    assert daemon.daemon == "ntpsec" and daemon.data["x"] and daemon.data["g"]
    plan = plan_fix(tmp_path, all_enabled=True)
    assert plan.wait_unit == "systemd-time-wait-sync.service"
    links = [c for c in plan.changes if c.action == "symlink"]
    assert [(c.path, c.target) for c in links] == [
        (f"{ETC}/sysinit.target.wants/systemd-time-wait-sync.service", f"{LIB}/systemd-time-wait-sync.service")]
    apply_fix(plan)
    after = audit(tmp_path)
    assert after.time_sync_held_by == ("systemd-time-wait-sync.service",)
    assert set(codes(after)) == {"ntpd-slews"}  # ordering fixed; slewing is the daemon's option (-x), not ours


def test_a_wait_unit_that_is_not_oneshot_holds_nothing(tmp_path: Path) -> None:
    files = system({f"{LIB}/chrony-wait.service": CHRONY_WAIT_SIMPLE,
                    f"{ETC}/multi-user.target.wants/chrony-wait.service": Link(f"{LIB}/chrony-wait.service")})
    write_tree(tmp_path, files)
    report = audit(tmp_path)
    clock = {c.unit: c for c in report.clock_units}["chrony-wait.service"]
    assert clock.in_transaction and clock.role == "waits" and not clock.holds
    assert "Type=simple" in clock.note
    assert "time-sync-not-held" in codes(report)


def test_masked_wait_unit_is_not_unmasked(root: Path) -> None:
    (root / "etc/systemd/system/chrony-wait.service").symlink_to("/dev/null")
    plan = plan_fix(root, all_enabled=True)
    assert plan.wait_unit is None
    assert any("masked" in w for w in plan.warnings)
    assert not [c for c in plan.changes if c.action == "symlink"]


def test_plan_skips_a_wait_unit_whose_requirements_conflict_with_the_running_daemon() -> None:
    """Pure: a wait unit that Requires= a daemon the running one Conflicts= is not enabled (it would put
    both daemons in the boot transaction); the next candidate is taken, here none."""
    files = system(chrony=False, extra={
        f"{LIB}/chrony.service": "[Unit]\nDescription=chrony\n[Service]\nType=forking\nExecStart=/usr/sbin/chronyd\n"
                                 "[Install]\nWantedBy=multi-user.target\n",
        f"{LIB}/chrony-wait.service": CHRONY_WAIT.replace("chronyd.service", "chrony.service"),
        f"{LIB}/chrony-alt.service": "[Unit]\nConflicts=chrony.service\n[Service]\nType=forking\n"
                                     "ExecStart=/usr/sbin/chronyd -U\n[Install]\nWantedBy=multi-user.target\n",
        f"{ETC}/multi-user.target.wants/chrony-alt.service": Link(f"{LIB}/chrony-alt.service"),
    })
    plan = plan_fix("/", all_enabled=True, source=MemorySource(files))
    assert plan.wait_unit is None
    assert not [c for c in plan.changes if c.action == "symlink"]
    assert any(w.startswith("chrony-wait.service not used") and "chrony.service" in w for w in plan.warnings)
    # without the conflict the same wait unit is enabled
    alt = str(files[f"{LIB}/chrony-alt.service"])
    files[f"{LIB}/chrony-alt.service"] = alt.replace("Conflicts=chrony.service\n", "")
    assert plan_fix("/", all_enabled=True, source=MemorySource(files)).wait_unit == "chrony-wait.service"

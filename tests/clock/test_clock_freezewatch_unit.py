"""The daemon's freeze-resync glue without libvirt: events to jobs, outcomes to catalogue rows.

The scheduler is replaced by a recorder of submitted jobs (its own logic is tested in
test_clock_fleet.py); the catalogue is the real SQLite one. The lab tests
(tests/lab/test_freeze_resync_lab.py, test_clock_hostsleep.py) run the same code on a real guest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt

from vmcrash.capture.clockstep import ClockOutcome
from vmcrash.capture.freezewatch import FreezeResyncs, FreezeSync
from vmcrash.clock.fleet import Outcome, ResyncJob, ResyncOutcome
from vmcrash.config import parse_config
from vmcrash.host.connection import DomainInfo
from vmcrash.host.events import LifecycleEvent
from vmcrash.store.catalog import Catalog

S = 1_000_000_000


def one_round(**kw: Any) -> FreezeSync:
    """A resync of one round of the clock stage."""
    return FreezeSync((ClockOutcome(**kw),))


class Submitted:
    def __init__(self) -> None:
        self.jobs: list[ResyncJob] = []

    def submit(self, job: ResyncJob) -> bool:
        self.jobs.append(job)
        return True

    def busy(self, key: str) -> bool:
        return False


def make(tmp_path: Path, busy: set[str] | None = None) -> tuple[FreezeResyncs, Submitted, Catalog]:
    cfg = parse_config({"dump_dir": str(tmp_path / "d"), "catalog": str(tmp_path / "c.sqlite")})
    catalog = Catalog(tmp_path / "c.sqlite")

    def no_hv() -> Any:
        raise AssertionError("no libvirt in this test")

    fr = FreezeResyncs(cfg, hv=no_hv, catalog=catalog, crash_busy=(busy or set()).__contains__)
    fr.scheduler.close()
    sub = Submitted()
    fr.scheduler = sub  # type: ignore[assignment]
    return fr, sub, catalog


def ev(event: str, detail: str, t_s: float, uuid: str = "u1") -> LifecycleEvent:
    return LifecycleEvent("vm1", uuid, event, detail, int(t_s * S))


def test_managedsave_start_becomes_one_restore_job(tmp_path: Path) -> None:
    fr, sub, _ = make(tmp_path)
    for e in [ev("suspended", "paused", 0), ev("stopped", "saved", 0.1), ev("started", "restored", 20),
              ev("resumed", "from-snapshot", 20.01)]:
        fr.on_event(e)
    assert sub.jobs == [ResyncJob("u1", "vm1", "restore", "started/restored", 20.0)]


def test_no_job_while_the_domains_panic_is_handled(tmp_path: Path) -> None:
    fr, sub, _ = make(tmp_path, busy={"u1"})
    fr.on_event(ev("suspended", "paused", 0))
    fr.on_event(ev("resumed", "unpaused", 30))
    assert sub.jobs == []


def test_states_are_per_domain_and_forgotten_on_undefine(tmp_path: Path) -> None:
    fr, sub, _ = make(tmp_path)
    fr.on_event(ev("suspended", "paused", 0, "a"))
    fr.on_event(ev("resumed", "unpaused", 10, "b"))  # b's pause was not seen
    assert sub.jobs == []
    fr.on_event(ev("undefined", "removed", 11, "a"))
    assert "a" not in fr.states


def test_an_outcome_is_recorded_like_the_post_crash_correction(tmp_path: Path) -> None:
    fr, _, cat = make(tmp_path)
    job = ResyncJob("u1", "vm1", "restore", "started/restored", 15.0, merged=("resumed/unpaused",))
    result = one_round(ok=True, synced=True, before_ms=-15012.5, after_ms=0.7, attempts=1)
    fr._record(ResyncOutcome(job, Outcome.SYNCED, result, None, 1.2, 1.5, 4))
    (row,) = cat.clock_syncs()
    assert (row["reason"], row["ok"], row["before_ms"], row["after_ms"], row["error"]) == \
        ("restore", 1, -15012.5, 0.7, None)
    assert row["result"] == {"ok": True, "synced": True, "before_ms": -15012.5, "after_ms": 0.7, "attempts": 1,
                             "event": "started/restored", "frozen_s": 15.0, "agent_waited_s": 1.2, "took_s": 1.5,
                             "merged_events": ["resumed/unpaused"]}


def test_rounds_keep_the_first_offset_found_and_all_attempts(tmp_path: Path) -> None:
    """Three rounds at a busy moment: the row says what the first found, what the last left, and how
    many guest-set-time calls all rounds took (the JSON that clock_syncs kept before FreezeSync)."""
    fr, _, cat = make(tmp_path)
    missed = ClockOutcome(False, True, -9000.0, -31.0, 0.2, 5, detail={"result": {"ok": False}})
    again = ClockOutcome(False, True, -31.0, -12.0, 0.0, 5, detail={"result": {"ok": False}})
    hit = ClockOutcome(True, True, -12.0, 0.6, 0.0, 2, detail={"result": {"ok": True}})
    sync = FreezeSync((missed, again, hit))
    assert (sync.ok, sync.before_ms, sync.after_ms, sync.attempts, sync.error) == (True, -9000.0, 0.6, 12, None)
    assert sync.to_dict() == {"ok": True, "synced": True, "before_ms": -9000.0, "after_ms": 0.6, "waited_s": 0.0,
                              "attempts": 12, "result": {"ok": True}, "rounds": 3}
    fr._record(ResyncOutcome(ResyncJob("u1", "vm1", "restore", "started/restored"), Outcome.SYNCED, sync,
                             None, 0.5, 3.0, 2))
    (row,) = cat.clock_syncs()
    assert (row["ok"], row["before_ms"], row["after_ms"], row["error"]) == (1, -9000.0, 0.6, None)
    assert row["result"]["rounds"] == 3 and row["result"]["attempts"] == 12
    # a first round that could not measure (agent error) is not merged: the last round speaks alone
    failed = ClockOutcome(False, True, error="guest agent refused")
    alone = FreezeSync((failed, hit))
    assert alone.to_dict() == hit.to_dict() and (alone.before_ms, alone.attempts) == (-12.0, 2)


def test_failures_are_recorded_and_drops_are_not(tmp_path: Path) -> None:
    fr, _, cat = make(tmp_path)
    job = ResyncJob("u1", "vm1", "snapshot", "started/from-snapshot")
    fr._record(ResyncOutcome(job, Outcome.DROPPED, None, "domain not running after 90 s", 90, 90, 40))
    assert cat.clock_syncs() == []
    fr._record(ResyncOutcome(job, Outcome.FAILED, None, "guest agent did not answer within 90 s (40 tries)",
                             90, 90, 40))
    (row,) = cat.clock_syncs()
    assert row["ok"] == 0 and row["error"].startswith("guest agent did not answer") and row["before_ms"] is None


def test_startup_check_records_only_a_clock_that_was_off(tmp_path: Path) -> None:
    fr, sub, cat = make(tmp_path)
    infos = [DomainInfo(n, f"u-{n}", st, reason, 1 << 29, True, False) for n, st, reason in [
        ("restored", "running", libvirt.VIR_DOMAIN_RUNNING_RESTORED),
        ("reverted", "running", libvirt.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT),
        ("migrated", "running", libvirt.VIR_DOMAIN_RUNNING_MIGRATED),
        ("woken", "running", libvirt.VIR_DOMAIN_RUNNING_WAKEUP),
        ("booted", "running", libvirt.VIR_DOMAIN_RUNNING_BOOTED),
        ("unpaused", "running", libvirt.VIR_DOMAIN_RUNNING_UNPAUSED),
        ("paused", "paused", libvirt.VIR_DOMAIN_RUNNING_RESTORED),
        ("unwatched", "running", libvirt.VIR_DOMAIN_RUNNING_RESTORED)]]
    assert fr.at_reconcile(infos, lambda name: name != "unwatched") == 4
    assert [(j.name, j.reason, j.event, j.record_unchanged) for j in sub.jobs] == [
        ("restored", "restore", "startup:running/restored", False),
        ("reverted", "snapshot", "startup:running/from-snapshot", False),
        ("migrated", "migration", "startup:running/migrated", False),
        ("woken", "pm-wakeup", "startup:running/wakeup", False)]
    within = one_round(ok=True, synced=True, before_ms=0.4, after_ms=0.4, attempts=0)
    fr._record(ResyncOutcome(sub.jobs[0], Outcome.SYNCED, within, None, 0.0, 0.1, 1))
    assert cat.clock_syncs() == []
    off = one_round(ok=True, synced=True, before_ms=-9000.0, after_ms=0.4, attempts=1)
    fr._record(ResyncOutcome(sub.jobs[1], Outcome.SYNCED, off, None, 0.0, 0.1, 1))
    assert [r["reason"] for r in cat.clock_syncs()] == ["snapshot"]


def test_list_clock_shows_reason_and_cause(tmp_path: Path) -> None:
    import subprocess
    import sys

    fr, _, cat = make(tmp_path)
    res = one_round(ok=True, synced=True, before_ms=-7010.0, after_ms=-0.4, attempts=1)
    fr._record(ResyncOutcome(ResyncJob("u1", "vm1", "restore", "started/restored"), Outcome.SYNCED, res,
                             None, 0.1, 0.9, 1))
    missed = one_round(ok=False, synced=True, before_ms=-5850.0, after_ms=-14.8, attempts=5)
    fr._record(ResyncOutcome(ResyncJob("u1", "vm1", "host-resume", "host-resume", 5.0), Outcome.SYNCED,
                             missed, None, 0.1, 2.0, 1))
    cat.record_clock_sync(domain="vm1", uuid="u1", reason="after-crash", ok=True, before_ms=-400.0,
                          after_ms=1.0, result={"ok": True}, crash_id=None)
    cat.close()
    (tmp_path / "c.toml").write_text(f'dump_dir = "{tmp_path / "d"}"\ncatalog = "{tmp_path / "c.sqlite"}"\n')
    p = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(tmp_path / "c.toml"),
                        "list", "--clock"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:6] == ["WHEN", "(UTC)", "DOMAIN", "REASON", "CAUSE", "BEFORE"]
    rows = [line.split() for line in lines[1:]]
    assert [r[3:8] for r in rows] == [["after-crash", "-", "-400.0", "+1.0", "yes"],
                                      ["host-resume", "host-resume", "-5850.0", "-14.8", "no:"],
                                      ["restore", "started/restored", "-7010.0", "-0.4", "yes"]]
    assert lines[2].endswith("no: target not reached")

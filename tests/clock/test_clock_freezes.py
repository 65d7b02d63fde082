"""Which lifecycle events end a freeze: the pure state machine of ``vmcrash.clock.freezes``.

The event sequences are the ones libvirt 9.0 sent for a lab guest (seen with a Subscription while
running virsh managedsave/start, save/restore, snapshot-revert, dompmsuspend/dompmwakeup); the
lab test ``tests/lab/test_freeze_resync_lab.py`` replays them on a real guest.
"""

from __future__ import annotations

import pytest

from vmcrash.clock.freezes import FreezeKind, Phase, Resync, State, step

S = 1_000_000_000


def run(events: list[tuple[float, str]], *, threshold_s: float = 2.0,
        state: State | None = None) -> tuple[State, list[Resync]]:
    """Feed ``(time_s, "event/detail")`` pairs; the final state and every resync asked for."""
    st = state or State()
    out = []
    for t, name in events:
        ev, det = name.split("/")
        st, resync = step(st, ev, det, int(t * S), pause_threshold_s=threshold_s)
        if resync is not None:
            out.append(resync)
    return st, out


def test_pause_longer_than_threshold_resyncs_once_with_its_length() -> None:
    st, got = run([(10, "suspended/paused"), (25, "resumed/unpaused")])
    assert got == [Resync(FreezeKind.PAUSE, "resumed/unpaused", 15.0)]
    assert got[0].reason == "resume"  # the reason the catalogue always had for pauses
    assert st.phase is Phase.RUNNING


def test_short_pause_is_ignored_but_exactly_threshold_is_not() -> None:
    assert run([(10, "suspended/paused"), (11.9, "resumed/unpaused")])[1] == []
    assert len(run([(10, "suspended/paused"), (12, "resumed/unpaused")])[1]) == 1


def test_managedsave_then_start_is_one_restore_resync() -> None:
    # as seen: suspended/paused, stopped/saved ... started/restored, resumed/from-snapshot
    st, got = run([(0, "suspended/paused"), (0.1, "stopped/saved"), (15, "started/restored"),
                   (15.01, "resumed/from-snapshot")])
    assert got == [Resync(FreezeKind.RESTORE, "started/restored", 15.0)]
    assert got[0].reason == "restore"
    assert st.phase is Phase.RUNNING


def test_restore_after_a_reboot_of_the_daemon_has_no_known_length_but_resyncs() -> None:
    st, got = run([(100, "started/restored"), (100.01, "resumed/from-snapshot")])
    assert got == [Resync(FreezeKind.RESTORE, "started/restored", None)]


def test_restore_without_the_extra_resume_still_resyncs_and_a_later_short_pause_does_not() -> None:
    _, got = run([(0, "stopped/saved"), (5, "started/restored"), (30, "suspended/paused"),
                  (30.5, "resumed/unpaused")])
    assert [r.event for r in got] == ["started/restored"]


def test_restore_paused_resyncs_again_when_resumed_even_briefly() -> None:
    # virsh restore --paused: started/restored, suspended/restored ... resumed/unpaused
    _, got = run([(0, "stopped/saved"), (10, "started/restored"), (10.01, "suspended/restored"),
                  (10.5, "resumed/unpaused")])
    assert [(r.kind, r.event) for r in got] == [(FreezeKind.RESTORE, "started/restored"),
                                               (FreezeKind.RESTORE, "resumed/unpaused")]
    assert got[1].frozen_s == 10.5  # since the save: the restore's freeze went on


def test_snapshot_revert_running_and_paused() -> None:
    seq = ["stopped/from-snapshot", "started/from-snapshot", "resumed/from-snapshot", "defined/from-snapshot"]
    st, got = run([(i * 0.01, e) for i, e in enumerate(seq)])
    assert got == [Resync(FreezeKind.SNAPSHOT, "started/from-snapshot", None)]
    assert st.phase is Phase.RUNNING
    seq = ["stopped/from-snapshot", "started/from-snapshot", "suspended/from-snapshot", "defined/from-snapshot"]
    st, got = run([(i * 0.01, e) for i, e in enumerate(seq)] + [(3, "resumed/unpaused")])
    assert [(r.reason, r.event) for r in got] == [("snapshot", "started/from-snapshot"),
                                                 ("snapshot", "resumed/unpaused")]


def test_revert_of_a_running_domain_without_a_stop_resyncs() -> None:
    _, got = run([(0, "resumed/from-snapshot")])
    assert got == [Resync(FreezeKind.SNAPSHOT, "resumed/from-snapshot", None)]


def test_migration_destination_resyncs_on_resume_migrated_or_postcopy() -> None:
    _, got = run([(0, "started/migrated"), (4, "resumed/migrated")])
    assert got == [Resync(FreezeKind.MIGRATION, "resumed/migrated", None)]
    _, got = run([(0, "started/migrated"), (4, "resumed/postcopy")])
    assert [r.reason for r in got] == ["migration"]
    # a daemon started mid-migration saw only the end
    _, got = run([(0, "resumed/migrated")])
    assert [r.reason for r in got] == ["migration"]


def test_migration_source_that_resumes_after_a_failed_migration() -> None:
    _, got = run([(0, "suspended/migrated"), (1, "resumed/migrated")])
    assert got == [Resync(FreezeKind.MIGRATION, "resumed/migrated", 1.0)]


def test_guest_s3_suspend_wakeup_and_s4_hibernation() -> None:
    _, got = run([(0, "pmsuspended/memory"), (6, "started/wakeup")])
    assert got == [Resync(FreezeKind.PM_SUSPEND, "started/wakeup", 6.0)]
    assert got[0].reason == "pm-wakeup"
    _, got = run([(0, "pmsuspended/memory"), (6, "resumed/unpaused")])
    assert [r.reason for r in got] == ["pm-wakeup"]
    _, got = run([(0, "pmsuspended/disk"), (1, "stopped/shutdown"), (60, "started/booted")])
    assert got == [Resync(FreezeKind.PM_SUSPEND, "started/booted", 60.0)]


def test_a_plain_boot_crash_or_shutdown_needs_no_freeze_resync() -> None:
    _, got = run([(0, "started/booted"), (1, "resumed/unpaused"), (5, "crashed/panicked"),
                  (6, "stopped/destroyed"), (7, "started/booted")])
    assert got == []
    # a resume after a crash handling (paused crashed, resumed) is the crash handler's business
    _, got = run([(0, "crashed/panicked"), (30, "resumed/unpaused")])
    assert got == []


def test_a_pause_that_becomes_a_save_is_a_restore() -> None:
    st, _ = run([(0, "suspended/paused"), (0.1, "stopped/saved")])
    assert st == State(Phase.FROZEN, FreezeKind.RESTORE, 0)


def test_unknown_events_change_nothing() -> None:
    st = State(Phase.FROZEN, FreezeKind.PAUSE, 5 * S)
    for ev, det in [("defined", "updated"), ("shutdown", "guest"), ("event-99", "detail-3"),
                    ("suspended", "detail-42"), ("started", "detail-9")][:4]:
        assert step(st, ev, det, 6 * S) == (st, None)
    assert step(st, "started", "detail-9", 6 * S) == (State(Phase.RUNNING), None)


@pytest.mark.parametrize("name", ["suspended/paused", "suspended/ioerror", "suspended/watchdog",
                                  "suspended/api-error"])
def test_every_pause_kind_counts(name: str) -> None:
    _, got = run([(0, name), (3, "resumed/unpaused")])
    assert [r.kind for r in got] == [FreezeKind.PAUSE]



@pytest.mark.parametrize("module", ["freezes", "hostsleep", "fleet"])
def test_the_freeze_rooms_import_neither_libvirt_nor_the_daemon(module: str) -> None:
    """Pure rooms: their imports (read from the source) are the standard library and vmcrash.errors."""
    import ast
    from pathlib import Path

    import vmcrash.clock

    src = Path(vmcrash.clock.__file__).with_name(f"{module}.py").read_text()
    names = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    assert names, module
    bad = {n for n in names if n.split(".")[0] == "libvirt" or n.startswith(("vmcrash.capture", "vmcrash.host"))}
    assert not bad, bad
    assert {n for n in names if n.startswith("vmcrash")} <= {"vmcrash.errors"}

"""Chaos: SIGKILL the real daemon at seeded points of the pipeline over several real crashes.

After every kill the daemon is started again and must resume from where it was. At the end, from
outside vmcrash: every panic has exactly one catalogue row, in a final state; every final-named dump
is complete (the test's own sha256 equals its sidecar's) and has its sidecar; no temp file is left in
the dump dir or the staging dir; the guest runs. An inotify witness of the dump dir shows that a
final-named dump never existed without its sidecar, not even between two events.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from dirwatch import DirWatch, replay
from labdaemon import Daemon, sha256_of, virsh

pytestmark = pytest.mark.lab

SEED = 20261202
CRASHES = 6
#: the points of the pipeline a kill is aimed at, in pipeline order ("compacting": compaction runs)
POINTS = ("capturing", "captured", "recovering", "recovered", "clock", "triaged", "compacting")
ORDER = {s: i for i, s in enumerate(("event",) + POINTS[:-1] + ("done",))}
#: a kill after the capture ends the handling at the next start (the complete dump is made final), so
#: each crash gets one of these, after 1-2 kills while capturing (each handled again from the start)
#: and before 1-2 kills during compaction (each resumed from its checkpoint)
LATE = ("captured", "recovering", "recovered", "clock", "triaged")


def kill_plan(rng: random.Random, n: int, late_order: list[str]) -> list[str]:
    """The points crash ``n`` is killed at, in pipeline order."""
    return (["capturing"] * rng.choice((1, 2)) + [late_order[n % len(late_order)]]
            + ["compacting"] * rng.choice((1, 2)))
FINAL = ("done", "skipped", "failed", "lost")
DUMP_SUFFIXES = (".elf", ".flat", ".kdump")


def latest(db: Path, domain: str) -> tuple[int, str, str | None] | None:
    """(id, state, compact_state) of the domain's newest row, read straight from the database file."""
    if not db.exists():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT id, state, compact_state FROM crashes WHERE domain = ? ORDER BY id DESC LIMIT 1",
                          (domain,)).fetchone()
    except sqlite3.OperationalError:  # the daemon is creating the schema
        return None
    finally:
        con.close()
    return (int(row[0]), str(row[1]), row[2]) if row else None


def reached(point: str, state: str, compact_state: str | None) -> bool | None:
    """True when the row is at or past ``point``; None when it can never get there any more."""
    if point == "compacting":
        if compact_state == "running":
            return True
        return None if state in FINAL and compact_state not in ("pending", "running", "waiting-space") else False
    if state in FINAL:
        return None
    return ORDER.get(state, -1) >= ORDER[point]


def is_dump(name: str) -> bool:
    return not name.startswith(".") and name.endswith(DUMP_SUFFIXES)


def stem(name: str) -> str:
    return name.split(".", 1)[0]


def test_sigkill_at_seeded_points_loses_nothing(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    from vmcrash.lab.guest import READY_MARK

    rng = random.Random(SEED)
    late_order = rng.sample(LATE, len(LATE))  # every late point at least once over the crashes
    g = lab_guest(memory_mib=384, fill_mib=64)
    # every crash here is one of a loop on purpose: the crash-loop guard must not stop the dumps
    d: Daemon = daemon("[crash_loop]\nmax_panics = 100\n", watch=[g.name])
    d.dump_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    witness = DirWatch(d.dump_dir)
    kills: list[tuple[int, str, str, str | None]] = []  # (crash number, aimed at, state seen, compact state)
    d.start()
    g.boot(240)
    ready_at = g.wait_serial(READY_MARK, 10)
    try:
        for n in range(CRASHES):
            if n:
                ready_at = g.wait_serial(READY_MARK, 240, after=ready_at + 1)
                g.wait_ready(120)
            plan = kill_plan(rng, n, late_order)
            before = latest(d.catalog_path, g.name)
            g.crash()
            for point in plan:
                deadline = time.monotonic() + 180
                while True:
                    row = latest(d.catalog_path, g.name)
                    if row is not None and (before is None or row[0] != before[0]):
                        got = reached(point, row[1], row[2])
                        if got is not False:
                            break
                    assert time.monotonic() < deadline, f"crash {n}: never reached {point}: {row}\n" \
                                                        f"{d.log_text()[-3000:]}"
                    time.sleep(0.01)
                if got is None:
                    continue  # already past it (a resumed handling may skip a stage)
                time.sleep(rng.uniform(0, 0.15))  # somewhere inside that stage
                d.stop(signal.SIGKILL)
                seen = latest(d.catalog_path, g.name)
                assert seen is not None
                kills.append((n, point, seen[1], seen[2]))
                d.start()
            # let the handling end, compaction included
            deadline = time.monotonic() + 300
            while True:
                row = latest(d.catalog_path, g.name)
                if row is not None and row[1] in FINAL and row[2] not in ("pending", "running", "waiting-space"):
                    break
                assert time.monotonic() < deadline, f"crash {n} never ended: {row}\n{d.log_text()[-3000:]}"
                time.sleep(0.2)
        assert d.stop() == 0
    finally:
        events = witness.close()

    # -- the kills were where they were aimed: enough of them, during compaction and the clock step
    states_seen = {k[2] for k in kills}
    assert len(kills) >= 20, kills
    assert "clock" in states_seen, kills
    assert any(k[3] == "running" for k in kills), kills
    assert len(states_seen | {"compacting" for k in kills if k[3] == "running"}) >= 4, kills

    # -- every panic: exactly one row, final; its dump complete, with its sidecar
    rows = d.rows(g.name)
    assert len(rows) == CRASHES, [(r.id, r.state) for r in rows]
    assert all(r.state in FINAL for r in rows), [(r.id, r.state, r.error) for r in rows]
    assert all(r.state == "done" for r in rows), [(r.id, r.state, r.error) for r in rows]
    names = sorted(p.name for p in d.dump_dir.iterdir())
    dumps = [n for n in names if is_dump(n)]
    for r in rows:
        if r.dump_path is None:
            continue
        path = Path(r.dump_path)
        assert path.name in dumps, (r.id, path, names)
        side = json.loads(Path(r.sidecar_path).read_text())
        assert side["file"] == path.name and side["sha256"] == sha256_of(path), (r.id, side)
        assert side["size_bytes"] == path.stat().st_size
        if r.compact_path:  # the compacted copy next to it (staging.keep_elf): complete as well
            compact = Path(r.compact_path)
            assert compact.name in dumps and side["compaction"]["ok"], (r.id, side.get("compaction"))
            assert compact.stat().st_size == side["compaction"]["output_bytes"]
            with compact.open("rb") as f:
                assert f.read(8) == b"KDUMP   "
    expected = {Path(p).name for r in rows for p in (r.dump_path, r.compact_path) if p}
    assert sorted(dumps) == sorted(expected), names  # no orphan dump
    sidecars = [n for n in names if n.endswith(".json")]
    assert {stem(n) for n in sidecars} == {stem(n) for n in dumps}, names  # no orphan sidecar
    # -- no temp file anywhere
    assert [n for n in names if n.startswith(".")] == [], names
    staging = d.staging / "vmcrash-staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    # -- no guest left paused
    assert virsh("domstate", g.name) == "running"

    # -- the witness: at no moment a final-named dump without a sidecar of the same name stem
    assert not witness.overflowed
    assert any(is_dump(name) for _m, name in events), events
    for ev, listing in replay(events):
        for name in listing:
            if is_dump(name):
                assert any(o.endswith(".json") and not o.startswith(".") and stem(o) == stem(name)
                           for o in listing), (ev, sorted(listing))

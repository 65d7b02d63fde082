"""The catalogue: migrations from day one, upgrade of an old schema, round trips."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from vmcrash.errors import UsageError
from vmcrash.store.catalog import MIGRATIONS, Catalog
from vmcrash.store.states import CrashState, InvalidTransition


def test_fresh_catalogue_is_migrated_and_private(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    assert cat.schema_version() == len(MIGRATIONS)
    assert stat.S_IMODE((tmp_path / "c.sqlite").stat().st_mode) == 0o600


def test_upgrade_from_version_1_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO crashes(domain, uuid, source, state, panic_ns, detected_ns, updated_ns)"
               " VALUES ('vm', 'u', 'event', 'done', 1, 1, 1)")
    db.commit()
    db.close()
    cat = Catalog(path)
    assert cat.schema_version() == len(MIGRATIONS)
    row = cat.get(1)
    assert row is not None and row.domain == "vm" and row.capture is None
    cat.update(1, capture={"mode": "stream"})
    assert cat.get(1).capture == {"mode": "stream"}  # type: ignore[union-attr]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    Catalog(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (999)")
    db.commit()
    db.close()
    with pytest.raises(UsageError, match="newer"):
        Catalog(path)


def test_round_trip_and_queries(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    a = cat.new_crash(domain="vm", uuid="u1", domain_id=3, source="event", panic_ns=100, policy={"x": 1})
    b = cat.new_crash(domain="vm2", uuid="u2", domain_id=None, source="manual", panic_ns=200)
    cat.update(a, state="dumping", triage={"panic_line": "Kernel panic"}, vmcoreinfo=True)
    assert [r.id for r in cat.unfinished()] == [a, b]
    row = cat.get(a)
    assert row.policy == {"x": 1} and row.triage == {"panic_line": "Kernel panic"} and row.vmcoreinfo is True
    assert cat.panic_times("u1", 50) == [100]
    assert cat.panic_times("u2", 0) == []  # manual dumps are not panics
    assert [r.id for r in cat.crashes(domain="vm2")] == [b]
    assert [e["kind"] for e in cat.events(a)] == ["detected"]
    cat.record_clock_sync(domain="vm", uuid="u1", reason="resume", ok=True, before_ms=-15000.0, after_ms=0.5)
    assert cat.clock_syncs(domain="vm")[0]["before_ms"] == -15000.0


def test_legacy_states_are_migrated_forward(tmp_path: Path) -> None:
    """Rows written by a catalogue of schema 4 (state names before the state machine) read as today's states."""
    path = tmp_path / "v4.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, migration in enumerate(MIGRATIONS[:4], start=1):
        db.executescript(migration)
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))
    for i, old in enumerate(("detected", "dumping", "dumped", "held", "recovered", "done", "failed"), start=1):
        db.execute("INSERT INTO crashes(id, domain, uuid, source, state, panic_ns, detected_ns, updated_ns)"
                   " VALUES (?, 'vm', 'u', 'event', ?, 1, 1, 1)", (i, old))
    db.commit()
    db.close()
    cat = Catalog(path)
    got = [cat.get(i).state for i in range(1, 8)]  # type: ignore[union-attr]
    assert got == ["event", "capturing", "captured", "captured", "recovered", "done", "failed"]
    assert {r.id for r in cat.unfinished()} == {1, 2, 3, 4, 5}


def test_advance_follows_the_table_and_tells_observers(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    seen: list[tuple[int, str, str, bool]] = []
    cat.observe(lambda ch: seen.append((ch.crash_id, ch.old.value, ch.new.value, ch.final)))
    cat.observe(lambda ch: 1 / 0)  # a broken observer never stops the handling
    cid = cat.new_crash(domain="vm", uuid="u", domain_id=1, source="event", panic_ns=1)
    assert cat.get(cid).state == "event"  # type: ignore[union-attr]
    cat.advance(cid, CrashState.CAPTURING, dump_temp_path="/d/.x.partial")
    with pytest.raises(InvalidTransition, match="capturing -> done"):
        cat.advance(cid, CrashState.DONE)
    row = cat.get(cid)
    assert row is not None and row.state == "capturing" and row.dump_temp_path == "/d/.x.partial"
    for state in (CrashState.CAPTURED, CrashState.RECOVERING, CrashState.RECOVERED, CrashState.DONE):
        cat.advance(cid, state)
    with pytest.raises(InvalidTransition):
        cat.advance(cid, CrashState.FAILED)  # final is final
    assert seen == [(cid, "event", "capturing", False), (cid, "capturing", "captured", False),
                    (cid, "captured", "recovering", False), (cid, "recovering", "recovered", False),
                    (cid, "recovered", "done", True)]
    with pytest.raises(InvalidTransition, match="does not exist"):
        cat.advance(9999, CrashState.CAPTURING)


def test_dump_size_bytes_is_the_dump_size_column(tmp_path: Path) -> None:
    """The Python side says the unit; the column and the JSON of ``list --json`` keep ``dump_size``."""
    cat = Catalog(tmp_path / "c.sqlite")
    cid = cat.new_crash(domain="vm", uuid="u", domain_id=1, source="event", panic_ns=1)
    cat.update(cid, dump_path="/d/vm.elf", dump_size_bytes=4096)
    db = sqlite3.connect(tmp_path / "c.sqlite")
    assert db.execute("SELECT dump_size FROM crashes WHERE id = ?", (cid,)).fetchone() == (4096,)
    db.close()
    row = cat.get(cid)
    assert row is not None and row.dump_size_bytes == 4096
    doc = row.to_dict()
    assert doc["dump_size"] == 4096 and "dump_size_bytes" not in doc

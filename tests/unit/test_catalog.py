"""The catalogue: migrations from day one, upgrade of an old schema, round trips."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from vmcrash.errors import UsageError
from vmcrash.store.catalog import MIGRATIONS, Catalog


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

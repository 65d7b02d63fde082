"""The catalogue: every crash, its dump, recovery, clock correction and triage, in SQLite.

Schema changes are numbered migrations applied in order inside one transaction each; the
``schema_version`` table records which ran. Never edit a released migration: add one.

A crash row moves through ``state``: ``detected`` → ``dumping`` → ``dumped`` (or ``recovering``
when the dump failed) → ``recovered`` → ``done`` (or ``failed``). The ``events`` table keeps a
timestamped log of each crash's handling.
Every write commits at once, so a killed daemon leaves a consistent catalogue that the next
start reconciles.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmcrash.errors import StorageError, UsageError

__all__ = ["Catalog", "CrashRow", "MIGRATIONS", "UNFINISHED_STATES"]

MIGRATIONS: tuple[str, ...] = (
    # 1: crashes and their event log
    """
    CREATE TABLE crashes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain TEXT NOT NULL,
        uuid TEXT NOT NULL,
        domain_id INTEGER,
        source TEXT NOT NULL,
        state TEXT NOT NULL,
        panic_ns INTEGER NOT NULL,
        detected_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL,
        policy_json TEXT,
        dump_path TEXT,
        dump_temp_path TEXT,
        dump_format TEXT,
        dump_size INTEGER,
        dump_sha256 TEXT,
        dump_started_ns INTEGER,
        dump_ended_ns INTEGER,
        vmcoreinfo INTEGER,
        sidecar_path TEXT,
        skip_reason TEXT,
        recovery_action TEXT,
        recovery_result TEXT,
        running_again_ns INTEGER,
        freeze_s REAL,
        clock_json TEXT,
        triage_json TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX crashes_uuid ON crashes(uuid, panic_ns);
    CREATE INDEX crashes_state ON crashes(state);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        crash_id INTEGER REFERENCES crashes(id) ON DELETE CASCADE,
        at_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_crash ON events(crash_id);
    """,
    # 2: capture accounting (streamed dumps, staging, compaction) and clock resyncs outside crashes
    """
    ALTER TABLE crashes ADD COLUMN capture_json TEXT;
    ALTER TABLE crashes ADD COLUMN compact_path TEXT;
    ALTER TABLE crashes ADD COLUMN compact_state TEXT;
    ALTER TABLE crashes ADD COLUMN compact_json TEXT;
    CREATE TABLE clock_syncs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain TEXT NOT NULL,
        uuid TEXT NOT NULL,
        at_ns INTEGER NOT NULL,
        reason TEXT NOT NULL,
        crash_id INTEGER REFERENCES crashes(id) ON DELETE SET NULL,
        ok INTEGER NOT NULL,
        before_ms REAL,
        after_ms REAL,
        result_json TEXT,
        error TEXT
    );
    CREATE INDEX clock_syncs_domain ON clock_syncs(domain, at_ns);
    """,
    # 3: every row names the host that wrote it (fleet catalogues); crash signatures for grouping
    """
    ALTER TABLE crashes ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE crashes ADD COLUMN signature TEXT;
    ALTER TABLE clock_syncs ADD COLUMN host TEXT NOT NULL DEFAULT '';
    CREATE INDEX crashes_signature ON crashes(signature);
    CREATE INDEX crashes_host ON crashes(host, id);
    """,
)

#: States of a crash whose handling has not finished.
UNFINISHED_STATES = ("detected", "dumping", "dumped", "recovering", "recovered", "held")

_JSON_COLUMNS = ("policy_json", "clock_json", "triage_json", "capture_json", "compact_json")


@dataclass(frozen=True)
class CrashRow:
    """One crash as stored. JSON columns are decoded (``None`` when empty)."""

    id: int
    domain: str
    uuid: str
    domain_id: int | None
    source: str
    state: str
    panic_ns: int
    detected_ns: int
    updated_ns: int
    dump_path: str | None
    dump_temp_path: str | None
    dump_format: str | None
    dump_size: int | None
    dump_sha256: str | None
    dump_started_ns: int | None
    dump_ended_ns: int | None
    vmcoreinfo: bool | None
    sidecar_path: str | None
    skip_reason: str | None
    recovery_action: str | None
    recovery_result: str | None
    running_again_ns: int | None
    freeze_s: float | None
    error: str | None
    attempts: int
    policy: dict[str, Any] | None
    clock: dict[str, Any] | None
    triage: dict[str, Any] | None
    capture: dict[str, Any] | None
    compact_path: str | None
    compact_state: str | None
    compact: dict[str, Any] | None
    #: the host whose daemon recorded this crash (``socket.gethostname()``)
    host: str = ""
    #: crash signature from triage (panic reason + top frames, noise stripped), or None
    signature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by ``list --json`` / ``show --json``)."""
        from dataclasses import asdict

        return asdict(self)


def _row_to_crash(row: sqlite3.Row) -> CrashRow:
    d = dict(row)
    decoded: dict[str, Any] = {}
    for col in _JSON_COLUMNS:
        raw = d.pop(col, None)
        decoded[col.removesuffix("_json")] = json.loads(raw) if raw else None
    d["vmcoreinfo"] = None if d["vmcoreinfo"] is None else bool(d["vmcoreinfo"])
    return CrashRow(**d, **decoded)


class Catalog:
    """A SQLite catalogue, safe to share between the daemon's threads (one lock, autocommit).

    :raises StorageError: the file cannot be opened or written.
    """

    def __init__(self, path: str | os.PathLike[str], *, host: str | None = None) -> None:
        self.path = Path(path)
        #: the name every row written through this catalogue carries
        self.host = host if host is not None else socket.gethostname()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open catalogue: {exc}", path=str(self.path)) from exc
        self._lock = threading.RLock()
        self.migrate()

    # -- schema ------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """Number of migrations applied."""
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0)

    def migrate(self) -> int:
        """Apply pending migrations; return the resulting version.

        :raises UsageError: the file was written by a newer vmcrash.
        """
        with self._lock:
            current = self.schema_version()
            if current > len(MIGRATIONS):
                raise UsageError(f"{self.path}: catalogue schema {current} is newer than this vmcrash "
                                 f"({len(MIGRATIONS)}); upgrade vmcrash")
            for version in range(current + 1, len(MIGRATIONS) + 1):
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    for stmt in MIGRATIONS[version - 1].split(";"):
                        if stmt.strip():
                            self._db.execute(stmt)
                    self._db.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise StorageError(f"migration {version} failed: {exc}", path=str(self.path)) from exc
            return len(MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ------------------------------------------------------------------------------

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"catalogue write failed: {exc}", path=str(self.path)) from exc

    def new_crash(self, *, domain: str, uuid: str, domain_id: int | None, source: str, panic_ns: int,
                  policy: dict[str, Any] | None = None) -> int:
        """Record a detected panic; return its id."""
        now = time.time_ns()
        cur = self._exec(
            "INSERT INTO crashes(domain, uuid, domain_id, source, state, panic_ns, detected_ns, updated_ns,"
            " policy_json, host) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (domain, uuid, domain_id, source, "detected", panic_ns, now, now,
             json.dumps(policy) if policy is not None else None, self.host),
        )
        crash_id = int(cur.lastrowid or 0)
        self.log(crash_id, "detected", f"panic of {domain} ({source})")
        return crash_id

    def update(self, crash_id: int, **values: Any) -> None:
        """Set columns of a crash. Dict/list values go to the matching ``*_json`` column."""
        if not values:
            return
        cols: list[str] = []
        args: list[Any] = []
        for key, value in values.items():
            if key == "triage" and isinstance(value, dict) and isinstance(value.get("signature"), str):
                cols.append("signature = ?")
                args.append(value["signature"])
            if key in {c.removesuffix("_json") for c in _JSON_COLUMNS}:
                key, value = f"{key}_json", None if value is None else json.dumps(value)
            if key == "vmcoreinfo" and value is not None:
                value = int(bool(value))
            if not key.replace("_", "").isalnum():
                raise ValueError(key)
            cols.append(f"{key} = ?")
            args.append(value)
        cols.append("updated_ns = ?")
        args.append(time.time_ns())
        self._exec(f"UPDATE crashes SET {', '.join(cols)} WHERE id = ?", (*args, crash_id))

    def log(self, crash_id: int | None, kind: str, message: str) -> None:
        """Append to a crash's event log."""
        self._exec("INSERT INTO events(crash_id, at_ns, kind, message) VALUES (?,?,?,?)",
                   (crash_id, time.time_ns(), kind, message))

    def record_clock_sync(self, *, domain: str, uuid: str, reason: str, ok: bool,
                          before_ms: float | None, after_ms: float | None,
                          result: dict[str, Any] | None = None, error: str | None = None,
                          crash_id: int | None = None) -> int:
        """Record one clock check/correction (after a crash, a resume or a sweep)."""
        cur = self._exec(
            "INSERT INTO clock_syncs(domain, uuid, at_ns, reason, crash_id, ok, before_ms, after_ms,"
            " result_json, error, host) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (domain, uuid, time.time_ns(), reason, crash_id, int(ok), before_ms, after_ms,
             json.dumps(result) if result is not None else None, error, self.host),
        )
        return int(cur.lastrowid or 0)

    def delete_crash(self, crash_id: int) -> None:
        self._exec("DELETE FROM crashes WHERE id = ?", (crash_id,))

    # -- reads -------------------------------------------------------------------------------

    def get(self, crash_id: int) -> CrashRow | None:
        """One crash, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM crashes WHERE id = ?", (crash_id,)).fetchone()
        return _row_to_crash(row) if row else None

    def crashes(self, *, domain: str | None = None, limit: int = 1000) -> list[CrashRow]:
        """Crashes newest first, optionally of one domain (name or UUID)."""
        sql = "SELECT * FROM crashes"
        args: tuple[Any, ...] = ()
        if domain:
            sql += " WHERE domain = ? OR uuid = ?"
            args = (domain, domain)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, max(1, min(limit, 1_000_000)))).fetchall()
        return [_row_to_crash(r) for r in rows]

    def unfinished(self) -> list[CrashRow]:
        """Crashes whose handling was interrupted (daemon killed, libvirtd lost, ...)."""
        marks = ",".join("?" * len(UNFINISHED_STATES))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM crashes WHERE state IN ({marks}) ORDER BY id",
                                    UNFINISHED_STATES).fetchall()
        return [_row_to_crash(r) for r in rows]

    def latest_for(self, uuid: str) -> CrashRow | None:
        """The newest crash of a domain UUID."""
        with self._lock:
            row = self._db.execute("SELECT * FROM crashes WHERE uuid = ? ORDER BY id DESC LIMIT 1",
                                   (uuid,)).fetchone()
        return _row_to_crash(row) if row else None

    def panic_times(self, uuid: str, since_ns: int) -> list[int]:
        """Panic times (ns) of a domain since ``since_ns`` (for crash-loop detection)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT panic_ns FROM crashes WHERE uuid = ? AND panic_ns >= ? AND source != 'manual'",
                (uuid, since_ns)).fetchall()
        return [int(r[0]) for r in rows]

    def events(self, crash_id: int) -> list[dict[str, Any]]:
        """A crash's event log, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT at_ns, kind, message FROM events WHERE crash_id = ? ORDER BY id",
                                    (crash_id,)).fetchall()
        return [dict(r) for r in rows]

    def clock_syncs(self, *, domain: str | None = None, crash_id: int | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
        """Clock checks/corrections, newest first."""
        sql = "SELECT * FROM clock_syncs WHERE 1=1"
        args: list[Any] = []
        if domain:
            sql += " AND (domain = ? OR uuid = ?)"
            args += [domain, domain]
        if crash_id is not None:
            sql += " AND crash_id = ?"
            args.append(crash_id)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["result"] = json.loads(d.pop("result_json")) if d.get("result_json") else None
            out.append(d)
        return out

    def dumps(self) -> Iterator[CrashRow]:
        """Crashes that have a finished dump file, oldest first (for retention)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM crashes WHERE dump_path IS NOT NULL ORDER BY dump_ended_ns, id").fetchall()
        return (_row_to_crash(r) for r in rows)

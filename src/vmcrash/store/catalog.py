"""The catalogue: every crash, its dump, recovery, clock correction and triage, in SQLite.

Schema changes are numbered migrations applied in order inside one transaction each; the
``schema_version`` table records which ran. Never edit a released migration: add one.

A crash row moves through ``state`` along the one transition table of :mod:`vmcrash.store.states`
(``event`` → ``capturing`` → ``captured`` → ``recovering`` → ``recovered`` → ``clock`` → ``triaged``
→ ``done``, or ``skipped``/``failed``/``lost``); :meth:`Catalog.advance` is the only way the
capture pipeline moves a row, refuses a move the table does not allow, and tells the observers
(metrics, notifications) about each committed change. The ``events`` table keeps a timestamped
log of each crash's handling.
Every write commits at once, so a killed daemon leaves a consistent catalogue that the next
start reconciles.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmcrash.errors import StorageError, UsageError
from vmcrash.store.states import (
    FINAL,
    LEGACY,
    UNFINISHED,
    CrashState,
    InvalidTransition,
    StateChange,
    can_move,
    parse_state,
)

log = logging.getLogger(__name__)

__all__ = ["Catalog", "CrashRow", "MIGRATIONS", "REPLICATED_TABLES", "SpoolEntry", "OutboxEntry",
           "UNFINISHED_STATES", "FINAL_STATES", "row_to_crash"]

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
    # 4: fleet catalogues: rows replicated from a host's local spool keep their local id as origin_id
    # (unique per host, so a replay never doubles a row); the spool of rows not yet replicated; the
    # outbox of crash notifications (webhooks) not yet delivered
    """
    ALTER TABLE crashes ADD COLUMN origin_id INTEGER;
    ALTER TABLE events ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN origin_id INTEGER;
    ALTER TABLE clock_syncs ADD COLUMN origin_id INTEGER;
    CREATE UNIQUE INDEX crashes_origin ON crashes(host, origin_id);
    CREATE UNIQUE INDEX events_origin ON events(host, origin_id);
    CREATE UNIQUE INDEX clock_syncs_origin ON clock_syncs(host, origin_id);
    CREATE TABLE spool (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        tbl TEXT NOT NULL,
        local_id INTEGER NOT NULL,
        rev INTEGER NOT NULL DEFAULT 1
    );
    CREATE UNIQUE INDEX spool_row ON spool(tbl, local_id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        crash_id INTEGER NOT NULL,
        target TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_ns INTEGER NOT NULL,
        next_ns INTEGER NOT NULL,
        delivered_ns INTEGER,
        last_error TEXT
    );
    CREATE UNIQUE INDEX outbox_crash_target ON outbox(crash_id, target);
    CREATE INDEX outbox_state ON outbox(state, next_ns);
    """,
    # 5: crash states of the one state machine (vmcrash.store.states); older names mapped forward
    "".join(f"UPDATE crashes SET state = '{new.value}' WHERE state = '{old}';" for old, new in LEGACY.items()),
)

#: Tables whose rows a fleet catalogue replicates (the order parents first).
REPLICATED_TABLES = ("crashes", "clock_syncs", "events")

# The spool: every change of a replicated row marks it (rev counts changes, so a row changed while
# it was being pushed stays marked). Created only on a host whose catalogue is replicated.
_SPOOL_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS spool_{table}_{op.lower()} AFTER {op} ON {table} BEGIN "
    f"INSERT INTO spool(tbl, local_id) VALUES ('{table}', {'OLD' if op == 'DELETE' else 'NEW'}.id) "
    f"ON CONFLICT(tbl, local_id) DO UPDATE SET rev = rev + 1; END"
    for table in REPLICATED_TABLES for op in ("INSERT", "UPDATE", "DELETE"))

#: States of a crash whose handling has not finished (the values stored in ``crashes.state``).
UNFINISHED_STATES: tuple[str, ...] = tuple(sorted(s.value for s in UNFINISHED))
#: States of a crash whose handling has ended.
FINAL_STATES: tuple[str, ...] = tuple(sorted(s.value for s in FINAL))

_JSON_COLUMNS = ("policy_json", "clock_json", "triage_json", "capture_json", "compact_json")
#: :class:`CrashRow` attributes whose column has another name (the Python side says the unit; the
#: column keeps its name, so no migration). ``list --json``/``show --json`` keep the column names.
_COLUMN_OF = {"dump_size_bytes": "dump_size"}
_ATTRIBUTE_OF = {column: attribute for attribute, column in _COLUMN_OF.items()}


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
    #: size of the dump file as written (bytes; column ``dump_size``)
    dump_size_bytes: int | None
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
    #: in a fleet catalogue: the id this crash has in its host's local catalogue (None locally)
    origin_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by ``list --json`` / ``show --json``), keyed by the column names."""
        from dataclasses import asdict

        return {_COLUMN_OF.get(k, k): v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SpoolEntry:
    """A row changed locally and not yet replicated: ``rev`` counts its changes."""

    seq: int
    table: str
    local_id: int
    rev: int


@dataclass(frozen=True)
class OutboxEntry:
    """One notification of one crash to one target, until delivered (or given up)."""

    id: int
    crash_id: int
    target: str
    state: str
    attempts: int
    created_ns: int
    next_ns: int
    delivered_ns: int | None
    last_error: str | None


def row_to_crash(row: Any) -> CrashRow:
    """A crash from a database row (a mapping of column → value, SQLite or PostgreSQL)."""
    d: dict[str, Any] = {_ATTRIBUTE_OF.get(str(k), str(k)): v for k, v in dict(row).items()}
    known = CrashRow.__dataclass_fields__
    for extra in [k for k in d if k not in known and k not in _JSON_COLUMNS]:
        d.pop(extra)  # a column added by a newer migration than this reader knows
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
        #: called with each committed :class:`~vmcrash.store.states.StateChange` (in the writer's thread)
        self._observers: list[Callable[[StateChange], None]] = []
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
            (domain, uuid, domain_id, source, CrashState.EVENT.value, panic_ns, now, now,
             json.dumps(policy) if policy is not None else None, self.host),
        )
        crash_id = int(cur.lastrowid or 0)
        self.log(crash_id, "detected", f"panic of {domain} ({source})")
        return crash_id

    def observe(self, callback: Callable[[StateChange], None]) -> None:
        """Call ``callback`` after every committed state change of a crash (an observer must not raise)."""
        self._observers.append(callback)

    def advance(self, crash_id: int, new: CrashState, **values: Any) -> StateChange:
        """Move a crash to state ``new`` (setting ``values`` in the same write) along the table.

        :raises InvalidTransition: the table does not allow the move from the row's current state.
        :raises StorageError: the write failed.
        """
        with self._lock:
            row = self._db.execute("SELECT state FROM crashes WHERE id = ?", (crash_id,)).fetchone()
            if row is None:
                raise InvalidTransition(f"crash #{crash_id} does not exist")
            old = parse_state(row[0])
            if not can_move(old, new):
                raise InvalidTransition(f"crash #{crash_id}: {old.value} -> {new.value} is not a transition")
            self.update(crash_id, state=new, **values)
        change = StateChange(crash_id, old, new)
        for callback in list(self._observers):
            try:
                callback(change)
            except Exception:  # an observer's trouble never stops the handling
                log.exception("state observer failed for crash #%d", crash_id)
        return change

    def update(self, crash_id: int, **values: Any) -> None:
        """Set columns of a crash, named as :class:`CrashRow` attributes (``dump_size_bytes`` is the
        ``dump_size`` column). Dict/list values go to the matching ``*_json`` column.

        A ``state`` given here is stored as is (legacy names mapped forward), without the checks and
        observers of :meth:`advance` — for fixtures and migrations, not for the pipeline.
        """
        if not values:
            return
        if "state" in values:
            values["state"] = parse_state(str(values["state"])).value
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
            key = _COLUMN_OF.get(key, key)
            if not key.replace("_", "").isalnum():
                raise ValueError(key)
            cols.append(f"{key} = ?")
            args.append(value)
        cols.append("updated_ns = ?")
        args.append(time.time_ns())
        self._exec(f"UPDATE crashes SET {', '.join(cols)} WHERE id = ?", (*args, crash_id))

    def log(self, crash_id: int | None, kind: str, message: str) -> None:
        """Append to a crash's event log."""
        self._exec("INSERT INTO events(crash_id, at_ns, kind, message, host) VALUES (?,?,?,?,?)",
                   (crash_id, time.time_ns(), kind, message, self.host))

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

    # -- reads -------------------------------------------------------------------------------

    def get(self, crash_id: int) -> CrashRow | None:
        """One crash, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM crashes WHERE id = ?", (crash_id,)).fetchone()
        return row_to_crash(row) if row else None

    def crashes(self, *, domain: str | None = None, limit: int = 1000,
                host: str | None = None) -> list[CrashRow]:
        """Crashes newest first, optionally of one domain (name or UUID) and one host."""
        sql = "SELECT * FROM crashes WHERE 1=1"
        args: tuple[Any, ...] = ()
        if domain:
            sql += " AND (domain = ? OR uuid = ?)"
            args = (domain, domain)
        if host is not None:
            sql += " AND host = ?"
            args = (*args, host)
        sql += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, max(1, min(limit, 1_000_000)))).fetchall()
        return [row_to_crash(r) for r in rows]

    def unfinished(self) -> list[CrashRow]:
        """Crashes whose handling was interrupted (daemon killed, libvirtd lost, ...)."""
        marks = ",".join("?" * len(UNFINISHED_STATES))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM crashes WHERE state IN ({marks}) ORDER BY id",
                                    UNFINISHED_STATES).fetchall()
        return [row_to_crash(r) for r in rows]

    def latest_for(self, uuid: str) -> CrashRow | None:
        """The newest crash of a domain UUID."""
        with self._lock:
            row = self._db.execute("SELECT * FROM crashes WHERE uuid = ? ORDER BY id DESC LIMIT 1",
                                   (uuid,)).fetchone()
        return row_to_crash(row) if row else None

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
                    limit: int = 100, host: str | None = None) -> list[dict[str, Any]]:
        """Clock checks/corrections, newest first."""
        sql = "SELECT * FROM clock_syncs WHERE 1=1"
        args: list[Any] = []
        if host is not None:
            sql += " AND host = ?"
            args.append(host)
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
        return (row_to_crash(r) for r in rows)

    # -- reads for dashboards (vmcrash web, list --by-signature): light columns, no JSON --------

    def domain_counts(self) -> list[dict[str, Any]]:
        """Per (host, domain): ``crashes``, ``last_id``, ``last_panic_ns``; newest crash first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT host, domain, COUNT(*) AS crashes, MAX(id) AS last_id, MAX(panic_ns) AS last_panic_ns"
                " FROM crashes GROUP BY host, domain ORDER BY last_panic_ns DESC").fetchall()
        return [dict(r) for r in rows]

    def crash_points(self, *, limit: int = 2000) -> list[dict[str, Any]]:
        """The newest ``limit`` crashes as ``id, host, domain, state, panic_ns, freeze_s, signature``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, host, domain, state, panic_ns, freeze_s, signature FROM crashes"
                " ORDER BY id DESC LIMIT ?", (max(1, min(limit, 1_000_000)),)).fetchall()
        return [dict(r) for r in rows]

    def signature_counts(self) -> list[dict[str, Any]]:
        """Per (signature, host, domain): ``crashes``, ``first_ns``, ``last_ns``, ``last_id``.

        Crashes without a signature (no dump, no triage) are left out.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT signature, host, domain, COUNT(*) AS crashes, MIN(panic_ns) AS first_ns,"
                " MAX(panic_ns) AS last_ns, MAX(id) AS last_id FROM crashes WHERE signature IS NOT NULL"
                " GROUP BY signature, host, domain").fetchall()
        return [dict(r) for r in rows]

    def signature_count(self, signature: str) -> int:
        """How many crashes carry ``signature``."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM crashes WHERE signature = ?", (signature,)).fetchone()
        return int(row[0])

    def crashes_with_signature(self, signature: str, *, limit: int = 1000) -> list[CrashRow]:
        """Crashes of one signature, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM crashes WHERE signature = ? ORDER BY id DESC LIMIT ?",
                                    (signature, max(1, min(limit, 1_000_000)))).fetchall()
        return [row_to_crash(r) for r in rows]

    def hosts(self) -> list[str]:
        """Every host that has crashes or clock checks recorded here, sorted."""
        with self._lock:
            rows = self._db.execute("SELECT host FROM crashes UNION SELECT host FROM clock_syncs").fetchall()
        return sorted(str(r[0]) for r in rows)

    def raw_row(self, table: str, row_id: int) -> dict[str, Any] | None:
        """One row of a replicated table as stored (JSON undecoded), or ``None`` when gone."""
        if table not in REPLICATED_TABLES:
            raise ValueError(table)
        with self._lock:
            row = self._db.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchone()
        return dict(row) if row else None

    # -- the spool (rows waiting to be replicated to a fleet catalogue) -----------------------

    def enable_spool(self) -> None:
        """Mark every later change of a replicated row in the spool (idempotent).

        Rows written before the spool existed are marked once, so a host that joins a fleet
        brings its history along.
        """
        with self._lock:
            exists = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'spool_crashes_insert'").fetchone()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for stmt in _SPOOL_TRIGGERS:
                    self._db.execute(stmt)
                if not exists:
                    for table in REPLICATED_TABLES:
                        self._db.execute(f"INSERT OR IGNORE INTO spool(tbl, local_id) SELECT '{table}', id "
                                         f"FROM {table} ORDER BY id")
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StorageError(f"cannot set up the spool: {exc}", path=str(self.path)) from exc

    def disable_spool(self) -> None:
        """Stop marking changes and forget the marks (the catalogue is no longer replicated)."""
        with self._lock:
            names = [r[0] for r in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'spool_%'").fetchall()]
        if not names:
            return
        for name in names:
            self._exec(f"DROP TRIGGER IF EXISTS {name}")
        self._exec("DELETE FROM spool")

    def spool_pending(self, limit: int = 500) -> list[SpoolEntry]:
        """Marked rows, parents first (crashes, then clock checks, then events), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, tbl, local_id, rev FROM spool ORDER BY CASE tbl WHEN 'crashes' THEN 0 "
                "WHEN 'clock_syncs' THEN 1 ELSE 2 END, seq LIMIT ?", (limit,)).fetchall()
        return [SpoolEntry(int(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

    def spool_done(self, entries: list[SpoolEntry]) -> None:
        """Unmark replicated rows, unless they changed again meanwhile (their ``rev`` moved on)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM spool WHERE tbl = ? AND local_id = ? AND rev = ?",
                                     [(e.table, e.local_id, e.rev) for e in entries])
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StorageError(f"spool update failed: {exc}", path=str(self.path)) from exc

    def spool_depth(self) -> int:
        """Rows waiting to be replicated."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    # -- the outbox (crash notifications not yet delivered) ----------------------------------

    def outbox_add(self, crash_id: int, target: str) -> bool:
        """Queue the notification of a crash to a target; False when it was queued already."""
        now = time.time_ns()
        cur = self._exec("INSERT OR IGNORE INTO outbox(crash_id, target, state, created_ns, next_ns) "
                         "VALUES (?,?,?,?,?)", (crash_id, target, "pending", now, now))
        return cur.rowcount == 1

    def outbox_due(self, now_ns: int, limit: int = 100) -> list[OutboxEntry]:
        """Pending notifications whose next attempt is due, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM outbox WHERE state = 'pending' AND next_ns <= ? "
                                    "ORDER BY id LIMIT ?", (now_ns, limit)).fetchall()
        return [OutboxEntry(**dict(r)) for r in rows]

    def outbox(self, *, crash_id: int | None = None) -> list[OutboxEntry]:
        """Every notification (of one crash), oldest first."""
        sql, args = "SELECT * FROM outbox", tuple[Any, ...]()
        if crash_id is not None:
            sql, args = sql + " WHERE crash_id = ?", (crash_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [OutboxEntry(**dict(r)) for r in rows]

    def outbox_result(self, entry_id: int, *, state: str, attempts: int, next_ns: int,
                      error: str | None) -> None:
        """Record one delivery attempt (``state``: pending, delivered or gave-up)."""
        self._exec("UPDATE outbox SET state = ?, attempts = ?, next_ns = ?, last_error = ?, "
                   "delivered_ns = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_ns END WHERE id = ?",
                   (state, attempts, next_ns, error, state, time.time_ns(), entry_id))

    def last_outbox_crash(self) -> int:
        """The newest crash id that has a notification queued (0: none)."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(crash_id), 0) FROM outbox").fetchone()[0])

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query (for aggregate views such as :mod:`vmcrash.store.stats`).

        :raises StorageError: the query failed.
        """
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise ValueError("read() runs queries only")
        try:
            with self._lock:
                return [dict(r) for r in self._db.execute(sql, args).fetchall()]
        except sqlite3.Error as exc:
            raise StorageError(f"catalogue read failed: {exc}", path=str(self.path)) from exc

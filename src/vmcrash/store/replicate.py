"""Replication of a host's local catalogue (the spool) into the fleet catalogue in PostgreSQL.

The daemon writes only to its local SQLite file, so capture and recovery never wait for the
network. Triggers mark every changed row in the ``spool`` table; this thread pushes marked rows
to PostgreSQL in one transaction per batch and unmarks them afterwards — unless they changed
again meanwhile. A push that fails (server down, network gone) leaves the marks, so after an
outage, or a restart, everything is pushed again: nothing lost; upserts on ``(host, origin_id)``
make the replay idempotent: nothing doubled.

States: ``idle`` → ``connecting`` → ``synced`` (spool empty) / ``pushing``; ``offline`` while the
server is unreachable (retried with backoff 0.5 s doubling to ``max_backoff_s``); ``stopped``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmcrash.errors import StorageError, UsageError
from vmcrash.store.catalog import Catalog
from vmcrash.store.pg import PgCatalog, redact_url

__all__ = ["ReplicaState", "Replicator", "ReplicaStatus"]

log = logging.getLogger(__name__)


class ReplicaState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    PUSHING = "pushing"
    SYNCED = "synced"
    OFFLINE = "offline"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot for metrics and logs."""

    state: ReplicaState
    spool_rows: int
    pushed_rows: int
    last_push_ns: int | None
    last_error: str | None


class Replicator:
    """Push a local :class:`Catalog`'s changes to a fleet catalogue, in a background thread.

    ``connect`` opens the fleet catalogue (a :class:`PgCatalog` by default); hand in another for
    tests of the pure retry logic.
    """

    def __init__(self, local: Catalog, url: str, *, host: str | None = None, interval_s: float = 0.5,
                 max_backoff_s: float = 10.0, batch_rows: int = 500,
                 connect: Callable[[str], PgCatalog] | None = None) -> None:
        self.local = local
        self.url = url
        self.host = host if host is not None else local.host
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.batch_rows = batch_rows
        self._connect = connect or (lambda u: PgCatalog(u, connect_timeout_s=3))
        self._remote: PgCatalog | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.state = ReplicaState.IDLE
        self.pushed_rows = 0
        self.last_push_ns: int | None = None
        self.last_error: str | None = None
        local.enable_spool()

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vmcrash-replicate", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Push soon (a row changed)."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after a last push attempt (bounded by ``timeout_s``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        self.state = ReplicaState.STOPPED

    def status(self) -> ReplicaStatus:
        try:
            depth = self.local.spool_depth()
        except StorageError:
            depth = -1
        return ReplicaStatus(self.state, depth, self.pushed_rows, self.last_push_ns, self.last_error)

    # -- work ------------------------------------------------------------------------------

    def push_once(self) -> int:
        """Push every marked row now; return how many were pushed.

        :raises StorageError: the fleet catalogue is unreachable or refused (marks stay).
        """
        total = 0
        while True:
            entries = self.local.spool_pending(self.batch_rows)
            if not entries:
                self.state = ReplicaState.SYNCED
                return total
            if self._remote is None or self._remote.closed:
                self.state = ReplicaState.CONNECTING
                self._remote = self._connect(self.url)
            self.state = ReplicaState.PUSHING
            changes = [(e.table, e.local_id, self.local.raw_row(e.table, e.local_id)) for e in entries]
            try:
                self._remote.apply(self.host, changes)
            except StorageError:
                self._remote.close()
                self._remote = None
                raise
            self.local.spool_done(entries)
            total += len(entries)
            self.pushed_rows += len(entries)
            self.last_push_ns = time.time_ns()

    def _run(self) -> None:
        backoff = self.interval_s
        while True:
            try:
                n = self.push_once()
                if self.last_error is not None:
                    log.warning("fleet catalogue %s reachable again; replayed the spool", redact_url(self.url))
                self.last_error = None
                if n:
                    log.debug("replicated %d rows", n)
                backoff = self.interval_s
                wait = self.interval_s
            except (StorageError, UsageError) as exc:
                if self.last_error is None:
                    log.warning("fleet catalogue unavailable (%s); spooling locally", exc)
                self.last_error = str(exc)
                self.state = ReplicaState.OFFLINE
                wait = backoff
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception:  # never let the thread die silently; retry later
                log.exception("replication failed")
                self.state = ReplicaState.OFFLINE
                wait = self.max_backoff_s
            if self._stop.is_set():
                return
            self._wake.wait(wait)
            self._wake.clear()

"""Webhook notifications: one JSON document per handled crash to every ``[[notify]]`` target.

The crash handler only *queues* (an ``outbox`` row per crash and target, a local SQLite insert);
a background thread delivers. A receiver that is down, slow or answers 5xx therefore never
delays capture or recovery: the attempt fails after ``timeout_s``, is recorded, and retried
with backoff (``backoff_s`` doubling to ``max_backoff_s``) until ``max_attempts``, across
restarts (the outbox is in the catalogue). 2xx = delivered; 4xx other than 408/429 = the
receiver refuses this document: given up at once.

Signature: with ``secret`` set, ``X-Vmcrash-Signature: sha256=<hex>`` is the HMAC-SHA256 of the
exact body bytes with the secret as key (verify before parsing).

States of the notifier: ``idle`` → ``running`` → ``stopped``; of one delivery: ``pending`` →
``delivered`` | ``gave-up``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmcrash.config import NotifyTarget
from vmcrash.errors import StorageError
from vmcrash.store.catalog import FINAL_STATES, Catalog, CrashRow, OutboxEntry

__all__ = ["Notifier", "NotifierState", "Delivery", "crash_document", "sign", "deliver", "next_delay_s"]

log = logging.getLogger(__name__)

#: crash states after which a crash's handling (and triage) is over
FINISHED_STATES = FINAL_STATES
_marks = ",".join("?" * len(FINAL_STATES))
#: longest text field put in a document (guest data is hostile: bounded)
_MAX_TEXT = 4096
SIGNATURE_HEADER = "X-Vmcrash-Signature"
#: how often the thread looks for finished crashes no hook announced
SWEEP_S = 5.0


class NotifierState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt: ``ok``, HTTP status (None: no answer), one-line error, final."""

    ok: bool
    status: int | None
    error: str | None
    permanent: bool = False


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s if len(s) <= _MAX_TEXT else s[:_MAX_TEXT] + "…"


def crash_document(row: CrashRow) -> dict[str, Any]:
    """The JSON document of one crash (pure). Keys are stable; absent facts are ``null``."""
    triage = row.triage or {}
    clock = row.clock or {}
    return {
        "kind": "vmcrash.crash",
        "version": 1,
        "crash_id": row.id,
        "host": row.host,
        "domain": _text(row.domain),
        "uuid": row.uuid,
        "state": row.state,
        "source": row.source,
        "panic_ns": row.panic_ns,
        "panic_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.panic_ns / 1e9)),
        "panic_line": _text(triage.get("panic_line")),
        "signature": _text(row.signature),
        "freeze_s": row.freeze_s,
        "recovery": {"action": row.recovery_action, "result": row.recovery_result},
        "dump": {"path": row.dump_path, "format": row.dump_format, "size_bytes": row.dump_size_bytes,
                 "sha256": row.dump_sha256, "skipped": _text(row.skip_reason)},
        "clock": {"before_ms": clock.get("before_ms"), "after_ms": clock.get("after_ms"),
                  "corrected": clock.get("synced"), "error": _text(clock.get("error"))},
        "error": _text(row.error),
    }


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def next_delay_s(target: NotifyTarget, attempts: int) -> float:
    """Delay before attempt ``attempts + 1`` (pure): backoff_s · 2^(attempts−1), capped."""
    return float(min(target.backoff_s * (2 ** max(0, attempts - 1)), target.max_backoff_s))


def deliver(target: NotifyTarget, body: bytes) -> Delivery:
    """POST ``body`` to the target once, bounded by ``timeout_s`` (connect and each read). Never raises."""
    u = urllib.parse.urlsplit(target.url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    headers = {"Content-Type": "application/json", "User-Agent": "vmcrash", "Content-Length": str(len(body))}
    if target.secret:
        headers[SIGNATURE_HEADER] = sign(body, target.secret)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    conn = conn_cls(u.hostname or "", u.port, timeout=target.timeout_s)
    deadline = time.monotonic() + target.timeout_s
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read(65536)
        if time.monotonic() > deadline + 0.5:
            return Delivery(False, resp.status, "answer too slow")
        if 200 <= resp.status < 300:
            return Delivery(True, resp.status, None)
        permanent = 400 <= resp.status < 500 and resp.status not in (408, 429)
        return Delivery(False, resp.status, f"HTTP {resp.status} {resp.reason}"[:200], permanent)
    except (OSError, http.client.HTTPException) as exc:
        return Delivery(False, None, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        conn.close()


class Notifier:
    """Queue and deliver crash notifications (a background thread; :meth:`crash_finished` is cheap).

    ``now_ns`` and ``send`` are seams for the pure retry logic in unit tests.
    """

    def __init__(self, catalog: Catalog, targets: tuple[NotifyTarget, ...], *, poll_s: float = 0.5,
                 send: Callable[[NotifyTarget, bytes], Delivery] = deliver,
                 now_ns: Callable[[], int] = time.time_ns) -> None:
        self.catalog = catalog
        self.targets = {t.name: t for t in targets}
        self.poll_s = poll_s
        self.send = send
        self.now_ns = now_ns
        self.state = NotifierState.IDLE
        self.delivered = 0
        self.failed_attempts = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_id_at_start = 0
        self._unfinished_at_start: set[int] = set()

    # -- queueing --------------------------------------------------------------------------

    def crash_finished(self, crash_id: int) -> None:
        """The handler finished a crash (triage done): queue it for every target. Never raises."""
        try:
            row = self.catalog.get(crash_id)
            if row is None or row.state not in FINISHED_STATES:
                return
            for name in self.targets:
                self.catalog.outbox_add(crash_id, name)
        except StorageError as exc:
            log.error("crash #%d: notification not queued: %s", crash_id, exc)
        self._wake.set()

    def catch_up(self) -> int:
        """At start: queue finished crashes newer than the last queued one (missed by a killed daemon)."""
        last = self.catalog.last_outbox_crash()
        if last == 0:
            return 0  # first start with notifications: old crashes are history, not news
        n = 0
        for row in self.catalog.crashes(limit=1000):
            if row.id > last and row.state in FINISHED_STATES:
                for name in self.targets:
                    n += int(self.catalog.outbox_add(row.id, name))
        return n

    def mark_start(self) -> None:
        """Remember which crashes are news for this run: newer ones, and the ones still unfinished."""
        rows = self.catalog.read("SELECT COALESCE(MAX(id), 0) AS m FROM crashes")
        self._max_id_at_start = int(rows[0]["m"])
        self._unfinished_at_start = {int(r["id"]) for r in self.catalog.read(
            f"SELECT id FROM crashes WHERE state NOT IN ({_marks})", FINAL_STATES)}

    def sweep_finished(self) -> int:
        """Queue this run's finished crashes that no hook announced (e.g. closed by the daemon's
        reconciliation after an interruption). Return how many were queued."""
        n = 0
        for name in self.targets:
            for r in self.catalog.read(
                    f"SELECT id FROM crashes WHERE state IN ({_marks}) AND id NOT IN "
                    "(SELECT crash_id FROM outbox WHERE target = ?) ORDER BY id DESC LIMIT 1000",
                    (*FINAL_STATES, name)):
                cid = int(r["id"])
                if cid > self._max_id_at_start or cid in self._unfinished_at_start:
                    n += int(self.catalog.outbox_add(cid, name))
        return n

    # -- delivering ------------------------------------------------------------------------

    def run_due(self) -> int:
        """Attempt every due delivery once; return how many were delivered."""
        ok = 0
        for entry in self.catalog.outbox_due(self.now_ns()):
            if self._stop.is_set():
                break
            ok += int(self._attempt(entry))
        return ok

    def _attempt(self, entry: OutboxEntry) -> bool:
        target = self.targets.get(entry.target)
        if target is None:
            return False  # a target no longer configured: stays pending, untouched
        row = self.catalog.get(entry.crash_id)
        attempts = entry.attempts + 1
        if row is None:
            self.catalog.outbox_result(entry.id, state="gave-up", attempts=attempts, next_ns=entry.next_ns,
                                       error="crash no longer in the catalogue")
            return False
        body = json.dumps(crash_document(row), sort_keys=True).encode()
        result = self.send(target, body)
        if result.ok:
            self.catalog.outbox_result(entry.id, state="delivered", attempts=attempts, next_ns=entry.next_ns,
                                       error=None)
            self.delivered += 1
            log.info("crash #%d: notified %s", entry.crash_id, entry.target)
            return True
        self.failed_attempts += 1
        gave_up = result.permanent or attempts >= target.max_attempts
        next_ns = self.now_ns() + int(next_delay_s(target, attempts) * 1e9)
        self.catalog.outbox_result(entry.id, state="gave-up" if gave_up else "pending", attempts=attempts,
                                   next_ns=next_ns, error=result.error)
        log.warning("crash #%d: notifying %s failed (attempt %d): %s%s", entry.crash_id, entry.target, attempts,
                    result.error, "; giving up" if gave_up else "")
        return False

    # -- thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self.mark_start()
        self.catch_up()
        self.state = NotifierState.RUNNING
        self._thread = threading.Thread(target=self._run, name="vmcrash-notify", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.state = NotifierState.STOPPED

    def pending(self) -> int:
        return sum(1 for e in self.catalog.outbox() if e.state == "pending")

    def _run(self) -> None:
        last_sweep = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_sweep >= SWEEP_S:
                    last_sweep = time.monotonic()
                    self.sweep_finished()
                self.run_due()
            except Exception:  # a bad row must not end notifications; logged with its traceback
                log.exception("notification round failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

"""The daemon (``vmcrash watch``): libvirt events in, crash handling and clock resyncs out.

Runstates (explicit, as in QEMU's QMP client): ``idle`` → ``connecting`` → ``running`` →
``stopping`` → ``stopped``; a lost connection goes back to ``connecting`` (backoff 0.5 s doubling
to 30 s), re-registers the events and reconciles.

Reconciliation (at start and after every reconnect) makes sure nothing is lost:

1. catalogue rows whose handling was interrupted are resumed or closed, as the state machine's
   resume table says (:mod:`vmcrash.capture.reconcile`);
2. leftover ``.partial`` files that nobody is writing are removed;
3. every watched domain that is crashed (or paused) by a panic and not yet handled is handled.

Metrics observe the catalogue's state changes (:meth:`~vmcrash.store.catalog.Catalog.observe`);
no stage calls them.

Clock resyncs after freezes (restores, snapshot reverts, migrations, wake-ups, pauses, host sleeps)
are :mod:`vmcrash.capture.freezewatch`'s: every watched lifecycle event goes through it.

Panics are handled in worker threads (:class:`~vmcrash.capture.pipeline.CrashHandler`), one per
domain at a time, with at most ``max_parallel_dumps`` dumps running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import libvirt

from vmcrash.capture import files
from vmcrash.capture.adopt import Adopter
from vmcrash.capture.clockstep import clock_after_freeze, measure_offset_ms
from vmcrash.capture.compaction import wants_compaction
from vmcrash.capture.daemon_lock import CrashLocks
from vmcrash.capture.freezewatch import FreezeResyncs
from vmcrash.capture.pipeline import CrashHandler, PanicReport
from vmcrash.capture.reconcile import Reconciler, all_infos
from vmcrash.config import Config
from vmcrash.errors import LibvirtUnavailable, VmcrashError
from vmcrash.host.connection import DomainInfo, Hypervisor, domain_id
from vmcrash.host.events import AgentEvent, ConnectionClosed, Event, LifecycleEvent, Subscription
from vmcrash.store.catalog import FINAL_STATES, UNFINISHED_STATES, Catalog
from vmcrash.store.states import StateChange

__all__ = ["Runstate", "Watcher", "sd_notify"]

log = logging.getLogger(__name__)



class Runstate(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def sd_notify(message: str) -> bool:
    """Send a systemd notification (``READY=1``, ...) when run under ``Type=notify``."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


class Watcher:
    """The crash-capture daemon. Run :meth:`run` on the libvirt event loop (:mod:`vmcrash.host.aio`)."""

    def __init__(self, cfg: Config, *, catalog: Catalog | None = None,
                 crash_locks: CrashLocks | None = None) -> None:
        self.cfg = cfg
        #: per-domain crash locks shared with manual verbs (None: an in-process daemon, e.g. selftest)
        self.crash_locks = crash_locks
        self.catalog = catalog or Catalog(cfg.catalog_path, host=cfg.host_name)
        self.state = Runstate.IDLE
        self.hv: Hypervisor | None = None
        self.stop_requested = threading.Event()
        self.handler = CrashHandler(cfg, self._current_hv, self.catalog, stop=self.stop_requested)
        #: routes each panic to its owner: the handler, or adoption of libvirt's own handling (issue 16)
        self.adopter = Adopter(cfg, self._current_hv, self.catalog, self.handler)
        self.reconciler = Reconciler(cfg, self.catalog, self._current_hv, self._watched)
        self.active: set[str] = set()
        self.clock_busy: set[str] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.handler_tasks: set[asyncio.Task[Any]] = set()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="vmcrash")
        self.connections = 0
        self.compact_lock = asyncio.Lock()
        self.compacting: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Event | None] | None = None
        self._connected: asyncio.Event | None = None
        self.on_state: Callable[[Runstate], None] | None = None
        self.metrics: Any = None
        if cfg.metrics_listen:
            from vmcrash.capture.metrics import Metrics

            self.metrics = Metrics()
            self.catalog.observe(self._record_metrics)
        # Clock resyncs after restores, snapshot reverts, migrations, wake-ups, pauses, host sleeps.
        self.freezes = FreezeResyncs(cfg, hv=self._current_hv, catalog=self.catalog,
                                     crash_busy=self.active.__contains__, metrics=self.metrics)

    # -- control ---------------------------------------------------------------------------

    def _current_hv(self) -> Hypervisor:
        if self.hv is None:
            raise LibvirtUnavailable("not connected", uri=self.cfg.libvirt_uri)
        return self.hv

    def _set_state(self, state: Runstate) -> None:
        if state != self.state:
            log.info("runstate %s -> %s", self.state.value, state.value)
            self.state = state
            if self.on_state:
                self.on_state(state)

    def request_stop(self) -> None:
        """Ask the daemon to stop (thread-safe; what SIGTERM does)."""
        self.stop_requested.set()
        if self.cfg.shutdown_dump == "abort":
            self.handler.abort_dumps.set()
        if self._loop is not None and self._queue is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    # -- main loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`request_stop`; returns after running handlers have finished."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._connected = asyncio.Event()
        files.ensure_dump_dir(self.cfg.dump_dir)
        if self.metrics is not None:
            self.metrics.serve(self.cfg.metrics_listen)
        backoff = 0.5
        notified = False
        sweeper: asyncio.Task[Any] | None = None
        sleep_watch = (self._spawn(self.freezes.host_sleep_loop(self.stop_requested, self._watched))
                       if self.cfg.clock.host_sleep_check_s > 0 else None)
        try:
            while not self.stop_requested.is_set():
                self._set_state(Runstate.CONNECTING)
                try:
                    hv, sub = await self._in_thread(self._connect)
                except LibvirtUnavailable as exc:
                    log.warning("libvirt unavailable (%s); retrying in %.1f s", exc, backoff)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                self.hv = hv
                self.connections += 1
                self._connected.set()
                if self.metrics is not None:
                    self.metrics.connected.set(1)
                self._set_state(Runstate.RUNNING)
                try:
                    await self._reconcile()
                    if not notified:
                        sd_notify("READY=1\nSTATUS=watching for guest panics")
                        notified = True
                    if sweeper is None and self.cfg.clock.sweep_interval_s > 0:
                        sweeper = asyncio.create_task(self._sweep_loop())
                    await self._consume()
                except LibvirtUnavailable as exc:
                    log.warning("lost libvirt during reconcile: %s", exc)
                except VmcrashError as exc:
                    log.error("reconcile failed: %s; reconnecting", exc)
                    await self._sleep(backoff)
                if self.stop_requested.is_set():
                    # Keep the connection: running handlers need it to recover their guests.
                    await self._drain_handlers()
                self._connected.clear()
                if self.metrics is not None:
                    self.metrics.connected.set(0)
                sub.close()
                self.hv = None
                hv.close()
        finally:
            self._set_state(Runstate.STOPPING)
            sd_notify("STOPPING=1")
            if sweeper is not None:
                sweeper.cancel()
            if sleep_watch is not None:
                sleep_watch.cancel()
            self.freezes.close()
            if self.handler_tasks:
                await self._final_connection_for_handlers()
                await self._drain_handlers()
            from vmcrash.capture.compact import terminate_workers

            terminate_workers()
            for task in list(self.tasks):
                task.cancel()
            if self.hv is not None:
                self.hv.close()
                self.hv = None
            self.executor.shutdown(wait=False, cancel_futures=True)
            self._set_state(Runstate.STOPPED)

    async def _drain_handlers(self) -> None:
        """Wait for running crash handlers (they abort or finish their dump, then recover)."""
        while self.handler_tasks:
            await asyncio.gather(*list(self.handler_tasks), return_exceptions=True)

    async def _final_connection_for_handlers(self) -> None:
        """While stopping, handlers still need a connection to recover their guests."""
        if self.hv is not None:
            return
        try:
            self.hv = await self._in_thread(Hypervisor, self.cfg.libvirt_uri)
            assert self._connected is not None
            self._connected.set()
        except LibvirtUnavailable as exc:
            log.error("cannot reconnect to recover guests while stopping: %s", exc)

    def _connect(self) -> tuple[Hypervisor, Subscription]:
        hv = Hypervisor(self.cfg.libvirt_uri)
        try:
            hv.conn.setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass
        assert self._loop is not None and self._queue is not None
        queue, loop = self._queue, self._loop

        def sink(ev: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        try:
            sub = Subscription(hv, sink)
        except VmcrashError:
            hv.close()
            raise
        log.info("connected to %s", self.cfg.libvirt_uri)
        return hv, sub

    async def _sleep(self, seconds: float) -> None:
        assert self._queue is not None
        deadline = time.monotonic() + seconds
        while not self.stop_requested.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, deadline - time.monotonic()))

    async def _consume(self) -> None:
        assert self._queue is not None
        while not self.stop_requested.is_set():
            ev = await self._queue.get()
            if ev is None:
                return
            if isinstance(ev, ConnectionClosed):
                log.warning("libvirt connection closed (%s); reconnecting", ev.reason)
                return
            try:
                self._dispatch(ev)
            except Exception:  # a bad event must not kill the daemon
                log.exception("event %r not handled", ev)

    # -- events ----------------------------------------------------------------------------

    def _watched(self, name: str) -> bool:
        return self.cfg.watches(name)

    def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, AgentEvent):
            log.debug("%s: agent %s", ev.domain, "connected" if ev.connected else "disconnected")
            return
        if not isinstance(ev, LifecycleEvent):
            return
        log.debug("%s: %s/%s", ev.domain, ev.event, ev.detail)
        if not self._watched(ev.domain):
            return
        if ev.is_panic:
            self.submit(PanicReport(ev.domain, ev.uuid, ev.received_ns, "event"))
        self.freezes.on_event(ev)  # resumes, restores, snapshot reverts, migrations, wake-ups
        if ev.event == "started":
            self._spawn(self._takeover(ev.uuid))

    async def _takeover(self, uuid: str) -> None:
        """Policy crash_owner = "vmcrash": make the live on_crash preserve (see Adopter.takeover)."""
        try:
            await self._in_thread(self.adopter.takeover, uuid)
        except VmcrashError as exc:
            log.warning("taking over crash handling of %s failed: %s", uuid, exc)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", task.exception(), exc_info=task.exception())

    def submit(self, report: PanicReport) -> bool:
        """Handle a panic unless this domain's panic is already being handled (exactly once)."""
        if report.uuid in self.active:
            log.info("%s: panic already being handled", report.domain)
            return False
        self.active.add(report.uuid)
        task = self._spawn(self._handle(report))
        self.handler_tasks.add(task)
        task.add_done_callback(self.handler_tasks.discard)
        return True

    async def _handle(self, report: PanicReport) -> None:
        lock = self.crash_locks.lock_for(report.uuid) if self.crash_locks is not None else None
        try:
            if lock is not None:
                locks = self.crash_locks
                assert locks is not None
                got = await self._in_thread(lambda: lock.wait_acquire(
                    role="watch", config=locks.config, key=locks.key, stop=self.stop_requested,
                    timeout_s=3600.0))
                if not got:
                    holder = lock.holder()
                    log.error("%s: not handled: its crash is held by %s", report.domain,
                              holder.describe() if holder else "another process")
                    return
            for _attempt in range(10):
                try:
                    crash_id = await self._in_thread(self.adopter.handle, report)
                    self.schedule_compaction(crash_id)
                    return
                except LibvirtUnavailable as exc:
                    log.warning("%s: libvirt lost during handling (%s); resuming after reconnect",
                                report.domain, exc)
                    assert self._connected is not None
                    while not self._connected.is_set() or self.hv is None:
                        if self.state in (Runstate.STOPPING, Runstate.STOPPED) and self.hv is None:
                            return
                        await asyncio.sleep(0.1)
                    row = self.catalog.latest_for(report.uuid)
                    if row is None or row.state not in UNFINISHED_STATES:
                        return
                    try:
                        info = await self._in_thread(self._info_of, report.uuid)
                    except LibvirtUnavailable:
                        continue
                    except VmcrashError:
                        info = None
                    again = await self._in_thread(self.reconciler.resume, row, info)
                    if again is None:
                        return  # recovered before the connection dropped: what was complete is kept
                    report = again
        finally:
            if lock is not None:
                lock.release()
            self.active.discard(report.uuid)

    def _record_metrics(self, change: StateChange) -> None:
        """Observes the catalogue: a crash's handling ended (in the writer's thread)."""
        if not change.final:
            return
        m, row = self.metrics, self.catalog.get(change.crash_id)
        if m is None or row is None:
            return
        m.panics.labels(source=row.source).inc()
        m.dumps.labels(result="written" if row.dump_path else ("skipped" if row.skip_reason else "failed")).inc()
        cap = row.capture or {}
        if cap.get("seconds"):
            m.dump_seconds.observe(cap["seconds"])
            m.dump_bytes.inc(cap.get("written_bytes") or 0)
            m.zero_pages.inc(cap.get("zero_pages_skipped") or 0)
        if row.freeze_s is not None:
            m.freeze_seconds.observe(row.freeze_s)
        if row.clock and row.clock.get("after_ms") is not None:
            m.clock_syncs.labels(reason="after-crash", ok=str(bool(row.clock.get("ok"))).lower()).inc()
            m.clock_residual_ms.labels(domain=row.domain).set(row.clock["after_ms"])

    # -- compaction --------------------------------------------------------------------------

    def schedule_compaction(self, crash_id: int) -> None:
        """Compact a finished dump in the background (one at a time, low priority, resumable)."""
        row = self.catalog.get(crash_id)
        if row is None or not wants_compaction(row.compact_state):
            return
        if crash_id in self.compacting or self.stop_requested.is_set():
            return
        self.compacting.add(crash_id)
        self._spawn(self._compact_task(crash_id))

    async def _compact_task(self, crash_id: int) -> None:
        try:
            async with self.compact_lock:
                if self.stop_requested.is_set():
                    return
                result = await self._in_thread(self.handler.compact, crash_id)
                if result is not None:
                    log.info("crash #%d: compaction %s", crash_id,
                             "done" if result.ok else f"{result.state.value}: {result.error}")
        finally:
            self.compacting.discard(crash_id)

    # -- clock -----------------------------------------------------------------------------

    async def _clock_task(self, name: str, uuid: str, reason: str, paused_s: float | None) -> None:
        if uuid in self.clock_busy or uuid in self.active or self.freezes.busy(uuid):
            return
        self.clock_busy.add(uuid)
        try:
            hv = self._current_hv()
            dom = hv.lookup(uuid)
            outcome = await self._in_thread(
                lambda: clock_after_freeze(dom, target_ms=self.cfg.clock.target_ms,
                                           agent_wait_s=min(self.cfg.clock.agent_wait_s, 30.0)))
            result = outcome.to_dict()
            if paused_s is not None:
                result["paused_s"] = round(paused_s, 3)
            self.catalog.record_clock_sync(domain=name, uuid=uuid, reason=reason, ok=outcome.ok,
                                           before_ms=outcome.before_ms, after_ms=outcome.after_ms,
                                           result=result, error=outcome.error)
            if self.metrics is not None:
                self.metrics.clock_syncs.labels(reason=reason, ok=str(outcome.ok).lower()).inc()
                if outcome.after_ms is not None:
                    self.metrics.clock_residual_ms.labels(domain=name).set(outcome.after_ms)
            if outcome.ok:
                log.info("%s: clock corrected after %s: %s", name, reason, outcome.describe())
            else:
                log.warning("%s: clock not corrected after %s: %s", name, reason, outcome.error or outcome.describe())
        except VmcrashError as exc:
            log.warning("%s: clock resync after %s failed: %s", name, reason, exc)
        finally:
            self.clock_busy.discard(uuid)

    async def _sweep_loop(self) -> None:
        """Periodically check every watched running guest's clock; correct it beyond the threshold."""
        interval = self.cfg.clock.sweep_interval_s
        while not self.stop_requested.is_set():
            await self._sleep(interval)
            if self.stop_requested.is_set() or self.hv is None:
                continue
            try:
                await self._sweep_once()
            except VmcrashError as exc:
                log.warning("clock sweep: %s", exc)

    async def _sweep_once(self) -> None:
        hv = self._current_hv()
        infos = await self._in_thread(all_infos, hv)
        seen: set[str] = set()
        for info in infos:
            if info.state != "running" or not self._watched(info.name) or info.uuid in self.active \
                    or self.freezes.busy(info.uuid):
                continue
            try:
                dom = hv.lookup(info.uuid)
                offset_ms = await self._in_thread(measure_offset_ms, dom)
            except VmcrashError as exc:
                log.debug("%s: sweep skipped: %s", info.name, exc)
                continue
            if self.metrics is not None:
                seen.add(info.name)
                self.metrics.sweep_measured(info.name, offset_ms / 1e3)
            if abs(offset_ms) > self.cfg.clock.sweep_threshold_ms:
                log.warning("%s: sweep found clock %+.1f ms off; correcting", info.name, offset_ms)
                await self._clock_task(info.name, info.uuid, "sweep", None)
        if self.metrics is not None:
            self.metrics.sweep_forget(seen)
            self.metrics.last_sweep.set_to_current_time()

    # -- reconciliation --------------------------------------------------------------------

    async def _reconcile(self) -> None:
        hv = self._current_hv()
        infos: list[DomainInfo] = await self._in_thread(all_infos, hv)
        by_uuid = {i.uuid: i for i in infos}
        covered: set[str] = set()
        for row in self.catalog.unfinished():
            if row.host and row.host != self.catalog.host:
                continue  # a shared catalogue: another host's daemon finishes its own crashes
            if row.uuid in self.active:
                covered.add(row.uuid)
                continue
            again = await self._in_thread(self.reconciler.resume, row, by_uuid.get(row.uuid))
            if again is not None:
                covered.add(row.uuid)
                self.submit(again)
        keep = {r.dump_temp_path for r in self.catalog.unfinished() if r.uuid in self.active and r.dump_temp_path}
        self.reconciler.remove_orphan_partials(keep)
        self.freezes.at_reconcile(infos, self._watched)  # freezes that ended while nobody watched
        for row in self.catalog.crashes(limit=10000):
            if wants_compaction(row.compact_state):
                self.schedule_compaction(row.id)
        for info in infos:
            if not info.panicked or info.uuid in covered or info.uuid in self.active:
                continue
            if not self._watched(info.name):
                continue
            latest = self.catalog.latest_for(info.uuid)
            dom_id = await self._in_thread(_safe_id, hv, info.uuid)
            if latest is not None and latest.state in FINAL_STATES and latest.domain_id == dom_id \
                    and latest.recovery_result != "running":
                continue  # this very panic was handled (e.g. preserved) already
            log.warning("%s: found %s by a panic at start-up; handling it", info.name, info.state)
            self.submit(PanicReport(info.name, info.uuid, time.time_ns(), "reconcile"))
        for info in infos:
            if info.state == "running" and self._watched(info.name):
                await self._takeover(info.uuid)
        log.info("reconciled: %d domains, %d being handled", len(infos), len(self.active))

    def _info_of(self, uuid: str) -> DomainInfo:
        hv = self._current_hv()
        return hv.info(hv.lookup(uuid))


def _safe_id(hv: Hypervisor, uuid: str) -> int | None:
    try:
        return domain_id(hv.lookup(uuid))
    except VmcrashError:
        return None

"""The daemon's clock resyncs after freezes: lifecycle events and host sleeps in, corrections recorded.

Glue between libvirt and the pure clock parts: each watched domain's lifecycle events go through
:func:`vmcrash.clock.freezes.step`; a freeze that ends (restore, snapshot revert, migration in,
guest wake-up, a pause past the threshold) becomes a :class:`~vmcrash.clock.fleet.ResyncJob` on
the bounded :class:`~vmcrash.clock.fleet.ResyncScheduler`; a host resume seen by
:class:`~vmcrash.clock.hostsleep.SleepDetector` makes one job per watched running domain. Each
correction is a :class:`FreezeSync` (the rounds of
:func:`~vmcrash.capture.clockstep.clock_after_freeze` it took) and is recorded in ``clock_syncs``
with its reason, the event that caused it, the offset found and the offset left — the same JSON as
the post-crash correction.

:class:`Watcher` hands in what this needs (a hypervisor getter, the catalogue, the watch rule, the
set of domains whose panic is being handled), so nothing here reaches into the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import libvirt

from vmcrash.capture.clockstep import ClockOutcome, clock_after_freeze
from vmcrash.clock._sync import agent_not_configured
from vmcrash.clock._transport import ping
from vmcrash.clock.fleet import AgentReadiness, Outcome, ResyncJob, ResyncOutcome, ResyncScheduler
from vmcrash.clock.freezes import FreezeKind, State, step
from vmcrash.clock.hostsleep import ClockPair, SleepDetector, read_clock_pair
from vmcrash.config import Config
from vmcrash.errors import AgentUnavailable, LibvirtUnavailable
from vmcrash.host.agent import Agent
from vmcrash.host.connection import DomainInfo, Hypervisor, call
from vmcrash.host.events import LifecycleEvent
from vmcrash.store.catalog import Catalog

__all__ = ["FreezeResyncs", "FreezeSync"]

log = logging.getLogger(__name__)

#: libvirt's running-state reasons that mean "the last start ended a freeze".
_RUNNING_REASONS = {
    libvirt.VIR_DOMAIN_RUNNING_RESTORED: FreezeKind.RESTORE,
    libvirt.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT: FreezeKind.SNAPSHOT,
    libvirt.VIR_DOMAIN_RUNNING_MIGRATED: FreezeKind.MIGRATION,
    libvirt.VIR_DOMAIN_RUNNING_POSTCOPY: FreezeKind.MIGRATION,
    libvirt.VIR_DOMAIN_RUNNING_WAKEUP: FreezeKind.PM_SUSPEND,
}
#: rounds of ``clock.sync`` a freeze resync may take when the target is missed (each up to 5 sets).
SYNC_ROUNDS = 3

_REASON_NAMES = {
    libvirt.VIR_DOMAIN_RUNNING_RESTORED: "restored",
    libvirt.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT: "from-snapshot",
    libvirt.VIR_DOMAIN_RUNNING_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_RUNNING_POSTCOPY: "postcopy",
    libvirt.VIR_DOMAIN_RUNNING_WAKEUP: "wakeup",
}


@dataclass(frozen=True)
class FreezeSync:
    """One freeze resync: the rounds of the clock stage it took (at most :data:`SYNC_ROUNDS`), the
    last one deciding; offsets in ms. Several rounds that began with a measurement report the
    offset the first round found and the guest-set-time attempts of all rounds."""

    rounds: tuple[ClockOutcome, ...]

    @property
    def last(self) -> ClockOutcome:
        return self.rounds[-1]

    @property
    def _merged(self) -> bool:
        return len(self.rounds) > 1 and self.rounds[0].before_ms is not None

    @property
    def ok(self) -> bool:
        """The last round reached the target."""
        return self.last.ok

    @property
    def before_ms(self) -> float | None:
        """The offset found (by the first round, when merged)."""
        return self.rounds[0].before_ms if self._merged else self.last.before_ms

    @property
    def after_ms(self) -> float | None:
        """The offset left by the last round."""
        return self.last.after_ms

    @property
    def attempts(self) -> int | None:
        """guest-set-time calls made (of all rounds, when merged); ``None``: no sync ran."""
        return sum(r.attempts or 0 for r in self.rounds) if self._merged else self.last.attempts

    @property
    def error(self) -> str | None:
        return self.last.error

    def to_dict(self) -> dict[str, Any]:
        """The JSON kept in ``clock_syncs.result_json``: the last round's, plus ``rounds`` when merged."""
        d = self.last.to_dict()
        if self._merged:
            d = {**d, "before_ms": self.before_ms, "rounds": len(self.rounds), "attempts": self.attempts}
        return d


class FreezeResyncs:
    """Clock resyncs after every freeze the daemon sees end; one instance per daemon, on its loop."""

    def __init__(self, cfg: Config, *, hv: Callable[[], Hypervisor], catalog: Catalog,
                 crash_busy: Callable[[str], bool], metrics: Any = None,
                 clock_pair: ClockPair = read_clock_pair) -> None:
        self.cfg = cfg
        self._hv = hv
        self.catalog = catalog
        self._crash_busy = crash_busy
        self.metrics = metrics
        self._clock_pair = clock_pair
        self.states: dict[str, State] = {}
        self.scheduler: ResyncScheduler[FreezeSync] = ResyncScheduler(
            probe=self._probe, sync=self._sync, on_done=self._record, max_parallel=cfg.clock.max_parallel_syncs,
            agent_wait_s=cfg.clock.agent_wait_s)

    def busy(self, uuid: str) -> bool:
        """True while a freeze resync of ``uuid`` is waiting or running."""
        return self.scheduler.busy(uuid)

    # -- events ------------------------------------------------------------------------------

    def on_event(self, ev: LifecycleEvent) -> None:
        """Fold a watched domain's lifecycle event; schedule a resync when it ends a freeze."""
        state, resync = step(self.states.get(ev.uuid, State()), ev.event, ev.detail, ev.received_ns,
                             pause_threshold_s=self.cfg.clock.resume_threshold_s)
        if ev.event == "undefined":
            self.states.pop(ev.uuid, None)
        else:
            self.states[ev.uuid] = state
        if resync is None:
            return
        if self._crash_busy(ev.uuid):
            log.info("%s: %s ended a freeze while its panic is handled; the handler corrects the clock",
                     ev.domain, resync.event)
            return
        log.info("%s: %s ended a freeze (%s%s); resyncing its clock", ev.domain, resync.event, resync.reason,
                 f", {resync.frozen_s:.1f} s" if resync.frozen_s is not None else "")
        self.scheduler.submit(ResyncJob(ev.uuid, ev.domain, resync.reason, resync.event, resync.frozen_s))

    def at_reconcile(self, infos: Iterable[DomainInfo], watched: Callable[[str], bool]) -> int:
        """At start-up and after a reconnect: check guests whose last start was the end of a freeze.

        A daemon that starts after ``libvirt-guests`` restored the guests (or reconnects after
        libvirtd was away) never saw their ``started/restored``; libvirt still reports them
        ``running`` with the reason (restored, from snapshot, migrated, woken up). Each is measured;
        only a clock outside the target is corrected and recorded (event ``startup:running/<reason>``).
        Returns the number of guests checked.
        """
        n = 0
        for info in infos:
            kind = _RUNNING_REASONS.get(info.reason) if info.state == "running" else None
            if kind is None or not watched(info.name) or self._crash_busy(info.uuid):
                continue
            detail = _REASON_NAMES[info.reason]
            self.scheduler.submit(ResyncJob(info.uuid, info.name, kind.value, f"startup:running/{detail}",
                                            record_unchanged=False))
            n += 1
        if n:
            log.info("checking the clocks of %d guest(s) found running after a restore, revert, "
                     "migration or wake-up", n)
        return n

    async def resync_running(self, reason: str, event: str, watched: Callable[[str], bool],
                             frozen_s: float | None = None) -> int:
        """A job for every watched running domain (after a host resume); returns how many."""
        hv = self._hv()
        running = await asyncio.to_thread(_running_domains, hv)
        n = 0
        for name, uuid in running:
            if watched(name) and not self._crash_busy(uuid):
                self.scheduler.submit(ResyncJob(uuid, name, reason, event, frozen_s))
                n += 1
        return n

    async def host_sleep_loop(self, stop: threading.Event, watched: Callable[[str], bool]) -> None:
        """Every ``clock.host_sleep_check_s``: did the host sleep? Then resync every watched guest."""
        interval = self.cfg.clock.host_sleep_check_s
        detector = SleepDetector(self._clock_pair)
        detector.check()
        while not stop.is_set():
            await asyncio.sleep(interval)
            slept = detector.check()
            if slept is None:
                continue
            log.warning("the host slept %.1f s (CLOCK_BOOTTIME - CLOCK_MONOTONIC grew); resyncing every "
                        "watched guest", slept.slept_s)
            try:
                n = await self.resync_running(FreezeKind.HOST_SLEEP.value, "host-resume", watched,
                                              round(slept.slept_s, 3))
                log.info("host resume: %d guest clock(s) to resync", n)
            except LibvirtUnavailable as exc:
                log.warning("host resume: cannot list guests: %s", exc)

    def close(self) -> None:
        self.scheduler.close()

    # -- blocking parts (the scheduler's threads) ---------------------------------------------

    def _probe(self, job: ResyncJob) -> AgentReadiness:
        try:
            dom = self._hv().lookup(job.key)
            state, _reason = call(dom.state, domain=job.name)
        except LibvirtUnavailable:
            return AgentReadiness.NOT_YET  # the daemon reconnects meanwhile
        if state != libvirt.VIR_DOMAIN_RUNNING:
            return AgentReadiness.NOT_RUNNING
        try:
            ping(Agent(dom, timeout_s=2), timeout_s=2)
        except AgentUnavailable as exc:
            if agent_not_configured(exc):
                raise
            return AgentReadiness.NOT_YET
        return AgentReadiness.READY

    def _sync(self, job: ResyncJob) -> FreezeSync:
        """The same correction as after a crash (the agent answered a moment ago: a short wait).

        A freeze resync often runs while the host is at its busiest (every guest restoring at once),
        when one ``guest-set-time`` can land tens of ms late and one round of sets may not reach the
        target: up to :data:`SYNC_ROUNDS` rounds, each measuring afresh. The result keeps the first
        offset found and the last one left.
        """
        dom = self._hv().lookup(job.key)
        rounds: list[ClockOutcome] = []
        while len(rounds) < SYNC_ROUNDS:
            rounds.append(clock_after_freeze(dom, target_ms=self.cfg.clock.target_ms, agent_wait_s=10.0))
            if rounds[-1].ok or not rounds[-1].synced:
                break
        return FreezeSync(tuple(rounds))

    # -- recording (on the loop) ---------------------------------------------------------------

    def _record(self, out: ResyncOutcome[FreezeSync]) -> None:
        job = out.job
        if out.outcome is Outcome.DROPPED:
            log.info("%s: clock resync after %s dropped: the domain did not run again within %g s "
                     "(the event that ends this freeze will ask again)", job.name, job.event,
                     self.cfg.clock.agent_wait_s)
            return
        sync = out.result if out.outcome is Outcome.SYNCED else None
        if not job.record_unchanged and sync is not None and sync.ok and not sync.attempts:
            log.info("%s: clock within target (%+.1f ms) after %s", job.name, sync.before_ms or 0.0, job.event)
            return
        ok = sync is not None and sync.ok
        error = sync.error if sync is not None else out.error
        before_ms = sync.before_ms if sync is not None else None
        after_ms = sync.after_ms if sync is not None else None
        result = sync.to_dict() if sync is not None else {}
        result.update(event=job.event, frozen_s=job.frozen_s, agent_waited_s=out.waited_s, took_s=out.took_s)
        if job.merged:
            result["merged_events"] = list(job.merged)
        if error and "error" not in result:
            result["error"] = error
        self.catalog.record_clock_sync(domain=job.name, uuid=job.key, reason=job.reason, ok=ok,
                                       before_ms=before_ms, after_ms=after_ms, result=result, error=error)
        if self.metrics is not None:
            self.metrics.clock_syncs.labels(reason=job.reason, ok=str(ok).lower()).inc()
            if after_ms is not None:
                self.metrics.clock_residual_ms.labels(domain=job.name).set(after_ms)
        if ok:
            log.info("%s: clock corrected after %s (%s): %+.1f ms -> %+.1f ms", job.name, job.reason,
                     job.event, before_ms, after_ms)
        else:
            log.warning("%s: clock not corrected after %s (%s): %s", job.name, job.reason, job.event,
                        error or f"{before_ms} ms -> {after_ms} ms")


def _running_domains(hv: Hypervisor) -> list[tuple[str, str]]:
    """(name, UUID) of every running domain."""
    flags = libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING
    out = []
    for dom in call(hv.conn.listAllDomains, flags, uri=hv.uri):
        try:
            out.append((dom.name(), dom.UUIDString()))
        except libvirt.libvirtError:
            continue  # gone meanwhile
    return out

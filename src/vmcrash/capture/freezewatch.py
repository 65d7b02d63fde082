"""The daemon's clock resyncs after freezes: lifecycle events and host sleeps in, corrections recorded.

Glue between libvirt and the pure clock parts: each watched domain's lifecycle events go through
:func:`vmcrash.clock.freezes.step`; a freeze that ends (restore, snapshot revert, migration in,
guest wake-up, a pause past the threshold) becomes a :class:`~vmcrash.clock.fleet.ResyncJob` on
the bounded :class:`~vmcrash.clock.fleet.ResyncScheduler`; a host resume seen by
:class:`~vmcrash.clock.hostsleep.SleepDetector` makes one job per watched running domain. Each
correction is recorded in ``clock_syncs`` with its reason, the event that caused it, the offset
found and the offset left — the same result dict as the post-crash correction
(:func:`~vmcrash.capture.clockstep.clock_after_freeze`).

:class:`Watcher` hands in what this needs (a hypervisor getter, the catalogue, the watch rule, the
set of domains whose panic is being handled), so nothing here reaches into the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import libvirt

from vmcrash.capture.clockstep import clock_after_freeze
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

__all__ = ["FreezeResyncs"]

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
        self.scheduler = ResyncScheduler(probe=self._probe, sync=self._sync, on_done=self._record,
                                         max_parallel=cfg.clock.max_parallel_syncs,
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

    def _sync(self, job: ResyncJob) -> dict[str, Any]:
        """The same correction as after a crash (the agent answered a moment ago: a short wait).

        A freeze resync often runs while the host is at its busiest (every guest restoring at once),
        when one ``guest-set-time`` can land tens of ms late and one round of sets may not reach the
        target: up to :data:`SYNC_ROUNDS` rounds, each measuring afresh. The result keeps the first
        offset found and the last one left.
        """
        dom = self._hv().lookup(job.key)
        rounds: list[dict[str, Any]] = []
        while len(rounds) < SYNC_ROUNDS:
            rounds.append(clock_after_freeze(dom, target_ms=self.cfg.clock.target_ms, agent_wait_s=10.0).to_dict())
            if rounds[-1].get("ok") or not rounds[-1].get("synced"):
                break
        result = rounds[-1]
        if len(rounds) > 1 and "before_ms" in rounds[0]:
            result = {**result, "before_ms": rounds[0]["before_ms"], "rounds": len(rounds),
                      "attempts": sum(int(r.get("attempts") or 0) for r in rounds)}
        return result

    # -- recording (on the loop) ---------------------------------------------------------------

    def _record(self, out: ResyncOutcome) -> None:
        job = out.job
        if out.outcome is Outcome.DROPPED:
            log.info("%s: clock resync after %s dropped: the domain did not run again within %g s "
                     "(the event that ends this freeze will ask again)", job.name, job.event,
                     self.cfg.clock.agent_wait_s)
            return
        result = dict(out.result or {})
        if not job.record_unchanged and out.outcome is Outcome.SYNCED and result.get("ok") \
                and not result.get("attempts"):
            log.info("%s: clock within target (%+.1f ms) after %s", job.name, result.get("before_ms") or 0.0,
                     job.event)
            return
        result.update(event=job.event, frozen_s=job.frozen_s, agent_waited_s=out.waited_s, took_s=out.took_s)
        if job.merged:
            result["merged_events"] = list(job.merged)
        error = out.error if out.outcome is Outcome.FAILED else result.get("error")
        ok = out.outcome is Outcome.SYNCED and bool(result.get("ok"))
        if error and "error" not in result:
            result["error"] = error
        self.catalog.record_clock_sync(domain=job.name, uuid=job.key, reason=job.reason, ok=ok,
                                       before_ms=result.get("before_ms"), after_ms=result.get("after_ms"),
                                       result=result, error=error)
        if self.metrics is not None:
            self.metrics.clock_syncs.labels(reason=job.reason, ok=str(ok).lower()).inc()
            if result.get("after_ms") is not None:
                self.metrics.clock_residual_ms.labels(domain=job.name).set(result["after_ms"])
        if ok:
            log.info("%s: clock corrected after %s (%s): %+.1f ms -> %+.1f ms", job.name, job.reason,
                        job.event, result["before_ms"], result["after_ms"])
        else:
            log.warning("%s: clock not corrected after %s (%s): %s", job.name, job.reason, job.event,
                        error or f"{result.get('before_ms')} ms -> {result.get('after_ms')} ms")


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

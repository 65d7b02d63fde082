"""Resyncing many guest clocks at once, bounded: after a host boot every restored guest needs one.

:class:`ResyncScheduler` runs one :class:`ResyncJob` per domain on an asyncio loop. A job first
waits for the guest agent (a restored guest's agent may need seconds to answer) with the same
bounded backoff as :func:`vmcrash.clock.wait_for_agent` after a recovery — first retry after
:data:`FIRST_DELAY_S`, doubling to :data:`MAX_DELAY_S`, giving up after ``agent_wait_s`` — but the
waiting is ``asyncio.sleep``, not a blocked thread: a hundred late agents cost no threads, and
nothing else on the loop (other domains, crash handling) waits for them. Every blocking agent call
(each ping, each sync) runs in the scheduler's own thread pool of ``max_parallel`` threads, so at
most that many agent exchanges are in flight and the daemon's own worker threads stay free.

One job per domain at a time: a freeze that ends while the domain's job is still waiting for the
agent replaces that job's description (one correction covers both); one that ends while it is
already syncing runs again afterwards (the guest may have been frozen after it was measured).

The scheduler knows nothing of libvirt: the caller hands in ``probe`` (is the agent there yet?)
and ``sync`` (measure and correct, returning the caller's own result, which the scheduler only
hands on), blocking functions of a job.
``bench/fleet.py`` drives it with 200 fake agents, ``tests/clock/test_clock_fleet.py`` with fakes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from vmcrash.errors import VmcrashError

__all__ = [
    "FIRST_DELAY_S",
    "MAX_DELAY_S",
    "AgentReadiness",
    "Outcome",
    "ResyncJob",
    "ResyncOutcome",
    "ResyncScheduler",
    "backoff_delays",
]

log = logging.getLogger(__name__)

#: What the caller's ``sync`` returns (the daemon: :class:`vmcrash.capture.freezewatch.FreezeSync`).
R = TypeVar("R")

#: The agent backoff, the same as :func:`vmcrash.clock.wait_for_agent`'s defaults (seconds).
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0


class AgentReadiness(enum.Enum):
    """What one probe of a job's guest found."""

    READY = "ready"
    #: not connected / not answering yet: try again after the next backoff delay
    NOT_YET = "not-yet"
    #: the domain is not running (yet: libvirt announces a restore before it starts the vCPUs; or
    #: again: restored ``--paused``): keep waiting; at the deadline the job is dropped, not failed —
    #: the event that ends that freeze asks again
    NOT_RUNNING = "not-running"


class Outcome(enum.Enum):
    SYNCED = "synced"      # the sync ran (its result says whether the target was reached)
    FAILED = "failed"      # agent never answered, refused, or the sync raised
    DROPPED = "dropped"    # the domain did not run again within the wait (its freeze goes on)


@dataclass(frozen=True)
class ResyncJob:
    """One domain's clock to correct.

    :ivar key: the domain's UUID. :ivar reason: ``clock_syncs.reason`` (``restore``, ``host-resume``...).
    :ivar event: what caused it (``started/restored``); :ivar frozen_s: the freeze, when known.
    :ivar merged: events of freezes that ended while this job waited, covered by the same correction.
    :ivar record_unchanged: record the outcome even when the clock was already within target (False
        for the start-up check of guests whose freeze may have ended while no daemon was watching).
    """

    key: str
    name: str
    reason: str
    event: str
    frozen_s: float | None = None
    merged: tuple[str, ...] = ()
    record_unchanged: bool = True


@dataclass(frozen=True)
class ResyncOutcome(Generic[R]):
    """How a job ended. ``result``: what ``sync`` returned (``SYNCED`` only); ``error``: why it
    ``FAILED`` or was ``DROPPED`` (``None`` when the sync ran: its result says how that went);
    ``waited_s``: waiting for the agent; ``took_s``: submit to end."""

    job: ResyncJob
    outcome: Outcome
    result: R | None
    error: str | None
    waited_s: float
    took_s: float
    probes: int


def backoff_delays(first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S) -> Iterator[float]:
    """The retry delays, seconds: ``first_s`` doubling up to ``max_s``, forever (a generator)."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


@dataclass
class _Slot:
    job: ResyncJob
    syncing: bool = False
    again: ResyncJob | None = None
    task: asyncio.Task[Any] | None = field(default=None, repr=False)


class ResyncScheduler(Generic[R]):
    """Bounded, per-domain-serial clock resyncs on the running asyncio loop.

    :param probe: blocking; is the job's agent there? Raises :class:`~vmcrash.errors.VmcrashError`
        when waiting cannot help (no agent channel, domain gone): the job fails with that message.
    :param sync: blocking; measure and correct; its result goes to ``on_done`` untouched.
        A :class:`~vmcrash.errors.VmcrashError` fails the job with its message.
    :param on_done: called on the loop with every :class:`ResyncOutcome` (record it, count it).
    :param max_parallel: agent calls in flight at most (1..256).
    :param agent_wait_s: how long a job waits for its agent before it fails.
    """

    def __init__(self, *, probe: Callable[[ResyncJob], AgentReadiness],
                 sync: Callable[[ResyncJob], R],
                 on_done: Callable[[ResyncOutcome[R]], None], max_parallel: int = 8,
                 agent_wait_s: float = 90.0, first_delay_s: float = FIRST_DELAY_S,
                 max_delay_s: float = MAX_DELAY_S) -> None:
        if not 1 <= max_parallel <= 256:
            raise ValueError(f"max_parallel must be 1..256, not {max_parallel}")
        self._probe, self._sync, self._on_done = probe, sync, on_done
        self.max_parallel = max_parallel
        self.agent_wait_s = agent_wait_s
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self._slots: dict[str, _Slot] = {}
        self._sem: asyncio.Semaphore | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_parallel,
                                                           thread_name_prefix="vmcrash-clock")
        #: most agent calls seen in flight at once (the bound, observed; for tests and the bench)
        self.peak_in_flight = 0
        self._in_flight = 0
        self.closed = False

    def busy(self, key: str) -> bool:
        """True while ``key`` has a job (waiting for its agent or syncing)."""
        return key in self._slots

    def pending(self) -> int:
        return len(self._slots)

    def submit(self, job: ResyncJob) -> bool:
        """Schedule ``job`` (call on the loop). False when it was folded into the domain's current job."""
        if self.closed:
            return False
        slot = self._slots.get(job.key)
        if slot is not None:
            if not slot.syncing:
                # Not measured yet: the one correction to come covers this freeze as well.
                slot.job = replace(job, merged=(*slot.job.merged, slot.job.event))
            else:
                prev = slot.again
                slot.again = job if prev is None else replace(job, merged=(*prev.merged, prev.event))
            return False
        slot = _Slot(job)
        self._slots[job.key] = slot
        slot.task = asyncio.ensure_future(self._run(slot))
        return True

    async def drain(self) -> None:
        """Wait until no job is left (jobs submitted meanwhile included)."""
        while self._slots:
            tasks = [s.task for s in self._slots.values() if s.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Cancel waiting jobs and stop the thread pool (running agent calls finish on their own)."""
        self.closed = True
        for slot in list(self._slots.values()):
            if slot.task is not None:
                slot.task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Callable[[ResyncJob], Any], job: ResyncJob) -> Any:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_parallel)
        async with self._sem:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            try:
                return await asyncio.get_running_loop().run_in_executor(self._pool, fn, job)
            finally:
                self._in_flight -= 1

    async def _run(self, slot: _Slot) -> None:
        try:
            while True:
                outcome = await self._one(slot)
                try:
                    self._on_done(outcome)
                except Exception:  # recording must not lose the other domains' jobs
                    log.exception("%s: recording the clock resync failed", outcome.job.name)
                if slot.again is None:
                    return
                slot.job, slot.again, slot.syncing = slot.again, None, False
        finally:
            self._slots.pop(slot.job.key, None)

    async def _one(self, slot: _Slot) -> ResyncOutcome[R]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.agent_wait_s
        delays = backoff_delays(self.first_delay_s, self.max_delay_s)
        probes = 0
        while True:
            probes += 1
            try:
                ready = await self._call(self._probe, slot.job)
            except VmcrashError as exc:
                return self._outcome(slot.job, Outcome.FAILED, None, str(exc), start, start, probes)
            if ready is AgentReadiness.READY:
                break
            left = deadline - loop.time()
            if left <= 0 and ready is AgentReadiness.NOT_RUNNING:
                return self._outcome(slot.job, Outcome.DROPPED, None,
                                     f"domain not running after {self.agent_wait_s:g} s", start, start, probes)
            if left <= 0:
                return self._outcome(slot.job, Outcome.FAILED, None,
                                     f"guest agent did not answer within {self.agent_wait_s:g} s "
                                     f"({probes} tries)", start, start, probes)
            await asyncio.sleep(min(next(delays), left))
        answered = loop.time()
        slot.syncing = True
        job = slot.job
        try:
            result = await self._call(self._sync, job)
        except VmcrashError as exc:
            return self._outcome(job, Outcome.FAILED, None, str(exc), start, answered, probes)
        return self._outcome(job, Outcome.SYNCED, result, None, start, answered, probes)

    def _outcome(self, job: ResyncJob, outcome: Outcome, result: R | None, error: str | None,
                 start: float, answered: float, probes: int) -> ResyncOutcome[R]:
        now = asyncio.get_running_loop().time()
        return ResyncOutcome(job, outcome, result, error, round(answered - start, 3), round(now - start, 3),
                             probes)


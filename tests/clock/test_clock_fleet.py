"""The bounded resync scheduler (``vmcrash.clock.fleet``) with fake agents: pure scheduling logic."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from vmcrash.clock.fleet import (
    AgentReadiness,
    Outcome,
    ResyncJob,
    ResyncOutcome,
    ResyncScheduler,
    backoff_delays,
)
from vmcrash.errors import AgentRefused, AgentUnavailable


class Fakes:
    """Fake guests: agent ready after ``ready_at`` (monotonic s), a sync that takes ``sync_s``."""

    def __init__(self, sync_s: float = 0.01) -> None:
        self.ready_at: dict[str, float] = {}
        self.running: dict[str, bool] = {}
        self.sync_s = sync_s
        self.probes: dict[str, list[float]] = {}
        self.syncs: list[tuple[str, float]] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.done: list[ResyncOutcome] = []

    def _enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def probe(self, job: ResyncJob) -> AgentReadiness:
        self._enter()
        try:
            self.probes.setdefault(job.key, []).append(time.monotonic())
            if not self.running.get(job.key, True):
                return AgentReadiness.NOT_RUNNING
            if job.key == "no-channel":
                raise AgentUnavailable("QEMU guest agent is not configured", domain=job.name)
            if time.monotonic() < self.ready_at.get(job.key, 0.0):
                return AgentReadiness.NOT_YET
            return AgentReadiness.READY
        finally:
            self._leave()

    def sync(self, job: ResyncJob) -> dict[str, Any]:
        self._enter()
        try:
            time.sleep(self.sync_s)
            self.syncs.append((job.key, time.monotonic()))
            if job.key == "refuses":
                raise AgentRefused("guest-set-time refused", domain=job.name)
            return {"ok": True, "before_ms": -15000.0, "after_ms": 0.4}
        finally:
            self._leave()

    def scheduler(self, **kw: Any) -> ResyncScheduler:
        return ResyncScheduler(probe=self.probe, sync=self.sync, on_done=self.done.append, **kw)


def job(key: str, event: str = "started/restored") -> ResyncJob:
    return ResyncJob(key, f"vm-{key}", "restore", event, None)


def test_backoff_is_the_recovery_one_doubling_to_two_seconds() -> None:
    assert list(itertools.islice(backoff_delays(), 7)) == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_never_more_agent_calls_in_flight_than_the_bound_and_all_finish() -> None:
    fakes = Fakes(sync_s=0.02)

    async def main() -> ResyncScheduler:
        sched = fakes.scheduler(max_parallel=4)
        for i in range(40):
            assert sched.submit(job(f"g{i}"))
        await sched.drain()
        sched.close()
        return sched

    sched = asyncio.run(main())
    assert len(fakes.done) == 40 and all(o.outcome is Outcome.SYNCED for o in fakes.done)
    assert fakes.peak == 4  # measured inside the fakes: the bound was reached, never passed
    assert sched.peak_in_flight == 4
    assert {o.job.key for o in fakes.done} == {f"g{i}" for i in range(40)}


def test_a_late_agent_is_waited_for_with_backoff_without_holding_up_the_others() -> None:
    fakes = Fakes()
    t0 = time.monotonic()
    fakes.ready_at["late"] = t0 + 0.6

    async def main() -> None:
        sched = fakes.scheduler(max_parallel=1, first_delay_s=0.05, max_delay_s=0.2)
        sched.submit(job("late"))
        for i in range(5):
            sched.submit(job(f"ok{i}"))
        await sched.drain()
        sched.close()

    asyncio.run(main())
    by_key = {o.job.key: o for o in fakes.done}
    assert by_key["late"].outcome is Outcome.SYNCED
    assert by_key["late"].waited_s >= 0.55
    # even with one slot, the waiting job let the five ready ones through long before it finished
    assert [o.job.key for o in fakes.done][-1] == "late"
    assert max(by_key[f"ok{i}"].took_s for i in range(5)) < 0.4
    gaps = [b - a for a, b in itertools.pairwise(fakes.probes["late"])]
    assert gaps[0] < 0.15 and max(gaps) < 0.35 and gaps[-1] >= 0.15  # 0.05 doubling to 0.2


def test_an_agent_that_never_answers_fails_after_the_wait_with_a_clear_error() -> None:
    fakes = Fakes()
    fakes.ready_at["dead"] = float("inf")

    async def main() -> None:
        sched = fakes.scheduler(agent_wait_s=0.3, first_delay_s=0.05, max_delay_s=0.1)
        sched.submit(job("dead"))
        await sched.drain()
        sched.close()

    asyncio.run(main())
    (out,) = fakes.done
    assert out.outcome is Outcome.FAILED and out.result is None
    assert out.error is not None and out.error.startswith("guest agent did not answer within 0.3 s")
    assert 0.25 <= out.took_s < 1.0 and out.probes >= 3
    assert fakes.syncs == []


def test_no_agent_channel_and_refusals_fail_at_once() -> None:
    fakes = Fakes()

    async def main() -> None:
        sched = fakes.scheduler()
        sched.submit(job("no-channel"))
        sched.submit(job("refuses"))
        await sched.drain()
        sched.close()

    asyncio.run(main())
    by_key = {o.job.key: o for o in fakes.done}
    assert by_key["no-channel"].outcome is Outcome.FAILED and by_key["no-channel"].probes == 1
    assert "not configured" in (by_key["no-channel"].error or "")
    assert by_key["refuses"].outcome is Outcome.FAILED and "refused" in (by_key["refuses"].error or "")


def test_a_domain_that_is_not_running_yet_is_waited_for() -> None:
    # libvirt sends started/restored before it starts the vCPUs: the first probes see it paused
    fakes = Fakes()
    fakes.running["restoring"] = False

    async def main() -> None:
        sched = fakes.scheduler(first_delay_s=0.05)
        sched.submit(job("restoring"))
        await asyncio.sleep(0.2)
        fakes.running["restoring"] = True
        await sched.drain()
        sched.close()

    asyncio.run(main())
    (out,) = fakes.done
    assert out.outcome is Outcome.SYNCED and out.probes >= 2 and len(fakes.syncs) == 1


def test_a_domain_that_stays_paused_is_dropped_not_failed() -> None:
    fakes = Fakes()
    fakes.running["paused"] = False

    async def main() -> None:
        sched = fakes.scheduler(agent_wait_s=0.3, first_delay_s=0.05)
        sched.submit(job("paused"))
        await sched.drain()
        sched.close()

    asyncio.run(main())
    assert [o.outcome for o in fakes.done] == [Outcome.DROPPED]
    assert fakes.syncs == []


def test_a_second_freeze_while_waiting_is_merged_into_one_correction() -> None:
    fakes = Fakes()
    fakes.ready_at["a"] = time.monotonic() + 0.3

    async def main() -> None:
        sched = fakes.scheduler(first_delay_s=0.05)
        assert sched.submit(job("a", "started/restored"))
        await asyncio.sleep(0.1)
        assert sched.busy("a")
        assert not sched.submit(job("a", "resumed/unpaused"))
        await sched.drain()
        assert not sched.busy("a")
        sched.close()

    asyncio.run(main())
    (out,) = fakes.done
    assert out.job.event == "resumed/unpaused" and out.job.merged == ("started/restored",)
    assert len(fakes.syncs) == 1


def test_a_freeze_ending_during_a_sync_runs_once_more_afterwards() -> None:
    fakes = Fakes(sync_s=0.3)

    async def main() -> None:
        sched = fakes.scheduler()
        sched.submit(job("a", "started/restored"))
        await asyncio.sleep(0.1)  # syncing now
        sched.submit(job("a", "resumed/unpaused"))
        sched.submit(job("a", "resumed/migrated"))
        await sched.drain()
        sched.close()

    asyncio.run(main())
    assert [o.job.event for o in fakes.done] == ["started/restored", "resumed/migrated"]
    assert fakes.done[1].job.merged == ("resumed/unpaused",)
    assert len(fakes.syncs) == 2


def test_a_failing_recorder_does_not_stop_other_jobs() -> None:
    fakes = Fakes()
    seen: list[str] = []

    def on_done(out: ResyncOutcome) -> None:
        seen.append(out.job.key)
        if out.job.key == "g0":
            raise RuntimeError("database is locked")

    async def main() -> None:
        sched = ResyncScheduler(probe=fakes.probe, sync=fakes.sync, on_done=on_done)
        for i in range(3):
            sched.submit(job(f"g{i}"))
        await sched.drain()
        sched.close()

    asyncio.run(main())
    assert sorted(seen) == ["g0", "g1", "g2"]


def test_bound_is_validated_and_closed_scheduler_refuses() -> None:
    fakes = Fakes()
    with pytest.raises(ValueError):
        fakes.scheduler(max_parallel=0)

    async def main() -> bool:
        sched = fakes.scheduler()
        sched.close()
        return sched.submit(job("x"))

    assert asyncio.run(main()) is False


def test_a_hundred_waiting_agents_hold_no_threads_and_leave_the_loop_free() -> None:
    """Waiting is asyncio sleeping: threads stay at the bound, and other work on the loop runs."""
    fakes = Fakes()
    t0 = time.monotonic()
    for i in range(100):
        fakes.ready_at[f"g{i}"] = t0 + 0.8

    async def main() -> tuple[int, float]:
        sched = fakes.scheduler(max_parallel=4, first_delay_s=0.05, max_delay_s=0.2)
        base_threads = threading.active_count()
        for i in range(100):
            sched.submit(job(f"g{i}"))
        # meanwhile the loop serves other work (a crash handling would be scheduled here) at once
        lags = []
        for _ in range(10):
            t = time.monotonic()
            await asyncio.sleep(0.02)
            lags.append(time.monotonic() - t - 0.02)
        threads = threading.active_count() - base_threads
        await sched.drain()
        sched.close()
        return threads, max(lags)

    extra_threads, worst_lag_s = asyncio.run(main())
    assert extra_threads <= 4
    assert worst_lag_s < 0.1
    assert len(fakes.done) == 100 and all(o.outcome is Outcome.SYNCED for o in fakes.done)
    assert fakes.peak <= 4

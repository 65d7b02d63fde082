"""The measure/sync/wait loops against a simulated guest clock (pure logic; the lab tests use real guests).

``SimGuest`` models what the lab measured of qemu-ga: each agent leg takes ``leg_ns``; a
``guest-set-time`` lands ``leg_ns + handler_ns`` after it is sent (handler 0.5 ms unless told)
and is followed by ``hwclock -w``.
The host clock is the simulation's own counter, so every expected number below is exact.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from vmcrash.clock import measure, sync, wait_for_agent
from vmcrash.errors import AgentProtocolError, AgentRefused, AgentUnavailable, UsageError

T0 = 1_700_000_000_000_000_000


class SimGuest:
    name = "sim"

    def __init__(self, offset_ns: int, *, leg_ns: int = 500_000, handler_ns: list[int] | None = None,
                 hwclock_ns: int = 10_000_000, hwclock: bool = True) -> None:
        self.now = T0
        self.offset_ns = offset_ns
        self.leg_ns = leg_ns
        self.handler_ns = list(handler_ns or [500_000])
        self.hwclock_ns = hwclock_ns
        self.hwclock = hwclock
        self.sets: list[int] = []
        self.offsets_after_set: list[int] = []

    def clock(self) -> int:
        return self.now

    def raw(self, execute: str, arguments: dict[str, Any] | None = None, *, timeout_s: int | None = None) -> object:
        self.now += self.leg_ns
        if execute == "guest-get-time":
            reply = json.dumps({"return": self.now + self.offset_ns})
        elif execute == "guest-set-time":
            assert arguments is not None
            if not self.hwclock:
                raise AgentRefused("guest-set-time: internal error: unable to execute QEMU agent command "
                                   "'guest-set-time': this feature or command is not currently supported",
                                   domain=self.name, command="guest-set-time")
            handler = self.handler_ns[min(len(self.sets), len(self.handler_ns) - 1)]
            self.now += handler
            self.offset_ns = arguments["time"] - self.now
            self.sets.append(arguments["time"])
            self.offsets_after_set.append(self.offset_ns)
            self.now += self.hwclock_ns
            reply = '{"return": {}}'
        else:
            reply = '{"return": {}}'
        self.now += self.leg_ns
        return reply

def test_measure_reads_the_simulated_offset() -> None:
    guest = SimGuest(-15_000_000_000)
    est = measure(guest, clock_ns=guest.clock)
    assert est.offset_ns == -15_000_000_000
    assert est.rtt_ns == 1_000_000
    assert est.spread_ns == 0
    assert est.probes_used == 4


def test_sync_with_the_measured_handler_delay_lands_exactly_in_one_set() -> None:
    guest = SimGuest(-15_000_000_000)
    res = sync(guest, clock_ns=guest.clock)
    assert res.ok and res.attempts == 1
    assert res.before.offset_ns == -15_000_000_000
    assert res.after.offset_ns == 0 == guest.offset_ns
    assert res.lead_ns == 1_000_000  # half the get-time round trip + the handler allowance
    assert res.set_rtt_ns == 11_500_000  # two legs, handler, hwclock


def test_sync_learns_a_slow_handler() -> None:
    # Every set lands 2.5 ms after sending (0.5 ms leg + 2 ms handler) while the prior says 1.0 ms.
    guest = SimGuest(-3_000_000_000, handler_ns=[2_000_000])
    res = sync(guest, target_ns=500_000, clock_ns=guest.clock)
    # leads: 1.0 ms (prior) -> median(1.0, 2.5) = 1.75 ms -> median(1.0, 2.5, 2.5) = 2.5 ms
    assert guest.offsets_after_set == [-1_500_000, -750_000, 0]
    assert res.attempts == 3 and res.ok
    assert res.lead_ns == 2_500_000
    assert res.after.offset_ns == 0
    # with the default 5 ms target the first set is good enough
    guest = SimGuest(-3_000_000_000, handler_ns=[2_000_000])
    res = sync(guest, clock_ns=guest.clock)
    assert res.attempts == 1 and res.ok and res.after.offset_ns == -1_500_000


def test_sync_is_not_thrown_by_one_late_landing() -> None:
    # The first set lands 6 ms late (host contention), later ones 0.9 ms: the median keeps the second
    # attempt close, where chasing the last landing would overshoot by 5.6 ms.
    guest = SimGuest(-2_000_000_000, handler_ns=[6_000_000, 400_000])
    res = sync(guest, target_ns=1_000_000, clock_ns=guest.clock)
    assert res.ok and res.attempts == 3 and res.after.offset_ns == 100_000
    # leads 1.0 ms (prior), median(1.0, 6.5) = 3.75 ms, median(1.0, 6.5, 0.9) = 1.0 ms
    assert guest.offsets_after_set == [-5_500_000, 2_850_000, 100_000]


def test_sync_does_nothing_within_target() -> None:
    guest = SimGuest(4_000_000)
    res = sync(guest, clock_ns=guest.clock)
    assert res.ok and res.attempts == 0 and res.after == res.before and guest.sets == []


def test_sync_reports_a_missed_target_after_the_budget() -> None:
    # Landing jitter larger than the target: 0, 3 ms, 0, 3 ms ... the lead chases it and never settles.
    guest = SimGuest(-1_000_000_000, handler_ns=[3_000_000, 0, 3_000_000, 0, 3_000_000])
    res = sync(guest, target_ns=100_000, max_attempts=3, clock_ns=guest.clock)
    assert not res.ok and res.attempts == 3 and len(guest.sets) == 3
    assert abs(res.after.offset_ns) > 100_000
    assert abs(res.after.offset_ns) < abs(res.before.offset_ns)


def test_sync_guest_ahead_is_set_back() -> None:
    guest = SimGuest(+7_200_000_000_000)  # two hours ahead
    res = sync(guest, clock_ns=guest.clock)
    assert res.ok and guest.offset_ns == 0


def test_sync_refused_set_time_says_what_to_do_and_changes_nothing() -> None:
    guest = SimGuest(-15_000_000_000, hwclock=False)
    with pytest.raises(AgentRefused, match=r"hwclock.*makestep") as info:
        sync(guest, clock_ns=guest.clock)
    assert info.value.exit_code == 3 and guest.offset_ns == -15_000_000_000


@pytest.mark.parametrize("kwargs", [{"target_ns": 0}, {"max_attempts": 0}, {"max_attempts": 101},
                                    {"probes": 0}, {"probes": 100_000}])
def test_sync_bad_arguments(kwargs: dict[str, int]) -> None:
    guest = SimGuest(0)
    with pytest.raises(UsageError):
        sync(guest, clock_ns=guest.clock, **kwargs)


# -- wait_for_agent ------------------------------------------------------------------------


class FlakyAgent:
    """Unavailable for the first ``failures`` pings (or forever), with a fake clock that sleeps instantly."""

    name = "flaky"

    def __init__(self, failures: int, error: Exception | None = None, ping_cost_s: float = 0.01) -> None:
        self.failures = failures
        self.error = error or AgentUnavailable("guest agent is not responding", domain=self.name)
        self.t = 100.0
        self.pings: list[int] = []
        self.sleeps: list[float] = []
        self.ping_cost_s = ping_cost_s

    def raw(self, execute: str, arguments: dict[str, Any] | None = None, *, timeout_s: int | None = None) -> object:
        assert execute == "guest-ping" and timeout_s is not None
        self.pings.append(timeout_s)
        self.t += self.ping_cost_s
        if len(self.pings) <= self.failures:
            raise self.error
        return '{"return": {}}'

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s

    def monotonic(self) -> float:
        return self.t


def test_wait_for_agent_backs_off_then_returns_seconds_waited() -> None:
    agent = FlakyAgent(failures=7)
    waited = wait_for_agent(agent, timeout_s=60, sleep=agent.sleep, monotonic=agent.monotonic)
    assert agent.sleeps == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert waited == pytest.approx(sum(agent.sleeps) + 8 * 0.01)
    assert all(1 <= t <= 2 for t in agent.pings)


def test_wait_for_agent_answers_at_once() -> None:
    agent = FlakyAgent(failures=0)
    assert wait_for_agent(agent, sleep=agent.sleep, monotonic=agent.monotonic) == pytest.approx(0.01)
    assert agent.sleeps == []


def test_wait_for_agent_gives_up_after_timeout() -> None:
    agent = FlakyAgent(failures=10**9)
    with pytest.raises(AgentUnavailable, match=r"^flaky: guest agent did not answer within 5 s \(\d+ tries\); "
                                               r"last error: guest agent is not responding$"):
        wait_for_agent(agent, timeout_s=5, sleep=agent.sleep, monotonic=agent.monotonic)
    assert 100 + 5 <= agent.t <= 100 + 5 + 0.02
    assert len(agent.pings) < 15


def _not_configured() -> AgentUnavailable:
    # what host/agent.py raises for libvirt's VIR_ERR_ARGUMENT_UNSUPPORTED (tested in test_translation)
    return AgentUnavailable("no guest agent channel: add <channel ...>", domain="flaky", not_configured=True)


@pytest.mark.parametrize("error", [
    _not_configured(),
    AgentProtocolError("guest-ping: reply is not JSON", domain="flaky"),
    AgentRefused("guest-ping: no", domain="flaky", command="guest-ping"),
])
def test_wait_for_agent_does_not_wait_for_what_waiting_cannot_fix(error: Exception) -> None:
    agent = FlakyAgent(failures=10**9, error=error)
    with pytest.raises(type(error)) as info:
        wait_for_agent(agent, timeout_s=60, sleep=agent.sleep, monotonic=agent.monotonic)
    assert info.value is error and agent.sleeps == [] and len(agent.pings) == 1


@pytest.mark.parametrize("timeout_s", [-1.0, float("nan"), float("inf")])
def test_wait_for_agent_bad_timeout(timeout_s: float) -> None:
    with pytest.raises(UsageError):
        wait_for_agent(FlakyAgent(0), timeout_s=timeout_s)

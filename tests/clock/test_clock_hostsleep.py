"""The host-sleep detector with an injected clock source (a host cannot be suspended in the lab)."""

from __future__ import annotations

import pytest

from vmcrash.clock.hostsleep import HostSleep, SleepDetector, read_clock_pair, sleep_gap_ns

S = 1_000_000_000


class FakeClocks:
    """CLOCK_BOOTTIME/CLOCK_MONOTONIC of a host that runs and sometimes sleeps."""

    def __init__(self) -> None:
        self.monotonic_ns = 1000 * S
        self.boottime_ns = 1000 * S + 7 * S  # it already slept 7 s before the daemon started

    def run(self, seconds: float) -> None:
        self.monotonic_ns += int(seconds * S)
        self.boottime_ns += int(seconds * S)

    def sleep(self, seconds: float) -> None:
        self.boottime_ns += int(seconds * S)  # monotonic stands still while suspended

    def __call__(self) -> tuple[int, int]:
        return self.boottime_ns, self.monotonic_ns


def test_first_check_is_the_baseline_even_after_earlier_sleeps() -> None:
    clocks = FakeClocks()
    det = SleepDetector(clocks)
    assert det.check() is None
    clocks.run(2)
    assert det.check() is None


def test_a_sleep_between_two_checks_is_reported_with_its_length() -> None:
    clocks = FakeClocks()
    det = SleepDetector(clocks)
    det.check()
    clocks.run(1)
    clocks.sleep(3600)
    clocks.run(0.5)
    got = det.check()
    assert got == HostSleep(3600 * S, clocks.monotonic_ns)
    assert got.slept_s == 3600.0
    clocks.run(2)
    assert det.check() is None  # reported once


def test_short_sleeps_below_the_threshold_are_not_reported_nor_summed() -> None:
    clocks = FakeClocks()
    det = SleepDetector(clocks, min_sleep_ns=S)
    det.check()
    for _ in range(5):
        clocks.sleep(0.4)
        assert det.check() is None
    clocks.sleep(1.0)
    assert det.check() == HostSleep(S, clocks.monotonic_ns)


def test_slow_checks_of_a_busy_host_are_not_sleeps() -> None:
    clocks = FakeClocks()
    det = SleepDetector(clocks)
    det.check()
    clocks.run(120)  # the daemon's loop was blocked for two minutes: both clocks moved
    assert det.check() is None


def test_a_shrinking_gap_rebaselines() -> None:
    clocks = FakeClocks()
    det = SleepDetector(clocks)
    det.check()
    clocks.boottime_ns -= 5 * S
    assert det.check() is None
    clocks.sleep(2)
    assert det.check() == HostSleep(2 * S, clocks.monotonic_ns)


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SleepDetector(FakeClocks(), min_sleep_ns=0)


def test_the_real_clocks_of_this_host() -> None:
    pair = read_clock_pair()
    gap = sleep_gap_ns(pair)
    assert gap >= 0  # boottime includes suspend time: never below monotonic
    det = SleepDetector()
    assert det.check() is None
    assert det.check() is None  # this host did not sleep between two calls

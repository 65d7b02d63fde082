"""Noticing that the host itself slept (suspend to RAM or disk), so every guest's clock stood still too.

Linux's ``CLOCK_MONOTONIC`` does not advance while the system is suspended; ``CLOCK_BOOTTIME`` does
(it is monotonic plus the total time spent suspended). Their difference therefore grows by exactly
the time slept and otherwise stays put (NTP slews both alike). :class:`SleepDetector` samples the
pair and reports a growth beyond a threshold as a :class:`HostSleep`. The daemon samples every
``clock.host_sleep_check_s`` seconds; after the host resumes, its first tick sees the jump.

The clock source is injected (:data:`ClockPair`), so the detector is unit-tested with a fake one.
It has not been tested on a host that really suspended: the lab machine cannot suspend itself.
A D-Bus ``PrepareForSleep`` signal from logind would tell the same a little earlier; it is not
used, because the gap needs no D-Bus, no systemd and no permission, and catches every kind of
sleep the kernel accounts for (``suspend``, ``hibernate``, ``suspend-then-hibernate``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MIN_SLEEP_NS",
    "ClockPair",
    "HostSleep",
    "SleepDetector",
    "read_clock_pair",
    "sleep_gap_ns",
]

#: (``CLOCK_BOOTTIME``, ``CLOCK_MONOTONIC``) in ns, read as close together as possible.
ClockPair = Callable[[], tuple[int, int]]

#: A gap growth below this is noise of the two reads (µs) or not worth a fleet resync; 1 s is far
#: above the first and below the clock offsets that matter (the target is milliseconds, but a host
#: that slept less than a second is not a case seen in practice).
DEFAULT_MIN_SLEEP_NS = 1_000_000_000


def read_clock_pair() -> tuple[int, int]:
    """The host's (``CLOCK_BOOTTIME``, ``CLOCK_MONOTONIC``), ns (Linux).

    Monotonic is read first, so the microseconds between the two reads add to the gap rather than
    making it negative.
    """
    monotonic_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME), monotonic_ns


def sleep_gap_ns(pair: tuple[int, int]) -> int:
    """Total time the host has been suspended since boot, ns: boottime − monotonic."""
    boottime_ns, monotonic_ns = pair
    return boottime_ns - monotonic_ns


@dataclass(frozen=True)
class HostSleep:
    """The host slept ``slept_ns`` between two samples; ``woke_monotonic_ns`` is the later sample."""

    slept_ns: int
    woke_monotonic_ns: int

    @property
    def slept_s(self) -> float:
        return self.slept_ns / 1e9


class SleepDetector:
    """Compare successive samples of the suspend gap; report when it grew by ``min_sleep_ns`` or more.

    The first :meth:`check` only takes the baseline (returns ``None``). A growth below the threshold
    is folded into the baseline silently, so many short sleeps are not summed into a false one.
    """

    def __init__(self, clock: ClockPair = read_clock_pair, *, min_sleep_ns: int = DEFAULT_MIN_SLEEP_NS) -> None:
        if min_sleep_ns <= 0:
            raise ValueError(f"min_sleep_ns must be positive, not {min_sleep_ns}")
        self._clock = clock
        self.min_sleep_ns = min_sleep_ns
        self._gap_ns: int | None = None

    def check(self) -> HostSleep | None:
        """Sample now; a :class:`HostSleep` when the host slept since the last sample, else ``None``."""
        pair = self._clock()
        gap = sleep_gap_ns(pair)
        previous, self._gap_ns = self._gap_ns, gap
        if previous is None or gap - previous < self.min_sleep_ns:
            return None  # (a shrinking gap cannot happen on a sane kernel: it only re-baselines)
        return HostSleep(gap - previous, pair[1])

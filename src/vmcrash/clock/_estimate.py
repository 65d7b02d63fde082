"""Pure clock arithmetic: NTP-style offset estimation from timed probes, and the set-time lead.

Everything here is a function of integers (nanoseconds); no I/O, no clock reads. A *probe* is one
``guest-get-time`` exchange bracketed by two host wall-clock stamps::

    host   t_send ───────────────────────────── t_recv
                       ╲                   ╱
    guest               ╲──── t_guest ────╱

Causality says the guest read its clock somewhere inside ``[t_send, t_recv]``, so the true offset
(guest − host) lies inside ``[t_guest − t_recv, t_guest − t_send]``. Assuming both legs take the
same time, the best single guess is ``t_guest − (t_send + t_recv) / 2``, wrong by at most half
the round trip. Probes with the smallest round trip are the least disturbed, so we keep those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "OffsetEstimate",
    "Probe",
    "SyncResult",
    "best_probes",
    "estimate",
    "landing_ns",
    "next_lead_ns",
    "probe_offset_ns",
    "probe_rtt_ns",
    "within",
]


class Probe(NamedTuple):
    """One timed ``guest-get-time``: host send stamp, guest clock, host receive stamp (all epoch ns)."""

    t_send_ns: int
    t_guest_ns: int
    t_recv_ns: int


def probe_rtt_ns(probe: Probe) -> int:
    """Round trip of ``probe`` in ns (negative only if the host clock stepped back meanwhile)."""
    return probe.t_recv_ns - probe.t_send_ns


def probe_offset_ns(probe: Probe) -> int:
    """Guest minus host at the probe's midpoint, in ns (rounded toward −∞ by half a ns at most)."""
    # Written as two halves so the sum of two epoch stamps never has to be formed.
    midpoint = probe.t_send_ns + (probe.t_recv_ns - probe.t_send_ns) // 2
    return probe.t_guest_ns - midpoint


def best_probes(probes: Sequence[Probe], keep: int) -> list[Probe]:
    """The ``keep`` probes with the smallest round trip, in that order (ties: earlier probe first).

    Probes with a negative round trip (host clock stepped back) are dropped first.
    :raises ValueError: ``keep`` < 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, not {keep}")
    sane = [(probe_rtt_ns(p), i, p) for i, p in enumerate(probes) if probe_rtt_ns(p) >= 0]
    sane.sort(key=lambda item: (item[0], item[1]))
    return [p for _, _, p in sane[:keep]]


def _median(values: Sequence[int]) -> int:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    if n % 2:
        return ordered[mid]
    return ordered[mid - 1] + (ordered[mid] - ordered[mid - 1]) // 2


@dataclass(frozen=True)
class OffsetEstimate:
    """How far the guest clock is from the host's, as measured over the guest agent.

    :ivar offset_ns: guest − host, ns; negative means the guest is behind.
    :ivar rtt_ns: round trip of the best probe, ns; the offset of that probe is wrong by at most
        ``rtt_ns / 2`` (if the guest answered honestly).
    :ivar spread_ns: max − min of the offsets of the probes kept, ns (0 with one probe).
    :ivar probes_used: how many probes the offset is the median of.
    :ivar taken_at_ns: host wall clock (epoch ns) at the best probe's midpoint.
    """

    offset_ns: int
    rtt_ns: int
    spread_ns: int
    probes_used: int
    taken_at_ns: int

    @property
    def taken_at(self) -> int:
        """Alias of :attr:`taken_at_ns` (host wall clock, epoch ns)."""
        return self.taken_at_ns

    def to_dict(self) -> dict[str, int]:
        """JSON-ready copy (all integers, ns)."""
        return {
            "offset_ns": self.offset_ns,
            "rtt_ns": self.rtt_ns,
            "spread_ns": self.spread_ns,
            "probes_used": self.probes_used,
            "taken_at_ns": self.taken_at_ns,
        }


def estimate(probes: Iterable[Probe], *, keep: int | None = None) -> OffsetEstimate:
    """The offset from ``probes``: median offset of the ``keep`` smallest-round-trip probes.

    ``keep`` defaults to half the probes, rounded up. The median (not the mean) keeps one probe
    whose legs were very unequal from dragging the result.

    :raises ValueError: no probe with a non-negative round trip.
    """
    probes = list(probes)
    if keep is None:
        keep = max(1, (len(probes) + 1) // 2)
    kept = best_probes(probes, keep)
    if not kept:
        raise ValueError("no usable probe")
    offsets = [probe_offset_ns(p) for p in kept]
    best = kept[0]
    return OffsetEstimate(
        offset_ns=_median(offsets),
        rtt_ns=probe_rtt_ns(best),
        spread_ns=max(offsets) - min(offsets),
        probes_used=len(kept),
        taken_at_ns=best.t_send_ns + probe_rtt_ns(best) // 2,
    )


def within(est: OffsetEstimate, target_ns: int) -> bool:
    """True when ``|est.offset_ns| <= target_ns``."""
    return abs(est.offset_ns) <= target_ns


def landing_ns(lead_ns: int, offset_after_ns: int, set_rtt_ns: int) -> int:
    """How long after its host stamp a ``guest-set-time`` took effect, from the offset measured after it.

    A set that sends ``host_now + lead`` and lands ``L`` ns after the stamp leaves the guest
    ``lead − L`` ahead, so ``L = lead − offset_after``. By causality the set landed inside its own
    round trip, so the result is clamped to ``[0, set_rtt_ns]`` (a lying or badly disturbed
    measurement cannot push it out).
    """
    return min(max(lead_ns - offset_after_ns, 0), max(set_rtt_ns, 0))


def next_lead_ns(prior_ns: int, landings_ns: Sequence[int]) -> int:
    """The lead for the next ``guest-set-time``: the median of the prior and every landing seen.

    Not simply the last landing: under host CPU contention one set in a few lands late (seen in
    the lab: 6 ms instead of ≈1 ms), and chasing that made the next set land 4.4 ms early. The
    median shrugs off one outlier, yet follows a landing delay that is consistently off the prior
    after two observations.
    """
    return _median([prior_ns, *landings_ns])


@dataclass(frozen=True)
class SyncResult:
    """Outcome of :func:`vmcrash.clock.sync`.

    :ivar before: the offset before any correction. :ivar after: the offset after the last
        correction (``before`` itself when no correction was needed).
    :ivar attempts: ``guest-set-time`` calls made (0: already within target).
    :ivar ok: ``|after.offset_ns| <= target_ns``.
    :ivar target_ns: the tolerance asked for, ns.
    :ivar lead_ns: the compensation added to host time in the last set, ns (0 when none).
    :ivar set_rtt_ns: round trip of the last ``guest-set-time``, ns (0 when none); it includes the
        guest running ``hwclock -w`` after its clock was set.
    """

    before: OffsetEstimate
    after: OffsetEstimate
    attempts: int
    ok: bool
    target_ns: int
    lead_ns: int = 0
    set_rtt_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy: nested estimates as dicts, all times integers in ns."""
        return {
            "ok": self.ok,
            "attempts": self.attempts,
            "target_ns": self.target_ns,
            "lead_ns": self.lead_ns,
            "set_rtt_ns": self.set_rtt_ns,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }

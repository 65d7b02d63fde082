"""Pure clock arithmetic with literal numbers: probe offsets, probe selection, estimate, set-time lead."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcrash.clock import (
    OffsetEstimate,
    Probe,
    SyncResult,
    best_probes,
    estimate,
    landing_ns,
    next_lead_ns,
    probe_offset_ns,
    probe_rtt_ns,
    within,
)

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, in ns


def test_probe_offset_is_guest_minus_host_midpoint() -> None:
    # host sends at T0, receives 1 ms later; guest read T0 + 0.5 ms - 15 s
    p = Probe(T0, T0 + 500_000 - 15_000_000_000, T0 + 1_000_000)
    assert probe_rtt_ns(p) == 1_000_000
    assert probe_offset_ns(p) == -15_000_000_000


def test_probe_offset_guest_ahead_and_odd_rtt() -> None:
    p = Probe(T0, T0 + 2_000_000, T0 + 3)  # rtt 3 ns: midpoint T0 + 1 (floor)
    assert probe_offset_ns(p) == 1_999_999
    assert probe_rtt_ns(p) == 3


def test_best_probes_orders_by_rtt_then_position_and_drops_backwards() -> None:
    a = Probe(T0, T0, T0 + 900)
    b = Probe(T0, T0, T0 + 300)
    c = Probe(T0, T0, T0 - 5)  # host clock stepped back: unusable
    d = Probe(T0 + 10, T0, T0 + 310)  # same rtt as b, later
    assert best_probes([a, b, c, d], 2) == [b, d]
    assert best_probes([a, b, c, d], 10) == [b, d, a]
    with pytest.raises(ValueError):
        best_probes([a], 0)


def test_estimate_uses_median_of_fastest_half() -> None:
    # offsets (ns) and rtts: the slow probes carry wild offsets that must not count
    probes = [
        Probe(T0, T0 + 100 + 1000, T0 + 200),  # rtt 200, offset +1000
        Probe(T0, T0 + 150 + 1200, T0 + 300),  # rtt 300, offset +1200
        Probe(T0, T0 + 5_000_000, T0 + 9_000_000),  # rtt 9 ms, offset +500_000
        Probe(T0, T0 + 125 + 1100, T0 + 250),  # rtt 250, offset +1100
        Probe(T0, T0 - 80_000_000, T0 + 40_000_000),  # rtt 40 ms, offset -100 ms
        Probe(T0, T0 + 200 + 900, T0 + 400),  # rtt 400, offset +900
    ]
    est = estimate(probes)
    assert est == OffsetEstimate(offset_ns=1100, rtt_ns=200, spread_ns=200, probes_used=3,
                                 taken_at_ns=T0 + 100)
    assert est.taken_at == est.taken_at_ns


def test_estimate_even_count_median_and_keep() -> None:
    probes = [Probe(T0, T0 + 50 + off, T0 + 100) for off in (10, 40, 20, 30)]
    est = estimate(probes, keep=4)
    assert est.offset_ns == 25  # between 20 and 30
    assert est.spread_ns == 30
    assert est.probes_used == 4
    assert estimate(probes[:1]).probes_used == 1


def test_estimate_without_usable_probe() -> None:
    with pytest.raises(ValueError):
        estimate([Probe(T0, T0, T0 - 1)])
    with pytest.raises(ValueError):
        estimate([])


def test_within_is_inclusive_and_symmetric() -> None:
    est = OffsetEstimate(offset_ns=-5_000_000, rtt_ns=1, spread_ns=0, probes_used=1, taken_at_ns=T0)
    assert within(est, 5_000_000)
    assert not within(est, 4_999_999)


def test_landing_from_the_residual() -> None:
    # sent host_now + 0.5 ms, guest ended 1.5 ms behind: it landed 2.0 ms after the stamp
    assert landing_ns(500_000, -1_500_000, 13_000_000) == 2_000_000
    # guest ended ahead: landed earlier than assumed
    assert landing_ns(2_000_000, 300_000, 13_000_000) == 1_700_000


def test_landing_is_clamped_to_the_set_round_trip() -> None:
    assert landing_ns(500_000, 10_000_000, 13_000_000) == 0  # cannot land before sending
    assert landing_ns(500_000, -60_000_000, 13_000_000) == 13_000_000  # nor after the reply
    assert landing_ns(500_000, -1, -5) == 0


def test_next_lead_is_the_median_of_prior_and_landings() -> None:
    assert next_lead_ns(500_000, []) == 500_000
    assert next_lead_ns(500_000, [6_500_000]) == 3_500_000  # one outlier moves it only halfway
    assert next_lead_ns(500_000, [6_500_000, 900_000]) == 900_000  # and is outvoted by the next
    assert next_lead_ns(500_000, [2_500_000, 2_500_000]) == 2_500_000  # a steady bias is followed


def test_sync_result_to_dict_is_plain_json_data() -> None:
    before = OffsetEstimate(-15_000_000_000, 900_000, 100_000, 4, T0)
    after = OffsetEstimate(-200_000, 800_000, 90_000, 4, T0 + 50_000_000)
    res = SyncResult(before=before, after=after, attempts=1, ok=True, target_ns=5_000_000,
                     lead_ns=450_000, set_rtt_ns=12_000_000)
    assert res.to_dict() == {
        "ok": True, "attempts": 1, "target_ns": 5_000_000, "lead_ns": 450_000, "set_rtt_ns": 12_000_000,
        "before": {"offset_ns": -15_000_000_000, "rtt_ns": 900_000, "spread_ns": 100_000,
                   "probes_used": 4, "taken_at_ns": T0},
        "after": {"offset_ns": -200_000, "rtt_ns": 800_000, "spread_ns": 90_000,
                  "probes_used": 4, "taken_at_ns": T0 + 50_000_000},
    }


_times = st.integers(min_value=1, max_value=2**63 - 1)


@given(t_send=_times, leg1=st.integers(0, 10**10), leg2=st.integers(0, 10**10),
       offset=st.integers(-(10**18), 10**18))
def test_probe_interval_contains_true_offset(t_send: int, leg1: int, leg2: int, offset: int) -> None:
    # The guest reads at t_send + leg1 (true offset `offset`); the reply is back leg2 later.
    p = Probe(t_send, t_send + leg1 + offset, t_send + leg1 + leg2)
    err = probe_offset_ns(p) - offset
    assert abs(err) <= probe_rtt_ns(p) // 2 + 1
    if leg1 == leg2:
        assert err == 0


@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(-(10**12), 10**12)), min_size=1, max_size=50))
def test_estimate_offset_lies_among_kept_offsets(rows: list[tuple[int, int]]) -> None:
    probes = [Probe(T0, T0 + rtt // 2 + off, T0 + rtt) for rtt, off in rows]
    est = estimate(probes)
    kept = best_probes(probes, est.probes_used)
    offs = [probe_offset_ns(p) for p in kept]
    assert min(offs) <= est.offset_ns <= max(offs)
    assert est.spread_ns == max(offs) - min(offs)
    assert est.rtt_ns == min(probe_rtt_ns(p) for p in probes)

"""The daemon corrects guest clocks after a panic and after freezes it missed (sweep); every other
freeze kind (pause/resume, restore, snapshot, wake-up) is in test_freeze_resync_lab.py.

Ground truth for the guest clock: an independent reading through the guest agent taken by the
test (``guest-get-time`` bracketed by host stamps), not the daemon's own numbers.
"""

from __future__ import annotations

import time

import pytest
from labdaemon import done

pytestmark = pytest.mark.lab


def offset_ms(guest) -> float:  # type: ignore[no-untyped-def]
    """Guest clock minus host clock, best of 5 probes by round trip (ms)."""
    agent = guest.agent()
    best: tuple[int, float] | None = None
    for _ in range(5):
        t0 = time.time_ns()
        g = agent.get_time_ns()
        t1 = time.time_ns()
        cand = (t1 - t0, (g - (t0 + t1) / 2) / 1e6)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return best[1]


def wait_clock_row(d, name: str, reason: str, timeout_s: float = 60) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        cat = d.catalog()
        rows = [r for r in cat.clock_syncs(domain=name) if r["reason"] == reason]
        cat.close()
        if rows:
            return rows[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {reason} clock sync recorded:\n{d.log_text()[-2000:]}")
        time.sleep(0.2)


def test_panic_reset_with_rtc_tracking_guest_is_corrected(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    """The seed's case: the RTC stops with the guest, so a reset guest boots with the freeze in its clock."""
    g = lab_guest(memory_mib=384, rtc="guest")
    g.boot()
    d = daemon(f'[domains."{g.name}"]\nwatch = true\nrecovery = "reset"\n')
    d.start()
    # freeze it for 10 s first, while no daemon corrects it: kill the daemon, pause, resume
    d.stop()
    g.dom.suspend()
    time.sleep(10)
    g.dom.resume()
    assert offset_ms(g) < -9000
    d.start()
    g.crash()
    row = d.wait_row(g.name, done, 240)[0]
    assert row.recovery_action == "reset" and row.recovery_result == "running"
    c = row.clock
    assert c and c["synced"] and c["before_ms"] < -9000, c  # the offset survived the reset
    assert abs(c["after_ms"]) <= 20
    assert abs(offset_ms(g)) <= 20
    shown = d.cli("show", str(row.id), check=True).stdout
    assert "clock" in shown and "(corrected)" in shown
    d.stop()


def test_sweep_catches_a_freeze_the_daemon_missed(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=384)
    g.boot()
    g.dom.suspend()
    time.sleep(5)
    g.dom.resume()  # no daemon running: nobody saw this freeze
    assert offset_ms(g) < -4000
    d = daemon(f'[domains."{g.name}"]\nwatch = true\n'
               "[clock]\nsweep_interval_s = 3\nsweep_threshold_ms = 100\nagent_wait_s = 30\n")
    d.start()
    row = wait_clock_row(d, g.name, "sweep", 60)
    assert row["ok"] == 1 and row["before_ms"] < -4000
    assert abs(offset_ms(g)) <= 20
    d.stop()

"""After a host resume, every watched guest's clock is resynced (the real path, the sleep simulated).

The lab machine cannot suspend itself, so two things are simulated, and only these: the host's
sleep is an injected clock pair whose ``CLOCK_BOOTTIME`` jumps 5 s ahead of ``CLOCK_MONOTONIC``
(what the kernel does over a suspend), and the guest's clock standing still is a 5 s pause of
the real guest while nobody watches. Everything after the detection is real: the daemon's
:class:`~vmcrash.capture.freezewatch.FreezeResyncs` lists the running domains through libvirt,
schedules a resync of the watched one, corrects it over its agent and records it; the result is
checked by an independent agent probe. A real host suspend has not been tried.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clock"))
from _clocklab import independent_offset, pause  # noqa: E402

from vmcrash.capture.freezewatch import FreezeResyncs
from vmcrash.config import parse_config
from vmcrash.store.catalog import Catalog

pytestmark = pytest.mark.lab

S = 1_000_000_000


class SleepingClocks:
    """(boottime, monotonic) of a host that sleeps ``slept_s`` once, between the first two reads."""

    def __init__(self, slept_s: float) -> None:
        self.reads = 0
        self.slept_ns = int(slept_s * S)

    def __call__(self) -> tuple[int, int]:
        self.reads += 1
        mono = time.monotonic_ns()
        return mono + (self.slept_ns if self.reads >= 2 else 0), mono


def test_host_resume_resyncs_the_watched_guests(hv, lab_guest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=512)
    g.boot()
    pause(g.dom, 5)
    before_ns, _ = independent_offset(g.dom)
    assert before_ns < -4.5 * S  # the guest fell behind, as over a host suspend

    cfg = parse_config({"dump_dir": str(tmp_path / "dumps"), "catalog": str(tmp_path / "catalog.sqlite"),
                        "clock": {"host_sleep_check_s": 0.2, "agent_wait_s": 30}})
    catalog = Catalog(tmp_path / "catalog.sqlite")
    clocks = SleepingClocks(5.0)
    freezes = FreezeResyncs(cfg, hv=lambda: hv, catalog=catalog, crash_busy=lambda uuid: False,
                            clock_pair=clocks)
    # other helpers' lab guests run on this host too: only ours is watched, only ours may be touched
    watched = [g.name]

    async def main() -> float:
        stop = threading.Event()
        loop_task = asyncio.create_task(freezes.host_sleep_loop(stop, lambda name: name in watched))
        t0 = time.monotonic()
        while clocks.reads < 2 or freezes.scheduler.pending() == 0:
            assert time.monotonic() - t0 < 10, "host resume not acted on"
            await asyncio.sleep(0.05)
        await freezes.scheduler.drain()
        took = time.monotonic() - t0
        stop.set()
        loop_task.cancel()
        freezes.close()
        return took

    took_s = asyncio.run(main())
    rows = catalog.clock_syncs()
    assert [r["domain"] for r in rows] == [g.name]  # no other domain was resynced
    (row,) = rows
    assert row["reason"] == "host-resume" and row["error"] is None and row["result"]["synced"], row
    assert row["result"]["event"] == "host-resume" and row["result"]["frozen_s"] == 5.0
    assert row["before_ms"] < -4500 and abs(row["after_ms"]) <= 20, row
    offset_ns, rtt_ns = independent_offset(g.dom)
    assert abs(offset_ns) <= 20_000_000 and rtt_ns < 50_000_000, (offset_ns, rtt_ns)
    assert took_s < 10
    catalog.close()

"""Benchmark: resyncing a fleet's clocks after a host boot, bounded (issue 18, item 4).

Part 1 — scheduling alone, simulated: 200 fake agents in this process, each with a clock 60 s
behind, a ``guest-get-time`` round trip of ~1 ms and a ``guest-set-time`` of ~12 ms (the lab's
medians, ``hwclock -w`` included, see ``vmcrash.clock._sync``), and an agent that answers only
at once, or 0–5 s after "the host booted" (restored guests' agents come back late). The real
:func:`vmcrash.clock.sync` runs against them through :class:`vmcrash.clock.fleet.ResyncScheduler`,
with ``max_parallel`` = 1 (the baseline: one guest after the other), 8 (the default) and 32. Printed:
time until every clock is within target, ratio to the baseline, most agent calls seen in flight.

Part 2 — real guests: N lab guests (as many as fit; default 6 × 256 MiB, TCG), one ``vmcrash
watch``; all are managed-saved, 10 s pass, all are started at once (what ``libvirt-guests`` does at
boot). Printed: time from the starts to the last ``restore`` correction recorded, and each guest's
offset by an independent probe (raw ``guest-get-time`` through ``libvirt_qemu``).

    python bench/fleet.py [--agents 200] [--lab-guests 6] [--memory-mib 256] [--skip-lab]

Exit status 0 when it ran (numbers are printed, not enforced: this host's 2 cores are shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from vmcrash.clock import sync
from vmcrash.clock.fleet import AgentReadiness, ResyncJob, ResyncOutcome, ResyncScheduler
from vmcrash.errors import AgentUnavailable

MS = 1_000_000


class FakeAgent:
    """A guest agent in this process: its own clock (host + offset), latencies, a late start."""

    def __init__(self, name: str, offset_ns: int, ready_at_s: float, rng: random.Random) -> None:
        self.name = name
        self.offset_ns = offset_ns
        self.ready_at_s = ready_at_s
        self.rng = rng
        self.lock = threading.Lock()

    def _now_guest(self) -> int:
        return time.time_ns() + self.offset_ns

    def raw(self, execute: str, arguments: dict[str, Any] | None = None, *, timeout_s: int | None = None) -> object:
        if time.monotonic() < self.ready_at_s:
            raise AgentUnavailable(f"{self.name}: QEMU guest agent is not connected", domain=self.name)
        with self.lock:
            rtt_s = self.rng.uniform(0.0006, 0.0014)
        if execute == "guest-ping":
            time.sleep(rtt_s)
            return '{"return": {}}'
        if execute == "guest-get-time":
            time.sleep(rtt_s / 2)
            t = self._now_guest()
            time.sleep(rtt_s / 2)
            return json.dumps({"return": t})
        if execute == "guest-set-time":
            assert arguments is not None
            time.sleep(rtt_s / 2 + 0.0005)  # one way + qemu-ga's handler before settimeofday
            self.offset_ns = int(arguments["time"]) - time.time_ns()
            time.sleep(0.012)  # hwclock -w, then the answer
            return '{"return": {}}'
        raise AssertionError(execute)


def simulate(agents: int, max_parallel: int, late_s: float, seed: int = 18) -> dict[str, Any]:
    """One simulated host boot; returns the timings."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    fleet = {f"u{i}": FakeAgent(f"guest{i:03d}", -60_000 * MS + rng.randrange(-500 * MS, 500 * MS),
                                t0 + rng.uniform(0, late_s), random.Random(seed + i)) for i in range(agents)}
    done: list[ResyncOutcome] = []

    def probe(job: ResyncJob) -> AgentReadiness:
        try:
            fleet[job.key].raw("guest-ping")
            return AgentReadiness.READY
        except AgentUnavailable:
            return AgentReadiness.NOT_YET

    def do_sync(job: ResyncJob) -> dict[str, Any]:
        r = sync(fleet[job.key], target_ns=5 * MS)
        return {"ok": r.ok, "before_ms": r.before.offset_ns / 1e6, "after_ms": r.after.offset_ns / 1e6}

    async def main() -> ResyncScheduler:
        sched = ResyncScheduler(probe=probe, sync=do_sync, on_done=done.append, max_parallel=max_parallel,
                                agent_wait_s=60)
        for key, agent in fleet.items():
            sched.submit(ResyncJob(key, agent.name, "restore", "started/restored"))
        await sched.drain()
        sched.close()
        return sched

    sched = asyncio.run(main())
    wall_s = time.monotonic() - t0
    residual = sorted(abs(fleet[o.job.key].offset_ns) / 1e6 for o in done)
    return {"max_parallel": max_parallel, "wall_s": wall_s, "synced": sum(bool(o.result and o.result["ok"])
                                                                           for o in done),
            "peak_in_flight": sched.peak_in_flight, "worst_residual_ms": residual[-1],
            "last_agent_at_s": max(a.ready_at_s for a in fleet.values()) - t0}


def part1(agents: int) -> None:
    for late_s in (0.0, 5.0):
        print(f"== simulated host boot: {agents} fake agents, 60 s behind, agents back 0-{late_s:g} s after boot")
        runs = [simulate(agents, n, late_s) for n in (1, 8, 32)]
        base = runs[0]["wall_s"]
        print(f"{'max_parallel':>12} {'all synced after':>17} {'vs serial':>10} {'after last agent':>17} "
              f"{'peak in flight':>15} {'worst residual':>15}")
        for r in runs:
            print(f"{r['max_parallel']:>12} {r['wall_s']:>16.2f}s {base / r['wall_s']:>9.1f}x "
                  f"{r['wall_s'] - r['last_agent_at_s']:>16.2f}s {r['peak_in_flight']:>15} "
                  f"{r['worst_residual_ms']:>12.2f} ms   ({r['synced']}/{agents} within target)")


def _independent_offset_ms(dom: Any) -> float:
    import libvirt_qemu

    best: tuple[int, int, int] | None = None
    for _ in range(16):
        t0 = time.time_ns()
        g = json.loads(libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-get-time"}', 5, 0))["return"]
        t1 = time.time_ns()
        if best is None or t1 - t0 < best[2] - best[0]:
            best = (t0, g, t1)
    assert best is not None
    return (best[1] - (best[0] + best[2]) // 2) / 1e6


def part2(n: int, memory_mib: int) -> None:
    from vmcrash.host.connection import Hypervisor
    from vmcrash.lab.daemons import LibvirtDaemons
    from vmcrash.lab.guest import GuestSpec, LabGuest
    from vmcrash.lab.image import build_image
    from vmcrash.store.catalog import Catalog

    print(f"== real host-boot restore: {n} lab guests x {memory_mib} MiB, one vmcrash watch")
    daemons = LibvirtDaemons()
    daemons.start()
    hv = Hypervisor()
    image = build_image()
    guests = [LabGuest(GuestSpec(memory_mib=memory_mib), hv=hv, image=image) for _ in range(n)]
    work = Path(tempfile.mkdtemp(prefix="vmcrash-bench-fleet-"))
    proc = None
    try:
        t = time.monotonic()
        for g in guests:
            g.start()
        for g in guests:
            g.wait_ready(300)
        print(f"booted {n} guests in {time.monotonic() - t:.1f} s")
        cfg = work / "vmcrash.toml"
        catalog = work / "catalog.sqlite"
        cfg.write_text(f'dump_dir = "{work / "dumps"}"\ncatalog = "{catalog}"\nmin_free_mib = 64\n'
                       '[clock]\nsweep_interval_s = 0\nagent_wait_s = 90\n[domains."*"]\nwatch = false\n'
                       + "".join(f'[domains."{g.name}"]\nwatch = true\n' for g in guests))
        log = open(work / "watch.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "vmcrash.cli.main", "--config", str(cfg), "-v", "watch"],
                                stdout=log, stderr=subprocess.STDOUT)
        while b"reconciled:" not in (work / "watch.log").read_bytes():
            time.sleep(0.1)
        threads = [threading.Thread(target=g.dom.managedSave, args=(0,)) for g in guests]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        time.sleep(10)
        t_start = time.monotonic()
        threads = [threading.Thread(target=g.dom.create) for g in guests]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        started_s = time.monotonic() - t_start
        rows: list[dict[str, Any]] = []
        while len(rows) < n and time.monotonic() - t_start < 180:
            cat = Catalog(catalog)
            rows = [r for r in cat.clock_syncs(limit=1000) if r["reason"] == "restore"]
            cat.close()
            time.sleep(0.1)
        all_s = time.monotonic() - t_start
        print(f"started all in {started_s:.1f} s; {len(rows)}/{n} restore corrections recorded "
              f"{all_s:.1f} s after the first start")
        for r in sorted(rows, key=lambda r: r["domain"]):
            g = next(x for x in guests if x.name == r["domain"])
            res = r["result"] or {}
            print(f"  {r['domain']}: {r['before_ms']:+9.1f} ms -> {r['after_ms']:+6.2f} ms "
                  f"(daemon, ok={bool(r['ok'])}), "
                  f"independent probe {_independent_offset_ms(g.dom):+6.2f} ms, agent wait "
                  f"{res.get('agent_waited_s')} s, took {res.get('took_s')} s")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        for g in guests:
            try:
                if g.dom is not None and g.dom.hasManagedSaveImage(0):
                    g.dom.managedSaveRemove(0)
            except Exception:
                pass
            g.cleanup()
        hv.close()
        daemons.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--lab-guests", type=int, default=6)
    ap.add_argument("--memory-mib", type=int, default=256)
    ap.add_argument("--skip-lab", action="store_true")
    args = ap.parse_args()
    part1(args.agents)
    if not args.skip_lab:
        part2(args.lab_guests, args.memory_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())

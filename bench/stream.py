"""Benchmark: the streamed dump's consumer — one thread (read, classify, write) or two (reader | writer)?

On one crashed 2 GiB lab guest with 1 GiB of random data (its memory does not change while it is
crashed, so every run dumps the same bytes), dump it repeatedly with ``take_dump`` in stream mode
with ``threads=1`` and ``threads=2``, to a tmpfs and to the disk, and with libvirt writing the
file itself (``direct``) as the baseline in the same process. Prints the median seconds of each
and the ratio to ``direct``.

Usage: ``python bench/stream.py [--runs N] [--memory MiB --fill MiB]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vmcrash.capture.dumping import take_dump  # noqa: E402
from vmcrash.host import aio  # noqa: E402
from vmcrash.host.connection import Hypervisor  # noqa: E402
from vmcrash.lab.daemons import LibvirtDaemons  # noqa: E402
from vmcrash.lab.guest import GuestSpec, LabGuest  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=2048)
    ap.add_argument("--fill", type=int, default=1024)
    args = ap.parse_args()
    expected = args.memory * 2**20 + (16 << 20)
    results: dict[str, list[float]] = {}
    with LibvirtDaemons():
        aio.event_loop()
        with Hypervisor() as hv, LabGuest(GuestSpec(memory_mib=args.memory, fill_mib=args.fill), hv=hv) as g:
            g.boot(900)
            g.crash()
            g.wait_state("crashed", 60)
            dirs = {"tmpfs": Path("/dev/shm"), "disk": Path("/var/tmp")}
            for _ in range(args.runs):
                for where, base in dirs.items():
                    cases = [("direct", "direct", 1), ("stream-1", "stream", 1), ("stream-2", "stream", 2)]
                    for label, mode, threads in cases:
                        with tempfile.TemporaryDirectory(dir=base, prefix="vmcrash-bench-") as tmp:
                            target = Path(tmp) / "dump.elf"
                            t0 = time.monotonic()
                            take_dump(g.dom, target, "elf", mode=mode, expected_bytes=expected, threads=threads)
                            results.setdefault(f"{where}:{label}", []).append(time.monotonic() - t0)
    print(f"{args.memory} MiB guest, {args.fill} MiB random, median of {args.runs} runs")
    print(f"  {'target':<8} {'consumer':<10} {'seconds':>8} {'x direct':>9}")
    for where in ("tmpfs", "disk"):
        base = statistics.median(results[f"{where}:direct"])
        for label in ("direct", "stream-1", "stream-2"):
            med = statistics.median(results[f"{where}:{label}"])
            print(f"  {where:<8} {label:<10} {med:>8.2f} {med / base:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

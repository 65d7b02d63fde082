"""Benchmark: would capture mode ``copy`` (anonymous RAM) freeze a guest shorter than ``stream``?

``copy`` would, while the crashed guest is stopped, take only the pages present in the QEMU process
(``/proc/<pid>/pagemap``) from ``/proc/<pid>/mem`` into vmcrash's memory, at the host addresses QEMU's
own memory map gives (``info mtree -f`` + ``gpa2hva``), then recover and write behind. Its freeze
would be (pagemap scan + copy of present pages) + restart; ``stream``'s is (QEMU emits every page,
vmcrash writes the non-zero ones) + restart. This measures both copy steps and a streamed dump of the
same crashed guest in one process and prints the ratio; the restart is the same for both.

Usage: ``python bench/copy_probe.py [--memory-mib 2048] [--fill-mib 1024]``.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vmcrash.capture.dumping import take_dump  # noqa: E402
from vmcrash.host import qemu_memory  # noqa: E402
from vmcrash.host.connection import Hypervisor  # noqa: E402
from vmcrash.lab.daemons import LibvirtDaemons  # noqa: E402
from vmcrash.lab.guest import GuestSpec, LabGuest  # noqa: E402

PAGE = 4096
PRESENT = 1 << 63
SWAPPED = 1 << 62


def present_runs(pid: int, hva: int, size: int) -> list[tuple[int, int]]:
    """Runs (host address, bytes) of pages present or swapped in ``[hva, hva + size)``."""
    runs: list[tuple[int, int]] = []
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        step = 1 << 30
        for base in range(hva, hva + size, step):
            n = min(step, hva + size - base) // PAGE
            f.seek(base // PAGE * 8)
            data = f.read(n * 8)
            for i, (entry,) in enumerate(struct.iter_unpack("<Q", data)):
                if entry & (PRESENT | SWAPPED):
                    addr = base + i * PAGE
                    if runs and runs[-1][0] + runs[-1][1] == addr:
                        runs[-1] = (runs[-1][0], runs[-1][1] + PAGE)
                    else:
                        runs.append((addr, PAGE))
    return runs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory-mib", type=int, default=2048)
    ap.add_argument("--fill-mib", "--fill-mb", type=int, default=1024)
    args = ap.parse_args()
    with LibvirtDaemons():
        hv = Hypervisor()
        with LabGuest(GuestSpec(memory_mib=args.memory_mib, fill_mib=args.fill_mib), hv=hv) as g:
            g.boot(900)
            g.crash()
            g.wait_state("crashed", 120)
            assert g.dom is not None
            pid = qemu_memory.qemu_pid(g.name)
            t0 = time.monotonic()
            ranges = qemu_memory.read_ram_ranges(g.dom, pid)
            t_map = time.monotonic() - t0
            t0 = time.monotonic()
            runs = [r for rr in ranges for r in present_runs(pid, rr.hva, rr.size_bytes)]
            t_scan = time.monotonic() - t0
            present = sum(n for _, n in runs)
            t0 = time.monotonic()
            buf = bytearray(present)  # what copy must hold in vmcrash's own memory
            view = memoryview(buf)
            fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
            pos = 0
            try:
                for addr, n in runs:
                    got = os.preadv(fd, [view[pos:pos + n]], addr)
                    pos += got
            finally:
                os.close(fd)
            t_copy = time.monotonic() - t0
            del view, buf
            with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
                target = Path(tmp) / "stream.elf"
                st = take_dump(g.dom, target, "elf", mode="stream", expected_bytes=args.memory_mib << 20,
                               threads=2)
            copy_s = t_map + t_scan + t_copy
            print(f"guest {args.memory_mib} MiB, {args.fill_mib} MiB random (anonymous RAM)")
            print(f"  copy:   memory map {t_map * 1e3:.0f} ms, pagemap scan {t_scan * 1e3:.0f} ms, "
                  f"{present >> 20} MiB present copied in {t_copy:.2f} s  => {copy_s:.2f} s, holds {present >> 20} MiB")
            print(f"  stream: {st.stream_bytes >> 20} MiB emitted by QEMU, {st.written_bytes >> 20} MiB written "
                  f"in {st.seconds:.2f} s")
            print(f"  copy / stream = {copy_s / st.seconds:.2f}")
        hv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

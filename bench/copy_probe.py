"""Benchmark: capture mode ``copy`` against ``stream`` on the same crashed guest, and what bounds the copy.

On one crashed lab guest (anonymous RAM by default), in one process:

* ``copy_image`` (the product's copy: QEMU's memory map, ``/proc/<pid>/pagemap``, the present pages
  read into one anonymous buffer) with 1, 2 and 4 threads, the buffer with and without transparent
  huge pages, each time on a fresh buffer (the page faults of the destination are part of the cost);
* a streamed dump of the same crashed guest (``take_dump`` mode ``stream``), the mode ``copy``
  replaces.

Prints each time, the present bytes, the copy rate, and ``copy / stream`` ratios. The freeze of a
crash is this copy plus the recovery (the same for both modes), so the ratio says what ``copy``
saves. The baseline (``stream``) runs in the same process on the same guest.

Usage: ``python bench/copy_probe.py [--memory-mib 2048] [--fill-mib 1024] [--memfd]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vmcrash.capture import hold  # noqa: E402
from vmcrash.capture.dumping import take_dump  # noqa: E402
from vmcrash.host import qemu_memory  # noqa: E402
from vmcrash.host.connection import Hypervisor  # noqa: E402
from vmcrash.lab.daemons import LibvirtDaemons  # noqa: E402
from vmcrash.lab.guest import GuestSpec, LabGuest  # noqa: E402


def timed_copy(g: LabGuest, pid: int, header: hold.DumpHeader, *, threads: int, thp: bool) -> tuple[float, int]:
    """Seconds and bytes of one ``copy_image`` (the buffer freed after)."""
    t0 = time.monotonic()
    image = hold.copy_image(g.dom, g.name, pid, header, limit_bytes=1 << 40, threads=threads, huge_pages=thp)
    took = time.monotonic() - t0
    held = image.held_bytes()
    image.close()
    return took, held


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory-mib", type=int, default=2048)
    ap.add_argument("--fill-mib", "--fill-mb", type=int, default=1024)
    ap.add_argument("--memfd", action="store_true", help="memfd-backed RAM (copy reads the file's data extents)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    spec = GuestSpec(memory_mib=args.memory_mib, fill_mib=args.fill_mib,
                     memory_backing="memfd" if args.memfd else "anonymous")
    with LibvirtDaemons():
        hv = Hypervisor()
        with LabGuest(spec, hv=hv) as g, tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            g.boot(900)
            g.crash()
            g.wait_state("crashed", 120)
            assert g.dom is not None
            pid = qemu_memory.qemu_pid(g.name)
            t0 = time.monotonic()
            header = hold.grab_dump_header(g.dom, Path(tmp))
            header_s = time.monotonic() - t0
            t0 = time.monotonic()
            qemu_memory.read_ram_ranges(g.dom, pid)
            map_s = time.monotonic() - t0
            results: dict[str, list[float]] = {}
            held = 0
            for _ in range(args.repeat):  # interleaved, so that drift hits every variant alike
                for threads in (1, 2, 4):
                    for thp in (False, True):
                        took, held = timed_copy(g, pid, header, threads=threads, thp=thp)
                        results.setdefault(f"copy {threads} thread(s){', THP' if thp else ''}", []).append(took)
            target = Path(tmp) / "stream.elf"
            st = take_dump(g.dom, target, "elf", mode="stream", expected_bytes=args.memory_mib << 20, threads=2)
            print(f"guest {args.memory_mib} MiB, {args.fill_mib} MiB random, {spec.memory_backing} RAM")
            print(f"  QEMU's dump header {header_s * 1e3:.0f} ms, QEMU's memory map {map_s * 1e3:.0f} ms "
                  f"(both in every copy below)")
            print(f"  stream (baseline): {st.stream_bytes >> 20} MiB emitted by QEMU, {st.written_bytes >> 20} MiB "
                  f"written in {st.seconds:.2f} s")
            for name, times in results.items():
                best = min(times)
                print(f"  {name:<24} best {best:.2f} s of {len(times)} ({held / best / 1e9:.2f} GB/s, "
                      f"{held >> 20} MiB)  copy/stream = {best / st.seconds:.2f}")
        hv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

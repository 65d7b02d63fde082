"""Benchmark: ``vmcrash analyze`` time and bytes read on 512 MiB and 2 GiB lab dumps, in every format.

Each size gets one crashed lab guest (the 2 GiB one first fills 1 GiB of tmpfs with random data),
dumped by libvirt as memory-only ELF and as kdump-zlib (flattened), and rearranged to seekable
kdump by vmcrash. For each dump the analysis (a fresh ``analyze()`` in this process, page cache
warm after one untimed run) is timed and its bytes read from the file counted. The baseline in
the same process is reading the whole file once (what any tool that loads or rewrites the dump
pays, e.g. ``makedumpfile -R``); the ratio is analyze time / baseline time.
Goal (issue 5): analyze <= 1 s and flat in the dump size.

Also timed, for the lead's capture pipeline: ``rearrange_flattened`` and ``convert_to_kdump``
(``codec=auto`` from the ELF) per size.

    python bench/analyze.py [--sizes 512,2048] [--keep DIR] [--repeat 3]

``--keep DIR`` stores the dumps there and reuses them on the next run. Exit status 0 when it ran.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import libvirt

from vmcrash.host import aio
from vmcrash.host.connection import Hypervisor
from vmcrash.lab.daemons import LibvirtDaemons
from vmcrash.lab.guest import GuestSpec, LabGuest
from vmcrash.lab.image import build_image
from vmcrash.vmcore import analyze, convert_to_kdump, rearrange_flattened


def make_dumps(hv: Hypervisor, size_mib: int, out: Path) -> dict[str, Path]:
    paths = {"elf": out / f"{size_mib}.elf", "kdump-flattened": out / f"{size_mib}.kdump-zlib",
             "kdump (rearranged)": out / f"{size_mib}.kdump"}
    if all(p.exists() for p in paths.values()):
        return paths
    for p in paths.values():
        p.unlink(missing_ok=True)
    fill = 1024 if size_mib >= 2048 else 0
    spec = GuestSpec(memory_mib=size_mib, fill_mib=fill, hostname=f"bench-{size_mib}")
    with LabGuest(spec, hv=hv, image=build_image()) as g:
        t = time.monotonic()
        g.boot(timeout_s=600)
        print(f"  {size_mib} MiB guest ready in {time.monotonic() - t:.1f} s (fill {fill} MiB)", flush=True)
        g.crash()
        g.wait_state("crashed", 120)
        for fmt, key in ((libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, "elf"),
                         (libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB, "kdump-flattened")):
            t = time.monotonic()
            g.dom.coreDumpWithFormat(str(paths[key]), fmt, libvirt.VIR_DUMP_MEMORY_ONLY)
            print(f"  libvirt {key} dump: {time.monotonic() - t:.1f} s", flush=True)
    t = time.monotonic()
    rearrange_flattened(paths["kdump-flattened"], paths["kdump (rearranged)"])
    print(f"  rearrange_flattened: {time.monotonic() - t:.2f} s", flush=True)
    return paths


def read_whole(path: Path) -> float:
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf := bytearray(8 << 20)):
            pass
    del buf
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="512,2048")
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    out = args.keep or Path(tempfile.mkdtemp(prefix="vmcrash-bench-", dir="/var/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    daemons = LibvirtDaemons()
    daemons.start()
    aio.event_loop()
    hv = Hypervisor()
    rows = []
    try:
        for size in sizes:
            print(f"{size} MiB guest:", flush=True)
            paths = make_dumps(hv, size, out)
            for fmt, path in paths.items():
                analyze(path)  # warm the page cache the way a second look would
                times, t = [], None
                for _ in range(args.repeat):
                    t = analyze(path)
                    times.append(t.seconds)
                assert t is not None
                base = read_whole(path)
                rows.append((size, fmt, path.stat().st_size, statistics.median(times), t.bytes_read, base,
                             t.panic_line is not None))
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                t0 = time.perf_counter()
                res = convert_to_kdump(paths["elf"], Path(tmp) / "c.kdump", codec="auto")
                print(f"  convert_to_kdump(ELF, codec={res.codec}): {time.perf_counter() - t0:.1f} s, "
                      f"{res.src_size_bytes / 2**20:.0f} -> {res.dst_size_bytes / 2**20:.0f} MiB, "
                      f"{res.pages_excluded} zero pages excluded, {res.pages_raw} stored raw", flush=True)
        print()
        print(f"{'guest':>6} {'format':<20} {'file MiB':>9} {'analyze s':>10} {'read MiB':>9} "
              f"{'read-all s':>10} {'ratio':>6} panic")
        for size, fmt, fsize, secs, nread, base, ok in rows:
            print(f"{size:>5}M {fmt:<20} {fsize / 2**20:>9.0f} {secs:>10.3f} {nread / 2**20:>9.2f} "
                  f"{base:>10.3f} {secs / base:>6.3f} {'yes' if ok else 'NO'}")
        worst = max(r[3] for r in rows)
        by_fmt: dict[str, list[float]] = {}
        for size, fmt, *_rest in rows:
            by_fmt.setdefault(fmt, []).append(next(r[3] for r in rows if r[0] == size and r[1] == fmt))
        print(f"\nslowest analyze: {worst:.3f} s (goal <= 1 s)")
        if len(sizes) > 1:
            for fmt, secs in by_fmt.items():
                print(f"  {fmt:<20} {sizes[-1]} MiB / {sizes[0]} MiB analyze time: {secs[-1] / secs[0]:.2f}x "
                      f"(memory {sizes[-1] / sizes[0]:.0f}x)")
    finally:
        hv.close()
        daemons.stop()
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

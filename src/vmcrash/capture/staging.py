"""Staging a streamed dump in RAM (tmpfs) so the guest's freeze is bounded by memory speed.

The daemon stages a dump only when host RAM allows it with the configured headroom to spare and
(by default) only when it is needed: a dump that the page cache takes without throttling is
written at memory speed straight into the dump dir (measured here: staging in tmpfs was no
faster for 2 GiB guests, see bench/freeze.py). After the guest runs again a staged file is moved
(sparse: only its data extents are copied) into the dump directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vmcrash.capture.files import storage_errors

__all__ = ["StagingDecision", "decide_staging", "dirty_allowance_bytes", "mem_available_bytes", "move_sparse",
           "STAGING_SUBDIR"]

STAGING_SUBDIR = "vmcrash-staging"


@dataclass(frozen=True)
class StagingDecision:
    """Where a dump is first written. ``directory`` None: straight to the dump dir."""

    directory: Path | None
    reason: str


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemAvailable`` from /proc/meminfo, in bytes (0 when unknown)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def decide_staging(*, mode: str, tmpfs_dir: Path, expected_bytes: int, headroom_bytes: int,
                   mem_available: int, tmpfs_free: int, dirty_allowance: int) -> StagingDecision:
    """Where to write a dump first (pure).

    ``mode`` ``"never"``: the dump dir. ``"auto"``: the dump dir too when the page cache can take
    the whole dump before the kernel starts throttling writers (``dirty_allowance`` bytes: the
    write then runs at memory speed anyway); otherwise, like ``"always"``, the tmpfs, but only
    if RAM and the tmpfs keep ``headroom_bytes`` after it.
    """
    mib = 1024 * 1024
    if mode == "never":
        return StagingDecision(None, "staging disabled")
    if mode == "auto" and expected_bytes <= dirty_allowance:
        return StagingDecision(None, f"page cache absorbs up to {dirty_allowance // mib} MiB unthrottled; "
                                     f"dump up to {expected_bytes // mib} MiB goes straight to the dump dir")
    if mem_available - expected_bytes < headroom_bytes:
        return StagingDecision(None, f"not enough RAM to stage: {mem_available // mib} MiB available, dump "
                                     f"up to {expected_bytes // mib} MiB, headroom {headroom_bytes // mib} MiB")
    if tmpfs_free < expected_bytes:
        return StagingDecision(None, f"{tmpfs_dir} has {tmpfs_free // mib} MiB free, dump needs up to "
                                     f"{expected_bytes // mib} MiB")
    return StagingDecision(tmpfs_dir / STAGING_SUBDIR, f"staged in {tmpfs_dir} ({mem_available // mib} MiB "
                                                       f"RAM available)")


def _copy_range(sfd: int, dfd: int, start: int, end: int) -> int:
    """Copy bytes [start, end) at the same offsets; copy_file_range when the kernel allows it
    (same filesystem), else large pread/pwrite (tmpfs -> disk is cross-device)."""
    off = start
    try:
        while off < end:
            n = os.copy_file_range(sfd, dfd, min(end - off, 1 << 30), off, off)
            if n <= 0:
                break
            off += n
    except OSError as exc:
        if exc.errno not in (18, 22, 95, 38):  # EXDEV, EINVAL, EOPNOTSUPP, ENOSYS
            raise
    while off < end:
        buf = os.pread(sfd, min(end - off, 8 << 20), off)
        if not buf:
            break
        view = memoryview(buf)
        pos = off
        while view:
            w = os.pwrite(dfd, view, pos)
            view = view[w:]
            pos += w
        off += len(buf)
    return off - start


def dirty_allowance_bytes(proc: Path = Path("/proc")) -> int:
    """Bytes writers may dirty before the kernel throttles them (0 when unknown).

    The kernel lets writers run freely below the midpoint of the background and hard dirty
    limits (``vm.dirty_*``), computed over roughly the available memory; already dirty and
    writeback pages count against it.
    """
    def read_int(name: str) -> int:
        try:
            return int((proc / "sys" / "vm" / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    info: dict[str, int] = {}
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return 0
    available = info.get("MemAvailable", 0)
    limit = read_int("dirty_bytes") or available * read_int("dirty_ratio") // 100
    background = read_int("dirty_background_bytes") or available * read_int("dirty_background_ratio") // 100
    freerun = (limit + background) // 2
    return max(0, freerun - info.get("Dirty", 0) - info.get("Writeback", 0))


def move_sparse(src: Path, dst: Path) -> int:
    """Copy ``src`` to a new file ``dst`` (0600) keeping holes, then remove ``src``.

    Only data extents (``SEEK_DATA``/``SEEK_HOLE``) are copied. Returns bytes copied. On failure
    ``dst`` is removed and ``src`` kept.
    """
    copied = 0
    with storage_errors("cannot move staged dump", dst):
        sfd = os.open(src, os.O_RDONLY)
        try:
            size = os.fstat(sfd).st_size
            dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            ok = False
            try:
                pos = 0
                while pos < size:
                    try:
                        data = os.lseek(sfd, pos, os.SEEK_DATA)
                    except OSError:  # ENXIO: only a hole remains
                        break
                    hole = os.lseek(sfd, data, os.SEEK_HOLE)
                    copied += _copy_range(sfd, dfd, data, hole)
                    pos = hole
                os.ftruncate(dfd, size)
                ok = True
            finally:
                os.close(dfd)
                if not ok:
                    os.unlink(dst)
        finally:
            os.close(sfd)
        os.unlink(src)
    return copied

"""Disk safety: will the next dump fit, which old dumps make room, which exceed the limits.

Planning is pure (lists of :class:`KeptDump` in, decisions out); :func:`disk_free_bytes` and
the executor that deletes is :mod:`~vmcrash.capture.prune`. Oldest dumps go first; pruning for space never
takes a domain below ``keep_min_per_domain`` dumps.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vmcrash.capture.files import storage_errors
from vmcrash.config import Retention

__all__ = [
    "ELF_OVERHEAD_BYTES",
    "KeptDump",
    "SpacePlan",
    "estimate_dump_bytes",
    "plan_space",
    "plan_retention",
    "disk_free_bytes",
    "disk_usage_bytes",
]

#: ELF headers and notes on top of guest RAM (generous: one PT_LOAD per RAM block, notes per vCPU).
ELF_OVERHEAD_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class KeptDump:
    """A finished dump on disk. ``size_bytes`` is what it occupies (sparse files count their blocks)."""

    crash_id: int
    uuid: str
    path: Path
    size_bytes: int
    ended_ns: int


@dataclass(frozen=True)
class SpacePlan:
    """Whether a dump of ``need_bytes`` fits, and which old dumps to delete first to make it fit."""

    fits: bool
    need_bytes: int
    free_bytes: int
    reserve_bytes: int
    delete: tuple[KeptDump, ...]
    reason: str


def estimate_dump_bytes(memory_bytes: int, fmt: str) -> int:
    """Upper bound of a dump's size: guest RAM plus headers (ELF and, worst case, kdump)."""
    return memory_bytes + ELF_OVERHEAD_BYTES


def plan_space(kept: list[KeptDump], *, need_bytes: int, free_bytes: int, reserve_bytes: int,
               keep_min_per_domain: int) -> SpacePlan:
    """Plan room for ``need_bytes`` keeping ``reserve_bytes`` free, deleting oldest dumps first."""
    if free_bytes - need_bytes >= reserve_bytes:
        return SpacePlan(True, need_bytes, free_bytes, reserve_bytes, (), "enough free space")
    per_domain = Counter(d.uuid for d in kept)
    chosen: list[KeptDump] = []
    gained = 0
    for dump in sorted(kept, key=lambda d: (d.ended_ns, d.crash_id)):
        if per_domain[dump.uuid] <= keep_min_per_domain:
            continue
        chosen.append(dump)
        per_domain[dump.uuid] -= 1
        gained += dump.size_bytes
        if free_bytes + gained - need_bytes >= reserve_bytes:
            return SpacePlan(True, need_bytes, free_bytes, reserve_bytes, tuple(chosen),
                             f"deleting {len(chosen)} old dump(s) makes room")
    mib = 1024 * 1024
    return SpacePlan(
        False, need_bytes, free_bytes, reserve_bytes, (),
        f"not enough space: dump needs up to {need_bytes // mib} MiB, {free_bytes // mib} MiB free, "
        f"{reserve_bytes // mib} MiB must stay free, deletable old dumps give {gained // mib} MiB",
    )


def plan_retention(kept: list[KeptDump], retention: Retention, now_ns: int) -> list[KeptDump]:
    """Dumps that exceed the retention limits (per domain count, total size, age), oldest first."""
    doomed: dict[int, KeptDump] = {}
    ordered = sorted(kept, key=lambda d: (d.ended_ns, d.crash_id))
    if retention.max_dumps_per_domain:
        by_uuid: dict[str, list[KeptDump]] = {}
        for d in ordered:
            by_uuid.setdefault(d.uuid, []).append(d)
        for dumps in by_uuid.values():
            for d in dumps[: max(0, len(dumps) - retention.max_dumps_per_domain)]:
                doomed[d.crash_id] = d
    if retention.max_age_days:
        limit_ns = now_ns - int(retention.max_age_days * 86400e9)
        for d in ordered:
            if d.ended_ns < limit_ns:
                doomed[d.crash_id] = d
    if retention.max_total_bytes:
        total = sum(d.size_bytes for d in ordered if d.crash_id not in doomed)
        for d in ordered:
            if total <= retention.max_total_bytes:
                break
            if d.crash_id not in doomed and d is not ordered[-1]:
                doomed[d.crash_id] = d
                total -= d.size_bytes
    return [d for d in ordered if d.crash_id in doomed]


def disk_free_bytes(path: Path) -> int:
    """Bytes available to unprivileged writers on the filesystem holding ``path``."""
    with storage_errors("cannot stat filesystem", path):
        st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_usage_bytes(path: Path) -> int:
    """Bytes a file really occupies (allocated blocks; sparse holes are free)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0

"""Background compaction after the guest runs again: ELF → seekable kdump, flattened kdump → seekable.

Runs as its own process (``python -m vmcrash.capture.compact``) at the lowest CPU priority and in
the idle I/O class, so it neither competes with guests nor holds the daemon's GIL. It is
resumable (the writer keeps ``<dst>.part`` and a checkpoint), dies with the daemon (parent-death
signal), and never runs the disk below the reserved free space: it refuses to start, or stops
and leaves its checkpoint, when free space would fall under the reserve.

The daemon side (:func:`plan_compaction`, :func:`run_compaction`) decides what to write and
records the outcome; :func:`main` is the worker process.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmcrash.capture.retention import disk_free_bytes, disk_usage_bytes
from vmcrash.errors import EXIT_ENVIRONMENT, EXIT_USAGE, StorageError, VmcrashError

__all__ = ["CompactionPlan", "plan_compaction", "compaction_argv", "run_compaction", "terminate_workers",
           "main", "set_low_priority"]

_SYS_IOPRIO_SET = 251  # x86-64
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3
_PR_SET_PDEATHSIG = 1
#: Free space is re-checked after this much input.
CHECK_EVERY_BYTES = 64 << 20


@dataclass(frozen=True)
class CompactionPlan:
    """What to do with one finished dump. ``kind``: ``convert`` (ELF) or ``rearrange`` (flattened)."""

    kind: str
    src: Path
    dst: Path
    drop_src: bool


def plan_compaction(dump_path: Path, fmt: str, *, keep_elf: bool) -> CompactionPlan:
    """The compaction of a dump: its seekable kdump sibling ``<stem>.kdump``. Pure."""
    dst = dump_path.with_suffix(".kdump")
    if fmt == "elf":
        return CompactionPlan("convert", dump_path, dst, drop_src=not keep_elf)
    # kdump formats arrive flattened: the seekable file has the same pages, the stream is redundant
    return CompactionPlan("rearrange", dump_path, dst, drop_src=True)


def set_low_priority() -> None:
    """nice 19 and the idle I/O class for the calling process (Linux; best effort)."""
    try:
        os.nice(19)
    except OSError:
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(_SYS_IOPRIO_SET, _IOPRIO_WHO_PROCESS, 0, _IOPRIO_CLASS_IDLE << 13)
    except (OSError, AttributeError):
        pass


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def compaction_argv(plan: CompactionPlan, *, codec: str, reserve_bytes: int, exclude_free: bool = True) -> list[str]:
    return [sys.executable, "-m", "vmcrash.capture.compact", "--kind", plan.kind, "--src", str(plan.src),
            "--dst", str(plan.dst), "--codec", codec, "--reserve-bytes", str(reserve_bytes)] + (
        ["--exclude-free"] if exclude_free else [])


_running: set[subprocess.Popen[str]] = set()


def terminate_workers() -> None:
    """Stop running compaction workers (daemon shutdown); their checkpoints let them resume later."""
    for proc in list(_running):
        try:
            proc.terminate()
        except OSError:
            pass


def run_compaction(plan: CompactionPlan, *, codec: str, reserve_bytes: int,
                   exclude_free: bool = True) -> dict[str, Any]:
    """Run the worker process and return its JSON result (``{"ok": false, "error": ...}`` on failure)."""
    proc = subprocess.Popen(compaction_argv(plan, codec=codec, reserve_bytes=reserve_bytes,
                                            exclude_free=exclude_free),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_die_with_parent)
    _running.add(proc)
    try:
        out, err = proc.communicate()
    finally:
        _running.discard(proc)
    try:
        doc = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        doc = {"ok": False, "retry": proc.returncode < 0, "interrupted": proc.returncode < 0,
               "error": (err.strip() or f"worker exited with {proc.returncode}")[-500:]}
    doc["exit_code"] = proc.returncode
    return doc


def _work(kind: str, src: Path, dst: Path, codec: str, reserve_bytes: int,
          exclude_free: bool = False) -> dict[str, Any]:
    from vmcrash import vmcore

    directory = dst.parent
    need = disk_usage_bytes(src)
    part_now = disk_usage_bytes(dst.with_name(dst.name + ".part"))
    free = disk_free_bytes(directory)
    if free - max(0, need - part_now) < reserve_bytes:
        raise StorageError(f"waiting for space: compaction may need {need >> 20} MiB, {free >> 20} MiB free, "
                           f"{reserve_bytes >> 20} MiB reserved", path=str(directory))
    checked = [0]

    def progress(done: int, total: int) -> None:
        if done - checked[0] >= CHECK_EVERY_BYTES:
            checked[0] = done
            if disk_free_bytes(directory) < reserve_bytes:
                raise StorageError("stopped: free space fell to the reserve; will resume later",
                                   path=str(directory))

    t0 = time.monotonic()
    if kind == "convert":
        result = vmcore.convert_to_kdump(src, dst, codec=codec, progress=progress,
                                         exclude_free=exclude_free)
    else:
        result = vmcore.rearrange_flattened(src, dst, progress=progress)
    doc = result.to_dict()
    src_alloc = disk_usage_bytes(src)
    doc.update(ok=True, kind=kind, seconds=round(time.monotonic() - t0, 3),
               src_allocated_bytes=src_alloc, output_bytes=dst.stat().st_size,
               ratio=round(dst.stat().st_size / max(1, src.stat().st_size), 4))
    return doc


def main(argv: list[str] | None = None) -> int:
    """Worker entry point; prints one JSON line and exits 0 (done), 3 (space/environment), 2 (bad dump)."""
    ap = argparse.ArgumentParser(prog="python -m vmcrash.capture.compact")
    ap.add_argument("--kind", choices=["convert", "rearrange"], required=True)
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--dst", type=Path, required=True)
    ap.add_argument("--codec", default="auto")
    ap.add_argument("--reserve-bytes", type=int, default=0)
    ap.add_argument("--exclude-free", action="store_true", help="leave the guest's free pages out")
    args = ap.parse_args(argv)
    set_low_priority()
    try:
        doc = _work(args.kind, args.src, args.dst, args.codec, args.reserve_bytes, args.exclude_free)
        code = 0
    except VmcrashError as exc:
        doc = {"ok": False, "error": str(exc), "retry": exc.exit_code == EXIT_ENVIRONMENT}
        code = exc.exit_code if exc.exit_code in (EXIT_USAGE, EXIT_ENVIRONMENT) else EXIT_USAGE
    print(json.dumps(doc), flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

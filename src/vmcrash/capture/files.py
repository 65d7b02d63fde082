"""Dump files on disk: safe names inside the dump dir, temp files, fsync + atomic rename, sidecars.

Dumps hold guest secrets: the directory is 0700 and every file 0600. Domain names come from
whoever defined the domain and may hold ``..``, slashes, quotes or any Unicode: they are reduced
to a safe ASCII component, and every final path is checked to be directly inside the dump dir.

A dump is complete only under its final name ``<domain>-<uuid8>-<UTC time>.<ext>``; while it is
written it is ``.<final name>.partial``. A file with ``.partial`` is never complete, so a killed
daemon can never leave a file that looks complete but is not. ``OSError`` becomes
:class:`~vmcrash.errors.StorageError` through the one translation, :func:`vmcrash.errors.storage_errors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmcrash.durable import fsync_path
from vmcrash.errors import StorageError, storage_errors

__all__ = [
    "PARTIAL_SUFFIX",
    "DumpName",
    "safe_component",
    "dump_name",
    "ensure_dump_dir",
    "inside",
    "iso_utc",
    "finalize",
    "write_sidecar",
    "sha256_file",
    "leftover_partials",
    "remove_quietly",
    "storage_errors",
    "EXTENSIONS",
]

PARTIAL_SUFFIX = ".partial"
MAX_COMPONENT = 64
#: File extension per dump format.
EXTENSIONS = {
    "elf": "elf",
    # QEMU writes kdump formats to a pipe as makedumpfile's *flattened* stream; compaction turns
    # it into the seekable ``.kdump`` next to it.
    "kdump-zlib": "flat",
    "kdump-lzo": "flat",
    "kdump-snappy": "flat",
}

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(name: str) -> str:
    """Reduce ``name`` to ``[A-Za-z0-9._-]``, at most 64 chars, never starting with a dot.

    Non-ASCII letters lose their accents when they have an ASCII base (``é`` -> ``e``), anything
    else becomes ``_``. ``""``, ``"."`` and ``".."`` become ``_``-based names. Pure.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    if not ascii_name.strip() and name:
        ascii_name = "_"
    s = _SAFE.sub("_", ascii_name)
    s = re.sub(r"\.{2,}", "_", s)  # no ".." anywhere
    s = s.lstrip(".") or "_"
    s = s[:MAX_COMPONENT].rstrip(".") or "_"
    return s


@dataclass(frozen=True)
class DumpName:
    """The final and partial paths of one dump, and of its sidecar."""

    final: Path
    partial: Path
    sidecar: Path


def dump_name(dump_dir: Path, domain: str, uuid: str, when_ns: int, fmt: str) -> DumpName:
    """``<domain>-<uuid8>-<YYYYmmddTHHMMSSZ>.<ext>`` inside ``dump_dir`` (plus ``-N`` if taken).

    :raises StorageError: the result would not be directly inside ``dump_dir`` (cannot happen
        with :func:`safe_component`, checked anyway).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when_ns / 1e9))
    uuid8 = safe_component(uuid.replace("-", ""))[:8]
    base = f"{safe_component(domain)}-{uuid8}-{stamp}"
    ext = EXTENSIONS.get(fmt, "dump")
    for n in range(1000):
        stem = base if n == 0 else f"{base}-{n}"
        final = dump_dir / f"{stem}.{ext}"
        partial = dump_dir / f".{stem}.{ext}{PARTIAL_SUFFIX}"
        sidecar = dump_dir / f"{stem}.{ext}.json"
        if not (final.exists() or partial.exists() or sidecar.exists()):
            break
    for p in (final, partial, sidecar):
        if not inside(dump_dir, p):
            raise StorageError("dump path escapes the dump directory", path=str(p))
    return DumpName(final, partial, sidecar)


def inside(directory: Path, path: Path) -> bool:
    """True when ``path`` is a direct child of ``directory`` (after resolving ``..`` and links)."""
    return path.parent.resolve() == directory.resolve() and path.name not in ("", ".", "..")


def ensure_dump_dir(dump_dir: Path) -> Path:
    """Create the dump dir (0700) if needed and force its mode to 0700."""
    with storage_errors("cannot create dump directory", dump_dir):
        dump_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(dump_dir, 0o700)
    return dump_dir


def finalize(partial: Path, final: Path) -> None:
    """Make a complete dump visible: chmod 0600, fsync, atomic rename, fsync the directory."""
    with storage_errors("cannot finalize dump", partial):
        os.chmod(partial, 0o600)
        fsync_path(partial)
        os.rename(partial, final)
        fsync_path(final.parent)


def write_sidecar(path: Path, data: dict[str, Any]) -> None:
    """Write the JSON sidecar atomically, 0600."""
    tmp = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    with storage_errors("cannot write sidecar", path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)


def sha256_file(path: Path, *, chunk_bytes: int = 4 << 20) -> str:
    """SHA-256 of a file's content (holes read as zeros)."""
    h = hashlib.sha256()
    with storage_errors("cannot read dump", path), open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk_bytes)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def leftover_partials(dump_dir: Path) -> list[Path]:
    """``.partial`` files in the dump dir (left by a killed daemon)."""
    try:
        return sorted(p for p in dump_dir.iterdir() if p.name.endswith(PARTIAL_SUFFIX))
    except FileNotFoundError:
        return []


def remove_quietly(path: Path | None) -> bool:
    """Remove a file if it exists; True when something was removed."""
    if path is None:
        return False
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def iso_utc(ns: int | None) -> str | None:
    """Host wall-clock nanoseconds as ``YYYY-mm-ddTHH:MM:SS.mmmZ`` for sidecars; ``None`` for none."""
    if not ns:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{(ns // 1_000_000) % 1000:03d}Z"

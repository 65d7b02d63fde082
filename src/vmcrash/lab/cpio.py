"""A minimal writer for the ``newc`` cpio archives the Linux kernel unpacks as an initramfs.

Pure and deterministic: the same entries give the same bytes (mtimes are fixed), so the
lab image's content hash is stable across builds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

__all__ = ["CpioEntry", "write_newc"]

_MODE_DIR = 0o040000
_MODE_FILE = 0o100000
_MODE_SYMLINK = 0o120000


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. ``kind`` is ``"file"``, ``"dir"`` or ``"symlink"``.

    For a symlink ``data`` is the link target (bytes). ``mode`` holds permission bits only.
    """

    path: str
    kind: str
    mode: int = 0o755
    data: bytes = b""


def _header(ino: int, mode: int, size: int, name: bytes) -> bytes:
    fields = (
        ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0,
    )  # ino mode uid gid nlink mtime filesize devmaj devmin rdevmaj rdevmin namesize check
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad4(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def write_newc(entries: list[CpioEntry]) -> bytes:
    """Serialize ``entries`` (parents before children) as a newc archive with trailer."""
    out = io.BytesIO()
    for ino, entry in enumerate(entries, start=1):
        name = entry.path.lstrip("/").encode()
        if entry.kind == "dir":
            mode, data = _MODE_DIR | entry.mode, b""
        elif entry.kind == "file":
            mode, data = _MODE_FILE | entry.mode, entry.data
        elif entry.kind == "symlink":
            mode, data = _MODE_SYMLINK | 0o777, entry.data
        else:
            raise ValueError(f"unknown cpio entry kind {entry.kind!r}")
        head = _header(ino, mode, len(data), name) + name + b"\0"
        out.write(head)
        out.write(_pad4(len(head)))
        out.write(data)
        out.write(_pad4(len(data)))
    trailer = _header(0, 0, 0, b"TRAILER!!!") + b"TRAILER!!!\0"
    out.write(trailer)
    out.write(_pad4(len(trailer)))
    return out.getvalue()

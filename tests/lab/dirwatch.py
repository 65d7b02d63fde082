"""Every name that appears in or leaves a directory, in the kernel's order (inotify through ctypes).

The test's own witness of what a dump directory looked like at every moment, independent of
vmcrash: :func:`replay` rebuilds the directory's listing after each event.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = 0o4000
_HEADER = struct.Struct("iIII")

APPEARS = IN_CREATE | IN_MOVED_TO
LEAVES = IN_DELETE | IN_MOVED_FROM


class DirWatch:
    """Record ``(mask, name)`` for every create/delete/rename in ``directory`` until :meth:`close`."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = libc.inotify_init1(IN_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self.events: list[tuple[int, str]] = []
        self.overflowed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if ready:
                self._drain()
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            off = 0
            while off + _HEADER.size <= len(buf):
                _wd, mask, _cookie, length = _HEADER.unpack_from(buf, off)
                name = buf[off + _HEADER.size: off + _HEADER.size + length].rstrip(b"\0").decode(errors="replace")
                off += _HEADER.size + length
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                elif name:
                    self.events.append((mask, name))

    def close(self) -> list[tuple[int, str]]:
        self._stop.set()
        self._thread.join(5)
        os.close(self._fd)
        return self.events


def replay(events: list[tuple[int, str]]) -> Iterator[tuple[tuple[int, str], frozenset[str]]]:
    """Each event with the directory's listing right after it (starting from an empty directory)."""
    present: set[str] = set()
    for ev in events:
        mask, name = ev
        if mask & APPEARS:
            present.add(name)
        if mask & LEAVES:
            present.discard(name)
        yield ev, frozenset(present)

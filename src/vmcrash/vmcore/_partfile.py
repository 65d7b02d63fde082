"""The writers' output file: resumable while written, atomic when done.

Crash safety: everything is written to ``<dst>.part``; every ``checkpoint_bytes`` of input the
data, descriptors and bitmap written so far are fsynced and ``<dst>.part.ckpt`` (small JSON)
records where to continue. A later call with the same source and options continues from there.
Only the final atomic rename makes ``<dst>`` exist, so a half-written file never looks complete.
``OSError`` becomes :class:`~vmcrash.errors.StorageError` naming the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from typing import Any

from vmcrash.durable import fsync_parent
from vmcrash.errors import StorageError, UsageError, storage_errors

__all__ = ["DEFAULT_CHECKPOINT_BYTES", "PartFile", "source_identity"]

log = logging.getLogger(__name__)

#: Input processed between two checkpoints, by default.
DEFAULT_CHECKPOINT_BYTES = 256 << 20
_CKPT_VERSION = 1


def source_identity(path: str) -> dict[str, int | str]:
    """What a checkpoint remembers of its source (path, size, mtime, inode): another file, or the
    same one changed, starts over. :raises StorageError: cannot stat."""
    with storage_errors("cannot stat", path):
        st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


class PartFile:
    """``<dst>.part`` opened for writing, locked against a second writer, OSError -> StorageError.

    :raises UsageError: ``dst`` exists. :raises StorageError: cannot create, or another writer holds it.
    """

    def __init__(self, dst: str) -> None:
        self.dst = dst
        self.path = dst + ".part"
        self.ckpt_path = dst + ".part.ckpt"
        if os.path.exists(dst):
            raise UsageError(f"{dst}: already exists; remove it or choose another destination")
        with storage_errors("cannot create", self.path):
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            raise StorageError("another conversion is writing this file", path=self.path) from exc

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            with storage_errors("write failed", self.path):
                n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def pread(self, size: int, offset: int) -> bytes:
        with storage_errors("read failed", self.path):
            return os.pread(self.fd, size, offset)

    def truncate(self, size: int) -> None:
        with storage_errors("truncate failed", self.path):
            os.ftruncate(self.fd, size)

    def sync(self) -> None:
        with storage_errors("fsync failed", self.path):
            os.fsync(self.fd)

    def resume(self, source: dict[str, int | str], params: dict[str, Any]) -> Any:
        """The ``state`` a previous run checkpointed for the same ``source`` (:func:`source_identity`)
        and ``params``; otherwise ``None``, with any checkpoint dropped and the file emptied."""
        ck = self._load_checkpoint()
        if ck is not None and ck.get("source") == source and ck.get("params") == params:
            return ck["state"]
        self.drop_checkpoint()
        self.truncate(0)
        return None

    def checkpoint(self, source: dict[str, int | str], params: dict[str, Any], state: dict[str, Any]) -> None:
        """fsync what is written, then record ``state`` for :meth:`resume` (atomically)."""
        self.sync()
        doc = {"version": _CKPT_VERSION, "source": source, "params": params, "state": state}
        tmp = self.ckpt_path + ".tmp"
        with storage_errors("cannot write checkpoint", self.ckpt_path):
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.ckpt_path)
            fsync_parent(self.ckpt_path)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        try:
            with open(self.ckpt_path, encoding="utf-8") as fh:
                raw = fh.read(1 << 20)
            doc = json.loads(raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable checkpoint, starting over: %s", self.ckpt_path, exc)
            return None
        return doc if isinstance(doc, dict) and doc.get("version") == _CKPT_VERSION else None

    def drop_checkpoint(self) -> None:
        for p in (self.ckpt_path, self.ckpt_path + ".tmp"):
            with storage_errors("cannot remove", p), contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    def finish(self) -> int:
        """fsync, rename to ``dst`` atomically, drop the checkpoint; returns the final size."""
        self.sync()
        size = os.fstat(self.fd).st_size
        with storage_errors("cannot rename into place", self.dst):
            os.replace(self.path, self.dst)
            fsync_parent(self.dst)
        self.drop_checkpoint()
        return size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

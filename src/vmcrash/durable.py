"""Making writes durable: fsync a file, or the directory that holds a name, by path.

It stands below every room that writes files (it imports only :mod:`vmcrash.errors`), so the dump
writers of :mod:`vmcrash.vmcore` (which import nothing of the capture pipeline) and
:mod:`vmcrash.capture` share one helper.
"""

from __future__ import annotations

import os

from vmcrash.errors import storage_errors

__all__ = ["fsync_path", "fsync_parent"]


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a directory by path.

    :raises StorageError: it cannot be opened or synced ("fsync failed", with the path).
    """
    with storage_errors("fsync failed", path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_parent(path: str | os.PathLike[str]) -> None:
    """fsync the directory that holds ``path``, so that creating, renaming or removing that name
    survives a crash of the host.

    :raises StorageError: as :func:`fsync_path`.
    """
    fsync_path(os.path.dirname(os.path.abspath(path)))

"""Bounded reads from a dump file: the one place where ``OSError`` and ``struct.error`` are translated.

Every reader sees the file only through :class:`DumpFile` (``pread`` at an offset, never the whole
file) and decodes structures only through :func:`unpack_from`, so a truncated or hostile file turns
into :class:`~vmcrash.errors.DumpFormatError` and a failing disk into
:class:`~vmcrash.errors.StorageError`, both with the path and offset.
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Any, Protocol, Self

from vmcrash.errors import DumpFormatError, StorageError

__all__ = ["MASK64", "MAX_SINGLE_READ_BYTES", "ByteSource", "DumpFile", "unpack_from"]

#: Guest words and addresses are 64-bit (x86-64): a value taken from a dump is masked to this.
MASK64 = (1 << 64) - 1

#: No single read asked of a dump file may exceed this (a hostile size field cannot make us
#: allocate more); real structures are far smaller (notes, bitmaps chunks, page data).
MAX_SINGLE_READ_BYTES = 64 << 20


class ByteSource(Protocol):
    """Random access to the bytes of a (possibly virtual) dump file."""

    path: str

    @property
    def size_bytes(self) -> int: ...

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``; :class:`DumpFormatError` if the file is shorter."""
        ...


class DumpFile:
    """An open dump file read with ``pread``; counts the bytes it read (for the benchmark).

    :raises StorageError: the file cannot be opened or read (permission, I/O error).
    :raises DumpFormatError: a read goes past the end of the file, or is absurdly large.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise StorageError("no such file", path=self.path) from exc
        except IsADirectoryError as exc:
            raise StorageError("is a directory, not a dump file", path=self.path) from exc
        except OSError as exc:
            raise StorageError(f"cannot open: {exc.strerror}", path=self.path) from exc
        try:
            st = os.fstat(self._fd)
        except OSError as exc:  # pragma: no cover - fstat on an open fd does not fail in practice
            os.close(self._fd)
            raise StorageError(f"cannot stat: {exc.strerror}", path=self.path) from exc
        if stat.S_ISDIR(st.st_mode):
            os.close(self._fd)
            raise StorageError("is a directory, not a dump file", path=self.path)
        self._size = st.st_size
        self.bytes_read = 0
        self.reads = 0

    @property
    def size_bytes(self) -> int:
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``.

        :raises DumpFormatError: negative or huge request, or the file ends before ``offset + size``.
        """
        if size < 0 or offset < 0:
            raise DumpFormatError(f"invalid read of {size} bytes", path=self.path, offset=offset)
        if size > MAX_SINGLE_READ_BYTES:
            raise DumpFormatError(f"refusing a {size}-byte structure", path=self.path, offset=offset)
        if offset + size > self._size:
            raise DumpFormatError(
                f"file is truncated: needs {offset + size} bytes, has {self._size}",
                path=self.path, offset=offset,
            )
        if size == 0:
            return b""
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as exc:
            raise StorageError(f"read error at byte {offset}: {exc.strerror}", path=self.path) from exc
        self.bytes_read += len(data)
        self.reads += 1
        if len(data) != size:
            # The file shrank under us (or a short read from a special file).
            raise DumpFormatError(f"short read: wanted {size} bytes, got {len(data)}",
                                  path=self.path, offset=offset)
        return data

    def read_upto(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file, ``b""`` past it)."""
        if offset >= self._size:
            return b""
        return self.read(offset, min(size, self._size - offset))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unpack_from(fmt: str | struct.Struct, data: bytes, offset: int = 0, *,
                what: str = "structure", path: str | None = None, file_offset: int | None = None
                ) -> tuple[Any, ...]:
    """``struct.unpack_from`` whose failure is a :class:`DumpFormatError` naming ``what``."""
    try:
        if isinstance(fmt, struct.Struct):
            return fmt.unpack_from(data, offset)
        return struct.unpack_from(fmt, data, offset)
    except struct.error as exc:
        raise DumpFormatError(f"{what} is cut short", path=path, offset=file_offset) from exc

"""Where unit files come from: a live system, an image tree (``--root``), or memory (tests).

Every reader goes through the narrow :class:`UnitSource` interface, with paths as the guest sees
them (``/etc/systemd/system/x.service``). :class:`RootSource` resolves symlinks *inside* the
root, the way they resolve when that root boots, so an image's ``/lib -> usr/lib`` or an absolute
link target never escapes to the host. ``OSError`` is translated here, and only here, into
:class:`~vmcrash.errors.UnitFileError` (bad or unreadable file) or
:class:`~vmcrash.errors.StorageError`; a path with a NUL (``os`` raises ValueError; no file has
one, but a path built from a machine fact such as ``%H`` can) finds nothing there.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from vmcrash.errors import UnitFileError

__all__ = [
    "MAX_SYMLINK_HOPS",
    "File",
    "FileStat",
    "Kind",
    "Link",
    "MemorySource",
    "OverlaySource",
    "RootSource",
    "UnitSource",
    "resolve",
]

Kind = Literal["file", "dir", "link", "other"]
#: Linux's own limit on symlinks followed while resolving one path.
MAX_SYMLINK_HOPS = 40
MAX_DIR_ENTRIES = 100_000


@dataclass(frozen=True)
class FileStat:
    """What is at a path, without following a final symlink: kind, permission bits, size, modification time."""

    kind: Kind
    mode: int
    size_bytes: int
    mtime_ns: int = 0


class UnitSource(Protocol):
    """Read access to a file tree, paths absolute as inside the guest."""

    @property
    def label(self) -> str:
        """What to call the tree in messages (``/`` or the ``--root`` directory)."""

    def kind(self, path: str) -> Kind | None:
        """What is at ``path`` without following a final symlink; None when nothing is there."""

    def stat(self, path: str) -> FileStat | None:
        """Kind, mode and size at ``path`` without following a final symlink; None when nothing is there."""

    def readlink(self, path: str) -> str:
        """The target text of the symlink at ``path``. :raises UnitFileError:"""

    def listdir(self, path: str) -> list[str]:
        """Entry names of the directory ``path``; [] when it does not exist. :raises UnitFileError:"""

    def read_bytes(self, path: str, limit: int) -> bytes:
        """Content of the regular file ``path`` (no symlink in it), at most ``limit`` bytes.

        :raises UnitFileError: unreadable, or larger than ``limit``.
        """


def _join(base: list[str]) -> str:
    return "/" + "/".join(base)


def resolve(source: UnitSource, path: str) -> str | None:
    """``path`` with every symlink followed inside the tree (absolute targets restart at its root).

    :returns: the final path (it may not exist), or None for a symlink loop or an unreadable link.
    """
    todo = deque(p for p in path.split("/") if p)
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.popleft()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = _join(done + [part])
        kind = source.kind(here)
        if kind == "link":
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None
            try:
                target = source.readlink(here)
            except UnitFileError:
                return None
            if target.startswith("/"):
                done = []
            todo.extendleft(reversed([p for p in target.split("/") if p]))
            continue
        done.append(part)
        if kind is None:
            done.extend(p for p in todo if p not in (".", ".."))
            return _join(done)
    return _join(done)


@dataclass(frozen=True)
class RootSource:
    """The tree under ``root`` on this machine (``/`` for the running system)."""

    root: Path

    @property
    def label(self) -> str:
        return str(self.root)

    def _host(self, path: str) -> str:
        return os.path.join(str(self.root), path.lstrip("/"))

    def kind(self, path: str) -> Kind | None:
        found = self.stat(path)
        return found.kind if found is not None else None

    def stat(self, path: str) -> FileStat | None:
        try:
            st = os.lstat(self._host(path))
        except (OSError, ValueError):  # ValueError: a NUL in the path, which no file has
            return None
        mode = st.st_mode
        kind: Kind = ("link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode)
                      else "file" if stat.S_ISREG(mode) else "other")
        return FileStat(kind, stat.S_IMODE(mode), st.st_size, st.st_mtime_ns)

    def readlink(self, path: str) -> str:
        try:
            return os.readlink(self._host(path))
        except OSError as exc:
            raise UnitFileError(f"cannot read symlink: {exc.strerror}", path=path) from exc
        except ValueError as exc:
            raise UnitFileError("cannot read symlink: NUL in the path", path=path) from exc

    def listdir(self, path: str) -> list[str]:
        try:
            with os.scandir(self._host(path)) as it:
                names = []
                for entry in it:
                    names.append(entry.name)
                    if len(names) > MAX_DIR_ENTRIES:
                        raise UnitFileError(f"more than {MAX_DIR_ENTRIES} entries", path=path)
                return sorted(names)
        except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the path
            return []
        except OSError as exc:
            raise UnitFileError(f"cannot list directory: {exc.strerror}", path=path) from exc

    def read_bytes(self, path: str, limit: int) -> bytes:
        try:
            fd = os.open(self._host(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except ValueError as exc:
            raise UnitFileError("cannot read: NUL in the path", path=path) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnitFileError("is a symlink where a file was expected", path=path) from exc
            raise UnitFileError(f"cannot read: {exc.strerror}", path=path) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnitFileError("not a regular file", path=path)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise UnitFileError(f"cannot read: {exc.strerror}", path=path) from exc
        finally:
            os.close(fd)
        if len(data) > limit:
            raise UnitFileError(f"larger than {limit} bytes; not read", path=path)
        return data


@dataclass(frozen=True)
class Link:
    """A symlink in a :class:`MemorySource`."""

    target: str


@dataclass(frozen=True)
class File:
    """A regular file in a :class:`MemorySource` with permission bits other than 0644."""

    data: bytes | str
    mode: int = 0o644


def _data(value: bytes | str | File) -> bytes:
    if isinstance(value, File):
        value = value.data
    return value.encode() if isinstance(value, str) else value


@dataclass(frozen=True)
class MemorySource:
    """A tree held in a dict (``path -> bytes | str | File | Link``); directories are implied. For tests."""

    files: Mapping[str, bytes | str | File | Link]
    name: str = "<memory>"

    @property
    def label(self) -> str:
        return self.name

    def _dirs(self) -> set[str]:
        dirs = {"/"}
        for path in self.files:
            parts = [p for p in path.split("/") if p]
            for i in range(1, len(parts)):
                dirs.add(_join(parts[:i]))
        return dirs

    def kind(self, path: str) -> Kind | None:
        norm = _join([p for p in path.split("/") if p])
        value = self.files.get(norm)
        if isinstance(value, Link):
            return "link"
        if value is not None:
            return "file"
        return "dir" if norm in self._dirs() else None

    def stat(self, path: str) -> FileStat | None:
        kind = self.kind(path)
        if kind is None:
            return None
        value = self.files.get(_join([p for p in path.split("/") if p]))
        if isinstance(value, Link):
            return FileStat("link", 0o777, len(value.target))
        if value is None:
            return FileStat("dir", 0o755, 0)
        return FileStat("file", value.mode if isinstance(value, File) else 0o644, len(_data(value)))

    def readlink(self, path: str) -> str:
        value = self.files.get(path)
        if not isinstance(value, Link):
            raise UnitFileError("not a symlink", path=path)
        return value.target

    def listdir(self, path: str) -> list[str]:
        norm = _join([p for p in path.split("/") if p]).rstrip("/") + "/"
        names = set()
        for p in list(self.files) + list(self._dirs()):
            if p.startswith(norm) and p != norm.rstrip("/"):
                names.add(p[len(norm):].split("/", 1)[0])
        names.discard("")
        return sorted(names)

    def read_bytes(self, path: str, limit: int) -> bytes:
        value = self.files.get(path)
        if value is None or isinstance(value, Link):
            raise UnitFileError("cannot read: not a regular file", path=path)
        data = _data(value)
        if len(data) > limit:
            raise UnitFileError(f"larger than {limit} bytes; not read", path=path)
        return data


@dataclass(frozen=True)
class OverlaySource:
    """``base`` with some files replaced or added (``path -> bytes | Link``): to check a plan before writing it."""

    base: UnitSource
    overrides: Mapping[str, bytes | Link]

    @property
    def label(self) -> str:
        return self.base.label

    def kind(self, path: str) -> Kind | None:
        norm = _join([p for p in path.split("/") if p])
        value = self.overrides.get(norm)
        if isinstance(value, Link):
            return "link"
        if value is not None:
            return "file"
        found = self.base.kind(norm)
        if found is None and any(p.startswith(norm.rstrip("/") + "/") for p in self.overrides):
            return "dir"
        return found

    def stat(self, path: str) -> FileStat | None:
        value = self.overrides.get(_join([p for p in path.split("/") if p]))
        if isinstance(value, Link):
            return FileStat("link", 0o777, len(value.target))
        if value is not None:
            return FileStat("file", 0o644, len(value))
        kind = self.kind(path)
        if kind == "dir":
            return self.base.stat(path) or FileStat("dir", 0o755, 0)
        return self.base.stat(path)

    def readlink(self, path: str) -> str:
        value = self.overrides.get(path)
        if isinstance(value, Link):
            return value.target
        return self.base.readlink(path)

    def listdir(self, path: str) -> list[str]:
        norm = _join([p for p in path.split("/") if p]).rstrip("/") + "/"
        names = set(self.base.listdir(path))
        for p in self.overrides:
            if p.startswith(norm):
                names.add(p[len(norm):].split("/", 1)[0])
        return sorted(n for n in names if n)

    def read_bytes(self, path: str, limit: int) -> bytes:
        value = self.overrides.get(path)
        if isinstance(value, bytes):
            if len(value) > limit:
                raise UnitFileError(f"larger than {limit} bytes; not read", path=path)
            return value
        return self.base.read_bytes(path, limit)

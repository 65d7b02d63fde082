"""One owner per hypervisor and per crash: advisory file locks that the kernel drops when the holder dies.

Two locks live in the run directory (``run_dir``, default ``/run/vmcrash``, 0700):

* ``hv-<key>.lock``: held by the one ``vmcrash watch`` of a hypervisor for its whole life. The key
  is the libvirt URI *as resolved by the connection* plus the host name, so two configs that spell
  the same hypervisor differently (or use other dump dirs and catalogues) still share one lock. A
  second daemon refuses at start (:class:`~vmcrash.errors.OwnedElsewhere`, exit 3); ``--standby``
  waits for the lock instead and takes over the moment the holder dies.
* ``crash-<key>-<uuid>.lock``: held while one domain's crash is being handled (by the daemon or a
  manual ``vmcrash dump``), so the same crash is never dumped or recovered twice.

``flock(2)`` locks belong to an open file description: a SIGKILLed holder leaves no stale lock, and
the holder's identity (pid, config, role, since) is written into the file only for messages — who
holds a lock is decided by the kernel, never by the file's content.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmcrash.errors import OwnedElsewhere, StorageError

__all__ = [
    "DEFAULT_RUN_DIR",
    "Holder",
    "FileLock",
    "HypervisorLock",
    "CrashLocks",
    "hypervisor_key",
    "normalize_uri",
    "resolve_hypervisor_key",
]

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path("/run/vmcrash")
#: how often a waiting standby retries the lock (the takeover happens within this after the death)
POLL_S = 0.05
_HOLDER_MAX_BYTES = 4096


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as it wrote itself into the lock file (for messages only)."""

    pid: int | None
    role: str | None
    config: str | None
    key: str | None
    since_ns: int | None

    def describe(self) -> str:
        """``vmcrash watch pid 123 (config /etc/vmcrash/vmcrash.toml)``, with what is known."""
        who = f"vmcrash {self.role or 'process'}"
        if self.pid is not None:
            who += f" pid {self.pid}"
        if self.config:
            who += f" (config {self.config})"
        return who

    def to_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "role": self.role, "config": self.config, "key": self.key,
                "since_ns": self.since_ns}


def normalize_uri(uri: str) -> str:
    """``qemu+unix:///system`` → ``qemu:///system`` (a local socket is the default transport). Pure.

    libvirt's ``getURI()`` answers with the URI as given, so spellings of the same local
    hypervisor are folded here; query parameters (``?socket=...``) are kept as they are.
    """
    uri = uri.strip()
    scheme, sep, rest = uri.partition("://")
    if sep and scheme.endswith("+unix") and rest.startswith("/"):
        return f"{scheme.removesuffix('+unix')}://{rest}"
    return uri


def hypervisor_key(resolved_uri: str, host: str) -> str:
    """The identity of a hypervisor: ``host`` + ``|`` + the URI libvirt resolved, normalized. Pure."""
    return f"{host.strip().lower()}|{normalize_uri(resolved_uri)}"


def resolve_hypervisor_key(uri: str) -> str:
    """Ask libvirt what ``uri`` really is (``getURI()``, ``getHostname()``) and build the key.

    When libvirt cannot be reached the configured URI and this host's name are used: the daemon
    waits for libvirt anyway, and a hypervisor that is not running has no crashes to race for.
    """
    from vmcrash.errors import VmcrashError
    from vmcrash.host.connection import Hypervisor, call

    try:
        hv = Hypervisor(uri, read_only=True)
    except VmcrashError:
        return hypervisor_key(uri or "qemu:///system", socket.gethostname())
    try:
        return hypervisor_key(str(call(hv.conn.getURI, uri=uri)), str(call(hv.conn.getHostname, uri=uri)))
    except VmcrashError:
        return hypervisor_key(uri or "qemu:///system", socket.gethostname())
    finally:
        hv.close()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _parse_holder(raw: bytes) -> Holder:
    """Decode a lock file's content; anything malformed gives an all-unknown holder. Pure."""
    try:
        doc = json.loads(raw[:_HOLDER_MAX_BYTES].decode("utf-8", "replace"))
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return Holder(None, None, None, None, None)

    def text(name: str) -> str | None:
        value = doc.get(name)
        return value[:1024] if isinstance(value, str) else None

    def number(name: str) -> int | None:
        value = doc.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return Holder(number("pid"), text("role"), text("config"), text("key"), number("since_ns"))


class FileLock:
    """An exclusive ``flock`` on one file, with the holder's identity written into it.

    :raises StorageError: the run directory or the lock file cannot be created.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open lock file: {exc.strerror}", path=str(self.path)) from exc

    def try_acquire(self, *, role: str, config: str | None, key: str) -> bool:
        """Take the lock if it is free; True when it is now ours."""
        if self._fd is not None:
            return True
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise StorageError(f"cannot lock: {exc.strerror}", path=str(self.path)) from exc
        doc = {"pid": os.getpid(), "role": role, "config": config, "key": key, "since_ns": time.time_ns()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(doc).encode(), 0)
        except OSError:
            pass  # the identity is only for messages; the lock itself is held
        self._fd = fd
        return True

    def wait_acquire(self, *, role: str, config: str | None, key: str,
                     stop: threading.Event | None = None, timeout_s: float | None = None) -> bool:
        """Wait for the lock (polling every :data:`POLL_S`); False when ``stop`` was set or time ran out."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.try_acquire(role=role, config=config, key=key):
            if stop is not None and stop.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def release(self) -> None:
        """Drop the lock (the file stays; its content no longer means anything)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def holder(self) -> Holder | None:
        """Who holds the lock now (``None``: nobody). A probe, so it may race with a new holder."""
        if self._fd is not None:
            return _parse_holder(os.pread(self._fd, _HOLDER_MAX_BYTES, 0))
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read lock file: {exc.strerror}", path=str(self.path)) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return _parse_holder(os.pread(fd, _HOLDER_MAX_BYTES, 0))
                raise StorageError(f"cannot probe lock: {exc.strerror}", path=str(self.path)) from exc
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


class HypervisorLock:
    """The daemon's lock on one hypervisor (see the module docstring)."""

    def __init__(self, run_dir: Path, key: str, *, config: str | None = None) -> None:
        self.key = key
        self.config = config
        self.lock = FileLock(run_dir / f"hv-{_digest(key)}.lock")

    def acquire(self) -> None:
        """Take the lock or refuse.

        :raises OwnedElsewhere: another daemon watches this hypervisor (its pid and config named).
        """
        if self.lock.try_acquire(role="watch", config=self.config, key=self.key):
            return
        holder = self.lock.holder() or Holder(None, None, None, None, None)
        raise OwnedElsewhere(
            f"hypervisor {self.key.split('|', 1)[-1]} on {self.key.split('|', 1)[0]} is already watched by "
            f"{holder.describe()}; stop it first, or start this one with --standby",
            pid=holder.pid, config=holder.config)

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Standby: block until the lock is ours (True) or ``stop`` is set (False)."""
        return self.lock.wait_acquire(role="watch", config=self.config, key=self.key, stop=stop)

    def holder(self) -> Holder | None:
        return self.lock.holder()

    def release(self) -> None:
        self.lock.release()


class CrashLocks:
    """Per-domain locks held while a domain's crash is handled (daemon) or dumped (manual verb)."""

    def __init__(self, run_dir: Path, key: str, *, config: str | None = None) -> None:
        self.run_dir = run_dir
        self.key = key
        self.config = config

    def lock_for(self, uuid: str) -> FileLock:
        safe = "".join(c for c in uuid.lower() if c in "0123456789abcdef-")[:36] or "unknown"
        return FileLock(self.run_dir / f"crash-{_digest(self.key)}-{safe}.lock")

    def holder(self, uuid: str) -> Holder | None:
        return self.lock_for(uuid).holder()

    @contextmanager
    def hold(self, uuid: str, *, role: str, domain: str, wait_s: float = 0.0,
             stop: threading.Event | None = None) -> Iterator[None]:
        """Hold ``uuid``'s crash lock for the ``with`` block, waiting up to ``wait_s`` for it.

        :raises OwnedElsewhere: someone else is handling this domain's crash.
        """
        lock = self.lock_for(uuid)
        if not lock.wait_acquire(role=role, config=self.config, key=self.key, stop=stop, timeout_s=wait_s):
            holder = lock.holder() or Holder(None, None, None, None, None)
            raise OwnedElsewhere(f"{domain}: its crash is being handled by {holder.describe()}; "
                                 "not touching it", pid=holder.pid, config=holder.config)
        try:
            yield
        finally:
            lock.release()

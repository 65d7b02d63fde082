"""The one error tree of vmcrash: every failure the project raises on purpose.

Errors are sorted by *who is at fault*, because that decides what an operator does next
and which exit code the CLI returns::

    VmcrashError                         root; never raised itself
    ├── BadDataError          exit 2     data we were handed is malformed (may be hostile)
    │   ├── DumpFormatError              a dump file is truncated/corrupt (path, offset)
    │   ├── GuestMemoryError             guest memory holds nonsense (address)
    │   ├── AgentProtocolError           the guest agent answered garbage (domain)
    │   └── UnitFileError                a systemd unit file is unreadable/malformed (path, line)
    ├── EnvironmentProblem    exit 3     something this host lacks or that went away
    │   ├── LibvirtUnavailable           cannot reach libvirtd (uri)
    │   ├── AgentUnavailable             no guest agent channel / agent not answering (domain)
    │   ├── MissingCodec                 a compression library is not installed (codec)
    │   ├── StorageError                 disk full, permission denied, I/O error (path)
    │   └── OwnedElsewhere               another vmcrash daemon owns this hypervisor or crash (pid, config)
    ├── RefusedError          exit 3     libvirt or the agent understood and said no
    │   ├── LibvirtRefused               (domain, code)
    │   └── AgentRefused                 (domain, command)
    └── UsageError            exit 2     the caller asked for something impossible
        ├── ConfigError                  wrong configuration (path, key)
        └── DomainNotFound               no such domain (domain)

Foreign exceptions (``libvirt.libvirtError``, ``OSError``, ``struct.error``) are translated
in one place per dependency (``host/connection.py``, ``capture/files.py``, ``vmcore/_io.py``)
with ``raise ... from exc`` so the original cause is kept.

Exit codes of the CLI: 0 ok, 1 findings (a check failed, an audit found problems),
2 usage or bad input, 3 environment.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "EXIT_OK",
    "EXIT_FINDINGS",
    "EXIT_USAGE",
    "EXIT_ENVIRONMENT",
    "VmcrashError",
    "BadDataError",
    "DumpFormatError",
    "GuestMemoryError",
    "AgentProtocolError",
    "UnitFileError",
    "EnvironmentProblem",
    "LibvirtUnavailable",
    "AgentUnavailable",
    "MissingCodec",
    "StorageError",
    "OwnedElsewhere",
    "RefusedError",
    "LibvirtRefused",
    "AgentRefused",
    "UsageError",
    "ConfigError",
    "DomainNotFound",
    "storage_errors",
]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


class VmcrashError(Exception):
    """Root of the tree. ``str(err)`` is the one line the CLI prints after ``error:``."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# -- bad data ---------------------------------------------------------------------------


class BadDataError(VmcrashError):
    """Input we were handed is malformed. It may come from a compromised guest."""

    exit_code = EXIT_USAGE


class DumpFormatError(BadDataError):
    """A dump file is truncated, corrupt or not a dump at all.

    :ivar path: the dump file, or ``None`` for in-memory data.
    :ivar offset: byte offset in the file where the problem was seen, or ``None``.
    """

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}: "
        if offset is not None:
            message = f"{message} (at byte {offset})"
        super().__init__(where + message)
        self.path = path
        self.offset = offset


class GuestMemoryError(BadDataError):
    """Guest memory does not hold what the kernel layout says it should (or is absent).

    :ivar address: the virtual or physical address involved, or ``None``.
    """

    def __init__(self, message: str, *, address: int | None = None) -> None:
        if address is not None:
            message = f"{message} (address {address:#x})"
        super().__init__(message)
        self.address = address


class AgentProtocolError(BadDataError):
    """The guest agent's reply is not valid: wrong type, out of range, too large, too slow."""

    def __init__(self, message: str, *, domain: str | None = None) -> None:
        super().__init__(f"{domain}: {message}" if domain else message)
        self.domain = domain


class UnitFileError(BadDataError):
    """A systemd unit file could not be read or parsed.

    :ivar path: the file. :ivar line: 1-based line number, or ``None``.
    """

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


# -- environment ------------------------------------------------------------------------


class EnvironmentProblem(VmcrashError):
    """Something this host lacks, or a service that went away. Retrying later may help."""

    exit_code = EXIT_ENVIRONMENT


class LibvirtUnavailable(EnvironmentProblem):
    """libvirtd cannot be reached (not running, wrong URI, connection lost)."""

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(f"{uri}: {message}" if uri else message)
        self.uri = uri


class AgentUnavailable(EnvironmentProblem):
    """The domain has no guest agent channel, or the agent does not answer.

    :ivar not_configured: True when the domain has no agent channel at all (waiting cannot help).
    """

    def __init__(self, message: str, *, domain: str | None = None, not_configured: bool = False) -> None:
        super().__init__(f"{domain}: {message}" if domain else message)
        self.domain = domain
        self.not_configured = not_configured


class MissingCodec(EnvironmentProblem):
    """A dump is compressed with a codec whose Python library is not installed."""

    def __init__(self, codec: str, *, hint: str = "") -> None:
        msg = f"dump pages are compressed with {codec}, but no {codec} library is installed"
        super().__init__(f"{msg}; {hint}" if hint else msg)
        self.codec = codec


class StorageError(EnvironmentProblem):
    """A file operation failed: no space, permission denied, I/O error."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class OwnedElsewhere(EnvironmentProblem):
    """Another vmcrash process owns this hypervisor (a running daemon) or this domain's crash.

    :ivar pid: the owner's process id, or ``None`` when it could not be read.
    :ivar config: the owner's configuration file, or ``None``.
    """

    def __init__(self, message: str, *, pid: int | None = None, config: str | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.config = config


# -- refusals ---------------------------------------------------------------------------


class RefusedError(VmcrashError):
    """libvirt or the guest agent understood the request and refused it."""

    exit_code = EXIT_ENVIRONMENT


class LibvirtRefused(RefusedError):
    """libvirt said no (operation invalid in this state, unsupported, ...)."""

    def __init__(self, message: str, *, domain: str | None = None, code: int | None = None) -> None:
        super().__init__(f"{domain}: {message}" if domain else message)
        self.domain = domain
        self.code = code


class AgentRefused(RefusedError):
    """The guest agent answered with an error for ``command``."""

    def __init__(self, message: str, *, domain: str | None = None, command: str | None = None) -> None:
        super().__init__(f"{domain}: {message}" if domain else message)
        self.domain = domain
        self.command = command


# -- misuse -----------------------------------------------------------------------------


class UsageError(VmcrashError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The configuration is wrong. Names the file and the key so it can be fixed."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        parts = [p for p in (path, key) if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)
        self.path = path
        self.key = key


class DomainNotFound(UsageError):
    """No domain of that name or UUID exists."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"no such domain: {domain}")
        self.domain = domain


# -- the one translation of OSError ------------------------------------------------------------


@contextmanager
def storage_errors(what: str, path: os.PathLike[str] | str | None = None) -> Iterator[None]:
    """Translate ``OSError`` raised in the block into :class:`StorageError` (``what: reason``), keeping
    the cause; ENOSPC reads "no space left on device". Used wherever vmcrash reads or writes files."""
    try:
        yield
    except OSError as exc:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise StorageError(f"{what}: {reason}", path=str(path) if path else exc.filename) from exc

"""The libvirt connection: open it, translate ``libvirtError`` into the project's errors.

This is the one place where ``libvirt.libvirtError`` is mapped (style rule: one translation
point per dependency). Everything else calls :func:`call` or the :class:`Hypervisor` methods.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from vmcrash.errors import (
    DomainNotFound,
    LibvirtRefused,
    LibvirtUnavailable,
    VmcrashError,
)

__all__ = [
    "DEFAULT_URI",
    "DomainInfo",
    "Hypervisor",
    "TRANSLATION",
    "call",
    "domain_id",
    "error_class",
    "libvirt_errors",
    "translate",
    "state_name",
]

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"

T = TypeVar("T")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

# How a libvirtError maps to the error tree: (error code, error domain) -> class, ``None`` standing
# for "any". Looked up most specific first: (code, domain), (code, None), (None, domain). Anything
# not listed is a refusal: libvirt understood the request and said no.
TRANSLATION: dict[tuple[int | None, int | None], type[VmcrashError]] = {
    (libvirt.VIR_ERR_NO_DOMAIN, None): DomainNotFound,
    # the connection or the daemon is gone
    (libvirt.VIR_ERR_RPC, None): LibvirtUnavailable,
    (libvirt.VIR_ERR_NO_CONNECT, None): LibvirtUnavailable,
    (libvirt.VIR_ERR_INVALID_CONN, None): LibvirtUnavailable,
    (libvirt.VIR_ERR_AUTH_FAILED, None): LibvirtUnavailable,
    (None, libvirt.VIR_FROM_RPC): LibvirtUnavailable,
    (None, libvirt.VIR_FROM_REMOTE): LibvirtUnavailable,
}

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def _quiet(ctx: object, err: object) -> None:
    """libvirt's default handler prints every error to stderr; we report errors ourselves."""


libvirt.registerErrorHandler(_quiet, None)


def state_name(state: int) -> str:
    """Name of a ``virDomainState`` value (``"running"``, ``"crashed"``, ...); unknown -> ``"state-N"``."""
    return _STATE_NAMES.get(state, f"state-{state}")


def error_class(code: int | None, domain: int | None) -> type[VmcrashError]:
    """The project error class for a libvirt (code, error domain) pair, per :data:`TRANSLATION`. Pure."""
    for key in ((code, domain), (code, None), (None, domain)):
        kind = TRANSLATION.get(key)
        if kind is not None:
            return kind
    return LibvirtRefused


def translate(exc: libvirt.libvirtError, *, domain: str | None = None, uri: str | None = None) -> VmcrashError:
    """Map a ``libvirtError`` to the project's error tree (the caller does ``raise ... from exc``)."""
    code = exc.get_error_code()
    msg = exc.get_error_message() or str(exc)
    kind = error_class(code, exc.get_error_domain())
    if kind is DomainNotFound:
        return DomainNotFound(domain or msg)
    if kind is LibvirtUnavailable:
        return LibvirtUnavailable(msg, uri=uri)
    return LibvirtRefused(msg, domain=domain, code=code)


def call(fn: Callable[..., T], *args: Any, domain: str | None = None, uri: str | None = None) -> T:
    """Call a libvirt function, translating its errors."""
    with libvirt_errors(domain=domain, uri=uri):
        return fn(*args)


@contextmanager
def libvirt_errors(*, domain: str | None = None, uri: str | None = None) -> Iterator[None]:
    """Translate any ``libvirtError`` raised in the block (``with libvirt_errors(domain=name): ...``)."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc, domain=domain, uri=uri) from exc


def domain_id(dom: libvirt.virDomain) -> int | None:
    """The running domain's id (``None`` when it is not running or libvirt cannot say)."""
    try:
        i = dom.ID()
        return int(i) if i and i > 0 else None
    except libvirt.libvirtError:
        return None


@dataclass(frozen=True)
class DomainInfo:
    """What the daemon needs to know of a domain at a glance."""

    name: str
    uuid: str
    state: str
    reason: int
    memory_bytes: int
    persistent: bool
    #: True when the state says the domain stopped because of a guest panic.
    panicked: bool


def _is_panicked(state: int, reason: int) -> bool:
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return reason == libvirt.VIR_DOMAIN_CRASHED_PANICKED
    if state == libvirt.VIR_DOMAIN_PAUSED:
        return reason == libvirt.VIR_DOMAIN_PAUSED_CRASHED
    return False


class Hypervisor:
    """A libvirt connection with the project's error semantics.

    Open it after :func:`vmcrash.host.aio.event_loop` when events are wanted.
    """

    def __init__(self, uri: str = DEFAULT_URI, *, read_only: bool = False) -> None:
        self.uri = uri
        self.read_only = read_only
        self.conn = self._open()

    def _open(self) -> libvirt.virConnect:
        uri, read_only = self.uri, self.read_only
        try:
            return libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(
                f"cannot connect to libvirt ({exc.get_error_message()}); is libvirtd running?",
                uri=uri,
            ) from exc

    def reconnect(self) -> None:
        """Replace a dead connection with a new one (domain handles from the old one are stale)."""
        self.close()
        self.conn = self._open()

    def close(self) -> None:
        """Close the connection; errors on an already-dead connection are ignored."""
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alive(self) -> bool:
        """True while the connection answers (libvirt's keepalive verdict)."""
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    def lookup(self, name_or_uuid: str) -> libvirt.virDomain:
        """Find a domain by UUID (when it looks like one) or name. :raises DomainNotFound:"""
        if _UUID_RE.match(name_or_uuid):
            try:
                return self.conn.lookupByUUIDString(name_or_uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise translate(exc, domain=name_or_uuid, uri=self.uri) from exc
        try:
            return self.conn.lookupByName(name_or_uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise translate(exc, domain=name_or_uuid, uri=self.uri) from exc
        try:
            return self.conn.lookupByUUIDString(name_or_uuid)
        except libvirt.libvirtError as exc:
            raise DomainNotFound(name_or_uuid) from exc

    def info(self, dom: libvirt.virDomain) -> DomainInfo:
        """Snapshot of a domain's identity and state."""
        name = call(dom.name)
        state, reason = call(dom.state, domain=name)
        max_kib = call(dom.maxMemory, domain=name)
        return DomainInfo(
            name=name,
            uuid=call(dom.UUIDString, domain=name),
            state=state_name(state),
            reason=reason,
            memory_bytes=int(max_kib) * 1024,
            persistent=bool(call(dom.isPersistent, domain=name)),
            panicked=_is_panicked(state, reason),
        )

    def domains(self) -> list[libvirt.virDomain]:
        """All defined and running domains."""
        return list(call(self.conn.listAllDomains, 0, uri=self.uri))

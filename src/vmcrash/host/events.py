"""libvirt domain events as the project's own values, and subscriptions that deliver them.

libvirt calls our callbacks on the process's event-loop thread (:mod:`vmcrash.host.aio`).
A :class:`Subscription` turns those calls into :class:`LifecycleEvent` /
:class:`AgentEvent` values handed to a sink (an asyncio queue for the daemon, a thread-safe
queue for synchronous code such as ``selftest``), plus a callback when the connection closes.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from vmcrash.host.connection import Hypervisor, call

__all__ = [
    "LifecycleEvent",
    "AgentEvent",
    "ConnectionClosed",
    "Event",
    "Subscription",
    "lifecycle_names",
    "wait_for_panic",
]

log = logging.getLogger(__name__)

_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: ("defined", ("added", "updated", "renamed", "from-snapshot")),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: ("undefined", ("removed", "renamed")),
    libvirt.VIR_DOMAIN_EVENT_STARTED: ("started", ("booted", "migrated", "restored", "from-snapshot",
                                                   "wakeup")),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: ("suspended", ("paused", "migrated", "ioerror", "watchdog",
                                                       "restored", "from-snapshot", "api-error",
                                                       "postcopy", "postcopy-failed")),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: ("resumed", ("unpaused", "migrated", "from-snapshot", "postcopy",
                                                   "postcopy-failed")),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: ("stopped", ("shutdown", "destroyed", "crashed", "migrated", "saved",
                                                   "failed", "from-snapshot")),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: ("shutdown", ("finished", "guest", "host")),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: ("pmsuspended", ("memory", "disk")),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: ("crashed", ("panicked", "crashloaded")),
}


def lifecycle_names(event: int, detail: int) -> tuple[str, str]:
    """Names for a lifecycle (event, detail) pair, e.g. ``(8, 0) -> ("crashed", "panicked")``."""
    name, details = _EVENTS.get(event, (f"event-{event}", ()))
    return name, details[detail] if 0 <= detail < len(details) else f"detail-{detail}"


@dataclass(frozen=True)
class LifecycleEvent:
    """A domain lifecycle event. ``received_ns``: host wall clock (ns) when it reached us."""

    domain: str
    uuid: str
    event: str
    detail: str
    received_ns: int

    @property
    def is_panic(self) -> bool:
        """True for CRASHED/PANICKED (and CRASHED/CRASHLOADED, a panic handled by kdump)."""
        return self.event == "crashed"


@dataclass(frozen=True)
class AgentEvent:
    """The guest agent connected (``connected=True``) or went away."""

    domain: str
    uuid: str
    connected: bool
    received_ns: int


@dataclass(frozen=True)
class ConnectionClosed:
    """The libvirt connection closed (libvirtd stopped, keepalive timeout, ...)."""

    reason: str
    received_ns: int


Event = LifecycleEvent | AgentEvent | ConnectionClosed

_CLOSE_REASONS = {0: "error", 1: "end-of-file", 2: "keepalive", 3: "client"}


class Subscription:
    """Lifecycle + agent-lifecycle events of all domains on one connection, handed to ``sink``.

    ``sink`` is called on the event-loop thread and must not block. Use
    :meth:`to_queue` for synchronous consumers.
    """

    def __init__(self, hv: Hypervisor, sink: Callable[[Event], None]) -> None:
        self.hv = hv
        self.sink = sink
        self._ids: list[int] = []
        conn = hv.conn
        self._ids.append(call(conn.domainEventRegisterAny, None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                              self._on_lifecycle, None, uri=hv.uri))
        self._ids.append(call(conn.domainEventRegisterAny, None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
                              self._on_agent, None, uri=hv.uri))
        try:
            conn.registerCloseCallback(self._on_close, None)
            self._close_registered = True
        except libvirt.libvirtError:
            self._close_registered = False

    @classmethod
    def to_queue(cls, hv: Hypervisor) -> tuple[Subscription, queue.Queue[Event]]:
        """A subscription feeding a thread-safe queue."""
        q: queue.Queue[Event] = queue.Queue()
        return cls(hv, q.put_nowait), q

    def _on_lifecycle(self, conn: object, dom: libvirt.virDomain, event: int, detail: int, opaque: object) -> None:
        try:
            ev, det = lifecycle_names(event, detail)
            self.sink(LifecycleEvent(dom.name(), dom.UUIDString(), ev, det, time.time_ns()))
        except Exception:  # never let an exception escape into libvirt's dispatcher
            log.exception("lifecycle event dropped")

    def _on_agent(self, conn: object, dom: libvirt.virDomain, state: int, reason: int, opaque: object) -> None:
        try:
            connected = state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
            self.sink(AgentEvent(dom.name(), dom.UUIDString(), connected, time.time_ns()))
        except Exception:
            log.exception("agent event dropped")

    def _on_close(self, conn: object, reason: int, opaque: object) -> None:
        try:
            self.sink(ConnectionClosed(_CLOSE_REASONS.get(reason, str(reason)), time.time_ns()))
        except Exception:
            log.exception("close event dropped")

    def close(self) -> None:
        """Deregister (errors on a dead connection are ignored)."""
        for cb_id in self._ids:
            try:
                self.hv.conn.domainEventDeregisterAny(cb_id)
            except libvirt.libvirtError:
                pass
        self._ids.clear()
        if self._close_registered:
            try:
                self.hv.conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
            self._close_registered = False


def wait_for_panic(q: queue.Queue[Event], domain: str, timeout_s: float) -> LifecycleEvent | None:
    """Take events from ``q`` until ``domain`` reports a panic; None after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            ev = q.get(timeout=left)
        except queue.Empty:
            return None
        if isinstance(ev, LifecycleEvent) and ev.domain == domain and ev.is_panic:
            return ev
    return None

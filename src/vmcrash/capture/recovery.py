"""Bringing a panicked guest back per policy: restart, reset, preserve or destroy.

* ``restart``: destroy the QEMU process and start a fresh one (a transient domain is re-created
  from its XML).
* ``reset``: reset in place, like libvirt's ``coredump-restart`` (same QEMU process; libvirt
  moves a crashed domain to paused on reset, so it is resumed after).
* ``preserve``: leave it crashed, e.g. for a later look with ``vmcrash dump``.
* ``destroy``: stop it.
* ``resume``: (manual dumps of a running guest) make sure it runs again after the dump.
* ``auto`` (the default policy) is not an action of its own: :func:`resolve_recovery` makes it
  ``restart`` when the capture holds the crashed RAM (a held image needs a fresh QEMU: the old one
  would reuse the memory), ``reset`` otherwise (the same QEMU process, like libvirt's
  ``coredump-restart`` and a guest's own reboot; a fresh QEMU costs ~2 s more under TCG here).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import libvirt

from vmcrash.errors import LibvirtRefused
from vmcrash.host.connection import Hypervisor, call, state_name

__all__ = ["RecoveryResult", "recover", "resolve_recovery", "wait_running"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryResult:
    """Outcome of a recovery. ``running_again_ns``: host wall clock when the guest ran again."""

    action: str
    state: str
    running_again_ns: int | None
    detail: str

    @property
    def running(self) -> bool:
        return self.state == "running"


def resolve_recovery(action: str, *, holds_image: bool) -> str:
    """The concrete action for the policy's ``action``: ``auto`` is ``restart`` when an image is held
    (``hold`` needs a fresh QEMU), else ``reset``; any other action is itself. Pure."""
    if action != "auto":
        return action
    return "restart" if holds_image else "reset"


def wait_running(dom: libvirt.virDomain, timeout_s: float = 30.0) -> bool:
    """Wait (bounded) until libvirt reports the domain running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, _ = dom.state()
        if state == libvirt.VIR_DOMAIN_RUNNING:
            return True
        time.sleep(0.02)
    return False


def recover(hv: Hypervisor, dom: libvirt.virDomain, action: str) -> tuple[RecoveryResult, libvirt.virDomain]:
    """Apply ``action`` to ``dom``; return the result and the (possibly re-created) domain.

    :raises LibvirtRefused: libvirt refused the operation.
    :raises LibvirtUnavailable: the connection is gone (the caller retries after reconnecting).
    """
    name = call(dom.name)
    if action == "preserve":
        state, _ = call(dom.state, domain=name)
        return RecoveryResult(action, state_name(state), None, "left as it is"), dom
    if action == "destroy":
        if call(dom.isActive, domain=name):
            call(dom.destroy, domain=name)
        return RecoveryResult(action, "shutoff", None, "destroyed"), dom
    if action == "restart":
        persistent = bool(call(dom.isPersistent, domain=name))
        xml = call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_SECURE, domain=name) if not persistent else ""
        if call(dom.isActive, domain=name):
            call(dom.destroy, domain=name)
        if persistent:
            call(dom.create, domain=name)
        else:
            dom = call(hv.conn.createXML, xml, 0, domain=name)
        ok = wait_running(dom)
        return RecoveryResult(action, "running" if ok else state_name(dom.state()[0]),
                              time.time_ns() if ok else None,
                              "fresh QEMU process started" if ok else "started but not running"), dom
    if action == "reset":
        call(dom.reset, 0, domain=name)
        state, _ = call(dom.state, domain=name)
        if state == libvirt.VIR_DOMAIN_PAUSED:
            call(dom.resume, domain=name)
        ok = wait_running(dom)
        return RecoveryResult(action, "running" if ok else state_name(dom.state()[0]),
                              time.time_ns() if ok else None,
                              "reset in place and resumed" if ok else "reset but not running"), dom
    if action == "resume":
        state, _ = call(dom.state, domain=name)
        if state == libvirt.VIR_DOMAIN_PAUSED:
            call(dom.resume, domain=name)
        ok = wait_running(dom, 10.0)
        return RecoveryResult(action, "running" if ok else state_name(dom.state()[0]),
                              time.time_ns() if ok else None, "running" if ok else "not running"), dom
    raise LibvirtRefused(f"unknown recovery action {action!r}", domain=name)

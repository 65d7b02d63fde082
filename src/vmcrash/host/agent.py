"""The QEMU guest agent, reached through libvirt: the thin I/O part, :class:`Agent`.

Commands are encoded and every reply (from the guest, which may be compromised) is size-bounded
and type-checked by the pure functions of :mod:`vmcrash.host.agent_protocol`; here libvirt's
errors become the project's agent errors.
"""

from __future__ import annotations

import logging
from typing import Any

import libvirt
import libvirt_qemu

from vmcrash.errors import AgentProtocolError, AgentRefused, AgentUnavailable, LibvirtUnavailable
from vmcrash.host.agent_protocol import (
    MAX_REPLY_BYTES,
    ExecStatus,
    decode_reply,
    encode_command,
    parse_exec_status,
    parse_time_ns,
)
from vmcrash.host.connection import translate

__all__ = ["Agent"]

log = logging.getLogger(__name__)

_NOT_CONFIGURED_HINT = (
    "no guest agent channel: add <channel type='unix'><target type='virtio' "
    "name='org.qemu.guest_agent.0'/></channel> (vmcrash doctor --fix) and run qemu-guest-agent in the guest"
)


class Agent:
    """Commands to one domain's guest agent.

    :param dom: the libvirt domain. :param timeout_s: default per-command timeout, whole seconds ≥ 1.
    """

    def __init__(self, dom: libvirt.virDomain, *, timeout_s: int = 5) -> None:
        self.dom = dom
        self.name: str = dom.name()
        self.timeout_s = max(1, int(timeout_s))

    def raw(self, execute: str, arguments: dict[str, Any] | None = None, *,
            timeout_s: int | None = None) -> object:
        """Send one command, return libvirt's raw reply text (unvalidated)."""
        timeout = max(1, int(timeout_s if timeout_s is not None else self.timeout_s))
        try:
            return libvirt_qemu.qemuAgentCommand(self.dom, encode_command(execute, arguments), timeout, 0)
        except (SystemError, UnicodeDecodeError) as exc:
            # A guest that answers with bytes that are not UTF-8 makes libvirt-python fail while
            # decoding the reply (SystemError caused by UnicodeDecodeError), not with libvirtError.
            raise AgentProtocolError(f"{execute}: reply is not UTF-8 text", domain=self.name) from exc
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            msg = exc.get_error_message() or str(exc)
            if code == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED or "not configured" in msg:
                raise AgentUnavailable(_NOT_CONFIGURED_HINT, domain=self.name, not_configured=True) from exc
            if code == libvirt.VIR_ERR_AGENT_UNRESPONSIVE:
                raise AgentUnavailable(
                    f"guest agent is not responding ({msg}); is qemu-guest-agent running in the guest?",
                    domain=self.name,
                ) from exc
            if code == libvirt.VIR_ERR_OPERATION_INVALID:
                raise AgentUnavailable(f"guest agent unavailable: {msg}", domain=self.name) from exc
            if "unable to execute QEMU agent command" in msg or code == libvirt.VIR_ERR_INTERNAL_ERROR:
                if "cannot parse" in msg or "json" in msg.lower() and "parse" in msg.lower():
                    raise AgentProtocolError(f"{execute}: {msg}", domain=self.name) from exc
                raise AgentRefused(f"{execute}: {msg}", domain=self.name, command=execute) from exc
            err = translate(exc, domain=self.name)
            if isinstance(err, LibvirtUnavailable):
                raise err from exc
            raise AgentRefused(f"{execute}: {msg}", domain=self.name, command=execute) from exc

    def command(self, execute: str, arguments: dict[str, Any] | None = None, *,
                timeout_s: int | None = None, max_bytes: int = MAX_REPLY_BYTES) -> Any:
        """Send one command and return its validated ``return`` member."""
        return decode_reply(self.raw(execute, arguments, timeout_s=timeout_s), command=execute,
                            domain=self.name, max_bytes=max_bytes)

    def ping(self, *, timeout_s: int = 2) -> None:
        """:raises AgentUnavailable: when the agent does not answer."""
        self.command("guest-ping", timeout_s=timeout_s)

    def get_time_ns(self) -> int:
        """The guest's wall clock, nanoseconds since the epoch."""
        return parse_time_ns(self.command("guest-get-time"), domain=self.name)

    def exec(self, path: str, args: list[str], *, capture: bool = False) -> int:
        """Start a process in the guest; return its guest PID."""
        ret = self.command("guest-exec", {"path": path, "arg": args, "capture-output": capture})
        pid = ret.get("pid") if isinstance(ret, dict) else None
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise AgentProtocolError("guest-exec: reply has no valid pid", domain=self.name)
        return pid

    def exec_status(self, pid: int) -> ExecStatus:
        """Poll a process started with :meth:`exec`."""
        return parse_exec_status(self.command("guest-exec-status", {"pid": pid}), domain=self.name)

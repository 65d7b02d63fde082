"""The QEMU guest agent, reached through libvirt: a narrow, validating transport.

Replies come from the guest, which may be compromised: every reply is size-bounded and
type-checked before anyone uses it. Encoding and decoding are pure functions (tested with
literal replies); :class:`Agent` is the thin I/O part over ``libvirt_qemu.qemuAgentCommand``.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any

import libvirt
import libvirt_qemu

from vmcrash.errors import AgentProtocolError, AgentRefused, AgentUnavailable, LibvirtUnavailable
from vmcrash.host.connection import translate

__all__ = [
    "MAX_REPLY_BYTES",
    "Agent",
    "ExecStatus",
    "encode_command",
    "decode_reply",
    "parse_time_ns",
    "parse_exec_status",
]

log = logging.getLogger(__name__)

#: Upper bound of one agent reply, in bytes (guest-exec-status output is capped separately).
MAX_REPLY_BYTES = 256 * 1024
#: Largest plausible guest time: year ~2262, the int64 nanosecond limit.
MAX_TIME_NS = 2**63 - 1

_NOT_CONFIGURED_HINT = (
    "no guest agent channel: add <channel type='unix'><target type='virtio' "
    "name='org.qemu.guest_agent.0'/></channel> (vmcrash doctor --fix) and run qemu-guest-agent in the guest"
)


def encode_command(execute: str, arguments: dict[str, Any] | None = None) -> str:
    """The JSON text of one agent command."""
    msg: dict[str, Any] = {"execute": execute}
    if arguments:
        msg["arguments"] = arguments
    return json.dumps(msg, separators=(",", ":"))


def decode_reply(reply: object, *, command: str, domain: str | None = None,
                 max_bytes: int = MAX_REPLY_BYTES) -> Any:
    """Validate a raw agent reply and return its ``return`` member.

    :raises AgentProtocolError: not a string, too large, not JSON, not an object, no ``return``.
    :raises AgentRefused: the agent answered ``{"error": ...}``.
    """
    if not isinstance(reply, str):
        raise AgentProtocolError(f"{command}: reply is {type(reply).__name__}, not text", domain=domain)
    if len(reply) > max_bytes:
        raise AgentProtocolError(f"{command}: reply of {len(reply)} bytes exceeds {max_bytes}", domain=domain)
    try:
        doc = json.loads(reply)
    except (ValueError, RecursionError) as exc:
        raise AgentProtocolError(f"{command}: reply is not JSON", domain=domain) from exc
    if not isinstance(doc, dict):
        raise AgentProtocolError(f"{command}: reply is not a JSON object", domain=domain)
    if "error" in doc:
        err = doc["error"]
        desc = err.get("desc") if isinstance(err, dict) else None
        raise AgentRefused(f"{command}: {str(desc)[:200] if desc else 'agent error'}", domain=domain,
                           command=command)
    if "return" not in doc:
        raise AgentProtocolError(f"{command}: reply has no 'return'", domain=domain)
    return doc["return"]


def parse_time_ns(value: object, *, domain: str | None = None) -> int:
    """Validate a ``guest-get-time`` result: nanoseconds since the epoch, 0 < t < 2^63."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AgentProtocolError(f"guest-get-time: {type(value).__name__} is not an integer", domain=domain)
    if not 0 < value <= MAX_TIME_NS:
        shown = str(value) if -10**30 < value < 10**30 else f"a {len(str(abs(value)))}-digit number"
        raise AgentProtocolError(f"guest-get-time: {shown} ns is out of range", domain=domain)
    return value


@dataclass(frozen=True)
class ExecStatus:
    """Result of ``guest-exec-status``. ``exitcode`` is ``None`` while the process runs."""

    exited: bool
    exitcode: int | None
    out: bytes
    err: bytes


def parse_exec_status(value: object, *, domain: str | None = None, max_output: int = 64 * 1024) -> ExecStatus:
    """Validate a ``guest-exec-status`` result. Output is base64 in the reply and capped."""
    if not isinstance(value, dict) or not isinstance(value.get("exited"), bool):
        raise AgentProtocolError("guest-exec-status: malformed reply", domain=domain)
    code = value.get("exitcode")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise AgentProtocolError("guest-exec-status: exitcode is not an integer", domain=domain)

    def b64(key: str) -> bytes:
        raw = value.get(key, "")
        if not isinstance(raw, str) or len(raw) > max_output * 4 // 3 + 4:
            raise AgentProtocolError(f"guest-exec-status: bad {key}", domain=domain)
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError as exc:
            raise AgentProtocolError(f"guest-exec-status: {key} is not base64", domain=domain) from exc

    return ExecStatus(exited=value["exited"], exitcode=code, out=b64("out-data"), err=b64("err-data"))


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

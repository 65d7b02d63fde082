"""The guest agent's wire protocol, pure (no libvirt): commands encoded, untrusted replies checked.

Replies come from the guest, which may be compromised: every reply is size-bounded and
type-checked before anyone uses it. These functions are tested with literal replies;
:class:`vmcrash.host.agent.Agent` is the thin I/O part over libvirt that uses them, and the clock
(:mod:`vmcrash.clock`) uses them too without importing libvirt.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from vmcrash.errors import AgentProtocolError, AgentRefused

__all__ = [
    "MAX_REPLY_BYTES",
    "MAX_TIME_NS",
    "ExecStatus",
    "encode_command",
    "decode_reply",
    "parse_time_ns",
    "parse_exec_status",
]

#: Upper bound of one agent reply, in bytes (guest-exec-status output is capped separately).
MAX_REPLY_BYTES = 256 * 1024
#: Largest guest time read (``guest-get-time``) or set (``guest-set-time``), ns since the epoch: QEMU's
#: int64 limit, year 2262.
MAX_TIME_NS = 2**63 - 1


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

"""The clock's agent boundary: timed ``guest-get-time``/``guest-set-time`` and their validation.

Replies come from the guest and are untrusted. Each reply is size-bounded (a time reply is a few
dozen bytes; we accept :data:`MAX_TIME_REPLY_BYTES`), decoded by :func:`vmcrash.host.agent_protocol.decode_reply`
and type/range-checked (an ``int``, not a ``bool`` or float, ``0 < t < 2**63``) *after* the
closing host stamp, so validation never widens the bracket. A probe whose round trip exceeds
``max_rtt_ns`` is dropped as too slow to say anything; if every probe is, that is an error.

Brackets: the host stamps are taken with :func:`time.time_ns` immediately around
``Agent.raw`` (one in-process ``libvirt_qemu.qemuAgentCommand``, via :func:`call_agent`). Inside
the bracket, before the command leaves, sits only ``Agent.raw``'s argument handling and the
``json.dumps`` of a tiny dict: 3.9 µs measured on the lab host (against 0.08 µs for a bare
call), 250 times below the ≈1 ms round trip, and a constant that the set-time lead learns away
anyway (:func:`~vmcrash.clock._estimate.next_lead_ns`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from vmcrash.clock._estimate import Probe, probe_rtt_ns
from vmcrash.errors import AgentProtocolError, AgentRefused
from vmcrash.host.agent_protocol import MAX_TIME_NS, decode_reply, parse_time_ns

__all__ = [
    "DEFAULT_MAX_RTT_NS",
    "GET_TIMEOUT_S",
    "MAX_TIME_REPLY_BYTES",
    "SET_TIMEOUT_S",
    "ClockAgent",
    "call_agent",
    "collect_probes",
    "parse_get_time_reply",
    "parse_set_time_reply",
    "ping",
    "set_time_refusal",
    "timed_get_time",
    "timed_set_time",
]

#: Largest ``guest-get-time``/``guest-set-time`` reply accepted, bytes (honest ones are < 40).
MAX_TIME_REPLY_BYTES = 4096
#: A probe slower than this is dropped: its midpoint could be off by up to half of it.
DEFAULT_MAX_RTT_NS = 500_000_000
#: libvirt timeout of one ``guest-get-time``, whole seconds (libvirt's unit).
GET_TIMEOUT_S = 2
#: libvirt timeout of one ``guest-set-time``; the guest runs ``hwclock -w`` before answering.
SET_TIMEOUT_S = 10

ClockNs = Callable[[], int]

class ClockAgent(Protocol):
    """What the clock needs of a guest agent (:class:`vmcrash.host.agent.Agent` is one)."""

    name: str

    def raw(self, execute: str, arguments: dict[str, Any] | None = None, *,
            timeout_s: int | None = None) -> object: ...



def _undecodable(exc: SystemError) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, UnicodeError)


def call_agent(agent: ClockAgent, execute: str, arguments: dict[str, Any] | None = None, *,
               timeout_s: int) -> object:
    """``agent.raw(...)``, plus the one failure ``Agent`` does not translate yet.

    Seen in the lab: when the guest answers bytes that are not UTF-8 (``\\xff{"return": ...``),
    libvirt's error message quotes them and libvirt-python fails to decode it, raising
    ``SystemError`` (cause ``UnicodeDecodeError``) instead of ``libvirtError``. That is bad data
    from the guest, so it becomes :class:`AgentProtocolError` here rather than a traceback.
    """
    try:
        return agent.raw(execute, arguments, timeout_s=timeout_s)
    except SystemError as exc:
        if not _undecodable(exc):
            raise
        raise AgentProtocolError(f"{execute}: the agent answered bytes that are not UTF-8 text",
                                 domain=agent.name) from exc


def ping(agent: ClockAgent, *, timeout_s: int) -> None:
    """``guest-ping`` through :func:`call_agent`. :raises: as :func:`call_agent`; AgentRefused."""
    decode_reply(call_agent(agent, "guest-ping", None, timeout_s=timeout_s), command="guest-ping",
                 domain=agent.name, max_bytes=MAX_TIME_REPLY_BYTES)


def parse_get_time_reply(reply: object, *, domain: str | None = None) -> int:
    """The guest time (epoch ns) in a raw ``guest-get-time`` reply.

    :raises AgentProtocolError: not text, larger than :data:`MAX_TIME_REPLY_BYTES`, not JSON, not
        an integer (bools, floats, NaN, strings are refused), or outside ``0 < t < 2**63``.
    :raises AgentRefused: the agent answered with an error.
    """
    value = decode_reply(reply, command="guest-get-time", domain=domain, max_bytes=MAX_TIME_REPLY_BYTES)
    if isinstance(value, int) and not isinstance(value, bool) and not 0 < value <= MAX_TIME_NS:
        # Checked here too because parse_time_ns quotes the whole number (up to ~4000 digits) in its message.
        shown = str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer,"
        raise AgentProtocolError(f"guest-get-time: {shown} ns is out of range", domain=domain)
    return parse_time_ns(value, domain=domain)


def parse_set_time_reply(reply: object, *, domain: str | None = None) -> None:
    """Check a raw ``guest-set-time`` reply: it must be ``{"return": {...}}`` (qemu-ga sends ``{}``).

    :raises AgentProtocolError: malformed. :raises AgentRefused: the agent answered an error.
    """
    value = decode_reply(reply, command="guest-set-time", domain=domain, max_bytes=MAX_TIME_REPLY_BYTES)
    if not isinstance(value, dict):
        raise AgentProtocolError(f"guest-set-time: 'return' is {type(value).__name__}, not an object",
                                 domain=domain)


def timed_get_time(agent: ClockAgent, *, clock_ns: ClockNs = time.time_ns,
                   timeout_s: int = GET_TIMEOUT_S) -> Probe:
    """One ``guest-get-time``, bracketed by host stamps as tightly as the call allows.

    :raises AgentProtocolError, AgentRefused, AgentUnavailable: from the reply or the transport.
    """
    t_send = clock_ns()
    reply = call_agent(agent, "guest-get-time", None, timeout_s=timeout_s)
    t_recv = clock_ns()
    return Probe(t_send, parse_get_time_reply(reply, domain=agent.name), t_recv)


def collect_probes(agent: ClockAgent, count: int, *, max_rtt_ns: int = DEFAULT_MAX_RTT_NS,
                   clock_ns: ClockNs = time.time_ns, timeout_s: int = GET_TIMEOUT_S) -> list[Probe]:
    """``count`` probes, back to back, minus those slower than ``max_rtt_ns`` or running backwards.

    The first failing exchange ends the series (its error propagates): one bad answer is enough to
    distrust the agent, and it bounds the time spent to one libvirt timeout.

    :returns: at least one probe.
    :raises AgentProtocolError: every probe was too slow (or the host clock stepped back each time).
    :raises ValueError: ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"probe count must be >= 1, not {count}")
    kept: list[Probe] = []
    slowest = 0
    for _ in range(count):
        probe = timed_get_time(agent, clock_ns=clock_ns, timeout_s=timeout_s)
        rtt = probe_rtt_ns(probe)
        if 0 <= rtt <= max_rtt_ns:
            kept.append(probe)
        slowest = max(slowest, rtt)
    if not kept:
        raise AgentProtocolError(
            f"guest-get-time: none of {count} replies came back within {max_rtt_ns / 1e6:.0f} ms "
            f"(slowest {slowest / 1e6:.0f} ms)", domain=agent.name)
    return kept


_SET_TIME_HINT = (
    "qemu-guest-agent sets the clock only if /sbin/hwclock exists in the guest: install util-linux there "
    "(or link busybox's hwclock applet to /sbin/hwclock); or let the guest step its own clock with chrony "
    "('makestep 1 -1' in chrony.conf, which `vmcrash guest` audits)"
)


def _refusal_reason(message: str) -> str:
    """The agent's own words from a libvirt refusal message, bounded to 200 characters."""
    marker = "'guest-set-time': "
    reason = message.rsplit(marker, 1)[-1] if marker in message else message
    return reason.strip()[:200]


def set_time_refusal(exc: AgentRefused, *, domain: str | None) -> AgentRefused:
    """An :class:`AgentRefused` that says what to do about a refused ``guest-set-time``."""
    reason = _refusal_reason(exc.message.removeprefix(f"{domain}: ") if domain else exc.message)
    return AgentRefused(f"the guest agent refused to set the clock ({reason}); {_SET_TIME_HINT}",
                        domain=domain, command="guest-set-time")


def timed_set_time(agent: ClockAgent, lead_ns: int, *, clock_ns: ClockNs = time.time_ns,
                   timeout_s: int = SET_TIMEOUT_S) -> tuple[int, int]:
    """Set the guest clock to host time + ``lead_ns``, the host time read right before sending.

    :returns: ``(t_send_ns, t_recv_ns)``, the host stamps around the call.
    :raises AgentRefused: the agent refused, with what to do about it.
    :raises AgentProtocolError: the reply is malformed. :raises ValueError: the time is out of range.
    """
    t_send = clock_ns()
    value = t_send + lead_ns
    if not 0 < value <= MAX_TIME_NS:
        raise ValueError(f"time to set is out of range: {value} ns")
    try:
        reply = call_agent(agent, "guest-set-time", {"time": value}, timeout_s=timeout_s)
        t_recv = clock_ns()
        parse_set_time_reply(reply, domain=agent.name)
    except AgentRefused as exc:
        raise set_time_refusal(exc, domain=agent.name) from exc
    return t_send, t_recv

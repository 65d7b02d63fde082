"""Measure, correct and wait for a guest clock over its agent (blocking; call from worker threads).

Where ``guest-set-time`` lands
------------------------------
qemu-ga 7.2 handles ``guest-set-time`` as: check that ``/sbin/hwclock`` exists (refuse otherwise),
``settimeofday()``, then run ``hwclock -w`` and only then answer. So the guest clock is set early in
the round trip and the rest of it is ``hwclock``. Measured on the lab (TCG guest, 2 host cores
shared with other TCG guests; four runs of 20 sets of ``host_now + 0``, each followed by an
8-probe measurement — ``bench/clock.py`` repeats this):

* ``guest-set-time`` round trip: median 12–14 ms (range 9–446 ms under load), nearly all of it
  ``hwclock -w``;
* the clock landed a median 0.9–1.25 ms after the host stamp (range 0–9 ms), 2–8 % into the
  bracket;
* half the ``guest-get-time`` round trip at the same time: median 0.47–0.61 ms; so the handler
  adds 0.3–0.8 ms (median of the four runs ≈0.5 ms) before ``settimeofday``.

Compensating by half the *set* round trip (the midpoint rule) would leave the guest ≈6 ms ahead.
The first set's lead is therefore the one-way delay — half the best *get-time* round trip of the
measurement just taken — plus :data:`SET_HANDLER_NS`; this is the prior. Then we measure again.
If still outside the target, the residual tells when that set really landed
(:func:`~vmcrash.clock._estimate.landing_ns`), and the next set uses the median of the prior and
all landings seen (:func:`~vmcrash.clock._estimate.next_lead_ns`: robust to one late landing).
What remains after one set is the landing jitter: in ``bench/clock.py`` runs, a median |residual|
of 0.8–2.0 ms and a worst case of 4.9 ms, depending on how busy the host's cores were.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from vmcrash.clock._estimate import OffsetEstimate, SyncResult, estimate, landing_ns, next_lead_ns, within
from vmcrash.clock._transport import (
    DEFAULT_MAX_RTT_NS,
    ClockAgent,
    ClockNs,
    collect_probes,
    ping,
    timed_set_time,
)
from vmcrash.errors import AgentUnavailable, UsageError

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PROBES",
    "DEFAULT_TARGET_NS",
    "agent_not_configured",
    "measure",
    "sync",
    "wait_for_agent",
]

log = logging.getLogger(__name__)

DEFAULT_PROBES = 8
DEFAULT_TARGET_NS = 5_000_000
DEFAULT_MAX_ATTEMPTS = 5
#: Added to the one-way delay in the first set's lead: qemu-ga's handler time before settimeofday
#: as measured (landing − get-time rtt/2: 0.3–0.8 ms medians over four lab runs, see the module
#: docstring). Where it differs, the learning loop corrects it when the target asks for it.
SET_HANDLER_NS = 500_000
#: Upper bounds of the arguments, so a config typo cannot make a call run for hours.
MAX_PROBES = 1000
MAX_ATTEMPTS = 100


def _domain_log(agent: ClockAgent) -> logging.Logger:
    return log.getChild(agent.name.replace(".", "_"))


def measure(agent: ClockAgent, *, probes: int = DEFAULT_PROBES, max_rtt_ns: int = DEFAULT_MAX_RTT_NS,
            clock_ns: ClockNs = time.time_ns) -> OffsetEstimate:
    """Estimate the guest clock's offset from the host's with ``probes`` ``guest-get-time`` calls.

    The median offset of the half of the probes with the smallest round trip (see
    :func:`vmcrash.clock.estimate`). Takes about ``probes`` agent round trips (≈1 ms each).

    :raises UsageError: ``probes`` outside 1..1000.
    :raises AgentUnavailable: no agent channel, agent not connected or not answering.
    :raises AgentRefused: the agent answered ``guest-get-time`` with an error.
    :raises AgentProtocolError: a malformed reply, or every reply slower than ``max_rtt_ns``.
    """
    if not 1 <= probes <= MAX_PROBES:
        raise UsageError(f"probes must be 1..{MAX_PROBES}, not {probes}")
    result = estimate(collect_probes(agent, probes, max_rtt_ns=max_rtt_ns, clock_ns=clock_ns))
    _domain_log(agent).debug("offset %+d ns (rtt %d ns, spread %d ns, %d probes)", result.offset_ns,
                             result.rtt_ns, result.spread_ns, result.probes_used)
    return result


def sync(agent: ClockAgent, *, target_ns: int = DEFAULT_TARGET_NS, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
         probes: int = DEFAULT_PROBES, clock_ns: ClockNs = time.time_ns) -> SyncResult:
    """Bring the guest clock within ``target_ns`` of the host's with ``guest-set-time``.

    Measures first; if already within target, sets nothing (``attempts == 0``). Otherwise sets
    the clock to host time plus the estimated landing delay and measures again, up to
    ``max_attempts`` times, learning the landing delay from each residual (module docstring).
    A result with ``ok == False`` means the budget was spent; the clock was still set each time,
    so it is usually much better than before.

    :raises UsageError: ``target_ns`` < 1 or ``max_attempts`` outside 1..100.
    :raises AgentRefused: the agent refused ``guest-set-time`` (message says what to do: hwclock, or
        in-guest chrony ``makestep``) or ``guest-get-time``.
    :raises AgentUnavailable, AgentProtocolError: as :func:`measure`.
    """
    if target_ns < 1:
        raise UsageError(f"target must be a positive number of ns, not {target_ns}")
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise UsageError(f"max_attempts must be 1..{MAX_ATTEMPTS}, not {max_attempts}")
    dlog = _domain_log(agent)
    before = measure(agent, probes=probes, clock_ns=clock_ns)
    if within(before, target_ns):
        return SyncResult(before=before, after=before, attempts=0, ok=True, target_ns=target_ns)
    prior_ns = max(before.rtt_ns // 2, 0) + SET_HANDLER_NS
    landings: list[int] = []
    after = before
    lead_ns = prior_ns
    set_rtt_ns = 0
    attempts = 0
    while attempts < max_attempts:
        attempts += 1
        lead_ns = next_lead_ns(prior_ns, landings)
        t_send, t_recv = timed_set_time(agent, lead_ns, clock_ns=clock_ns)
        set_rtt_ns = t_recv - t_send
        after = measure(agent, probes=probes, clock_ns=clock_ns)
        dlog.debug("set #%d with lead %d ns (set rtt %d ns): offset now %+d ns", attempts, lead_ns,
                   set_rtt_ns, after.offset_ns)
        if within(after, target_ns):
            break
        landings.append(landing_ns(lead_ns, after.offset_ns, set_rtt_ns))
    ok = within(after, target_ns)
    dlog.info("clock %+.3f ms -> %+.3f ms in %d set(s)%s", before.offset_ns / 1e6, after.offset_ns / 1e6,
              attempts, "" if ok else f", target {target_ns / 1e6:g} ms not reached")
    return SyncResult(before=before, after=after, attempts=attempts, ok=ok, target_ns=target_ns,
                      lead_ns=lead_ns, set_rtt_ns=set_rtt_ns)


def agent_not_configured(exc: AgentUnavailable) -> bool:
    """True when ``exc`` says the domain has no agent channel at all (waiting cannot help).

    :class:`~vmcrash.host.agent.Agent` decides that where libvirt's error is translated
    (``VIR_ERR_ARGUMENT_UNSUPPORTED``, "QEMU guest agent is not configured") and says so in
    :attr:`AgentUnavailable.not_configured`; ``clock/`` never looks at libvirt's errors itself.
    """
    return bool(exc.not_configured)


def wait_for_agent(agent: ClockAgent, *, timeout_s: float = 60.0, first_delay_s: float = 0.1,
                   max_delay_s: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                   monotonic: Callable[[], float] = time.monotonic) -> float:
    """Wait until the guest agent answers ``guest-ping``; return the seconds waited.

    Retries with exponential backoff (``first_delay_s`` doubling up to ``max_delay_s``) while the
    agent is unavailable — not yet connected after a boot or resume, not answering, or the domain
    momentarily not running. Each ping has a libvirt timeout of 1–2 s, so the call returns at most
    about one second after ``timeout_s``.

    :raises AgentUnavailable: still unavailable after ``timeout_s``; or at once when the domain has
        no agent channel (:func:`agent_not_configured`).
    :raises AgentRefused, AgentProtocolError, LibvirtUnavailable, DomainNotFound: at once.
    :raises UsageError: ``timeout_s`` negative or not finite.
    """
    if not math.isfinite(timeout_s) or timeout_s < 0:
        raise UsageError(f"timeout must be a finite number of seconds >= 0, not {timeout_s}")
    start = monotonic()
    deadline = start + timeout_s
    delay = first_delay_s
    tries = 0
    while True:
        tries += 1
        remaining = deadline - monotonic()
        try:
            ping(agent, timeout_s=max(1, min(2, math.ceil(remaining))))
            waited = monotonic() - start
            if tries > 1:
                _domain_log(agent).info("guest agent answered after %.1f s (%d tries)", waited, tries)
            return waited
        except AgentUnavailable as exc:
            if agent_not_configured(exc):
                raise
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise AgentUnavailable(
                    f"guest agent did not answer within {timeout_s:g} s ({tries} tries); last error: "
                    f"{exc.message.removeprefix(agent.name + ': ')}", domain=agent.name) from exc
            sleep(min(delay, remaining))
            delay = min(delay * 2, max_delay_s)

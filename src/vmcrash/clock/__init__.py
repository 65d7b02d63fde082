"""Guest clocks: measure a guest's offset over its agent (NTP-style) and correct it.

A guest frozen for a while (paused, snapshotted, migrated, dumped, crashed and restarted) comes
back with its clock behind by the freeze. :func:`measure` estimates the offset from timed
``guest-get-time`` probes; :func:`sync` sets the clock with ``guest-set-time``, compensating for
where the set lands inside the round trip, and re-measures until within target;
:func:`wait_for_agent` waits (bounded) for the agent after a resume or reboot.

The arithmetic is pure (:func:`estimate`, :func:`landing_ns`, :func:`next_lead_ns` over :class:`Probe` tuples); the
agent boundary that validates untrusted replies is in ``_transport``. All calls block: the daemon
runs them in worker threads.

Public surface: :func:`measure`, :func:`sync`, :func:`wait_for_agent`, :func:`agent_not_configured`
over a :class:`ClockAgent`; results :class:`OffsetEstimate` and :class:`SyncResult`; the pure parts
:class:`Probe`, :func:`estimate`, :func:`best_probes`, :func:`probe_offset_ns`, :func:`probe_rtt_ns`,
:func:`landing_ns`, :func:`next_lead_ns`, :func:`within`; defaults :data:`DEFAULT_PROBES`,
:data:`DEFAULT_TARGET_NS`, :data:`DEFAULT_MAX_ATTEMPTS`.
"""

from vmcrash.clock._estimate import (
    OffsetEstimate,
    Probe,
    SyncResult,
    best_probes,
    estimate,
    landing_ns,
    next_lead_ns,
    probe_offset_ns,
    probe_rtt_ns,
    within,
)
from vmcrash.clock._sync import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PROBES,
    DEFAULT_TARGET_NS,
    agent_not_configured,
    measure,
    sync,
    wait_for_agent,
)
from vmcrash.clock._transport import ClockAgent

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PROBES",
    "DEFAULT_TARGET_NS",
    "ClockAgent",
    "OffsetEstimate",
    "Probe",
    "SyncResult",
    "agent_not_configured",
    "best_probes",
    "estimate",
    "landing_ns",
    "measure",
    "next_lead_ns",
    "probe_offset_ns",
    "probe_rtt_ns",
    "sync",
    "wait_for_agent",
    "within",
]

"""The clock stage: correct a guest's clock after a freeze, over its agent, and say what happened.

Used after a crash's recovery (the pipeline and the adoption of libvirt's crashes), by the
freeze resyncs (:mod:`vmcrash.capture.freezewatch`) and by the daemon's sweep. Never raises for
agent trouble: the outcome says it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

from vmcrash import clock
from vmcrash.errors import VmcrashError
from vmcrash.host.agent import Agent
from vmcrash.store.catalog import Catalog

__all__ = ["ClockOutcome", "clock_after_freeze", "measure_offset_ms", "record_after_crash"]


@dataclass(frozen=True)
class ClockOutcome:
    """One correction (or measurement, ``synced=False``) of a guest clock; offsets in ms."""

    ok: bool
    synced: bool
    before_ms: float | None = None
    after_ms: float | None = None
    waited_s: float | None = None
    attempts: int | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON kept in the catalogue (``clock_json``, ``clock_syncs.result_json``)."""
        d = {k: v for k, v in asdict(self).items() if k != "detail" and v is not None}
        d.update(self.detail)
        return d

    def describe(self) -> str:
        """One line for the crash's event log."""
        if self.before_ms is not None and self.after_ms is not None:
            return f"offset {self.before_ms:+.1f} ms -> {self.after_ms:+.1f} ms"
        return f"clock: {self.error}"


def clock_after_freeze(dom: libvirt.virDomain, *, target_ms: float, agent_wait_s: float,
                       sync: bool = True) -> ClockOutcome:
    """Correct (or, with ``sync=False``, measure) a guest's clock after a freeze.

    Waits for the agent with a bounded retry (it may be booting).
    """
    agent = Agent(dom, timeout_s=5)
    try:
        waited = clock.wait_for_agent(agent, timeout_s=agent_wait_s)
        if not sync:
            est = clock.measure(agent)
            return ClockOutcome(True, False, est.offset_ns / 1e6, est.offset_ns / 1e6, waited,
                                detail={"estimate": asdict(est)})
        result = clock.sync(agent, target_ns=int(target_ms * 1e6))
        return ClockOutcome(bool(result.ok), True, result.before.offset_ns / 1e6, result.after.offset_ns / 1e6,
                            waited, result.attempts, detail={"result": result.to_dict()})
    except VmcrashError as exc:
        return ClockOutcome(False, False, error=str(exc))


def measure_offset_ms(dom: libvirt.virDomain) -> float:
    """The guest clock's offset from the host's, in ms (the sweep's look). :raises VmcrashError:"""
    return clock.measure(Agent(dom, timeout_s=3)).offset_ns / 1e6


def record_after_crash(catalog: Catalog, crash_id: int, *, domain: str, uuid: str, outcome: ClockOutcome) -> None:
    """Keep a crash's clock correction: in its row, in the clock history, in its event log."""
    result = outcome.to_dict()
    catalog.update(crash_id, clock=result)
    catalog.record_clock_sync(domain=domain, uuid=uuid, reason="after-crash", ok=outcome.ok,
                              before_ms=outcome.before_ms, after_ms=outcome.after_ms, result=result,
                              error=outcome.error, crash_id=crash_id)
    catalog.log(crash_id, "clock", outcome.describe())

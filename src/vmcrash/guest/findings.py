"""What the boot-order audit found, as frozen results, and how they print (text and JSON).

:class:`AuditReport` holds everything one audit found: whether ``time-sync.target`` is in the boot
transaction and what holds it (:class:`ClockUnit`), the verdict on each service with the edge
chain that proves it (:class:`ServiceVerdict`), what the time daemon's configuration does with a
large offset (:class:`DaemonReport`) and the :class:`Finding` items that make the exit code 1.
Pure data and rendering: nothing here reads a file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vmcrash.guest.bounds import WaitBound
from vmcrash.guest.conditions import UnitConditions
from vmcrash.guest.graph import TIME_SYNC, Edge
from vmcrash.guest.roles import Role
from vmcrash.guest.unitfile import Problem

__all__ = ["AuditReport", "ClockUnit", "DaemonReport", "Finding", "ServiceVerdict"]


@dataclass(frozen=True)
class Finding:
    """Something that lets a service start with a wrong clock. ``code`` is stable (for machines)."""

    code: str
    message: str
    unit: str | None = None


@dataclass(frozen=True)
class ClockUnit:
    """A unit that steps, waits for or keeps the clock.

    :ivar role: ``waits`` (blocks until synchronised), ``steps`` (sets the clock once, then exits),
        ``daemon`` (keeps time; becomes active before it has synchronised) or ``unknown``.
    :ivar holds: True when, in the transaction and ordered before time-sync.target, it would keep
        time-sync.target from being reached until the clock is right.
    """

    unit: str
    role: str
    holds: bool
    load_state: str
    in_transaction: bool
    before_time_sync: bool
    pulled_in_by: tuple[Edge, ...] | None
    note: str = ""
    #: for ``waits``/``steps`` units: how long it holds the boot without a time source
    bound: WaitBound | None = None
    #: whether it runs at boot by its conditions and assertions (None: only the running machine knows)
    runs: bool | None = True


@dataclass(frozen=True)
class ServiceVerdict:
    """Whether one service of the boot transaction waits for time-sync.target, and the proof.

    :ivar after_time_sync: ordered after time-sync.target (directly or through the graph).
    :ivar chain: the ``after`` edges proving it (empty when not ordered after it).
    :ivar waits_for: when not: every unit of the transaction it is directly ordered after; none of
        them is (transitively) after time-sync.target, which is the proof that it can start first.
    :ivar runs: False when a condition skips it or an assertion fails it (its own, or one of a unit it
        requires) at boot: it never starts, so never on a wrong clock; None when only the running
        machine can tell (see ``note``).
    """

    unit: str
    after_time_sync: bool
    chain: tuple[Edge, ...]
    waits_for: tuple[Edge, ...]
    pulled_in_by: tuple[Edge, ...] | None
    in_transaction: bool = True
    note: str = ""
    runs: bool | None = True


@dataclass(frozen=True)
class DaemonReport:
    """The time daemon of the transaction and what it does with a large offset."""

    daemon: str
    unit: str
    in_transaction: bool
    summary: tuple[str, ...]
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditReport:
    """Everything :func:`audit` found (see the module docstring)."""

    root: str
    default_target: str
    transaction_size: int
    time_sync_in_transaction: bool
    time_sync_pulled_in_by: tuple[Edge, ...] | None
    time_sync_held_by: tuple[str, ...]
    clock_units: tuple[ClockUnit, ...]
    services: tuple[ServiceVerdict, ...]
    skipped: tuple[str, ...]
    daemons: tuple[DaemonReport, ...]
    findings: tuple[Finding, ...]
    problems: tuple[Problem, ...]
    failed: tuple[tuple[str, str], ...]
    cycles: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...]
    #: services of the application phase left alone on purpose (login, ssh, network, time...)
    infrastructure: tuple[Role, ...] = ()
    #: longest a unit holding time-sync.target can wait without a time source (inf: forever; None: nothing holds)
    max_wait_s: float | None = None
    #: conditions and assertions of the transaction's units that have any, as evaluated here
    conditions: tuple[UnitConditions, ...] = ()
    #: True when the audited tree is the running system (its machine's facts were read)
    live: bool = False

    @property
    def exit_code(self) -> int:
        """0 when nothing was found, 1 with findings (or unreadable unit files)."""
        return 1 if self.findings or self.problems else 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (stable keys; edges as objects)."""

        def edges(chain: Iterable[Edge] | None) -> list[dict[str, str]] | None:
            if chain is None:
                return None
            return [{"unit": e.src, "kind": e.kind, "other": e.dst, "origin": e.origin} for e in chain]

        def seconds(value: float | None) -> float | None:
            return None if value is None or not math.isfinite(value) else value

        return {
            "root": self.root,
            "default_target": self.default_target,
            "transaction_size": self.transaction_size,
            "time_sync": {
                "in_transaction": self.time_sync_in_transaction,
                "pulled_in_by": edges(self.time_sync_pulled_in_by),
                "held_by": list(self.time_sync_held_by),
                "max_wait_s": seconds(self.max_wait_s),
                "waits_forever": self.max_wait_s is not None and not math.isfinite(self.max_wait_s),
            },
            "clock_units": [
                {"unit": c.unit, "role": c.role, "holds": c.holds, "load_state": c.load_state,
                 "in_transaction": c.in_transaction, "before_time_sync": c.before_time_sync,
                 "pulled_in_by": edges(c.pulled_in_by), "note": c.note,
                 "bound_s": seconds(c.bound.bound_s) if c.bound else None,
                 "start_timeout_s": seconds(c.bound.timeout_s) if c.bound else None,
                 "bounded": c.bound.finite if c.bound else None,
                 "bound_why": c.bound.why if c.bound else None, "runs": c.runs}
                for c in self.clock_units
            ],
            "services": [
                {"unit": s.unit, "after_time_sync": s.after_time_sync, "in_transaction": s.in_transaction,
                 "chain": edges(s.chain), "waits_for": edges(s.waits_for),
                 "pulled_in_by": edges(s.pulled_in_by), "note": s.note, "runs": s.runs}
                for s in self.services
            ],
            "machine": "live" if self.live else "offline",
            "conditions": [
                {"unit": c.unit, "runs": c.runs, "condition": c.conditions.met, "assert": c.asserts.met,
                 "why": list(c.conditions.why) + list(c.asserts.why)}
                for c in self.conditions
            ],
            "skipped_prerequisites": list(self.skipped),
            "infrastructure": [{"unit": r.unit, "role": r.kind.value, "reason": r.reason}
                               for r in self.infrastructure],
            "daemons": [{"daemon": d.daemon, "unit": d.unit, "in_transaction": d.in_transaction,
                         "summary": list(d.summary), **d.data} for d in self.daemons],
            "findings": [{"code": f.code, "unit": f.unit, "message": f.message} for f in self.findings],
            "problems": [{"path": p.path, "line": p.line, "message": p.message} for p in self.problems],
            "failed_to_start": [{"unit": u, "reason": r} for u, r in self.failed],
            "ordering_cycles": [list(c) for c in self.cycles],
            "notes": list(self.notes),
            "exit_code": self.exit_code,
        }

    def render_text(self, *, verbose: bool = False) -> str:
        """The human report (one screen for a typical system; ``verbose`` adds every chain)."""
        out: list[str] = []
        out.append(f"vmcrash guest audit of {self.root}: default.target = {self.default_target}, "
                   f"{self.transaction_size} units in the boot transaction")
        out.append("")
        if self.time_sync_in_transaction:
            out.append(f"{TIME_SYNC}: in the boot transaction, pulled in by "
                       + _pull_text(self.time_sync_pulled_in_by))
        else:
            out.append(f"{TIME_SYNC}: NOT in the boot transaction (nothing pulls it in), so "
                       "After=time-sync.target orders nothing")
        held = ", ".join(self.time_sync_held_by) or "nothing"
        out.append(f"  held until the clock is synchronized by: {held}")
        for c in self.clock_units:
            state = "in transaction" if c.in_transaction else (
                "not pulled in" if c.load_state == "loaded" else c.load_state)
            order = f"Before={TIME_SYNC}" if c.before_time_sync else f"not ordered before {TIME_SYNC}"
            out.append(f"  {c.unit:<34} {c.role:<7} {state}, {order}{'; ' + c.note if c.note else ''}")
            if c.bound is not None and c.role in ("waits", "steps"):
                out.append(f"  {'':<34} {'':<7} {c.bound.text()} ({c.bound.why})")
        if self.max_wait_s is not None:
            out.append("  without a time source the services after it start "
                       + (f"after at most {self.max_wait_s:g} s (ordering, not requirement)"
                          if math.isfinite(self.max_wait_s) else "never: the boot waits forever"))
        for d in self.daemons:
            out.append("")
            out.append(f"time daemon: {d.daemon} ({d.unit}{'' if d.in_transaction else ', not in transaction'})")
            out.extend(f"  {line}" for line in d.summary)
        out.append("")
        bad = [s for s in self.services if not s.after_time_sync]
        out.append(f"services audited: {len(self.services)} ({len(bad)} can start before {TIME_SYNC}); "
                   f"{len(self.skipped)} early-boot units and {TIME_SYNC} prerequisites skipped")
        for s in self.services:
            if s.after_time_sync:
                proof = " after ".join([s.chain[0].src] + [e.dst for e in s.chain]) if s.chain else ""
                out.append(f"  ok    {s.unit:<36} after {TIME_SYNC}: {proof}")
                if verbose:
                    out.extend(f"          {e}" for e in s.chain)
            else:
                if not s.in_transaction or s.runs is False:
                    out.append(f"  --    {s.unit:<36} {s.note}")
                    continue
                waits = ", ".join(e.dst for e in s.waits_for) or "nothing"
                out.append(f"  FAIL  {s.unit:<36} can start before {TIME_SYNC}; waits only for: {waits}"
                           + (f"; {s.note}" if s.note else ""))
                if verbose:
                    out.extend(f"          {e}" for e in s.waits_for)
                    out.append(f"          pulled in by: {_pull_text(s.pulled_in_by)}")
        unknown = [c for c in self.conditions if c.runs is None]
        if unknown:
            where = "on this running system" if self.live else "offline (they depend on the running machine)"
            shown = "; ".join(f"{c.unit}: {', '.join(c.unknown)}" for c in unknown[:4])
            more = f"; and {len(unknown) - 4} more" if len(unknown) > 4 else ""
            out.append(f"conditions not known {where}: {len(unknown)} units run or not at boot by them "
                       f"({shown}{more})")
        if self.infrastructure:
            out.append(f"infrastructure never delayed for the clock: {len(self.infrastructure)}")
            for r in self.infrastructure:
                out.append(f"  --    {r.unit:<36} {r.kind.value}: {r.reason}")
        if self.failed:
            out.append("")
            out.append("units pulled in that cannot start:")
            out.extend(f"  {u}: {r}" for u, r in self.failed)
        if self.cycles:
            out.append("")
            out.append("ordering cycles (systemd breaks them by dropping a job):")
            out.extend("  " + " -> ".join(c) for c in self.cycles)
        out.append("")
        if self.findings:
            out.append(f"findings ({len(self.findings)}):")
            out.extend(f"  [{f.code}] {f.message}" for f in self.findings)
        else:
            out.append("findings: none")
        if self.problems:
            out.append("")
            out.append(f"unit file problems ({len(self.problems)}):")
            out.extend(f"  {p}" for p in self.problems)
        if self.notes:
            out.append("")
            out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out) + "\n"


def _pull_text(chain: tuple[Edge, ...] | None) -> str:
    if not chain:
        return "-"
    return " -> ".join([chain[0].src] + [f"({e.kind}) {e.dst}" for e in chain])


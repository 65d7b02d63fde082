"""Audit a system (or an image) for services that can start before the clock is right.

After a freeze the guest boots with a wrong clock; a time daemon steps it some seconds later.
Services start in parallel, so nothing makes them wait for the step unless (1) ``time-sync.target``
is in the boot transaction, (2) a unit that really waits for synchronisation (``chrony-wait``,
``systemd-time-wait-sync``...) is ordered ``Before=`` it, and (3) each service is ordered after
it, directly or through the graph. :func:`audit` checks all three with the edge chains that prove
each answer, plus what the time daemon's configuration does with a large offset.

The result is a frozen :class:`AuditReport`; :meth:`AuditReport.render_text` and
:meth:`AuditReport.to_json` print it. ``exit_code``: 0 nothing found, 1 findings.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmcrash.errors import UnitFileError, UsageError
from vmcrash.guest.bounds import WaitBound, default_timeout_start_s, wait_bound
from vmcrash.guest.conditions import evaluate_conditions
from vmcrash.guest.graph import BootGraph, Edge, service_type
from vmcrash.guest.roles import Role, RoleKind, classify
from vmcrash.guest.sources import RootSource, UnitSource, resolve
from vmcrash.guest.timecfg import (
    REFERENCE_OFFSET_S,
    ChronyConfig,
    NtpdConfig,
    chrony_conf_path,
    ntpdate_servers,
    read_chrony,
    read_ntpd,
    read_timesyncd,
    slew_seconds,
)
from vmcrash.guest.unitfile import Problem
from vmcrash.guest.units import Unit, UnitLoader

__all__ = [
    "KNOWN_WAIT_UNITS",
    "AuditReport",
    "ClockUnit",
    "DaemonReport",
    "Finding",
    "ServiceVerdict",
    "audit",
    "audit_graph",
    "clock_role",
    "find_clock_units",
    "load_graph",
]

TIME_SYNC = "time-sync.target"

#: Units that hold time-sync.target until the clock is synchronised, per time daemon.
#: Preferred first: the distribution's own unit (RHEL/CentOS 7's ntp: ntpdate.service, which steps the
#: clock once before ntpd starts; ntp.org's ntp-wait where it is packaged as a unit).
KNOWN_WAIT_UNITS = {
    "chrony": ("chrony-wait.service",),
    "ntpsec": ("ntpsec-wait.service",),
    "ntp": ("ntpdate.service", "ntp-wait.service"),
    "timesyncd": ("systemd-time-wait-sync.service",),
}
#: Any daemon that clears the kernel's STA_UNSYNC flag can be waited for with this one.
GENERIC_WAIT_UNIT = "systemd-time-wait-sync.service"
#: Clock units looked for even when nothing pulls them in.
_CLOCK_UNIT_NAMES = ("chrony-wait.service", "systemd-time-wait-sync.service", "ntpsec-wait.service",
                     "ntp-wait.service", "ntpdate.service", "ntpsec-ntpdate.service", "sntp.service",
                     "chrony.service", "ntpsec.service", "ntp.service", "systemd-timesyncd.service",
                     "openntpd.service")
#: time daemon units -> (daemon kind)
_DAEMON_UNITS = {
    "chrony.service": "chrony",
    "chronyd.service": "chrony",  # RHEL, CentOS, Fedora, SUSE (Debian: an alias of chrony.service)
    "ntpsec.service": "ntpsec",
    "ntp.service": "ntp",
    "ntpd.service": "ntp",  # RHEL/CentOS 7, SUSE (ntp 4.2.x)
    "systemd-timesyncd.service": "timesyncd",
    "openntpd.service": "openntpd",
}
#: Daemon binaries (ExecStart=) -> kind; ``ntpd`` is ntpsec's too (told apart by unit name / package paths).
_DAEMON_BINARIES = {"chronyd": "chrony", "ntpd": "ntp", "systemd-timesyncd": "timesyncd", "openntpd": "openntpd"}


def daemon_kind(unit: Unit) -> str | None:
    """The kind of time daemon ``unit`` runs (``chrony``, ``ntp``, ``ntpsec``, ``timesyncd``...), from
    its ExecStart= (then its name); None when it is not a time daemon (one-shot steppers included)."""
    role, _ = clock_role(unit)
    if role != "daemon":
        return None
    for line in _exec_lines(unit):
        try:
            words = shlex.split(line.lstrip("-@:+!"))
        except ValueError:
            words = line.split()
        if not words:
            continue
        binary = words[0].rsplit("/", 1)[-1]
        kind = _DAEMON_BINARIES.get(binary)
        if kind == "ntp" and ("ntpsec" in unit.id or "ntpsec" in line):
            return "ntpsec"
        if kind is not None:
            return kind
    for name in unit.names:
        if name in _DAEMON_UNITS:
            return _DAEMON_UNITS[name]
    return None


def time_daemons(graph: BootGraph) -> list[tuple[str, str]]:
    """(unit id, kind) of every time daemon installed, recognised by ExecStart= as well as by name;
    those in the boot transaction first."""
    found: dict[str, str] = {}
    candidates = [graph.loader.resolve_name(n) for n in _DAEMON_UNITS if graph.loader.has_fragment(n)]
    candidates += sorted(u for u in graph.transaction if graph.units[u].type == "service")
    for uid in candidates:
        if uid in found:
            continue
        unit = graph.units.get(uid) or graph.loader.load(uid)
        if not unit.loaded:
            continue
        kind = daemon_kind(unit)
        if kind is not None:
            found[uid] = kind
    return sorted(found.items(), key=lambda item: (item[0] not in graph.transaction, item[0]))


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


@dataclass(frozen=True)
class ServiceVerdict:
    """Whether one service of the boot transaction waits for time-sync.target, and the proof.

    :ivar after_time_sync: ordered after time-sync.target (directly or through the graph).
    :ivar chain: the ``after`` edges proving it (empty when not ordered after it).
    :ivar waits_for: when not: every unit of the transaction it is directly ordered after; none of
        them is (transitively) after time-sync.target, which is the proof that it can start first.
    """

    unit: str
    after_time_sync: bool
    chain: tuple[Edge, ...]
    waits_for: tuple[Edge, ...]
    pulled_in_by: tuple[Edge, ...] | None
    in_transaction: bool = True
    note: str = ""


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
                 "bound_why": c.bound.why if c.bound else None}
                for c in self.clock_units
            ],
            "services": [
                {"unit": s.unit, "after_time_sync": s.after_time_sync, "in_transaction": s.in_transaction,
                 "chain": edges(s.chain), "waits_for": edges(s.waits_for),
                 "pulled_in_by": edges(s.pulled_in_by), "note": s.note}
                for s in self.services
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
                if not s.in_transaction:
                    out.append(f"  --    {s.unit:<36} {s.note}")
                    continue
                waits = ", ".join(e.dst for e in s.waits_for) or "nothing"
                out.append(f"  FAIL  {s.unit:<36} can start before {TIME_SYNC}; waits only for: {waits}")
                if verbose:
                    out.extend(f"          {e}" for e in s.waits_for)
                    out.append(f"          pulled in by: {_pull_text(s.pulled_in_by)}")
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


# -- clock units ---------------------------------------------------------------------------


def _exec_lines(unit: Unit) -> list[str]:
    return unit.list_values("Service", "ExecStart")


def clock_role(unit: Unit) -> tuple[str, str]:
    """(role, reason) of a unit that may deal with the clock: ``waits``, ``steps``, ``daemon`` or ``unknown``."""
    text = " ".join(_exec_lines(unit))
    words = set(re.split(r"[\s/!@+:;=-]+", text)) | set(re.split(r"[\s/!@+:;=]+", text))
    if "chronyc" in words and "waitsync" in words:
        return "waits", "chronyc waitsync"
    if "systemd-time-wait-sync" in words:
        return "waits", "systemd-time-wait-sync"
    if "ntp-wait" in words or "ntpwait" in words:
        return "waits", "ntp-wait"
    if "ntpdate" in words or "sntp" in words:
        return "steps", "one-shot ntpdate/sntp"
    if ("chronyd" in words and ("-q" in text.split() or "-Q" in text.split())) or (
            "ntpd" in words and "-q" in text.split()):
        return "steps", "one-shot chronyd/ntpd -q"
    if "chronyd" in words or "ntpd" in words or "systemd-timesyncd" in words or "openntpd" in words:
        return "daemon", "time daemon: active before its first clock update"
    base = unit.id
    if base in _DAEMON_UNITS:
        return "daemon", "time daemon: active before its first clock update"
    if base in ("chrony-wait.service", "systemd-time-wait-sync.service", "ntpsec-wait.service", "ntp-wait.service"):
        return "waits", "known wait unit"
    if base in ("ntpdate.service", "ntpsec-ntpdate.service", "sntp.service"):
        return "steps", "known one-shot setter"
    return "unknown", "does not look like a clock unit"


def _holds(unit: Unit, role: str) -> tuple[bool, str]:
    if role not in ("waits", "steps"):
        return False, ""
    stype = service_type(unit)
    if stype != "oneshot":
        return False, f"Type={stype}: active as soon as it runs, so it holds nothing"
    return True, ""


def _before_time_sync(graph: BootGraph, unit: Unit) -> bool:
    if unit.id in graph.units:
        return unit.id in graph.edges(TIME_SYNC, "after") or TIME_SYNC in graph.edges(unit.id, "before")
    loader = graph.loader
    return any(d.kind == "before" and loader.resolve_name(d.name) == TIME_SYNC for d in unit.deps) or any(
        d.kind == "after" and loader.resolve_name(d.name) == unit.id for d in loader.load(TIME_SYNC).deps)


def find_clock_units(graph: BootGraph, manager_default_s: float = 90.0) -> list[ClockUnit]:
    """Every unit that keeps, steps or waits for the clock (installed or pulled in), with its bound."""
    names: list[str] = []
    if TIME_SYNC in graph.units:
        names.extend(sorted(graph.edges(TIME_SYNC, "after")))
    for n in _CLOCK_UNIT_NAMES:
        if graph.loader.has_fragment(n) or n in graph.units:
            uid = graph.loader.resolve_name(n)
            if uid not in names:
                names.append(uid)
    for uid in sorted(graph.transaction):  # a clock unit by its command, whatever its name (ntpd.service)
        if graph.units[uid].type == "service" and uid not in names and clock_role(graph.units[uid])[0] != "unknown":
            names.append(uid)
    out: list[ClockUnit] = []
    for uid in names:
        unit = graph.units.get(uid) or graph.loader.load(uid)
        if unit.type != "service" or unit.load_state == "not-found":
            continue
        role, why = clock_role(unit)
        before = _before_time_sync(graph, unit)
        if role == "unknown" and not before:
            continue
        in_t = uid in graph.transaction
        holds, hold_note = _holds(unit, role)
        holds = holds and in_t and before and TIME_SYNC in graph.transaction
        if role in ("waits", "steps"):
            cond = evaluate_conditions(unit, graph.loader.source)
            if cond.met is False:
                holds = False
                hold_note = f"skipped at boot, holds nothing: {', '.join(cond.why)} is false on this tree"
        note = hold_note or why
        pulled = graph.pull_chain(uid)
        bound = wait_bound(unit, manager_default_s) if role in ("waits", "steps") else None
        out.append(ClockUnit(uid, role, holds, unit.load_state, in_t, before,
                             tuple(pulled) if pulled is not None else None, note, bound))
    return out


# -- daemon configuration ------------------------------------------------------------------


def _env_value(source: UnitSource, path: str, key: str) -> str:
    real = resolve(source, path)
    if not real:
        return ""
    try:
        text = source.read_bytes(real, 1 << 16).decode("utf-8", "replace")
    except UnitFileError:
        return ""
    value = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(key + "="):
            rest = line[len(key) + 1:]
            try:
                words = shlex.split(rest, comments=True)
                value = " ".join(words)
            except ValueError:
                value = rest.strip("\"'")
    return value


def _minutes(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _chrony_report(source: UnitSource, unit: str, in_t: bool) -> tuple[DaemonReport, list[Finding], list[Problem]]:
    opts = (_env_value(source, "/etc/default/chrony", "DAEMON_OPTS")  # Debian, Ubuntu
            or _env_value(source, "/etc/sysconfig/chronyd", "OPTIONS"))  # RHEL, Fedora, SUSE
    path = chrony_conf_path(source, opts)
    findings: list[Finding] = []
    if path is None:
        return DaemonReport("chrony", unit, in_t, ("no chrony.conf found",)), findings, []
    cfg: ChronyConfig = read_chrony(source, path)
    lines = [f"configuration: {', '.join(cfg.files)}"]
    ms = cfg.makestep
    slew = _minutes(cfg.slew_seconds())
    rate = f"maxslewrate {cfg.maxslewrate_ppm:g} ppm"
    if ms is None:
        lines.append(f"no makestep: chronyd never steps; a {REFERENCE_OFFSET_S:.0f} s offset is slewed at "
                     f"<= {rate}: at least {slew}")
        if in_t:
            findings.append(Finding("chrony-never-steps", f"chrony has no makestep: a {REFERENCE_OFFSET_S:.0f} s "
                                    f"offset is slewed away over at least {slew}", unit))
    elif ms.unlimited:
        lines.append(f"makestep {ms.threshold_s:g} {ms.limit} ({ms.where}): steps any offset over "
                     f"{ms.threshold_s:g} s at any clock update (a freeze is stepped)")
    else:
        lines.append(f"makestep {ms.threshold_s:g} {ms.limit} ({ms.where}): steps only in the first {ms.limit} "
                     f"clock updates; a {REFERENCE_OFFSET_S:.0f} s offset that appears later (a freeze) is "
                     f"slewed at <= {rate}: at least {slew}")
        if in_t:
            findings.append(Finding(
                "chrony-makestep-limited",
                f"chrony 'makestep {ms.threshold_s:g} {ms.limit}' ({ms.where}): after its first {ms.limit} "
                f"updates a {REFERENCE_OFFSET_S:.0f} s offset is slewed for at least {slew}", unit))
    if len(cfg.makesteps) > 1:
        lines.append("makestep lines, last wins: " + ", ".join(d.where for d in cfg.makesteps))
    data = {"config": cfg.path, "files": list(cfg.files),
            "makestep": None if ms is None else {"threshold_s": ms.threshold_s, "limit": ms.limit,
                                                 "where": ms.where},
            "makestep_lines": [d.where for d in cfg.makesteps],
            "maxslewrate_ppm": cfg.maxslewrate_ppm,
            "slew_seconds_for_reference_offset": round(cfg.slew_seconds(), 1),
            "reference_offset_s": REFERENCE_OFFSET_S,
            "steps_offset_after_start": cfg.steps_offset_after_start(),
            "confdirs": list(cfg.confdirs)}
    return DaemonReport("chrony", unit, in_t, tuple(lines), data), findings, list(cfg.problems)


def _ntpd_report(source: UnitSource, kind: str, unit: str, in_t: bool,
                 ntpdate: tuple[str, bool] | None = None) -> tuple[DaemonReport, list[Finding], list[Problem]]:
    if kind == "ntpsec":
        opts = _env_value(source, "/etc/default/ntpsec", "NTPD_OPTS")
        confs = ("/etc/ntpsec/ntp.conf", "/etc/ntp.conf")
    else:
        opts = (_env_value(source, "/etc/default/ntp", "NTPD_OPTS")  # Debian
                or _env_value(source, "/etc/sysconfig/ntpd", "OPTIONS"))  # RHEL/CentOS 7, SUSE
        confs = ("/etc/ntp.conf", "/etc/ntpsec/ntp.conf")
    cfg: NtpdConfig = read_ntpd(source, confs, opts)
    lines = [f"configuration: {cfg.path or 'none found'}; options: {' '.join(cfg.options) or '(none)'}",
             f"panic threshold {cfg.panic_s:g} s ("
             + ("-g given: the first offset at start may exceed it, once" if cfg.allow_first_big
                else "no -g: ntpd exits on a larger offset at start") + ")",
             f"step threshold {cfg.step_s:g} s{' (-x: slew only up to 600 s)' if cfg.slew_only else ''}, "
             f"stepout {cfg.stepout_s:g} s (an offset over the step threshold is stepped only once it has "
             f"persisted that long)"]
    lines.extend(ntpd_offset_story(cfg))
    findings: list[Finding] = []
    if kind == "ntp" and ntpdate is not None:
        servers, origin = ntpdate_servers(source)
        state = "enabled" if ntpdate[1] else "installed, not started at boot"
        lines.append(f"ntpdate.service ({state}) steps the clock once at boot, any offset, before ntpd starts; "
                     + (f"servers: {', '.join(servers[:4])} ({origin})" if servers else "it has no server"))
        if ntpdate[1] and not servers:
            findings.append(Finding("ntpdate-no-servers", "ntpdate.service has no server to step from "
                                    "(/etc/ntp/step-tickers and /etc/ntp.conf name none)", "ntpdate.service"))
    if not cfg.steps():
        slew = _minutes(slew_seconds(REFERENCE_OFFSET_S, 500.0))
        lines.append(f"a {REFERENCE_OFFSET_S:.0f} s offset is slewed at <= 500 ppm: at least {slew}")
        if in_t:
            findings.append(Finding("ntpd-slews", f"{kind}: a {REFERENCE_OFFSET_S:.0f} s offset is slewed, "
                                    f"not stepped (-x or tinker step): at least {slew}", unit))
    if cfg.exits() and in_t:
        findings.append(Finding("ntpd-exits", f"{kind}: no -g, so ntpd exits on an offset over "
                                f"{cfg.panic_s:g} s at start", unit))
    data = {"config": cfg.path, "options": list(cfg.options), "panic_s": cfg.panic_s, "step_s": cfg.step_s,
            "stepout_s": cfg.stepout_s, "g": cfg.allow_first_big, "x": cfg.slew_only}
    return DaemonReport(kind, unit, in_t, tuple(lines), data), findings, list(cfg.problems)


def conflicting_daemons(graph: BootGraph) -> list[Finding]:
    """Time daemons of the boot transaction that conflict (``Conflicts=``, either direction).

    Both pulled in by ``Wants=``: systemd keeps one start job and drops the other (which one depends
    on the order jobs are merged), so which daemon runs, and which wait unit can work, is not
    decided by the files. (CentOS 7 with both ntpd and chronyd enabled: chronyd.service
    ``Conflicts=ntpd.service``.)
    """
    daemons = [uid for uid, _ in time_daemons(graph) if uid in graph.transaction]
    out = []
    for i, a in enumerate(daemons):
        for b in daemons[i + 1:]:
            if b in graph.edges(a, "conflicts") or a in graph.edges(b, "conflicts"):
                out.append(Finding("time-daemons-conflict",
                                   f"{a} and {b} are both started at boot but conflict (Conflicts=): systemd "
                                   "drops one of the two start jobs, so which one keeps time is left to chance; "
                                   "disable one", a))
    return out


def ntpd_offset_story(cfg: NtpdConfig, offsets_s: tuple[float, ...] = (REFERENCE_OFFSET_S, 1080.0)) -> list[str]:
    """What ntpd does with a clock ``offsets_s`` behind, at boot and on a running guest after a freeze.

    At boot (-g) the first offset of any size is accepted: stepped once ntpd has its first samples,
    while services started meanwhile see the wrong clock. On a running guest (a freeze), an
    offset over the panic threshold makes ntpd exit, leaving the clock as it is (-g counts only
    once); under it but over the step threshold it is stepped after ``stepout``; -x slews it.
    1080 s is the 18 minutes of the original CentOS 7 case.
    """
    out = []
    for off in offsets_s:
        if cfg.panic_s > 0 and off > cfg.panic_s:
            at_boot = ("stepped once ntpd has its first samples (-g)" if cfg.allow_first_big
                       else "ntpd exits at start (no -g) and the clock stays wrong")
            out.append(f"a clock {off:.0f} s behind: at boot {at_boot}; after a freeze of a running guest "
                       f"ntpd exits (over the {cfg.panic_s:g} s panic threshold) and the {off / 60:.0f} min "
                       "stand until someone steps the clock")
        elif not cfg.steps(off):
            out.append(f"a clock {off:.0f} s behind: slewed at <= 500 ppm, at least "
                       f"{_minutes(slew_seconds(off, 500.0))}")
        else:
            out.append(f"a clock {off:.0f} s behind: stepped, on a running guest only after the offset "
                       f"persisted for stepout ({cfg.stepout_s:g} s)")
    return out


def _daemon_reports(graph: BootGraph, source: UnitSource) -> tuple[list[DaemonReport], list[Finding], list[Problem]]:
    reports: list[DaemonReport] = []
    findings: list[Finding] = []
    problems: list[Problem] = []
    for uid, kind in time_daemons(graph):
        in_t = uid in graph.transaction
        if kind == "chrony":
            rep, f, p = _chrony_report(source, uid, in_t)
        elif kind in ("ntpsec", "ntp"):
            step = graph.loader.load("ntpdate.service")
            ntpdate = (step.id, step.id in graph.transaction) if step.loaded else None
            rep, f, p = _ntpd_report(source, kind, uid, in_t, ntpdate)
        elif kind == "timesyncd":
            cfg = read_timesyncd(source)
            rep = DaemonReport(kind, uid, in_t, (
                f"configuration: {', '.join(cfg.files) or 'defaults'}",
                ("steps any offset over 0.4 s once synchronised; only systemd-time-wait-sync.service "
                 "holds time-sync.target until then")), {"files": list(cfg.files), "servers": list(cfg.servers)})
            f, p = [], []
        else:
            rep, f, p = DaemonReport(kind, uid, in_t, ("configuration not inspected",)), [], []
        if in_t or not reports:
            reports.append(rep)
        findings.extend(f)
        problems.extend(p)
    reports.sort(key=lambda r: not r.in_transaction)
    shown = [r for r in reports if r.in_transaction] or reports[:1]
    return shown, findings, problems


# -- SysV scripts ----------------------------------------------------------------------------


def _sysv_scripts(loader: UnitLoader, source: UnitSource) -> list[str]:
    """Enabled /etc/init.d scripts without a native unit (systemd-sysv-generator makes units of them)."""
    try:
        scripts = source.listdir("/etc/init.d")
    except UnitFileError:
        return []
    enabled: set[str] = set()
    for level in "2345":
        try:
            for link in source.listdir(f"/etc/rc{level}.d"):
                if link.startswith("S") and len(link) > 3:
                    enabled.add(link[3:])
        except UnitFileError:
            continue
    out = []
    for s in scripts:
        if s.startswith(".") or s in ("README", "skeleton", "rc", "rcS") or s not in enabled:
            continue
        if not loader.has_fragment(f"{s}.service") and loader.load(f"{s}.service").load_state != "masked":
            out.append(s)
    return out


# -- the audit ---------------------------------------------------------------------------------


def load_graph(root: str | Path = "/", source: UnitSource | None = None, extra: Iterable[str] = ()) -> BootGraph:
    """The boot graph of the tree at ``root`` (or ``source``).

    :raises UsageError: ``root`` is not a directory.
    :raises UnitFileError: no loadable ``default.target``.
    """
    src = source if source is not None else _root_source(root)
    loader = UnitLoader(src)
    if not loader.search_dirs:
        raise UnitFileError("no systemd unit directory in this tree (is it a systemd system?)", path=src.label)
    default = loader.load("default.target")
    if not default.loaded:
        raise UnitFileError(f"default.target is {default.load_state}; cannot tell what boots",
                            path=default.fragment or posixpath.join(loader.search_dirs[0], "default.target"))
    return BootGraph(loader, "default.target", extra=extra)


def audit(root: str | Path = "/", units: Iterable[str] = (), *, source: UnitSource | None = None) -> AuditReport:
    """Audit the tree at ``root``: see the module docstring.

    :param units: audit only these services (default: every service of the boot transaction that
        starts after basic.target and is not itself needed by time-sync.target).
    :raises UsageError: bad root. :raises UnitFileError: nothing to audit (no default.target).
    """
    wanted = list(units)
    src = source if source is not None else _root_source(root)
    graph = load_graph(root, src, extra=wanted)
    return audit_graph(graph, src, wanted, label=str(root))


def _root_source(root: str | Path) -> UnitSource:
    if not Path(root).is_dir():
        raise UsageError(f"{root}: not a directory (--root must be the top of a guest's file system)")
    return RootSource(Path(root))


def audit_prerequisites(graph: BootGraph) -> tuple[set[str], set[str]]:
    """(units time-sync.target would wait for, early-boot units) within the transaction.

    Early-boot units are those not ordered after ``basic.target``: infrastructure that the time
    daemon itself needs, so they cannot wait for the clock. Everything after basic.target is the
    application phase the audit is about.
    """
    scope = graph.transaction | {TIME_SYNC} if TIME_SYNC in graph.units else graph.transaction
    prereq = graph.waited_for_by(TIME_SYNC, scope) if TIME_SYNC in graph.units else set()
    early: set[str] = set()
    if "basic.target" in graph.transaction:
        late = _ordered_after(graph, "basic.target")
        early = set(graph.transaction) - late
    return prereq, early


def _ordered_after(graph: BootGraph, dst: str) -> set[str]:
    """Transaction units ordered (transitively) after ``dst``."""
    seen: set[str] = set()
    todo = [dst]
    while todo:
        uid = todo.pop()
        for other in graph.edges(uid, "before"):
            if other in graph.transaction and other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def audit_graph(graph: BootGraph, source: UnitSource, units: Iterable[str] = (), *, label: str = "/") -> AuditReport:
    """The audit over an already built graph (see :func:`audit`)."""
    findings: list[Finding] = []
    notes: list[str] = []
    t = graph.transaction
    ts_in = TIME_SYNC in t
    clock = find_clock_units(graph, default_timeout_start_s(source))
    held_by = tuple(c.unit for c in clock if c.holds)
    prereq, early = audit_prerequisites(graph)
    clock_ids = {c.unit for c in clock}
    roles = classify(graph, held_by, clock_ids)
    holders = [c for c in clock if c.holds and c.bound is not None]
    max_wait = max((c.bound.bound_s for c in holders if c.bound), default=None) if holders else None
    for c in holders:
        assert c.bound is not None
        if not c.bound.finite:
            findings.append(Finding("wait-unbounded", f"boot waits forever without a time source: {c.unit} "
                                    f"holds {TIME_SYNC} with no bound ({c.bound.why}); every service "
                                    f"ordered after it never starts (fix: vmcrash guest fix --wait-timeout)",
                                    c.unit))

    if not ts_in:
        findings.append(Finding("time-sync-not-pulled-in",
                                f"nothing in the boot transaction pulls in {TIME_SYNC} (it is passive): "
                                f"After={TIME_SYNC} makes no service wait"))
    elif not held_by:
        daemons = [c.unit for c in clock if c.in_transaction and c.before_time_sync]
        waiters = [c.unit for c in clock if c.role in ("waits", "steps") and not c.in_transaction
                   and c.load_state == "loaded"]
        msg = (f"{TIME_SYNC} is reached without waiting for the clock: ordered before it only "
               f"{', '.join(daemons) or 'nothing'}, which become active before the first clock update")
        if waiters:
            msg += f"; installed but not pulled in: {', '.join(waiters)}"
        findings.append(Finding("time-sync-not-held", msg))

    verdicts: list[ServiceVerdict] = []
    if units:
        chosen = []
        for name in units:
            unit = graph.unit(name)
            if unit.load_state != "loaded":
                findings.append(Finding("unit-not-loaded", f"{name}: {unit.load_state}", name))
                continue
            chosen.append(unit.id)
    else:
        chosen = sorted(u for u in t if graph.units[u].type == "service" and u not in prereq
                        and u not in early and u not in clock_ids and not roles[u].kind.infrastructure)
    skipped = tuple(sorted(u for u in t if graph.units[u].type == "service" and (u in prereq or u in early)
                           and u not in chosen))
    infra = tuple(roles[u] for u in sorted(t) if u in roles and roles[u].kind.infrastructure
                  and u not in chosen and u not in early and u not in prereq)
    bound_text = ("forever" if max_wait is None or not math.isfinite(max_wait) else f"up to {max_wait:g} s")
    for uid in sorted(t):
        role = roles.get(uid)
        if role is None or role.kind not in (RoleKind.LOGIN, RoleKind.SSH, RoleKind.AGENT, RoleKind.TIME,
                                             RoleKind.NETWORK, RoleKind.NEEDED):
            continue
        chain = graph.order_chain(uid, TIME_SYNC) if ts_in else None
        if not chain:
            continue
        proof = " after ".join([chain[0].src] + [e.dst for e in chain])
        if role.kind is RoleKind.SSH:
            notes.append(f"{uid} is ordered after {TIME_SYNC} ({proof}): without a time source ssh logins "
                         f"wait {bound_text}")
            continue
        findings.append(Finding("infrastructure-after-time-sync",
                                f"{uid} ({role.kind.value}: {role.reason}) is ordered after {TIME_SYNC} "
                                f"({proof}): without a time source it waits {bound_text}", uid))
    for uid in chosen:
        verdicts.append(_verdict(graph, uid, prereq))
    for v in verdicts:
        if v.in_transaction and not v.after_time_sync and v.unit not in prereq:
            findings.append(Finding("service-before-time-sync",
                                    f"{v.unit} can start before {TIME_SYNC}"
                                    + ("" if ts_in else f" ({TIME_SYNC} is not in the transaction)"), v.unit))

    daemon_reports, dfind, dprob = _daemon_reports(graph, source)
    findings.extend(dfind)
    findings.extend(conflicting_daemons(graph))
    cycles = tuple(tuple(c) for c in graph.cycles())
    for cyc in cycles:
        findings.append(Finding("ordering-cycle", "ordering cycle: " + " -> ".join(cyc)))
    problems = list(graph.loader.problems) + dprob
    if isinstance(source, RootSource) and str(source.root) != "/":
        notes.append("offline image: generator output (fstab mounts, serial-getty for console=, SysV "
                     "scripts) only exists on the running system and is not seen here")
    sysv = _sysv_scripts(graph.loader, source)
    if sysv and not graph.loader.search_dirs.count("/run/systemd/generator.late"):
        notes.append("SysV init scripts started through systemd-sysv-generator, not audited: " + ", ".join(sysv))
    return AuditReport(
        root=label,
        default_target=graph.start,
        transaction_size=len(t),
        time_sync_in_transaction=ts_in,
        time_sync_pulled_in_by=tuple(graph.pull_chain(TIME_SYNC) or ()) if ts_in else None,
        time_sync_held_by=held_by,
        clock_units=tuple(clock),
        services=tuple(verdicts),
        skipped=skipped,
        daemons=tuple(daemon_reports),
        findings=tuple(findings),
        problems=tuple(problems),
        failed=tuple(sorted(graph.failed.items())),
        cycles=cycles,
        notes=tuple(notes),
        infrastructure=infra,
        max_wait_s=max_wait,
    )


def _verdict(graph: BootGraph, uid: str, prereq: set[str]) -> ServiceVerdict:
    pulled = graph.pull_chain(uid)
    if uid not in graph.transaction:
        return ServiceVerdict(uid, False, (), (), None, in_transaction=False,
                              note="not in the boot transaction (not started at boot)")
    chain = graph.order_chain(uid, TIME_SYNC)
    if chain:
        return ServiceVerdict(uid, True, tuple(chain), (), tuple(pulled or ()))
    waits = tuple(e for _, e in sorted(graph.edges(uid, "after").items()) if e.dst in graph.transaction)
    note = f"{TIME_SYNC} waits for it (a prerequisite)" if uid in prereq else ""
    return ServiceVerdict(uid, False, (), waits, tuple(pulled or ()), note=note)

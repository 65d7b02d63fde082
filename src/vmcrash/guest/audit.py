"""Audit a system (or an image) for services that can start before the clock is right.

After a freeze the guest boots with a wrong clock; a time daemon steps it some seconds later.
Services start in parallel, so nothing makes them wait for the step unless (1) ``time-sync.target``
is in the boot transaction, (2) a unit that really waits for synchronisation (``chrony-wait``,
``systemd-time-wait-sync``...) is ordered ``Before=`` it, and (3) each service is ordered after
it, directly or through the graph. :func:`audit` checks all three with the edge chains that prove
each answer (:mod:`vmcrash.guest.clockunits` finds what holds the target), plus what the time
daemon's configuration does with a large offset (:mod:`vmcrash.guest.daemonreport`).

The result is a frozen :class:`~vmcrash.guest.findings.AuditReport`; its ``render_text`` and
``to_json`` print it. ``exit_code``: 0 nothing found, 1 findings.
"""

from __future__ import annotations

import math
import posixpath
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from vmcrash.errors import UnitFileError, UsageError
from vmcrash.guest.bounds import default_timeout_start_s
from vmcrash.guest.clockunits import conflicting_daemons, find_clock_units
from vmcrash.guest.conditions import OFFLINE, Machine, UnitConditions, conditions_of, live_machine_for
from vmcrash.guest.daemonreport import daemon_reports
from vmcrash.guest.findings import AuditReport, Finding, ServiceVerdict
from vmcrash.guest.graph import TIME_SYNC, BootGraph
from vmcrash.guest.roles import RoleKind, classify
from vmcrash.guest.sources import RootSource, UnitSource
from vmcrash.guest.units import UnitLoader

__all__ = ["audit", "audit_graph", "audit_prerequisites", "load_graph", "runs_at_boot"]


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
    When ``root`` is the running system (``/`` booted with systemd), conditions are also evaluated
    against the machine's own facts (:func:`~vmcrash.guest.conditions.probe_machine`).
    :raises UsageError: bad root. :raises UnitFileError: nothing to audit (no default.target).
    """
    wanted = list(units)
    src = source if source is not None else _root_source(root)
    graph = load_graph(root, src, extra=wanted)
    machine = live_machine_for(Path(root)) if source is None else OFFLINE
    return audit_graph(graph, src, wanted, label=str(root), machine=machine)


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


def runs_at_boot(graph: BootGraph, conds: dict[str, UnitConditions]) -> dict[str, tuple[bool | None, str]]:
    """unit -> (runs, why) for the transaction's units that may not run: skipped by a condition,
    failed by an assertion, or failed because a unit they ``Requires=``/``BindsTo=``/``Requisite=``
    failed (a skipped unit fails nobody); ``runs`` None when only the machine knows."""
    out: dict[str, tuple[bool | None, str]] = {uid: (c.runs, c.describe()) for uid, c in conds.items()
                                               if c.runs is not True}
    needed_by: dict[str, list[tuple[str, str]]] = {}
    for uid in sorted(graph.transaction):
        for kind in ("requires", "binds_to", "requisite"):
            for other in graph.edges(uid, kind):
                needed_by.setdefault(other, []).append((uid, kind))
    todo = deque(sorted(uid for uid, c in conds.items() if c.fails))
    failing = set(todo)
    while todo:  # each unit enters once: linear in the dependency edges
        bad = todo.popleft()
        for uid, kind in needed_by.get(bad, ()):
            if uid not in failing and uid in graph.transaction:
                failing.add(uid)
                out[uid] = (False, f"fails at boot: it {kind.replace('_', '')} {bad}, which fails")
                todo.append(uid)
    return out


def audit_graph(graph: BootGraph, source: UnitSource, units: Iterable[str] = (), *, label: str = "/",
                machine: Machine = OFFLINE) -> AuditReport:
    """The audit over an already built graph (see :func:`audit`); ``machine``: the facts conditions
    may ask about (:data:`~vmcrash.guest.conditions.OFFLINE`: none)."""
    findings: list[Finding] = []
    notes: list[str] = []
    t = graph.transaction
    ts_in = TIME_SYNC in t
    conds = {c.unit: c for c in conditions_of((graph.units[u] for u in sorted(t)), source, machine)}
    runs = runs_at_boot(graph, conds)
    clock = find_clock_units(graph, default_timeout_start_s(source), machine)
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
        active = [c.unit for c in clock if c.in_transaction and c.before_time_sync]
        waiters = [c.unit for c in clock if c.role in ("waits", "steps") and not c.in_transaction
                   and c.load_state == "loaded"]
        if active:
            msg = (f"{TIME_SYNC} is reached without waiting for the clock: ordered before it only "
                   f"{', '.join(active)}, which become active before the first clock update")
        else:
            msg = (f"{TIME_SYNC} is reached without waiting for the clock: nothing that waits for it is "
                   "ordered before it")
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
        verdicts.append(_verdict(graph, uid, prereq, runs.get(uid, (True, ""))))
    for v in verdicts:
        if v.in_transaction and not v.after_time_sync and v.unit not in prereq and v.runs is not False:
            findings.append(Finding("service-before-time-sync",
                                    f"{v.unit} can start before {TIME_SYNC}"
                                    + ("" if ts_in else f" ({TIME_SYNC} is not in the transaction)"), v.unit))

    daemons, dfind, dprob = daemon_reports(graph, source, runs)
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
        daemons=tuple(daemons),
        findings=tuple(findings),
        problems=tuple(problems),
        failed=tuple(sorted(graph.failed.items())),
        cycles=cycles,
        notes=tuple(notes),
        infrastructure=infra,
        max_wait_s=max_wait,
        conditions=tuple(conds.values()),
        live=machine.live,
    )


def _verdict(graph: BootGraph, uid: str, prereq: set[str], runs: tuple[bool | None, str]) -> ServiceVerdict:
    pulled = graph.pull_chain(uid)
    if uid not in graph.transaction:
        return ServiceVerdict(uid, False, (), (), None, in_transaction=False,
                              note="not in the boot transaction (not started at boot)")
    chain = graph.order_chain(uid, TIME_SYNC)
    if chain:
        return ServiceVerdict(uid, True, tuple(chain), (), tuple(pulled or ()), note=runs[1], runs=runs[0])
    if runs[0] is False:
        return ServiceVerdict(uid, False, (), (), tuple(pulled or ()), note=f"{runs[1]}: never starts, so never "
                              "on a wrong clock", runs=False)
    waits = tuple(e for _, e in sorted(graph.edges(uid, "after").items()) if e.dst in graph.transaction)
    notes = [f"{TIME_SYNC} waits for it (a prerequisite)"] if uid in prereq else []
    notes += [runs[1]] if runs[1] else []
    return ServiceVerdict(uid, False, (), waits, tuple(pulled or ()), note="; ".join(notes), runs=runs[0])

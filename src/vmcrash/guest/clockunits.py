"""Which units keep, step or wait for the clock, and which of them hold ``time-sync.target``.

A unit is recognised by its ``ExecStart=`` first (``chronyc waitsync``, ``systemd-time-wait-sync``,
``ntp-wait``, ``ntpdate``/``sntp``, ``chronyd``/``ntpd``/``systemd-timesyncd``), then by the names
the distributions give it (:data:`KNOWN_WAIT_UNITS`, RHEL/CentOS 7's ``ntpd.service``...). A wait
or step unit *holds* ``time-sync.target`` when it is a oneshot in the boot transaction, ordered
before the target, and not skipped by its conditions. Pure over a
:class:`~vmcrash.guest.graph.BootGraph`.
"""

from __future__ import annotations

import re
import shlex

from vmcrash.guest.bounds import wait_bound
from vmcrash.guest.conditions import OFFLINE, Machine, unit_conditions
from vmcrash.guest.findings import ClockUnit, Finding
from vmcrash.guest.graph import TIME_SYNC, BootGraph, service_type
from vmcrash.guest.units import Unit

__all__ = [
    "GENERIC_WAIT_UNIT",
    "KNOWN_WAIT_UNITS",
    "clock_role",
    "conflicting_daemons",
    "daemon_kind",
    "find_clock_units",
    "time_daemons",
]

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


def find_clock_units(graph: BootGraph, manager_default_s: float = 90.0,
                     machine: Machine = OFFLINE) -> list[ClockUnit]:
    """Every unit that keeps, steps or waits for the clock (installed or pulled in), with its bound.

    A wait or step unit whose condition or assertion is false on this tree and ``machine`` holds
    nothing (it is skipped, or its job fails); one whose conditions only the running machine can
    answer is counted as holding, and its note says on what that depends.
    """
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
        cond = unit_conditions(unit, graph.loader.source, machine)
        if role in ("waits", "steps"):
            if cond.runs is False:
                holds = False
                hold_note = f"{cond.describe()}: holds nothing"
            elif cond.runs is None and holds:
                hold_note = f"holds it only if {', '.join(cond.unknown)} at boot (not known here)"
        note = hold_note or why
        pulled = graph.pull_chain(uid)
        bound = wait_bound(unit, manager_default_s) if role in ("waits", "steps") else None
        out.append(ClockUnit(uid, role, holds, unit.load_state, in_t, before,
                             tuple(pulled) if pulled is not None else None, note, bound, cond.runs))
    return out



def conflicting_daemons(graph: BootGraph) -> list[Finding]:
    """Time daemons of the boot transaction that conflict (``Conflicts=``, either direction), and any
    unit of the transaction that conflicts with a clock unit in it (``clock-unit-conflict``).

    Both pulled in by ``Wants=``: systemd keeps one start job and drops the other (which one depends
    on the order jobs are merged), so which daemon runs, and which wait unit can work, is not
    decided by the files. (CentOS 7 with both ntpd and chronyd enabled: chronyd.service
    ``Conflicts=ntpd.service``.)
    """
    daemons = [uid for uid, _ in time_daemons(graph) if uid in graph.transaction]
    out = []
    for i, a in enumerate(daemons):
        for b in daemons[i + 1:]:
            if _conflict(graph, a, b):
                out.append(Finding("time-daemons-conflict",
                                   f"{a} and {b} are both started at boot but conflict (Conflicts=): systemd "
                                   "drops one of the two start jobs, so which one keeps time is left to chance; "
                                   "disable one", a))
    return out + _clock_unit_conflicts(graph, set(daemons))


def _conflict(graph: BootGraph, a: str, b: str) -> bool:
    return b in graph.edges(a, "conflicts") or a in graph.edges(b, "conflicts")


def _clock_unit_conflicts(graph: BootGraph, daemons: set[str]) -> list[Finding]:
    """Any unit of the boot transaction that conflicts with a clock unit in it (a time daemon, or a
    unit that waits for or steps the clock): systemd keeps only one of the two start jobs (or fails
    the transaction when both are required), so the clock unit may not run at boot."""
    clock = {uid: role for uid in sorted(graph.transaction) if graph.units[uid].type == "service"
             and (role := ("daemon" if uid in daemons else clock_role(graph.units[uid])[0])) != "unknown"}
    out: list[Finding] = []
    seen: set[frozenset[str]] = set()
    for a, role in clock.items():
        for b in sorted(graph.transaction):
            pair = frozenset((a, b))
            if b == a or pair in seen or (a in daemons and b in daemons) or not _conflict(graph, a, b):
                continue
            seen.add(pair)
            what = {"daemon": "keeps the clock", "waits": "waits for the clock",
                    "steps": "steps the clock"}.get(role, "deals with the clock")
            out.append(Finding("clock-unit-conflict",
                               f"{a} ({what}) and {b} are both in the boot transaction but conflict (Conflicts=): "
                               f"systemd keeps only one of the two start jobs, so {a} may not run at boot and "
                               f"{TIME_SYNC} may be reached without it; remove the conflict or one of them", a))
    return out


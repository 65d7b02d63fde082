"""What each time daemon's configuration does with a clock minutes off, as the audit reports it.

For every time daemon installed (:func:`~vmcrash.guest.clockunits.time_daemons`) one
:class:`~vmcrash.guest.findings.DaemonReport`: its configuration files, whether it steps or slews an
offset of :data:`~vmcrash.guest.timecfg.REFERENCE_OFFSET_S` seconds and how long slewing takes,
and the findings that follow (chrony without an unlimited ``makestep``, ntpd without ``-g`` or
with ``-x``, RHEL/CentOS 7's ntpdate without a server). Parsing is :mod:`vmcrash.guest.timecfg`'s;
this room turns the parsed settings into sentences and findings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from vmcrash.guest.clockunits import time_daemons
from vmcrash.guest.findings import DaemonReport, Finding
from vmcrash.guest.graph import BootGraph
from vmcrash.guest.sources import UnitSource
from vmcrash.guest.timecfg import (
    NTPD_DEFAULT_STEPOUT_S,
    NTPSEC_DEFAULT_STEPOUT_S,
    REFERENCE_OFFSET_S,
    ChronyConfig,
    NtpdConfig,
    env_value,
    find_chrony_conf,
    ntpdate_servers,
    read_chrony,
    read_ntpd,
    read_timesyncd,
    slew_seconds,
)
from vmcrash.guest.unitfile import Problem

__all__ = ["daemon_reports", "ntpd_offset_story"]


def _minutes(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _chrony_report(source: UnitSource, unit: str, in_t: bool) -> tuple[DaemonReport, list[Finding], list[Problem]]:
    path = find_chrony_conf(source)
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
        opts = env_value(source, "/etc/default/ntpsec", "NTPD_OPTS")
        confs = ("/etc/ntpsec/ntp.conf", "/etc/ntp.conf")
        stepout = NTPSEC_DEFAULT_STEPOUT_S
    else:
        opts = (env_value(source, "/etc/default/ntp", "NTPD_OPTS")  # Debian
                or env_value(source, "/etc/sysconfig/ntpd", "OPTIONS"))  # RHEL/CentOS 7, SUSE
        confs = ("/etc/ntp.conf", "/etc/ntpsec/ntp.conf")
        stepout = NTPD_DEFAULT_STEPOUT_S
    cfg: NtpdConfig = read_ntpd(source, confs, opts, stepout)
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


def daemon_reports(graph: BootGraph, source: UnitSource, runs: Mapping[str, tuple[bool | None, str]] | None = None,
                   ) -> tuple[list[DaemonReport], list[Finding], list[Problem]]:
    """(reports, findings, configuration problems) for the time daemons of ``graph``.

    The reports shown are those of the daemons in the boot transaction, or the first one installed
    when none is started at boot; findings come only from daemons started at boot. ``runs``: unit
    -> (runs, why) for units whose conditions or assertions may keep them from running
    (:func:`vmcrash.guest.audit.runs_at_boot`); a daemon's report then says so first.
    """
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
        why = (runs or {}).get(uid, (True, ""))[1]
        if why:
            rep = replace(rep, summary=(why,) + rep.summary)
        if in_t or not reports:
            reports.append(rep)
        findings.extend(f)
        problems.extend(p)
    reports.sort(key=lambda r: not r.in_transaction)
    shown = [r for r in reports if r.in_transaction] or reports[:1]
    return shown, findings, problems


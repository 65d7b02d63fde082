"""How long a wait unit can hold the boot: its effective start timeout and the bound of its own command.

A unit ordered ``Before=time-sync.target`` that waits for synchronisation delays every service
ordered after the target until it finishes. Without a time source it finishes only when systemd's
start timeout kills it, or when its command gives up by itself. This room works that bound out
from the files alone:

* ``TimeoutStartSec=`` (or ``TimeoutSec=``, which sets it too), last assignment wins, parsed as a
  systemd time span (``systemd.time(7)``: ``90``, ``3min``, ``1min 30s``, ``infinity``; ``0``
  disables the timeout);
* without one, ``Type=oneshot`` has *no* start timeout (``systemd.service(5)``); other types get
  the manager's ``DefaultTimeoutStartSec=`` (``/etc/systemd/system.conf`` and its ``.d``
  snippets, 90 s when unset);
* the command's own limit: ``chronyc waitsync MAX-TRIES ... INTERVAL`` gives up after
  ``tries * interval`` seconds (0 tries = never), ``ntp-wait -n TRIES -s SLEEP`` after
  ``tries * sleep`` (NTPsec's ``ntpwait``: ``(tries - 1) * sleep``); ``systemd-time-wait-sync``
  never gives up.

Pure functions over a :class:`~vmcrash.guest.units.Unit` and a
:class:`~vmcrash.guest.sources.UnitSource`; ``None`` means "no bound" (waits forever).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass

from vmcrash.errors import UnitFileError
from vmcrash.guest.sources import UnitSource, resolve
from vmcrash.guest.unitfile import MAX_UNIT_FILE_BYTES, decode_unit_bytes, parse_unit_text
from vmcrash.guest.units import Unit

__all__ = [
    "DEFAULT_TIMEOUT_START_S",
    "WaitBound",
    "command_bound_s",
    "default_timeout_start_s",
    "parse_timespan_s",
    "start_timeout_s",
    "wait_bound",
]

#: systemd's built-in DefaultTimeoutStartSec= (src/core/main.c, DEFAULT_TIMEOUT_USEC).
DEFAULT_TIMEOUT_START_S = 90.0
_UNITS_S = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
    "M": 2629800.0, "month": 2629800.0, "months": 2629800.0,
    "y": 31557600.0, "year": 31557600.0, "years": 31557600.0,
}
_SPAN_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)")


def parse_timespan_s(text: str) -> float | None:
    """A systemd time span in seconds (``"1min 30s"`` -> 90.0; a bare number is seconds).

    :returns: the seconds, ``math.inf`` for ``infinity``, or None when it does not parse.
    """
    value = text.strip()
    if value == "infinity":
        return math.inf
    if not value:
        return None
    total = 0.0
    pos = 0
    while pos < len(value):
        m = _SPAN_RE.match(value, pos)
        if not m or m.end() == pos:
            return None
        number, unit = m.groups()
        if unit and unit not in _UNITS_S:
            return None
        total += float(number) * _UNITS_S.get(unit, 1.0)
        pos = m.end()
        while pos < len(value) and value[pos].isspace():
            pos += 1
    return total


def default_timeout_start_s(source: UnitSource) -> float:
    """The manager's ``DefaultTimeoutStartSec=`` from system.conf (+ ``system.conf.d``), 90 s if unset."""
    files = ["/etc/systemd/system.conf"]
    for d in ("/usr/lib/systemd/system.conf.d", "/usr/local/lib/systemd/system.conf.d",
              "/run/systemd/system.conf.d", "/etc/systemd/system.conf.d"):
        try:
            files.extend(f"{d}/{n}" for n in source.listdir(d) if n.endswith(".conf"))
        except UnitFileError:
            continue
    value = DEFAULT_TIMEOUT_START_S
    for path in files:
        real = resolve(source, path)
        if real is None or source.kind(real) != "file":
            continue
        try:
            text, _ = decode_unit_bytes(source.read_bytes(real, MAX_UNIT_FILE_BYTES), path)
        except UnitFileError:
            continue
        for a in parse_unit_text(text, path).assignments:
            if a.section == "Manager" and a.key == "DefaultTimeoutStartSec":
                parsed = parse_timespan_s(a.value)
                if parsed is not None:
                    value = math.inf if parsed == 0 else parsed
    return value


def start_timeout_s(unit: Unit, manager_default_s: float = DEFAULT_TIMEOUT_START_S) -> tuple[float, str]:
    """(effective start timeout in seconds, where it comes from); ``math.inf`` = no timeout."""
    found = [a for a in unit.assignments if a.section == "Service" and a.key in ("TimeoutStartSec", "TimeoutSec")]
    for a in reversed(found):
        parsed = parse_timespan_s(a.value)
        if parsed is None:
            continue  # systemd ignores an unparsable value (and logs it); an earlier one stays
        if parsed == 0:
            return math.inf, f"{a.key}={a.value} ({a.where}): 0 disables the timeout"
        return parsed, f"{a.key}={a.value} ({a.where})"
    stype = (unit.last("Service", "Type") or "simple").lower()
    if stype == "oneshot":
        return math.inf, "Type=oneshot without TimeoutStartSec=: no start timeout"
    return manager_default_s, f"DefaultTimeoutStartSec ({manager_default_s:g} s)"


#: The wait commands of ntpd: name -> (default tries, default sleep in seconds, tries that do not sleep).
#: ntp.org's ntp-wait (ntp-4.2.6p5 scripts/ntp-wait.in, RHEL/CentOS 7): -n 1000 -s 6, a sleep after
#: every try; NTPsec's ntpwait (1.2.2, ntpclients/ntpwait.py): -n 100 -s 6, ``range(1, tries)``: one
#: try fewer.
_NTP_WAIT = {"ntp-wait": (1000, 6.0, 0), "ntpwait": (100, 6.0, 1)}


#: ntp.org's ntpdate (ntp-4.2.6p5, ntpdate/ntpdate.h): DEFSAMPLES 4 samples per server, at least
#: MINTIMEOUT = 2 * TIMER_HZ ticks = 2 s between them (``-t`` is raised to that; its HTML page still
#: says 1 s). Servers are polled at once, so one run gives up after about samples x 2 s, plus name
#: resolution. RHEL/CentOS 7's ``/usr/libexec/ntpdate-wrapper`` runs it once with
#: ``/etc/sysconfig/ntpdate``'s ``OPTIONS="-p 2"`` (ntp-4.2.6p5-29.el7 ntpdate.wrapper, ntpdate.sysconfig).
_NTPDATE_SAMPLES = 4
_NTPDATE_MIN_TIMEOUT_S = 2.0
_NTPDATE_WRAPPER_SAMPLES = 2


def _ntpdate_bound_s(words: list[str], wrapper: bool) -> tuple[float, str]:
    """(seconds one ntpdate run polls at most, why) for an ``ntpdate`` command line or the RHEL wrapper."""
    if wrapper:
        samples = _NTPDATE_WRAPPER_SAMPLES
        return samples * _NTPDATE_MIN_TIMEOUT_S, (
            f"ntpdate-wrapper runs ntpdate once (OPTIONS=\"-p {samples}\"), which gives up after {samples} samples x "
            f"{_NTPDATE_MIN_TIMEOUT_S:g} s per server, plus name resolution")
    samples, timeout = _NTPDATE_SAMPLES, _NTPDATE_MIN_TIMEOUT_S
    for i, w in enumerate(words[:-1]):
        try:
            if w == "-p":
                samples = min(max(int(words[i + 1]), 1), 8)
            elif w == "-t":
                timeout = max(float(words[i + 1]), _NTPDATE_MIN_TIMEOUT_S)
        except ValueError:
            continue
    if not math.isfinite(timeout):
        return math.inf, "ntpdate with an endless -t"
    return samples * timeout, (f"ntpdate gives up after {samples} samples x {timeout:g} s per server, "
                               "plus name resolution")


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line.lstrip("-@:+!"))
    except ValueError:
        return line.split()


def command_bound_s(unit: Unit) -> tuple[float, str]:
    """How long the unit's ``ExecStart=`` waits at most by itself; ``math.inf`` when it never gives up."""
    best = math.inf
    why = "its command waits until synchronized"
    for line in unit.list_values("Service", "ExecStart"):
        words = _words(line)
        names = [w.rsplit("/", 1)[-1] for w in words]
        if "chronyc" in names and "waitsync" in words:
            args = words[words.index("waitsync") + 1:]
            try:
                tries = int(args[0]) if args else 0
                interval = float(args[3]) if len(args) > 3 else 10.0
            except ValueError:
                continue
            if tries > 0 and tries * interval < best:
                best, why = tries * interval, f"chronyc waitsync gives up after {tries} tries x {interval:g} s"
            elif tries <= 0:
                why = "chronyc waitsync 0: unlimited tries"
        elif "ntpdate" in names or "ntpdate-wrapper" in names:
            waits, said = _ntpdate_bound_s(words, "ntpdate-wrapper" in names)
            if waits < best:
                best, why = waits, said
        elif any(n in _NTP_WAIT for n in names):
            name = next(n for n in names if n in _NTP_WAIT)
            tries, sleep, first = _NTP_WAIT[name]
            for i, w in enumerate(words[:-1]):
                try:
                    if w == "-n":
                        tries = int(words[i + 1])
                    elif w == "-s":
                        sleep = float(words[i + 1])
                except ValueError:
                    continue
            waits = max(tries - first, 0) * sleep
            if waits < best:
                best, why = waits, f"{name} gives up after {tries} tries x {sleep:g} s"
    return best, why


@dataclass(frozen=True)
class WaitBound:
    """How long a wait unit holds the boot without a time source.

    :ivar bound_s: the smaller of the start timeout and the command's own limit; ``math.inf`` = forever.
    :ivar timeout_s: the effective start timeout (``math.inf`` = none). :ivar why: where each comes from.
    """

    unit: str
    bound_s: float
    timeout_s: float
    command_s: float
    why: str

    @property
    def finite(self) -> bool:
        """True when the wait ends by itself without a time source."""
        return math.isfinite(self.bound_s)

    def text(self) -> str:
        """``"waits at most 90 s"`` or ``"waits forever without a time source"``."""
        if not self.finite:
            return "waits forever without a time source"
        return f"waits at most {self.bound_s:g} s"


def wait_bound(unit: Unit, manager_default_s: float = DEFAULT_TIMEOUT_START_S) -> WaitBound:
    """The :class:`WaitBound` of ``unit`` (see the module docstring)."""
    timeout, t_why = start_timeout_s(unit, manager_default_s)
    command, c_why = command_bound_s(unit)
    return WaitBound(unit.id, min(timeout, command), timeout, command, f"{t_why}; {c_why}")

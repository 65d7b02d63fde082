"""What the time daemon's configuration does with a large offset: chrony, ntpd/ntpsec, timesyncd.

The question behind it: after a freeze the guest clock is minutes off. Does the daemon *step*
the clock, or *slew* it away at a bounded rate (which takes hours)? Parsers are pure functions over
text; :func:`read_chrony` follows ``include``/``confdir`` through a :class:`UnitSource` the way
chronyd reads them (directives in order, the last ``makestep`` wins).
"""

from __future__ import annotations

import fnmatch
import posixpath
import shlex
from dataclasses import dataclass, field

from vmcrash.errors import UnitFileError
from vmcrash.guest.sources import UnitSource, resolve
from vmcrash.guest.unitfile import Problem

__all__ = [
    "CHRONY_DEFAULT_MAXSLEWRATE_PPM",
    "NTPD_MAX_SLEW_PPM",
    "NTPSEC_DEFAULT_STEPOUT_S",
    "REFERENCE_OFFSET_S",
    "ChronyConfig",
    "Directive",
    "MakeStep",
    "NtpdConfig",
    "TimesyncdConfig",
    "chrony_conf_path",
    "chrony_options",
    "env_value",
    "find_chrony_conf",
    "ntpdate_servers",
    "read_chrony",
    "read_ntpd",
    "read_timesyncd",
    "slew_seconds",
]

#: The offset the audit reasons about: a 6-minute freeze.
REFERENCE_OFFSET_S = 360.0
#: chronyd's default maxslewrate (chrony.conf(5)): 83333.333 ppm.
CHRONY_DEFAULT_MAXSLEWRATE_PPM = 83333.333
#: The kernel discipline ntpd uses slews at most 500 ppm.
NTPD_MAX_SLEW_PPM = 500.0
NTPD_DEFAULT_PANIC_S = 1000.0
NTPD_DEFAULT_STEP_S = 0.128
#: ntpd's default stepout (CLOCK_MINSTEP in ntpd/ntp_loopfilter.c): 900 s in ntp 4.2.6p5 (RHEL/CentOS 7's
#: ntp-4.2.6p5-29.el7), 300 s in NTPsec 1.2.2 (Debian 12's ntpsec).
NTPD_DEFAULT_STEPOUT_S = 900.0
NTPSEC_DEFAULT_STEPOUT_S = 300.0
NTPD_SLEW_ONLY_STEP_S = 600.0  # ntpd -x
_MAX_FILES = 256
_MAX_DEPTH = 8
_MAX_BYTES = 1 << 20
_MAX_ENV_FILE_BYTES = 1 << 16
#: Where each distribution keeps chronyd's command line options (shell-style ``KEY=VALUE`` files).
CHRONY_OPTION_FILES = (("/etc/default/chrony", "DAEMON_OPTS"),  # Debian, Ubuntu
                       ("/etc/sysconfig/chronyd", "OPTIONS"))  # RHEL, Fedora, SUSE


def slew_seconds(offset_s: float, rate_ppm: float) -> float:
    """Seconds needed to slew away ``offset_s`` at ``rate_ppm`` (at best; the rate is a maximum).

    A rate that is not positive (0, negative, NaN, or so small it underflows) never slews: infinite.
    """
    per_s = rate_ppm * 1e-6
    return abs(offset_s) / per_s if per_s > 0 else float("inf")


@dataclass(frozen=True)
class Directive:
    """One configuration line: ``name`` and its ``args`` at ``path:line``."""

    name: str
    args: tuple[str, ...]
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class MakeStep:
    """chrony's ``makestep threshold limit``: step when the offset exceeds ``threshold_s``, but only
    in the first ``limit`` clock updates (``limit < 0``: at any update)."""

    threshold_s: float
    limit: int
    where: str

    @property
    def unlimited(self) -> bool:
        return self.limit < 0


@dataclass(frozen=True)
class ChronyConfig:
    """The parts of chronyd's configuration that decide between stepping and slewing.

    :ivar makestep: the effective ``makestep`` (the last one read), or None (chronyd never steps).
    :ivar makesteps: every ``makestep`` line in the order read (a fix must know which one wins).
    :ivar confdirs: ``confdir`` directories, in order (where a snippet can go).
    """

    path: str
    files: tuple[str, ...]
    directives: tuple[Directive, ...]
    makestep: MakeStep | None
    makesteps: tuple[Directive, ...]
    maxslewrate_ppm: float
    confdirs: tuple[str, ...]
    problems: tuple[Problem, ...] = ()

    def slew_seconds(self, offset_s: float = REFERENCE_OFFSET_S) -> float:
        """How long slewing ``offset_s`` away takes at the configured maximum rate."""
        return slew_seconds(offset_s, self.maxslewrate_ppm)

    def steps_offset_after_start(self, offset_s: float = REFERENCE_OFFSET_S) -> bool:
        """True when an offset appearing after the first clock updates (a freeze) is stepped."""
        ms = self.makestep
        return ms is not None and ms.unlimited and abs(offset_s) > ms.threshold_s


def parse_directives(text: str, path: str) -> list[Directive]:
    """chrony.conf lines as directives; comments start with ``! ; # %`` (pure)."""
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "!;#%":
            continue
        words = line.split()
        out.append(Directive(words[0].lower(), tuple(words[1:]), path, number))
    return out


def _parse_makestep(d: Directive) -> MakeStep | None:
    try:
        return MakeStep(float(d.args[0]), int(d.args[1]), d.where)
    except (IndexError, ValueError):
        return None


def _read_text(source: UnitSource, path: str, limit: int = _MAX_BYTES) -> str:
    real = resolve(source, path)
    if real is None:
        raise UnitFileError("symlink loop", path=path)
    return source.read_bytes(real, limit).decode("utf-8", "replace")


def env_value(source: UnitSource, path: str, key: str) -> str:
    """``KEY``'s value in the shell-style environment file ``path`` (``/etc/default/*``,
    ``/etc/sysconfig/*``), quotes and comments removed, the last assignment winning; ``""`` when the
    file or the key is missing or unreadable."""
    try:
        text = _read_text(source, path, _MAX_ENV_FILE_BYTES)
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


def chrony_options(source: UnitSource) -> str:
    """chronyd's command line options as the distribution's environment file sets them (``""``: none)."""
    for path, key in CHRONY_OPTION_FILES:
        value = env_value(source, path, key)
        if value:
            return value
    return ""


def _glob(source: UnitSource, pattern: str) -> list[str]:
    directory, base = posixpath.split(pattern)
    real = resolve(source, directory) or directory
    try:
        names = source.listdir(real)
    except UnitFileError:
        return []
    return [posixpath.join(directory, n) for n in sorted(names) if fnmatch.fnmatchcase(n, base)]


def chrony_conf_path(source: UnitSource, daemon_opts: str = "") -> str | None:
    """The file chronyd reads: ``-f FILE`` in its options, else Debian's or the upstream default."""
    try:
        words = shlex.split(daemon_opts)
    except ValueError:
        words = daemon_opts.split()
    for i, w in enumerate(words):
        if w == "-f" and i + 1 < len(words):
            return words[i + 1]
    for candidate in ("/etc/chrony/chrony.conf", "/etc/chrony.conf"):
        real = resolve(source, candidate)
        if real and source.kind(real) == "file":
            return candidate
    return None


def find_chrony_conf(source: UnitSource) -> str | None:
    """The chrony.conf chronyd reads on this tree (its options' ``-f`` first); None when there is none."""
    return chrony_conf_path(source, chrony_options(source))


def read_chrony(source: UnitSource, path: str) -> ChronyConfig:
    """Read chronyd's configuration starting at ``path``, following ``include`` and ``confdir``."""
    directives: list[Directive] = []
    files: list[str] = []
    problems: list[Problem] = []
    confdirs: list[str] = []

    def read(file_path: str, depth: int) -> None:
        if len(files) >= _MAX_FILES or depth > _MAX_DEPTH:
            problems.append(Problem(file_path, None, "too many nested chrony includes; not read"))
            return
        try:
            text = _read_text(source, file_path)
        except UnitFileError as exc:
            problems.append(Problem(file_path, None, str(exc).split(": ", 1)[-1]))
            return
        files.append(file_path)
        for d in parse_directives(text, file_path):
            if d.name == "include" and d.args:
                for inc in _glob(source, d.args[0]):
                    read(inc, depth + 1)
            elif d.name == "confdir":
                confdirs.extend(d.args)
                chosen: dict[str, str] = {}
                for directory in d.args:
                    for f in _glob(source, posixpath.join(directory, "*.conf")):
                        chosen.setdefault(posixpath.basename(f), f)
                for name in sorted(chosen):
                    read(chosen[name], depth + 1)
            else:
                directives.append(d)

    read(path, 0)
    makesteps = [d for d in directives if d.name == "makestep"]
    effective = None
    for d in makesteps:
        parsed = _parse_makestep(d)
        if parsed is None:
            problems.append(Problem(d.path, d.line, "makestep needs a threshold and a limit; ignored"))
        else:
            effective = parsed
    rate = CHRONY_DEFAULT_MAXSLEWRATE_PPM
    for d in directives:
        if d.name == "maxslewrate" and d.args:
            try:
                rate = float(d.args[0])
            except ValueError:
                problems.append(Problem(d.path, d.line, "maxslewrate is not a number; ignored"))
    return ChronyConfig(path, tuple(files), tuple(directives), effective, tuple(makesteps), rate,
                        tuple(confdirs), tuple(problems))


@dataclass(frozen=True)
class NtpdConfig:
    """ntpd (classic or NTPsec): options and the thresholds that decide between step and slew."""

    path: str | None
    options: tuple[str, ...]
    panic_s: float
    step_s: float
    allow_first_big: bool  # -g
    slew_only: bool  # -x
    problems: tuple[Problem, ...] = ()
    #: seconds an offset over the step threshold must persist before ntpd steps (``tinker stepout``)
    stepout_s: float = 900.0

    def steps(self, offset_s: float = REFERENCE_OFFSET_S) -> bool:
        """True when an offset of ``offset_s`` is stepped rather than slewed."""
        return abs(offset_s) > self.step_s

    def exits(self, offset_s: float = REFERENCE_OFFSET_S) -> bool:
        """True when ntpd gives up (exits) on ``offset_s`` at start (over the panic threshold, no -g)."""
        return self.panic_s > 0 and abs(offset_s) > self.panic_s and not self.allow_first_big


def read_ntpd(source: UnitSource, conf_candidates: tuple[str, ...], options: str,
              default_stepout_s: float = NTPD_DEFAULT_STEPOUT_S) -> NtpdConfig:
    """Read ntp.conf's ``tinker panic/step/stepout`` and the daemon options (``-g``, ``-x``).

    ``default_stepout_s``: the daemon's own default (:data:`NTPSEC_DEFAULT_STEPOUT_S` for NTPsec).
    """
    problems: list[Problem] = []
    try:
        opts = tuple(shlex.split(options))
    except ValueError:
        opts = tuple(options.split())
    flags = "".join(o[1:] for o in opts if o.startswith("-") and not o.startswith("--"))
    path = None
    panic, step, stepout = NTPD_DEFAULT_PANIC_S, NTPD_DEFAULT_STEP_S, default_stepout_s
    for candidate in conf_candidates:
        try:
            text = _read_text(source, candidate)
        except UnitFileError:
            continue
        path = candidate
        for number, raw in enumerate(text.splitlines(), start=1):
            words = raw.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "tinker":
                for key, value in zip(words[1::2], words[2::2]):
                    try:
                        if key == "panic":
                            panic = float(value)
                        elif key == "step":
                            step = float(value)
                        elif key == "stepout":
                            stepout = float(value)
                    except ValueError:
                        problems.append(Problem(candidate, number, f"tinker {key} {value}: not a number"))
        break
    slew_only = "x" in flags
    if slew_only:
        step = max(step, NTPD_SLEW_ONLY_STEP_S)
    return NtpdConfig(path, opts, panic, step, "g" in flags, slew_only, tuple(problems), stepout)


@dataclass(frozen=True)
class TimesyncdConfig:
    """systemd-timesyncd: it steps any offset over 0.4 s, but only ``systemd-time-wait-sync`` holds
    ``time-sync.target`` until it has."""

    files: tuple[str, ...] = field(default_factory=tuple)
    servers: tuple[str, ...] = ()


def read_timesyncd(source: UnitSource) -> TimesyncdConfig:
    """timesyncd.conf and its drop-ins: which files, which servers."""
    files = ["/etc/systemd/timesyncd.conf", *_glob(source, "/etc/systemd/timesyncd.conf.d/*.conf")]
    found, servers = [], []
    for f in files:
        try:
            text = _read_text(source, f)
        except UnitFileError:
            continue
        found.append(f)
        for raw in text.splitlines():
            key, _, value = raw.strip().partition("=")
            if key.strip() in ("NTP", "FallbackNTP") and value.strip():
                servers.extend(value.split())
    return TimesyncdConfig(tuple(found), tuple(servers))


def ntpdate_servers(source: UnitSource) -> tuple[list[str], str]:
    """The servers RHEL/CentOS 7's ``ntpdate-wrapper`` steps from, and where they come from.

    The wrapper (ntpdate-4.2.6p5, el7) takes ``/etc/ntp/step-tickers`` (comments stripped) and,
    when that is empty, the ``server``/``peer`` lines of ``/etc/ntp.conf`` other than the
    127.127.x.x reference clocks. ``([], "")`` when neither names one.
    """
    try:
        tickers = _read_text(source, "/etc/ntp/step-tickers")
    except UnitFileError:
        tickers = ""
    words = [w for line in tickers.splitlines() for w in line.split("#", 1)[0].split()]
    if words:
        return words, "/etc/ntp/step-tickers"
    try:
        conf = _read_text(source, "/etc/ntp.conf")
    except UnitFileError:
        conf = ""
    servers = []
    for line in conf.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and parts[0] in ("server", "peer") and not parts[1].startswith("127.127."):
            servers.append(parts[1])
    return servers, ("/etc/ntp.conf, as /etc/ntp/step-tickers names none" if servers else "")

"""``Condition*=`` and ``Assert*=`` of a unit, evaluated as systemd 252 does, where the tree or the machine can tell.

When a start job runs, systemd tests the unit's conditions (``src/shared/condition.c``): a false
condition *skips* the unit (its job succeeds at once, nothing runs, units that need it still
start); a false assertion *fails* the job, and units that ``Requires=``, ``BindsTo=`` or
``Requisite=`` it fail with it. The unit stays in the boot transaction either way, so ordering
through it is unchanged; what changes is whether it runs: a wait unit that is skipped holds
nothing, an application that is skipped never starts on a wrong clock.

The rules (``systemd.unit(5)``): all regular conditions must hold; if any triggering (``|``)
condition is given, at least one of them must hold; ``!`` negates one; an empty assignment
resets every condition (or every assertion) set so far; a condition whose test fails with an
error (an unknown capability name, a malformed argument) counts as false, whatever its ``!``.
Here each test answers True, False or None (*unknown*), and the combination is three-valued:
a known false regular condition decides, otherwise any unknown leaves the answer unknown.

What is known where:

* from the tree itself (offline and live): path conditions on the root's own files
  (``PathExists``, ``PathExistsGlob``, ``PathIsDirectory``, ``PathIsSymbolicLink``,
  ``FileNotEmpty``, ``FileIsExecutable``, ``DirectoryNotEmpty``), ``FirstBoot`` (from
  ``/etc/machine-id``: missing or ``uninitialized`` is a first boot), ``Host`` (``/etc/hostname``,
  ``/etc/machine-id``), ``User``/``Group`` (the system manager runs as root with no other groups);
* only on the running machine (:func:`probe_machine`, when the audited tree is the running
  system): paths under ``/proc``, ``/sys``, ``/dev`` and ``/run`` (file systems made at boot; an
  image has none of them), ``PathIsMountPoint``, ``PathIsReadWrite``, ``NeedsUpdate``,
  ``Virtualization`` (``systemd-detect-virt``'s answer), ``KernelCommandLine``, ``Capability``
  (PID 1's bounding set), ``Security`` (apparmor, selinux, smack, ima, tomoyo),
  ``ACPower``, ``Architecture``, ``Firmware`` (``uefi``, ``device-tree``), ``FirstBoot``
  (``/run/systemd/first-boot``), ``ControlGroupController`` (``v1``/``v2``);
* nowhere here (always unknown): ``KernelVersion``, ``Credential``, ``Environment``,
  ``CPUFeature``, ``OSRelease``, ``Memory``, ``CPUs``, the pressure conditions, ``PathIsEncrypted``,
  ``Security=audit|uefi-secureboot|tpm2``, ``Firmware=smbios-field(...)``.

Offline, the kernel command line is taken to carry none of systemd's ``systemd.condition-*``
overrides (a tree does not show the boot loader's command line). A live evaluation answers for
the machine as it is *now*; the audit's reader is told which answers are unknown and why.

Pure over a :class:`~vmcrash.guest.units.Unit`, a :class:`~vmcrash.guest.sources.UnitSource` and
a :class:`Machine`; :func:`probe_machine` is the only reader of the running system.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
import re
import shlex
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmcrash.errors import UnitFileError
from vmcrash.guest.names import expand_specifiers
from vmcrash.guest.sources import UnitSource, resolve
from vmcrash.guest.units import Unit, parse_bool

__all__ = [
    "CAPABILITIES",
    "OFFLINE",
    "ConditionResult",
    "Machine",
    "UnitConditions",
    "conditions_of",
    "evaluate_conditions",
    "live_machine_for",
    "probe_machine",
    "unit_conditions",
]

#: Linux capability names by number (``linux/capability.h``), as ``ConditionCapability=`` spells them.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
#: systemd's virtualization ids (``src/basic/virt.c``), by category.
_VM_IDS = frozenset({"kvm", "amazon", "qemu", "bochs", "xen", "uml", "vmware", "oracle", "microsoft", "zvm",
                     "parallels", "bhyve", "qnx", "acrn", "powervm", "apple", "sre", "google", "vm-other"})
_CONTAINER_IDS = frozenset({"systemd-nspawn", "lxc-libvirt", "lxc", "openvz", "docker", "podman", "rkt", "wsl",
                            "proot", "pouch", "container-other"})
#: uname machine -> systemd's architecture name (``src/basic/architecture.c``), the common ones.
_ARCHITECTURES = {"x86_64": "x86-64", "i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86",
                  "aarch64": "arm64", "aarch64_be": "arm64-be", "ppc64le": "ppc64-le", "ppc64": "ppc64",
                  "s390x": "s390x", "riscv64": "riscv64", "loongarch64": "loongarch64"}
#: File systems made at boot: an image has nothing there, the running system does.
_RUNTIME_DIRS = ("/proc", "/sys", "/dev", "/run")
#: hidden_or_backup_file() of systemd 252 (src/basic/path-util.c): ignored by DirectoryNotEmpty=.
_IGNORED_NAMES = ("lost+found", "aquota.user", "aquota.group")
_BACKUP_SUFFIXES = ("rpmnew", "rpmsave", "rpmorig", "dpkg-old", "dpkg-new", "dpkg-tmp", "dpkg-dist", "dpkg-bak",
                    "dpkg-backup", "dpkg-remove", "ucf-new", "ucf-old", "ucf-dist", "swp", "bak", "old", "new")
#: Conditions whose argument is a path (systemd parses them with config_parse_unit_condition_path: a
#: path that is not absolute is ignored with a warning, no whitespace is allowed after ``|`` or ``!``).
_PATH_KEYS = frozenset({"PathExists", "PathExistsGlob", "PathIsDirectory", "PathIsSymbolicLink",
                        "PathIsMountPoint", "PathIsReadWrite", "PathIsEncrypted", "DirectoryNotEmpty",
                        "FileNotEmpty", "FileIsExecutable", "NeedsUpdate"})
#: The other conditions systemd 252 knows (src/core/load-fragment-gperf.gperf.in); any other key is ignored.
_STRING_KEYS = frozenset({"FirstBoot", "Architecture", "Firmware", "Virtualization", "Host", "KernelCommandLine",
                          "KernelVersion", "Credential", "Security", "Capability", "ACPower", "Memory",
                          "CPUFeature", "CPUs", "Environment", "User", "Group", "ControlGroupController",
                          "OSRelease", "MemoryPressure", "CPUPressure", "IOPressure"})
_MAX_GLOB_ENTRIES = 10_000
_MAX_FACT_BYTES = 1 << 16
#: A host with thousands of mounts has a mountinfo of some hundred kB; more is not read.
_MAX_MOUNTINFO_BYTES = 4 << 20
_ID128_RE = re.compile(r"^[0-9a-fA-F]{32}$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                       r"[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Machine:
    """What the conditions ask of the machine itself; None: not known (an image audited offline).

    :ivar live: the tree is the running system (its ``/proc``, ``/sys``, ``/dev``, ``/run`` are real).
    :ivar virtualization: systemd-detect-virt's id (``none``, ``kvm``, ``qemu``, ``docker``...).
    :ivar user_namespace: running in a user namespace (``ConditionVirtualization=private-users``).
    :ivar capability_bounding: PID 1's capability bounding set (bit N = capability N).
    :ivar security: the security frameworks known to be on (``apparmor``, ``selinux``...), and
        ``security_known``: the names this probe could decide (the others are unknown).
    :ivar mounts: mount points (as in ``/proc/self/mountinfo``), ``read_only``: those mounted read-only.
    """

    live: bool = False
    virtualization: str | None = None
    user_namespace: bool | None = None
    kernel_cmdline: str | None = None
    capability_bounding: int | None = None
    hostname: str | None = None
    architecture: str | None = None
    security: frozenset[str] = frozenset()
    security_known: frozenset[str] = frozenset()
    ac_power: bool | None = None
    firmware: frozenset[str] | None = None
    first_boot: bool | None = None
    cgroup_v2: bool | None = None
    mounts: frozenset[str] | None = None
    read_only: frozenset[str] | None = None


#: Nothing known about the machine: an image audited offline.
OFFLINE = Machine()


@dataclass(frozen=True)
class ConditionResult:
    """``met``: True (all hold), False (one fails), None (only unknown ones are left).

    ``why``: the failing assignments when ``met`` is False, else the unknown ones (``Key=value``).
    """

    met: bool | None
    why: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnitConditions:
    """A unit's conditions and assertions: ``skipped`` (a condition is false), ``fails`` (an assertion is false)."""

    unit: str
    conditions: ConditionResult
    asserts: ConditionResult

    @property
    def runs(self) -> bool | None:
        """True when the unit runs at boot, False when it is skipped or fails, None when unknown."""
        if self.conditions.met is False or self.asserts.met is False:
            return False
        if self.conditions.met is None or self.asserts.met is None:
            return None
        return True

    @property
    def skipped(self) -> bool:
        return self.conditions.met is False

    @property
    def fails(self) -> bool:
        return self.asserts.met is False and self.conditions.met is not False

    @property
    def unknown(self) -> tuple[str, ...]:
        """The assignments whose answer only the running machine (or nothing here) knows."""
        out = () if self.conditions.met is not None else self.conditions.why
        return out + (() if self.asserts.met is not None else self.asserts.why)

    def describe(self) -> str:
        """One clause: ``skipped at boot: X is false``, ``fails at boot: ...``, ``runs only if ...``, or ""."""
        if self.skipped:
            return f"skipped at boot: {', '.join(self.conditions.why)} false"
        if self.fails:
            return f"fails at boot: {', '.join(self.asserts.why)} false"
        if self.unknown:
            return f"runs only if {', '.join(self.unknown)} (not known here)"
        return ""


# -- the tests, one per condition --------------------------------------------------------------


def _runtime(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _RUNTIME_DIRS)


def _path_test(key: str, path: str, source: UnitSource, machine: Machine) -> bool | None:
    real = resolve(source, path)
    if real is None:
        return False  # a symlink loop: nothing usable there
    if (_runtime(real) or _runtime(path)) and not machine.live:
        return None
    if key == "PathIsSymbolicLink":
        parent, name = posixpath.split(path.rstrip("/") or "/")
        where = posixpath.join(resolve(source, parent) or parent, name)
        return source.kind(where) == "link"
    st = source.stat(real)
    kind = st.kind if st is not None else None
    if key == "PathExists":
        return kind is not None
    if key == "PathIsDirectory":
        return kind == "dir"
    if key == "FileNotEmpty":
        return st is not None and kind == "file" and st.size_bytes > 0
    if key == "FileIsExecutable":
        return st is not None and kind == "file" and bool(st.mode & 0o111)
    if key == "DirectoryNotEmpty":
        if kind != "dir":
            return False
        try:
            return any(not _hidden_or_backup(n) for n in source.listdir(real))
        except UnitFileError:
            return False
    if key == "PathIsMountPoint":
        return None if machine.mounts is None else real in machine.mounts or real == "/"
    if key == "PathIsReadWrite":
        if machine.read_only is None:
            return None
        if kind is None:
            return False
        return _mount_of(real, machine) not in machine.read_only
    return None


def _hidden_or_backup(name: str) -> bool:
    if name.startswith(".") or name in _IGNORED_NAMES or name.endswith("~"):
        return True
    return "." in name and name.rsplit(".", 1)[1] in _BACKUP_SUFFIXES


def _mount_of(path: str, machine: Machine) -> str:
    best = "/"
    for m in machine.mounts or ():
        if (path == m or path.startswith(m.rstrip("/") + "/")) and len(m) > len(best):
            best = m
    return best


def _glob_exists(pattern: str, source: UnitSource, machine: Machine) -> bool | None:
    """``PathExistsGlob=``: any path of the tree matching ``pattern`` (shell glob, every component)."""
    if not pattern.startswith("/"):
        return False
    parts = [p for p in pattern.split("/") if p]
    todo = ["/"]
    seen = 0
    for i, part in enumerate(parts):
        nxt: list[str] = []
        for base in todo:
            if _runtime(posixpath.join(base, part)) and not machine.live:
                return None
            if not any(c in part for c in "*?["):
                nxt.append(posixpath.join(base, part))
                continue
            real = resolve(source, base) or base
            try:
                names = source.listdir(real)
            except UnitFileError:
                continue
            seen += len(names)
            if seen > _MAX_GLOB_ENTRIES:
                return None
            nxt.extend(posixpath.join(base, n) for n in names
                       if fnmatch.fnmatchcase(n, part) and not (n.startswith(".") and not part.startswith(".")))
        todo = nxt
        if i == len(parts) - 1:
            return any(source.kind(resolve(source, p) or p) is not None for p in todo)
    return bool(todo)


def _read_tree_text(source: UnitSource, path: str) -> str | None:
    real = resolve(source, path)
    if real is None or source.kind(real) != "file":
        return None
    try:
        return source.read_bytes(real, _MAX_FACT_BYTES).decode("utf-8", "replace")
    except UnitFileError:
        return None


def _first_boot(value: str, source: UnitSource, machine: Machine) -> bool | None:
    wanted = parse_bool(value)
    if wanted is None:
        return False  # systemd: invalid argument, an error: false
    if machine.live:
        return None if machine.first_boot is None else machine.first_boot == wanted
    # offline: main.c (252) decides at boot, without a systemd.condition-first-boot= override, from
    # /etc/machine-id: missing, unreadable or "uninitialized" is a first boot
    text = _read_tree_text(source, "/etc/machine-id")
    first = text is None or text.split("\n", 1)[0] == "uninitialized"
    return first == wanted


def _host(value: str, source: UnitSource, machine: Machine) -> bool | None:
    if _ID128_RE.match(value):
        text = _read_tree_text(source, "/etc/machine-id")
        mid = (text or "").strip()
        if not re.fullmatch(r"[0-9a-f]{32}", mid):
            return None  # empty or missing: systemd makes a transient one at boot
        return value.replace("-", "").lower() == mid
    name = machine.hostname
    if name is None:
        text = _read_tree_text(source, "/etc/hostname")
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip() and not ln.startswith("#")]
        if not lines:
            return None
        name = lines[0]
    return fnmatch.fnmatch(name.lower(), value.lower())


def _user(value: str) -> bool:
    # the system manager runs as root: "root", uid 0 and "@system" match, nothing else can
    return value in ("root", "0", "@system")


def _group(value: str) -> bool:
    return value in ("root", "0")


def _virtualization(value: str, machine: Machine) -> bool | None:
    if value == "private-users":
        return machine.user_namespace
    v = machine.virtualization
    if v is None:
        return None
    as_bool = parse_bool(value)
    if as_bool is not None:
        return as_bool == (v != "none")
    if value == "vm":
        return v in _VM_IDS
    if value == "container":
        return v in _CONTAINER_IDS
    return v != "none" and value == v


@functools.lru_cache(maxsize=4)
def _cmdline_words(line: str) -> tuple[str, ...]:
    """The words of a kernel command line, split once per line (shlex over 64 KiB takes ~0.1 s, and a
    unit may carry thousands of ``ConditionKernelCommandLine=``)."""
    try:
        return tuple(shlex.split(line))
    except ValueError:
        return tuple(line.split())


def _kernel_cmdline(value: str, machine: Machine) -> bool | None:
    line = machine.kernel_cmdline
    if line is None:
        return None
    words = _cmdline_words(line)
    if "=" in value:
        return value in words
    return any(w == value or w.startswith(value + "=") for w in words)


def _decimal(text: str, max_digits: int) -> int | None:
    """``text`` as a number of at most ``max_digits`` ASCII digits (what systemd's ``safe_atou*``
    read), else None: ``str.isdigit`` also takes ``²`` and ``٣``, and ``int`` refuses 4301 digits."""
    if text.isascii() and text.isdigit() and len(text) <= max_digits:
        return int(text)
    return None


def _capability_number(value: str) -> int | None:
    """The capability ``value`` names (a name or its number), None for an unknown one."""
    name = value.upper()
    if name in CAPABILITIES:
        return CAPABILITIES.index(name)
    number = _decimal(name, 9)
    return number if number is not None and number < len(CAPABILITIES) else None


def _capability(value: str, machine: Machine) -> bool | None:
    number = _capability_number(value)
    if number is None:
        return False  # systemd: an unknown capability is an error: false
    if machine.capability_bounding is None:
        return None
    return bool(machine.capability_bounding >> number & 1)


def _security(value: str, machine: Machine) -> bool | None:
    if value not in ("selinux", "smack", "apparmor", "audit", "ima", "tomoyo", "uefi-secureboot", "tpm2"):
        return False  # systemd: anything else is false
    if value not in machine.security_known:
        return None
    return value in machine.security


def _architecture(value: str, machine: Machine) -> bool | None:
    if machine.architecture is None or value == "native":
        return None  # "native" is the architecture systemd was built for, which is not read here
    return value == machine.architecture


def _firmware(value: str, machine: Machine) -> bool | None:
    if machine.firmware is None or value not in ("uefi", "device-tree"):
        return None
    return value in machine.firmware


def _needs_update(value: str, source: UnitSource, machine: Machine) -> bool | None:
    """systemd 252's condition_test_needs_update(): /usr newer than ``value``/.updated (live only)."""
    if not machine.live or machine.read_only is None or machine.kernel_cmdline is None:
        return None
    override = _cmdline_bool(machine.kernel_cmdline, "systemd.condition-needs-update")
    if override is not None:
        return override
    if _mount_of(value, machine) in machine.read_only:
        return False
    other = source.stat(posixpath.join(value, ".updated"))
    usr = source.stat("/usr")
    if other is None or usr is None:
        return True
    usr_s, usr_ns = divmod(usr.mtime_ns, 1_000_000_000)
    other_s, other_ns = divmod(other.mtime_ns, 1_000_000_000)
    if usr_s != other_s:
        return usr_s > other_s
    if usr_ns == 0 or other_ns > 0:
        return usr_ns > other_ns
    text = _read_tree_text(source, posixpath.join(value, ".updated")) or ""
    stamp = next((ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.startswith("TIMESTAMP_NSEC=")), "")
    stamp_ns = _decimal(stamp, 20)
    return usr.mtime_ns > stamp_ns if stamp_ns is not None and stamp_ns < 1 << 64 else True


def _cmdline_bool(line: str, key: str) -> bool | None:
    """The boolean ``key=`` on a kernel command line (a bare ``key`` is true); None when absent."""
    found: bool | None = None
    for word in line.split():
        name, eq, value = word.partition("=")
        if name == key:
            found = True if not eq else parse_bool(value)
    return found


def _cgroup(value: str, machine: Machine) -> bool | None:
    if machine.cgroup_v2 is None or value not in ("v1", "v2"):
        return None
    return machine.cgroup_v2 == (value == "v2")


def _test(key: str, value: str, source: UnitSource, machine: Machine) -> bool | None:
    """One condition (``key`` without its Condition/Assert prefix) on ``value``: True, False, None."""
    if key in ("PathExists", "PathIsDirectory", "PathIsSymbolicLink", "FileNotEmpty", "FileIsExecutable",
               "DirectoryNotEmpty", "PathIsMountPoint", "PathIsReadWrite"):
        return _path_test(key, value, source, machine)
    handlers: dict[str, Callable[[], bool | None]] = {
        "PathExistsGlob": lambda: _glob_exists(value, source, machine),
        "FirstBoot": lambda: _first_boot(value, source, machine),
        "Host": lambda: _host(value, source, machine),
        "User": lambda: _user(value),
        "Group": lambda: _group(value),
        "Virtualization": lambda: _virtualization(value, machine),
        "KernelCommandLine": lambda: _kernel_cmdline(value, machine),
        "Capability": lambda: _capability(value, machine),
        "Security": lambda: _security(value, machine),
        "ACPower": lambda: (None if machine.ac_power is None or parse_bool(value) is None
                            else machine.ac_power == parse_bool(value)),
        "Architecture": lambda: _architecture(value, machine),
        "Firmware": lambda: _firmware(value, machine),
        "NeedsUpdate": lambda: _needs_update(value, source, machine),
        "ControlGroupController": lambda: _cgroup(value, machine),
    }
    handler = handlers.get(key)
    return handler() if handler is not None else None


def _expand(value: str, unit: Unit, machine: Machine) -> str | None:
    """``value`` with the unit's specifiers expanded; None when one is left that only the machine knows."""
    text = expand_specifiers(value, unit.id)
    if "%" not in text:
        return text
    if machine.live:
        known = {"v": os.uname().release, "H": machine.hostname or ""}
        text = re.sub(r"%([vH])", lambda m: known[m.group(1)], text)
    return None if "%" in text else text


# -- the evaluation ----------------------------------------------------------------------------


def _evaluate(unit: Unit, prefix: str, source: UnitSource, machine: Machine) -> ConditionResult:
    normal: list[tuple[bool | None, str]] = []
    triggering: list[tuple[bool | None, str]] = []
    for a in unit.assignments:
        if a.section != "Unit" or not a.key.startswith(prefix):
            continue
        if not a.value:  # an empty assignment resets the list
            normal, triggering = [], []
            continue
        key = a.key[len(prefix):]
        if key not in _PATH_KEYS and key not in _STRING_KEYS:
            continue  # systemd ignores a key it does not know
        value = a.value
        trig = value.startswith("|")
        value = value[1:] if trig else value
        if trig and key not in _PATH_KEYS:
            value = value.lstrip()
        neg = value.startswith("!")
        value = value[1:] if neg else value
        if neg and key not in _PATH_KEYS:
            value = value.lstrip()
        expanded = _expand(value, unit, machine)
        if key in _PATH_KEYS and expanded is not None and not expanded.startswith("/"):
            continue  # not an absolute path: systemd ignores the assignment
        text = f"{a.key}={a.value}"
        raw = None if expanded is None else _test(key, expanded, source, machine)
        result = None if raw is None else raw != neg
        if _is_error(key, expanded):
            result = False  # systemd: a test that fails with an error is false, whatever the '!'
        (triggering if trig else normal).append((result, text))
    failed = [t for r, t in normal if r is False]
    if failed:
        return ConditionResult(False, tuple(failed))
    if triggering and all(r is False for r, _ in triggering):
        return ConditionResult(False, tuple(t for _, t in triggering))
    unknown = [t for r, t in normal if r is None]
    if triggering and not any(r is True for r, _ in triggering):
        unknown += [t for r, t in triggering if r is None]
    return ConditionResult(None if unknown else True, tuple(unknown))


def _is_error(key: str, value: str | None) -> bool:
    """Arguments systemd's test refuses with an error (the condition is then false even when negated)."""
    if value is None:
        return False
    if key == "Capability":
        return _capability_number(value) is None
    if key in ("FirstBoot", "ACPower"):
        return parse_bool(value) is None
    return False


def evaluate_conditions(unit: Unit, source: UnitSource, machine: Machine = OFFLINE) -> ConditionResult:
    """``unit``'s ``Condition*=`` on ``source`` and ``machine`` (see the module docstring)."""
    return _evaluate(unit, "Condition", source, machine)


def unit_conditions(unit: Unit, source: UnitSource, machine: Machine = OFFLINE) -> UnitConditions:
    """``unit``'s conditions and assertions together."""
    return UnitConditions(unit.id, _evaluate(unit, "Condition", source, machine),
                          _evaluate(unit, "Assert", source, machine))


# -- the running machine -----------------------------------------------------------------------


def _read(path: Path, limit: int = _MAX_FACT_BYTES) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _detect_virt(*args: str) -> str | None:
    try:
        done = subprocess.run(["systemd-detect-virt", *args], capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    if args:
        return "yes" if done.returncode == 0 else "no" if done.returncode == 1 else None
    return out if out and done.returncode in (0, 1) else None


def _mountinfo(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(mount points, read-only mount points) from /proc/self/mountinfo (pure)."""
    points: set[str] = set()
    read_only: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        points.add(point)
        if "ro" in fields[5].split(","):
            read_only.add(point)
        elif point in read_only:
            read_only.discard(point)  # mounted over: the last mount on a point is what is seen
    return frozenset(points), frozenset(read_only)


def _ac_power(sys_root: Path) -> bool | None:
    """on_ac_power() of systemd 252 (src/shared/udev-util.c) over /sys/class/power_supply."""
    base = sys_root / "class/power_supply"
    try:
        supplies = sorted(base.iterdir())[:64]
    except OSError:
        return True  # no power supply at all: systemd assumes AC
    online = discharging = False
    for dev in supplies:
        kind = (_read(dev / "type") or "").strip()
        if kind == "USB":
            return None  # its power role decides; not modelled
        if kind == "Battery":
            discharging = discharging or (_read(dev / "status") or "").strip() == "Discharging"
            continue
        value = (_read(dev / "online") or "").strip()
        if value.isascii() and value.isdigit() and value.strip("0"):  # a positive number
            online = True
    return True if online else not discharging


def probe_machine(root: Path = Path("/"), detect_virt: Callable[..., str | None] = _detect_virt) -> Machine:
    """The facts of the running system whose root is ``root`` (its ``/proc``, ``/sys``, ``/run``).

    Each fact that cannot be read is left unknown (None); nothing here raises.
    """
    status = _read(root / "proc/1/status") or ""
    cap = next((ln.split(":", 1)[1].strip() for ln in status.splitlines() if ln.startswith("CapBnd:")), None)
    mountinfo = _read(root / "proc/self/mountinfo", _MAX_MOUNTINFO_BYTES)
    mounts, read_only = _mountinfo(mountinfo) if mountinfo is not None else (None, None)
    apparmor = (_read(root / "sys/module/apparmor/parameters/enabled") or "").strip()
    security = {name for name, on in (
        ("apparmor", parse_bool(apparmor) is True),
        ("ima", (root / "sys/kernel/security/ima").is_dir()),
        ("tomoyo", (root / "sys/kernel/security/tomoyo/version").exists()),
        ("smack", (root / "sys/fs/smackfs").is_dir()),
    ) if on}
    known = {"apparmor", "ima", "tomoyo", "smack"}
    if not (root / "sys/fs/selinux").exists():
        known.add("selinux")  # no selinuxfs: SELinux is off; with it, whether a policy is loaded is not read here
    firmware = {name for name, path in (("uefi", "sys/firmware/efi"), ("device-tree", "sys/firmware/devicetree"))
                if (root / path).is_dir()}
    userns = detect_virt("--private-users")
    return Machine(
        live=True,
        virtualization=detect_virt(),
        user_namespace=None if userns is None else userns == "yes",
        kernel_cmdline=(_read(root / "proc/cmdline") or None),
        capability_bounding=int(cap, 16) if cap and re.fullmatch(r"[0-9a-fA-F]+", cap) else None,
        hostname=(_read(root / "proc/sys/kernel/hostname") or "").strip() or None,
        architecture=_ARCHITECTURES.get(os.uname().machine),
        security=frozenset(security),
        security_known=frozenset(known),
        ac_power=_ac_power(root / "sys"),
        firmware=frozenset(firmware),
        first_boot=(root / "run/systemd/first-boot").exists(),
        cgroup_v2=(root / "sys/fs/cgroup/cgroup.controllers").exists(),
        mounts=mounts,
        read_only=read_only,
    )


def live_machine_for(source_root: Path) -> Machine:
    """:func:`probe_machine` when ``source_root`` is the running system's root (``/`` booted with systemd),
    else :data:`OFFLINE`."""
    if source_root == Path("/") and Path("/run/systemd/system").is_dir():
        return probe_machine()
    return OFFLINE


def conditions_of(units: Iterable[Unit], source: UnitSource, machine: Machine) -> list[UnitConditions]:
    """:func:`unit_conditions` of every unit that has a condition or an assertion, in the given order."""
    return [unit_conditions(u, source, machine) for u in units
            if any(a.section == "Unit" and a.key.startswith(("Condition", "Assert")) for a in u.assignments)]

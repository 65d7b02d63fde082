"""Where a QEMU process keeps guest RAM: its own memory map, resolved to host mappings and fds.

Pure parsers over text QEMU and the kernel print (HMP ``info mtree -f``, HMP ``gpa2hva``,
``/proc/<pid>/maps``), and thin readers that ask a running QEMU (through libvirt's monitor
passthrough) and ``/proc``. Nothing here guesses a layout: guest-physical ranges come from
QEMU's flat view of the ``memory`` address space, host addresses from ``gpa2hva``, and the
backing file (memfd, hugetlbfs, a plain file) from the mapping that holds that host address.

Backing kinds (:class:`Backing`):

* ``shared-file``: the range lives in a ``MAP_SHARED`` mapping of a file the QEMU process has
  open (memfd, hugetlbfs, ``memory-backend-file``). Another process that opens the same file
  keeps those pages alive after QEMU exits: what capture mode ``hold`` relies on.
* ``private``: anonymous or private memory (QEMU's default RAM, ROM copies); it dies with QEMU.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from dataclasses import dataclass

import libvirt

from vmcrash.decimal_text import ascii_int
from vmcrash.errors import EnvironmentProblem, LibvirtRefused

__all__ = [
    "Backing",
    "FlatSection",
    "HostMapping",
    "RamRange",
    "parse_flatview",
    "parse_gpa2hva",
    "parse_maps",
    "resolve_ranges",
    "qemu_pid",
    "hmp",
    "read_ram_ranges",
    "find_fd",
    "parse_status_rss",
    "qemu_rss",
    "MAX_SECTIONS",
]

#: A flat view with more RAM sections than this is refused (hostile or broken monitor output).
MAX_SECTIONS = 4096
_SECTION_RE = re.compile(
    r"^\s*(?P<start>[0-9a-f]{1,16})-(?P<end>[0-9a-f]{1,16}) \(prio -?\d+, (?P<kind>[a-z/]+)\): "
    r"(?P<name>\S+)(?: @(?P<offset>[0-9a-f]{1,16}))?")
_GPA2HVA_RE = re.compile(r"Host virtual address for 0x[0-9a-f]+ \((?P<name>[^)]*)\) is 0x(?P<hva>[0-9a-f]+)")
_MAPS_RE = re.compile(r"^(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) (?P<perms>[-rwxps]{4}) (?P<offset>[0-9a-f]+) "
                      r"(?P<dev>[0-9a-f]+:[0-9a-f]+) (?P<inode>\d+)\s*(?P<path>.*)$")


class Backing(enum.Enum):
    SHARED_FILE = "shared-file"
    PRIVATE = "private"


@dataclass(frozen=True)
class FlatSection:
    """One section of QEMU's flat view: guest-physical ``[start, end]`` (inclusive end, as printed).

    ``kind`` is ``ram``, ``rom``, ``romd``, ``i/o``, ...; ``offset`` the offset in region ``name``.
    """

    start: int
    end: int
    kind: str
    name: str
    offset: int

    @property
    def size_bytes(self) -> int:
        return self.end - self.start + 1

    @property
    def is_memory(self) -> bool:
        """RAM or ROM backed by host memory (what QEMU's dump puts into PT_LOADs)."""
        return self.kind in ("ram", "rom")


@dataclass(frozen=True)
class HostMapping:
    """One line of ``/proc/<pid>/maps``."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"


@dataclass(frozen=True)
class RamRange:
    """Guest-physical ``[paddr, paddr + size_bytes)`` at host address ``hva`` in QEMU.

    For ``SHARED_FILE`` ranges, ``inode``/``dev`` name the file and ``file_offset`` where the range
    starts in it; for ``PRIVATE`` ranges both are None/-1.
    """

    paddr: int
    size_bytes: int
    name: str
    hva: int
    backing: Backing
    file_offset: int = -1
    inode: int = 0
    dev: str = ""
    path: str = ""


def parse_flatview(text: str, address_space: str = "memory") -> list[FlatSection]:
    """The sections of the flat view that serves ``address_space`` in ``info mtree -f`` output. Pure.

    Returns ``[]`` when no flat view lists that address space.

    :raises EnvironmentProblem: more than :data:`MAX_SECTIONS` sections, or one that ends before it starts.
    """
    out: list[FlatSection] = []
    in_view = False
    in_body = False
    for line in text.splitlines():
        if line.startswith("FlatView #"):
            if in_view and in_body:
                break
            in_view = False
            in_body = False
            continue
        stripped = line.strip()
        if stripped.startswith("AS "):
            if re.match(rf'^AS "{re.escape(address_space)}"(,|$)', stripped):
                in_view = True
            continue
        if stripped.startswith("Root memory region"):
            in_body = in_view
            continue
        if not in_body:
            continue
        m = _SECTION_RE.match(line)
        if m is None:
            continue
        start, end = int(m["start"], 16), int(m["end"], 16)
        if end < start:  # QEMU prints an inclusive end: never before the start
            raise EnvironmentProblem("QEMU's memory map has a section that ends before it starts: "
                                     f"{line.strip()[:120]!r}")
        out.append(FlatSection(start, end, m["kind"], m["name"], int(m["offset"], 16) if m["offset"] else 0))
        if len(out) > MAX_SECTIONS:
            raise EnvironmentProblem(f"QEMU's memory map has more than {MAX_SECTIONS} sections")
    return out


def parse_gpa2hva(text: str) -> int:
    """The host address in HMP ``gpa2hva`` output. Pure.

    :raises EnvironmentProblem: QEMU answered something else (e.g. "No memory is mapped at ...").
    """
    m = _GPA2HVA_RE.search(text)
    if m is None:
        raise EnvironmentProblem(f"unexpected gpa2hva answer: {text.strip()[:120]!r}")
    return int(m["hva"], 16)


def parse_maps(text: str) -> list[HostMapping]:
    """The lines of ``/proc/<pid>/maps``. Pure; unparsable lines are skipped."""
    out = []
    for line in text.splitlines():
        m = _MAPS_RE.match(line)
        if m is None:
            continue
        out.append(HostMapping(int(m["start"], 16), int(m["end"], 16), m["perms"], int(m["offset"], 16),
                               m["dev"], int(m["inode"]), m["path"].strip()))
    return out


def _merge(sections: list[FlatSection]) -> list[FlatSection]:
    """Adjacent memory sections of one region with contiguous offsets become one (like QEMU's
    guest_phys_blocks merging ranges contiguous in guest and host memory)."""
    out: list[FlatSection] = []
    for s in sections:
        if not s.is_memory:
            continue
        if out:
            prev = out[-1]
            if prev.name == s.name and prev.end + 1 == s.start and \
                    prev.offset + prev.size_bytes == s.offset:
                out[-1] = FlatSection(prev.start, s.end, "ram", prev.name, prev.offset)
                continue
        out.append(s)
    return out


def resolve_ranges(sections: list[FlatSection], hvas: dict[int, int], maps: list[HostMapping]) -> list[RamRange]:
    """Guest RAM ranges with their host address and backing. Pure.

    :param hvas: guest-physical start of each merged memory section → host address (``gpa2hva``).
    A section that crosses host mappings is split at the mapping boundary.

    :raises EnvironmentProblem: a host address in no mapping (QEMU and /proc disagree).
    """
    out: list[RamRange] = []
    for sec in _merge(sections):
        hva = hvas.get(sec.start)
        if hva is None:
            raise EnvironmentProblem(f"no host address for guest memory at {sec.start:#x} ({sec.name})")
        paddr, left = sec.start, sec.size_bytes
        while left > 0:
            mp = next((m for m in maps if m.start <= hva < m.end), None)
            if mp is None:
                raise EnvironmentProblem(f"host address {hva:#x} of guest memory {paddr:#x} is in no mapping")
            n = min(left, mp.end - hva)
            file_backed = mp.shared and mp.inode != 0
            out.append(RamRange(paddr, n, sec.name, hva,
                                Backing.SHARED_FILE if file_backed else Backing.PRIVATE,
                                file_offset=mp.offset + (hva - mp.start) if file_backed else -1,
                                inode=mp.inode if file_backed else 0, dev=mp.dev if file_backed else "",
                                path=mp.path if file_backed else ""))
            paddr += n
            hva += n
            left -= n
    return out


# -- readers -----------------------------------------------------------------------------


def qemu_pid(name: str, run_dir: str = "/run/libvirt/qemu") -> int:
    """The QEMU process id of running domain ``name`` from libvirt's pid file.

    :raises EnvironmentProblem: no pid file (not running, or not a libvirt QEMU domain).
    """
    path = os.path.join(run_dir, f"{name}.pid")
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"{name}: no QEMU pid file {path}") from exc


def hmp(dom: libvirt.virDomain, command: str) -> str:
    """Run an HMP command through libvirt's monitor passthrough (libvirt marks the domain tainted).

    :raises LibvirtRefused: libvirt or QEMU refused it.
    """
    import libvirt_qemu

    try:
        return str(libvirt_qemu.qemuMonitorCommand(dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
    except libvirt.libvirtError as exc:
        raise LibvirtRefused(f"monitor command {command.split()[0]!r} failed: {exc.get_error_message()}",
                             domain=dom.name(), code=exc.get_error_code()) from exc


def read_ram_ranges(dom: libvirt.virDomain, pid: int) -> list[RamRange]:
    """Ask QEMU (``info mtree -f``, ``gpa2hva``) and ``/proc/<pid>/maps`` where guest RAM lives.

    :raises LibvirtRefused: a monitor command failed. :raises EnvironmentProblem: inconsistent answers.
    """
    sections = parse_flatview(hmp(dom, "info mtree -f"))
    if not sections:
        raise EnvironmentProblem(f"{dom.name()}: QEMU printed no flat view of its memory address space")
    hvas = {sec.start: parse_gpa2hva(hmp(dom, f"gpa2hva {sec.start:#x}")) for sec in _merge(sections)}
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = parse_maps(f.read())
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read /proc/{pid}/maps: {exc.strerror}") from exc
    return resolve_ranges(sections, hvas, maps)


def find_fd(pid: int, inode: int, dev: str) -> str | None:
    """The ``/proc/<pid>/fd/N`` path of the open file with ``inode`` on ``dev`` (maps' ``MM:mm``), or None."""
    major, minor = (int(x, 16) for x in dev.split(":"))
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    for n in names:
        p = f"{fd_dir}/{n}"
        try:
            st = os.stat(p)
        except OSError:
            continue
        if st.st_ino == inode and os.major(st.st_dev) == major and os.minor(st.st_dev) == minor \
                and stat.S_ISREG(st.st_mode):
            return p
    return None


def parse_status_rss(text: str) -> tuple[int, int]:
    """``(RssAnon, RssShmem)`` in bytes from ``/proc/<pid>/status`` text; 0 for a missing line or one
    that is not at most 20 ASCII digits and ``kB``. Pure."""
    found = {"RssAnon": 0, "RssShmem": 0}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in found:
            words = rest.split()
            kib = ascii_int(words[0], 20) if len(words) == 2 and words[1] == "kB" else None
            if kib is not None:
                found[key] = kib * 1024
    return found["RssAnon"], found["RssShmem"]


def qemu_rss(pid: int) -> tuple[int, int]:
    """``(private, shared)`` resident bytes of process ``pid`` (``RssAnon``, ``RssShmem``).

    :raises EnvironmentProblem: the process is gone or ``/proc`` unreadable.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_status_rss(f.read())
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read /proc/{pid}/status: {exc.strerror}") from exc

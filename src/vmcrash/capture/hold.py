"""Capture mode ``hold``: keep a crashed guest's RAM by fd, recover at once, write the dump behind.

When a domain's RAM lives in a shared file (memfd, hugetlbfs, ``memory-backend-file`` with
``access mode='shared'``), opening that file through ``/proc/<qemu pid>/fd/N`` keeps the crashed
image alive after its QEMU process is destroyed. The freeze then no longer grows with guest
memory:

1. while the guest sits panicked: QEMU's own dump header is taken (a memory-only ELF dump into a
   FIFO, read up to the first memory byte, then closed: ELF header, every ``PT_LOAD`` with QEMU's
   guest-physical layout, and the ``PT_NOTE`` segment with per-vCPU ``NT_PRSTATUS``, ``QEMU`` CPU
   state and ``VMCOREINFO``); QEMU's memory map says which guest-physical range is where
   (:mod:`vmcrash.host.qemu_memory`); the shared files are opened, the few ranges that are not in
   them (BIOS/option ROMs, a few hundred KiB) are copied from ``/proc/<pid>/mem``;
2. the guest is recovered with a fresh QEMU (``restart``) — a fresh QEMU gets a fresh file;
3. triage runs on the held image (:class:`HeldElfSource` looks like the finished ELF file), and
   the dump is written from the held image: only ``SEEK_DATA`` extents are read (holes, memory
   the guest never touched, are never faulted in), all-zero pages stay holes; then the fds are
   closed and the image is gone.

The file is byte for byte the ELF QEMU would have written: QEMU's header and notes verbatim,
and each ``PT_LOAD``'s bytes at QEMU's offsets.

``reset`` cannot be combined with ``hold``: the same QEMU process keeps (and reuses) the same
memory. :func:`choose_mode` never pairs them.
"""

from __future__ import annotations

import bisect
import ctypes
import enum
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from vmcrash.capture.dumping import CHUNK_BYTES, PAGE_BYTES, DumpStats, zero_runs
from vmcrash.capture.files import storage_errors
from vmcrash.capture.recovery import resolve_recovery
from vmcrash.errors import DumpFormatError, EnvironmentProblem, StorageError, VmcrashError
from vmcrash.host import qemu_memory
from vmcrash.host.qemu_memory import Backing, RamRange

__all__ = [
    "CAPTURE_MODES",
    "Mode",
    "ModeChoice",
    "DumpHeader",
    "HeldImage",
    "HeldElfSource",
    "HoldRegistry",
    "backing_of_xml",
    "candidate_mode",
    "choose_mode",
    "guard_decision",
    "memory_need",
    "MemoryNeed",
    "parse_dump_header",
    "grab_dump_header",
    "hold_image",
    "write_held",
    "copy_image",
    "present_runs",
    "lost_image_note",
    "MAX_PRIVATE_BYTES",
]

log = logging.getLogger(__name__)

#: The values of a domain policy's ``capture`` key.
CAPTURE_MODES = ("auto", "hold", "copy", "stream", "direct")
#: Guest memory that is not in a shared file (ROMs) is copied while paused, up to this much.
MAX_PRIVATE_BYTES = 64 << 20
#: The dump header (ELF header, program headers, notes) may be at most this long.
MAX_HEADER_BYTES = 16 << 20

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)


class Mode(enum.Enum):
    HOLD = "hold"
    STREAM = "stream"
    DIRECT = "direct"
    COPY = "copy"


@dataclass(frozen=True)
class ModeChoice:
    """The capture mode one crash gets, and why (recorded in the crash's ``capture``)."""

    mode: Mode
    reason: str
    requested: str

    def to_dict(self) -> dict[str, str]:
        return {"mode": self.mode.value, "reason": self.reason, "requested": self.requested}


# -- decisions (pure) ------------------------------------------------------------------------


def backing_of_xml(xml: str) -> str:
    """The memory backing a domain XML asks for: ``memfd-shared``, ``file-shared``,
    ``hugepages-shared``, or ``anonymous`` (everything private, which ``hold`` cannot keep). Pure."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return "anonymous"
    mb = root.find("memoryBacking")
    if mb is None:
        return "anonymous"
    access = mb.find("access")
    shared = access is not None and access.get("mode") == "shared"
    source = mb.find("source")
    kind = source.get("type") if source is not None else None
    if not shared:
        return "anonymous"
    if kind == "memfd":
        return "memfd-shared"
    if mb.find("hugepages") is not None:
        return "hugepages-shared"
    if kind == "file":
        return "file-shared"
    return "anonymous"


#: Recovery actions after which a copy of the crashed image is still useful (the memory is copied
#: while the guest is stopped; ``resume`` is a manual dump of a running guest).
COPY_RECOVERIES = ("auto", "restart", "destroy", "reset", "resume")
#: Recovery actions that start a fresh QEMU or none: the only ones ``hold`` works with (``auto``
#: becomes ``restart`` when an image is held: :func:`vmcrash.capture.recovery.resolve_recovery`).
HOLD_RECOVERIES = ("auto", "restart", "destroy")


@dataclass(frozen=True)
class MemoryNeed:
    """What one more held or copied image would do to the host's memory, in bytes.

    ``image_bytes``: what the capture itself allocates (a copy; 0 for ``hold``, whose image is
    already allocated). ``new_guest_bytes``: what the recovered guest may still allocate.
    ``freed_bytes``: what the recovery frees at once (the crashed QEMU's private memory when it
    is destroyed).
    """

    image_bytes: int = 0
    new_guest_bytes: int = 0
    freed_bytes: int = 0


def memory_need(mode: Mode, *, recovery: str, guest_ram_bytes: int, private_rss_bytes: int,
                shared_rss_bytes: int) -> MemoryNeed:
    """The :class:`MemoryNeed` of capturing one crash in ``mode`` with ``recovery``. Pure.

    :param private_rss_bytes: the crashed QEMU's resident anonymous memory (``RssAnon``).
    :param shared_rss_bytes: its resident shared memory (``RssShmem``: memfd/hugetlbfs guest RAM).
    """
    resident = private_rss_bytes + shared_rss_bytes
    recovery = resolve_recovery(recovery, holds_image=mode is Mode.HOLD)
    fresh_qemu = recovery == "restart"
    same_qemu = recovery in ("reset", "resume")
    if mode is Mode.HOLD:
        return MemoryNeed(0, guest_ram_bytes if fresh_qemu else 0, 0)
    # copy: the present pages; a fresh QEMU may touch all of its RAM, the same QEMU what it has not yet
    new_guest = guest_ram_bytes if fresh_qemu else max(0, guest_ram_bytes - resident) if same_qemu else 0
    freed = private_rss_bytes if recovery in ("restart", "destroy") else 0
    return MemoryNeed(min(resident, guest_ram_bytes + MAX_PRIVATE_BYTES), new_guest, freed)


def guard_decision(*, mem_available_bytes: int, need: MemoryNeed, headroom_bytes: int,
                   held_now: int, max_held: int) -> tuple[bool, str]:
    """Whether one more image may be held or copied. Pure.

    The host must keep ``headroom_bytes`` available once the image is taken, the crashed QEMU's
    freed memory returned and the recovered guest grown to its whole RAM.
    """
    if held_now >= max_held:
        return False, f"{held_now} image(s) held already (limit {max_held})"
    after = mem_available_bytes + need.freed_bytes - need.image_bytes - need.new_guest_bytes
    parts = [f"{mem_available_bytes >> 20} MiB available"]
    if need.image_bytes:
        parts.append(f"the copy takes {need.image_bytes >> 20} MiB")
    if need.freed_bytes:
        parts.append(f"the crashed QEMU frees {need.freed_bytes >> 20} MiB")
    if need.new_guest_bytes:
        parts.append(f"the new guest may take {need.new_guest_bytes >> 20} MiB")
    said = ", ".join(parts)
    if after < headroom_bytes:
        return False, f"host memory guard: {said}, leaving {after >> 20} MiB < headroom {headroom_bytes >> 20} MiB"
    return True, f"{said}: {after >> 20} MiB left (headroom {headroom_bytes >> 20} MiB)"


def candidate_mode(*, requested: str, recovery: str, backing: str, fallback: str) -> ModeChoice:
    """The capture mode one crash would get if the host memory guard allows it. Pure.

    ``auto``: ``hold`` when the RAM is in a shared file and the recovery starts a fresh QEMU (or
    none); else ``copy`` when the recovery still needs the image copied before it (restart,
    destroy, reset, or resuming after a manual dump); else ``fallback``.

    :param requested: the policy's ``capture`` (``auto``, ``hold``, ``copy``, ``stream``, ``direct``).
    :param recovery: the recovery action this crash gets (``resume`` for a manual dump).
    :param backing: :func:`backing_of_xml` of the running domain.
    :param fallback: ``stream`` or ``direct`` (the daemon's ``staging.mode``).
    """
    fb = Mode(fallback)
    if requested in ("stream", "direct"):
        return ModeChoice(Mode(requested), "set by policy", requested)
    shared = backing != "anonymous"
    if requested in ("auto", "hold") and shared and recovery in HOLD_RECOVERIES:
        why = "set by policy" if requested == "hold" else f"RAM in {backing} memory, recovery {recovery!r}"
        return ModeChoice(Mode.HOLD, why, requested)
    if requested == "hold":
        why = ("guest RAM is anonymous (private to QEMU, dies with it)" if not shared else
               f"recovery {recovery!r} keeps the same QEMU process (its memory is reused): hold needs restart "
               "or destroy")
        return ModeChoice(fb, f"{why}; {fallback}", requested)
    if recovery not in COPY_RECOVERIES:
        return ModeChoice(fb, f"recovery {recovery!r} keeps the guest as it is: nothing to copy; {fallback}",
                          requested)
    if requested == "copy":
        return ModeChoice(Mode.COPY, "present pages copied while stopped (set by policy)", requested)
    where = ("anonymous RAM (private to QEMU)" if not shared else
             f"RAM in {backing} memory but recovery {recovery!r} keeps the same QEMU")
    then = "; recovery auto resets it in place after the copy" if recovery == "auto" else ""
    return ModeChoice(Mode.COPY, f"{where}: present pages copied while stopped{then}", requested)


def choose_mode(*, requested: str, recovery: str, backing: str, fallback: str,
                guard: tuple[bool, str] | None) -> ModeChoice:
    """The capture mode for one crash: :func:`candidate_mode`, then the memory guard. Pure.

    :param guard: :func:`guard_decision`'s answer for the candidate (None: not evaluated, which
        refuses ``hold`` and ``copy``).
    """
    cand = candidate_mode(requested=requested, recovery=recovery, backing=backing, fallback=fallback)
    if cand.mode not in (Mode.HOLD, Mode.COPY):
        return cand
    if guard is None or not guard[0]:
        return ModeChoice(Mode(fallback), f"{cand.mode.value} refused by "
                          f"{guard[1] if guard else 'the memory guard (not checked)'}; {fallback}", requested)
    return ModeChoice(cand.mode, f"{cand.reason}; {guard[1]}", requested)


# -- QEMU's dump header ------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    """One ``PT_LOAD`` of QEMU's dump: guest-physical ``paddr``, ``file_size`` bytes at ``offset``."""

    paddr: int
    mem_size: int
    file_size: int
    offset: int


@dataclass(frozen=True)
class DumpHeader:
    """QEMU's dump up to its first memory byte (``raw``), and its layout."""

    raw: bytes
    loads: tuple[LoadSpec, ...]
    notes: tuple[tuple[int, int], ...]
    #: (file offset, bytes) QEMU writes after the memory: the section string table (QEMU >= 7.2)
    trailers: tuple[tuple[int, bytes], ...] = ()

    @property
    def file_size_bytes(self) -> int:
        return max([len(self.raw)] + [ld.offset + ld.file_size for ld in self.loads]
                   + [off + len(b) for off, b in self.trailers])


def header_extent(head: bytes) -> tuple[int, int]:
    """(program header table offset, its length) from the ELF header. Pure.

    :raises DumpFormatError: not a 64-bit little-endian ELF core, or PN_XNUM (not supported here).
    """
    if len(head) < _EHDR.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise DumpFormatError("QEMU's dump does not start with a 64-bit little-endian ELF header")
    (_id, e_type, _m, _v, _e, phoff, _sh, _f, _eh, phentsize, phnum, *_rest) = _EHDR.unpack_from(head)
    if e_type != 4:
        raise DumpFormatError(f"QEMU's dump has ELF type {e_type}, not a core")
    if phnum == PN_XNUM or phnum == 0 or phentsize < _PHDR.size:
        raise DumpFormatError(f"QEMU's dump has {phnum} program headers of {phentsize} bytes (unsupported)")
    return phoff, phnum * phentsize


def parse_dump_header(raw: bytes) -> DumpHeader:
    """The layout of QEMU's dump from its first bytes (at least the program headers). Pure.

    :raises DumpFormatError: not an ELF core, cut short, or a segment or section that ends beyond
        :data:`MAX_FILE_BYTES`.
    """
    phoff, phlen = header_extent(raw)
    if len(raw) < phoff + phlen:
        raise DumpFormatError("QEMU's dump header is cut short")
    phentsize = _EHDR.unpack_from(raw)[9]
    loads: list[LoadSpec] = []
    notes: list[tuple[int, int]] = []
    for off in range(phoff, phoff + phlen, phentsize):
        p_type, _fl, p_offset, _va, p_paddr, p_filesz, p_memsz, _al = _PHDR.unpack_from(raw, off)
        if p_type in (PT_LOAD, PT_NOTE) and p_offset + p_filesz > MAX_FILE_BYTES:
            raise DumpFormatError(f"QEMU's dump has a segment of {p_filesz} bytes at file offset {p_offset:#x}, "
                                  "beyond the largest file")
        if p_type == PT_LOAD:
            if p_filesz > p_memsz:
                raise DumpFormatError("PT_LOAD with p_filesz > p_memsz")
            loads.append(LoadSpec(p_paddr, p_memsz, p_filesz, p_offset))
        elif p_type == PT_NOTE:
            notes.append((p_offset, p_filesz))
    return DumpHeader(raw, tuple(loads), tuple(notes), section_trailers(raw))


#: Section names QEMU's x86 dump carries (QEMU 7.2 adds a section header table whose only named
#: section is the string table itself, written after the memory).
_KNOWN_SECTIONS = {3: b".shstrtab"}
#: The largest file offset (``off_t``): a segment that ends beyond it cannot be written or read.
MAX_FILE_BYTES = (1 << 63) - 1
#: QEMU's string table is 11 bytes (``"\\0.shstrtab\\0"``); a larger one is not rebuilt.
MAX_TRAILER_BYTES = 4096


def section_trailers(raw: bytes) -> tuple[tuple[int, bytes], ...]:
    """The sections QEMU writes past the header (after the memory), rebuilt from their headers. Pure.

    QEMU 7.2 writes a NULL section and a ``.shstrtab`` string table (``"\\0.shstrtab\\0"``) at the
    end of the file; older QEMU writes no section table (``e_shnum == 0``, nothing to rebuild).

    :raises DumpFormatError: a section this reader does not know how to rebuild, or a string table
        larger than :data:`MAX_TRAILER_BYTES`.
    """
    (_id, _t, _m, _v, _e, _phoff, shoff, _f, _eh, _pe, _pn, shentsize, shnum, shstrndx) = _EHDR.unpack_from(raw)
    if shnum == 0 or shoff == 0:
        return ()
    if shentsize < _SHDR.size or shoff + shnum * shentsize > len(raw):
        raise DumpFormatError("QEMU's section header table is not within the dump header")
    out = []
    for i in range(shnum):
        sh_name, sh_type, _fl, _addr, sh_offset, sh_size, *_r = _SHDR.unpack_from(raw, shoff + i * shentsize)
        if sh_type == 0 or sh_size == 0 or sh_offset + sh_size <= len(raw):
            continue
        if i != shstrndx or sh_type not in _KNOWN_SECTIONS:
            raise DumpFormatError(f"QEMU's dump has section {i} of type {sh_type} after the memory (unknown)")
        name = _KNOWN_SECTIONS[sh_type] + b"\0"
        if sh_size > MAX_TRAILER_BYTES:
            raise DumpFormatError(f"QEMU's section string table is {sh_size} bytes (more than {MAX_TRAILER_BYTES})")
        if sh_offset + sh_size > MAX_FILE_BYTES:
            raise DumpFormatError(f"QEMU's dump has section {i} at file offset {sh_offset:#x}, beyond the largest file")
        table = bytearray(sh_size)
        if sh_name + len(name) > sh_size:
            raise DumpFormatError("QEMU's section string table does not fit its own name")
        table[sh_name:sh_name + len(name)] = name
        out.append((sh_offset, bytes(table)))
    return tuple(out)


def data_start(header: DumpHeader) -> int:
    """Where QEMU's first memory byte goes (the header is everything before)."""
    starts = [ld.offset for ld in header.loads if ld.file_size]
    ends = [o + s for o, s in header.notes]
    return min(starts) if starts else max(ends, default=len(header.raw))


def _read_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise DumpFormatError(f"QEMU's dump stream ended after {len(out)} of {n} header bytes")
        out += chunk
    return bytes(out)


def grab_dump_header(dom: libvirt.virDomain, work_dir: Path, *, timeout_s: float = 30.0) -> DumpHeader:
    """QEMU's own memory-only ELF dump, read up to its first memory byte, then abandoned.

    The dump goes into a FIFO; closing it makes the rest of QEMU's dump fail (the domain stays
    crashed/panicked). About 20 ms here.

    :raises LibvirtRefused/EnvironmentProblem: the dump did not start. :raises DumpFormatError:
        QEMU wrote something unexpected.
    """
    fifo = work_dir / f".hold-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.fifo"
    with storage_errors("cannot create FIFO", fifo):
        os.mkfifo(fifo, 0o600)
    result: dict[str, BaseException | None] = {"error": None}
    done = threading.Event()

    def run() -> None:
        try:
            dom.coreDumpWithFormat(str(fifo), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, libvirt.VIR_DUMP_MEMORY_ONLY)
        except BaseException as exc:  # the expected outcome: the reader closed the FIFO
            result["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=run, name=f"hold-header:{dom.name()}", daemon=True)
    worker.start()
    fd = -1
    try:
        deadline = time.monotonic() + timeout_s
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot open the dump FIFO: {exc.strerror}") from exc
        # O_NONBLOCK open of a FIFO succeeds at once; wait for the writer, then read blocking.
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll(50):
            if done.is_set():
                err = result["error"]
                if isinstance(err, libvirt.libvirtError):
                    from vmcrash.host.connection import translate

                    raise translate(err, domain=dom.name()) from err
                raise EnvironmentProblem("QEMU's dump ended before writing a header")
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"QEMU's dump did not start within {timeout_s:.0f} s")
        os.set_blocking(fd, True)
        head = _read_exact(fd, _EHDR.size)
        phoff, phlen = header_extent(head)
        if phoff + phlen > MAX_HEADER_BYTES:
            raise DumpFormatError("QEMU's program header table is too large")
        raw = head + _read_exact(fd, phoff + phlen - len(head))
        first = data_start(parse_dump_header(raw))
        if first > MAX_HEADER_BYTES:
            raise DumpFormatError(f"QEMU's dump header would be {first} bytes")
        if first > len(raw):
            raw += _read_exact(fd, first - len(raw))
        return parse_dump_header(raw)
    finally:
        if fd >= 0:
            os.close(fd)
        done.wait(timeout_s)
        try:
            fifo.unlink()
        except OSError:
            pass


# -- the held image ----------------------------------------------------------------------


@dataclass
class HeldRange:
    """Guest-physical ``[paddr, paddr + size_bytes)``: in held file ``fd`` at ``file_offset``, or
    copied into ``data``."""

    paddr: int
    size_bytes: int
    fd: int = -1
    file_offset: int = 0
    data: bytes | memoryview | None = None


@dataclass
class HeldImage:
    """A crashed guest's memory kept after its QEMU is gone, plus QEMU's dump header.

    Close it (or use it as a context manager) to release the memory.
    """

    domain: str
    header: DumpHeader
    ranges: list[HeldRange]
    fds: list[int] = field(default_factory=list)
    held_ns: int = 0
    hold_seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    #: the anonymous mapping a ``copy`` was read into (its ranges' ``data`` are views of it)
    buffer: mmap.mmap | None = field(default=None, repr=False)
    _starts: list[int] = field(default_factory=list, repr=False)

    def held_bytes(self) -> int:
        """Host memory the held files occupy (allocated blocks) plus copied ranges."""
        total = sum(len(r.data) for r in self.ranges if r.data is not None)
        for fd in self.fds:
            try:
                total += os.fstat(fd).st_blocks * 512
            except OSError:
                pass
        return total

    def _find(self, paddr: int) -> HeldRange | None:
        if len(self._starts) != len(self.ranges):
            self.ranges.sort(key=lambda x: x.paddr)
            self._starts = [x.paddr for x in self.ranges]
        i = bisect.bisect_right(self._starts, paddr) - 1
        if i >= 0 and paddr < self.ranges[i].paddr + self.ranges[i].size_bytes:
            return self.ranges[i]
        return None

    def _next_start(self, paddr: int, default: int) -> int:
        self._find(paddr)
        i = bisect.bisect_right(self._starts, paddr)
        return self._starts[i] if i < len(self._starts) else default

    def read_phys(self, paddr: int, size: int) -> bytes:
        """``size`` bytes of guest memory at ``paddr``; zeros where no range covers it.

        Reads with ``pread`` (a hole reads as zeros and stays a hole).
        """
        out = bytearray()
        while size > 0:
            r = self._find(paddr)
            if r is None:
                nxt = self._next_start(paddr, paddr + size)
                n = min(size, nxt - paddr)
                out += bytes(n)
            else:
                n = min(size, r.paddr + r.size_bytes - paddr)
                if r.data is not None:
                    out += r.data[paddr - r.paddr:paddr - r.paddr + n]
                else:
                    got = os.pread(r.fd, n, r.file_offset + paddr - r.paddr)
                    out += got + bytes(n - len(got))
            paddr += n
            size -= n
        return bytes(out)

    def data_extents(self, paddr: int, size: int) -> Iterator[tuple[int, int]]:
        """``(paddr, size)`` runs within ``[paddr, paddr + size)`` that may hold data.

        Held files are asked with ``SEEK_DATA``/``SEEK_HOLE`` (a hole is never read); uncovered
        ranges yield nothing (they read as zeros).
        """
        end = paddr + size
        for r in sorted(self.ranges, key=lambda x: x.paddr):
            lo, hi = max(paddr, r.paddr), min(end, r.paddr + r.size_bytes)
            if lo >= hi:
                continue
            if r.data is not None:
                yield lo, hi - lo
                continue
            for off, n in file_data_runs(r.fd, r.file_offset + lo - r.paddr, hi - lo):
                yield r.paddr + off - r.file_offset, n

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        for r in self.ranges:
            if isinstance(r.data, memoryview):
                r.data.release()
            r.data = None
            r.fd = -1
        if self.buffer is not None:
            try:
                self.buffer.close()
            except BufferError:  # a view still exported by a reader: freed with the last reference
                pass
            self.buffer = None

    def __enter__(self) -> HeldImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HeldElfSource:
    """The held image seen as the ELF file it will become (a ``ByteSource`` for the dump readers)."""

    def __init__(self, image: HeldImage) -> None:
        self.image = image
        self.path = f"<held image of {image.domain}>"
        self.bytes_read = 0
        self._loads = sorted(image.header.loads, key=lambda ld: ld.offset)

    @property
    def size_bytes(self) -> int:
        return self.image.header.file_size_bytes

    def read(self, offset: int, size: int) -> bytes:
        if size < 0 or offset < 0 or offset + size > self.size_bytes:
            raise DumpFormatError(f"read of {size} bytes at {offset} outside the held image", path=self.path)
        out = bytearray()
        raw = self.image.header.raw
        pos, end = offset, offset + size
        while pos < end:
            if pos < len(raw):
                n = min(end, len(raw)) - pos
                out += raw[pos:pos + n]
            else:
                ld = next((x for x in self._loads if x.offset <= pos < x.offset + x.file_size), None)
                tr = next(((o, b) for o, b in self.image.header.trailers if o <= pos < o + len(b)), None)
                if tr is not None:
                    n = min(end, tr[0] + len(tr[1])) - pos
                    out += tr[1][pos - tr[0]:pos - tr[0] + n]
                elif ld is None:
                    nxt = min([x.offset for x in self._loads if x.offset > pos]
                              + [o for o, _b in self.image.header.trailers if o > pos], default=end)
                    n = min(end, nxt) - pos
                    out += bytes(n)
                else:
                    n = min(end, ld.offset + ld.file_size) - pos
                    out += self.image.read_phys(ld.paddr + pos - ld.offset, n)
            pos += n
        self.bytes_read += size
        return bytes(out)

    def read_upto(self, offset: int, size: int) -> bytes:
        if offset >= self.size_bytes:
            return b""
        return self.read(offset, min(size, self.size_bytes - offset))

    def close(self) -> None:
        """The image is closed by its owner."""


def hold_image(dom: libvirt.virDomain, name: str, pid: int, header: DumpHeader, *,
               ranges: list[RamRange] | None = None) -> HeldImage:
    """Open the shared files that hold ``dom``'s RAM and copy the rest; the guest must be paused
    or panicked (nothing may change under the copy).

    :raises EnvironmentProblem: the RAM is not (mostly) in shared files, a file cannot be opened,
        or a dump ``PT_LOAD`` is not covered by QEMU's memory map.
    """
    t0 = time.monotonic()
    ranges = ranges if ranges is not None else qemu_memory.read_ram_ranges(dom, pid)
    shared = [r for r in ranges if r.backing is Backing.SHARED_FILE]
    private = [r for r in ranges if r.backing is Backing.PRIVATE]
    if not shared:
        raise EnvironmentProblem(f"{name}: no guest RAM in a shared file (anonymous memory cannot be held)")
    private_bytes = sum(r.size_bytes for r in private)
    if private_bytes > MAX_PRIVATE_BYTES:
        raise EnvironmentProblem(f"{name}: {private_bytes >> 20} MiB of guest memory is private to QEMU "
                                 f"(limit {MAX_PRIVATE_BYTES >> 20} MiB to copy)")
    image = HeldImage(name, header, [])
    try:
        by_file: dict[tuple[int, str], int] = {}
        for r in shared:
            key = (r.inode, r.dev)
            if key not in by_file:
                p = qemu_memory.find_fd(pid, r.inode, r.dev)
                if p is None:
                    raise EnvironmentProblem(f"{name}: QEMU has no open fd for its RAM file {r.path or r.inode}")
                try:
                    fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise EnvironmentProblem(f"{name}: cannot open {p} ({r.path}): {exc.strerror}") from exc
                image.fds.append(fd)
                image.files.append(r.path)
                by_file[key] = fd
            image.ranges.append(HeldRange(r.paddr, r.size_bytes, fd=by_file[key], file_offset=r.file_offset))
        if private:
            try:
                mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise EnvironmentProblem(f"{name}: cannot open /proc/{pid}/mem: {exc.strerror}") from exc
            try:
                for r in private:
                    data = os.pread(mem, r.size_bytes, r.hva)
                    if len(data) != r.size_bytes:
                        raise EnvironmentProblem(f"{name}: short read of guest ROM at {r.paddr:#x}")
                    image.ranges.append(HeldRange(r.paddr, r.size_bytes, data=data))
            except OSError as exc:
                raise EnvironmentProblem(f"{name}: cannot read QEMU memory: {exc.strerror}") from exc
            finally:
                os.close(mem)
        for ld in header.loads:
            covered = sum(max(0, min(ld.paddr + ld.file_size, r.paddr + r.size_bytes) - max(ld.paddr, r.paddr))
                          for r in image.ranges)
            if covered != ld.file_size:
                raise EnvironmentProblem(f"{name}: dump segment at {ld.paddr:#x} ({ld.file_size} bytes) is not "
                                         f"covered by QEMU's memory map ({covered} bytes)")
    except BaseException:
        image.close()
        raise
    image.held_ns = time.time_ns()
    image.hold_seconds = time.monotonic() - t0
    return image


PAGEMAP_PRESENT = 1 << 63
PAGEMAP_SWAPPED = 1 << 62


def present_runs(pagemap: bytes, hva: int) -> list[tuple[int, int]]:
    """Runs ``(host address, bytes)`` of present or swapped pages in a pagemap slice that starts
    at page-aligned ``hva``. Pure."""
    runs: list[tuple[int, int]] = []
    for i, (entry,) in enumerate(struct.iter_unpack("<Q", pagemap)):
        if entry & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED):
            addr = hva + i * PAGE_BYTES
            if runs and runs[-1][0] + runs[-1][1] == addr:
                runs[-1] = (runs[-1][0], runs[-1][1] + PAGE_BYTES)
            else:
                runs.append((addr, PAGE_BYTES))
    return runs


@dataclass(frozen=True)
class CopyRun:
    """``size_bytes`` of guest memory at ``paddr`` to copy from ``fd`` at ``source_offset``.

    With ``pid`` set, ``source_offset`` is an address in that process, read with
    ``process_vm_readv`` (one copy, no bounce page); ``fd`` is its ``/proc/<pid>/mem``, the fallback.
    """

    paddr: int
    size_bytes: int
    fd: int
    source_offset: int
    pid: int = 0


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_LIBC = ctypes.CDLL(None, use_errno=True)  # CDLL calls release the GIL


def process_vm_read(pid: int, local_addr: int, remote_addr: int, size_bytes: int) -> int:
    """``process_vm_readv(2)`` of ``size_bytes`` at ``remote_addr`` in ``pid`` into ``local_addr``.

    :returns: bytes read (short at an unmapped page). :raises OSError: the call failed.
    """
    local = _IoVec(local_addr, size_bytes)
    remote = _IoVec(remote_addr, size_bytes)
    got = _LIBC.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(got)


def file_data_runs(fd: int, file_offset: int, size_bytes: int) -> Iterator[tuple[int, int]]:
    """``(offset, bytes)`` runs of ``fd`` within ``[file_offset, file_offset + size_bytes)`` that hold
    data (``SEEK_DATA``/``SEEK_HOLE``; a file system without them reports everything as data)."""
    pos, stop = file_offset, file_offset + size_bytes
    while pos < stop:
        try:
            d = os.lseek(fd, pos, SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            return
        if d >= stop:
            return
        h = min(os.lseek(fd, d, SEEK_HOLE), stop)
        yield d, h - d
        pos = h


#: one read while copying (each thread reads whole chunks)
COPY_CHUNK_BYTES = 32 << 20
#: threads that copy at once (page faults and the kernel's copy scale with cores)
COPY_THREADS = max(1, min(4, os.cpu_count() or 1))


def copy_runs(runs: list[CopyRun], buffer: memoryview, *, threads: int = 2) -> None:
    """Read every run into ``buffer`` (back to back, in order) with ``threads`` threads.

    The reads (``process_vm_readv`` or ``preadv`` straight into the buffer) release the GIL, so
    the page faults of a fresh buffer and the kernel's copy run on several cores.

    :raises OSError: a read failed. :raises EnvironmentProblem: a short read.
    """
    jobs: list[tuple[int, int, int, int, int]] = []  # (buffer offset, bytes, fd, source offset, pid)
    at = 0
    for run in runs:
        for off in range(0, run.size_bytes, COPY_CHUNK_BYTES):
            n = min(COPY_CHUNK_BYTES, run.size_bytes - off)
            jobs.append((at + off, n, run.fd, run.source_offset + off, run.pid))
        at += run.size_bytes
    errors: list[BaseException] = []
    base_addr = 0
    if any(run.pid for run in runs) and not buffer.readonly:
        anchor = ctypes.c_char.from_buffer(buffer)
        base_addr = ctypes.addressof(anchor)
        del anchor  # the address stays valid while the caller's buffer lives

    def work(mine: list[tuple[int, int, int, int, int]]) -> None:
        try:
            for boff, n, fd, soff, pid in mine:
                done = 0
                while done < n:
                    if pid and base_addr:
                        try:
                            got = process_vm_read(pid, base_addr + boff + done, soff + done, n - done)
                        except OSError:  # e.g. refused by a security module: the /proc/<pid>/mem path
                            got = os.preadv(fd, [buffer[boff + done:boff + n]], soff + done)
                    else:
                        got = os.preadv(fd, [buffer[boff + done:boff + n]], soff + done)
                    if got <= 0:
                        raise EnvironmentProblem(f"short read of guest memory at source offset {soff + done:#x}")
                    done += got
        except BaseException as exc:
            errors.append(exc)

    count = max(1, min(threads, len(jobs)))
    workers = [threading.Thread(target=work, args=(jobs[i::count],), name=f"copy-{i}") for i in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


def copy_image(dom: libvirt.virDomain, name: str, pid: int, header: DumpHeader, *,
               limit_bytes: int, threads: int = COPY_THREADS, huge_pages: bool = False) -> HeldImage:
    """Capture mode ``copy``: the guest memory the stopped QEMU has, copied into this process.

    Guest-physical → host address from QEMU's memory map. Private (anonymous) RAM: the pages
    ``/proc/<pid>/pagemap`` shows present or swapped are read from ``/proc/<pid>/mem``; RAM in a
    shared file (memfd, hugetlbfs, file): the file's ``SEEK_DATA`` extents, read from the file
    itself. Memory never touched reads as zeros and is not copied. The copy lands in one
    anonymous mapping read by ``threads`` threads (``process_vm_readv`` for QEMU's own memory).
    ``huge_pages`` asks for transparent huge pages for it: measured here (bench/copy_probe.py,
    1.2 GiB, fresh processes) they were as often much slower (0.3-3.5 s) as faster than 4 KiB pages
    (0.5-0.6 s, steady), so they are off by default: the freeze should be predictable.

    :raises EnvironmentProblem: more than ``limit_bytes`` to copy, or ``/proc`` unreadable.
    """
    t0 = time.monotonic()
    ranges = qemu_memory.read_ram_ranges(dom, pid)
    image = HeldImage(name, header, [])
    fds: list[int] = []
    try:
        try:
            pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            fds.append(pm)
            mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            fds.append(mem)
        except OSError as exc:
            raise EnvironmentProblem(f"{name}: cannot open /proc/{pid}: {exc.strerror}") from exc
        runs: list[CopyRun] = []
        total = 0
        shared_fds: dict[tuple[int, str], int] = {}
        for r in ranges:
            if r.backing is Backing.SHARED_FILE:
                key = (r.inode, r.dev)
                if key not in shared_fds:
                    p = qemu_memory.find_fd(pid, r.inode, r.dev)
                    if p is None:
                        raise EnvironmentProblem(f"{name}: QEMU has no open fd for its RAM file {r.path or r.inode}")
                    try:
                        shared_fds[key] = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as exc:
                        raise EnvironmentProblem(f"{name}: cannot open {p} ({r.path}): {exc.strerror}") from exc
                    fds.append(shared_fds[key])
                fd = shared_fds[key]
                found = [(r.paddr + off - r.file_offset, n, fd, off, 0)
                         for off, n in file_data_runs(fd, r.file_offset, r.size_bytes)]
            else:
                found = []
                step = 1 << 30
                for base in range(r.hva, r.hva + r.size_bytes, step):
                    n = min(step, r.hva + r.size_bytes - base)
                    table = os.pread(pm, n // PAGE_BYTES * 8, base // PAGE_BYTES * 8)
                    found += [(r.paddr + addr - r.hva, size, mem, addr, pid)
                              for addr, size in present_runs(table, base)]
            for paddr, size, fd, off, src_pid in found:
                total += size
                if total > limit_bytes:
                    raise EnvironmentProblem(f"{name}: more than {limit_bytes >> 20} MiB to copy; not copying")
                runs.append(CopyRun(paddr, size, fd, off, src_pid))
        if total:
            image.buffer = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
                try:
                    image.buffer.madvise(mmap.MADV_HUGEPAGE)
                except OSError:
                    pass
            view = memoryview(image.buffer)
            try:
                copy_runs(runs, view, threads=threads)
                at = 0
                for run in runs:
                    image.ranges.append(HeldRange(run.paddr, run.size_bytes, data=view[at:at + run.size_bytes]))
                    at += run.size_bytes
            finally:
                view.release()
    except OSError as exc:
        image.close()
        raise EnvironmentProblem(f"{name}: cannot read QEMU memory: {exc.strerror}") from exc
    except BaseException:
        image.close()
        raise
    finally:
        for fd in fds:
            os.close(fd)
    image.held_ns = time.time_ns()
    image.hold_seconds = time.monotonic() - t0
    return image


# -- writing behind ------------------------------------------------------------------------


def write_held(image: HeldImage, target: Path, *, give_up: Callable[[], str | None] | None = None,
               progress: Callable[[int, int], None] | None = None, max_bytes_s: float = 0.0) -> DumpStats:
    """Write ``image`` as QEMU's ELF dump to ``target`` (created 0600, must not exist).

    Only data extents of the held files are read; all-zero pages are left as holes.
    ``give_up`` is polled between chunks: a returned reason stops the write. ``max_bytes_s``
    (0: no limit) caps the rate at which held data is read and written.

    :raises StorageError: the file cannot be written, or the write was given up (the caller
        removes the partial file).
    """
    stats = DumpStats(mode="hold", format="elf")
    stats.started_ns = time.time_ns()
    t0 = time.monotonic()
    total = image.header.file_size_bytes
    read_bytes = 0
    with storage_errors("cannot create dump file", target):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with storage_errors("cannot write dump", target):
            _pwrite_all(fd, image.header.raw, 0)
            written = len(image.header.raw)
            zero_pages = 0
            for ld in image.header.loads:
                for paddr, size in image.data_extents(ld.paddr, ld.file_size):
                    pos = paddr
                    while pos < paddr + size:
                        if give_up is not None and (why := give_up()):
                            raise StorageError(f"gave up writing the held image: {why}; "
                                               f"{read_bytes} bytes of data read, {written} written",
                                               path=str(target))
                        n = min(CHUNK_BYTES if max_bytes_s <= 0 else 1 << 20, paddr + size - pos)
                        chunk = image.read_phys(pos, n)
                        read_bytes += n
                        out_off = ld.offset + pos - ld.paddr
                        for s, e, is_zero in zero_runs(chunk):
                            if is_zero:
                                zero_pages += (e - s) // PAGE_BYTES
                            else:
                                _pwrite_all(fd, memoryview(chunk)[s:e], out_off + s)
                                written += e - s
                        pos += n
                        if max_bytes_s > 0:
                            ahead = read_bytes / max_bytes_s - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(min(ahead, 1.0))
                        if progress is not None:  # how far into the file (holes count as done)
                            progress(out_off + n, total)
            for off, blob in image.header.trailers:
                _pwrite_all(fd, blob, off)
                written += len(blob)
            os.ftruncate(fd, total)
            os.fsync(fd)
            if progress is not None:
                progress(total, total)
    finally:
        os.close(fd)
    stats.ended_ns = time.time_ns()
    stats.seconds = time.monotonic() - t0
    stats.stream_bytes = total
    stats.written_bytes = written
    stats.zero_pages_skipped = zero_pages
    stats.extra = {"data_read_bytes": read_bytes}
    return stats


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# -- the daemon's bookkeeping -------------------------------------------------------------


class HoldRegistry:
    """Images held at once in this daemon (the cap of the memory guard). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, HeldImage] = {}

    def count(self) -> int:
        with self._lock:
            return len(self._held)

    def holds(self, crash_id: int) -> bool:
        with self._lock:
            return crash_id in self._held

    def add(self, crash_id: int, image: HeldImage) -> None:
        with self._lock:
            self._held[crash_id] = image

    def release(self, crash_id: int) -> None:
        with self._lock:
            image = self._held.pop(crash_id, None)
        if image is not None:
            image.close()

    def release_all(self) -> list[int]:
        with self._lock:
            ids = list(self._held)
        for i in ids:
            self.release(i)
        return ids


def lost_image_note(row: Any) -> str | None:
    """For an interrupted crash that was captured in ``hold`` mode and never finished: what to say.

    ``row`` is a catalogue row (``capture``, ``dump_path``). None when it does not apply.
    """
    capture = getattr(row, "capture", None) or {}
    if capture.get("mode") not in ("hold", "copy") or getattr(row, "dump_path", None):
        return None
    if not capture.get("held"):
        return None
    return ("held image lost before it was written (the daemon stopped while holding it); "
            "the guest's memory is gone, the triage taken from the held image is kept")


def triage_held(image: HeldImage) -> tuple[dict[str, Any] | None, str | None]:
    """Triage the held image as if it were the finished dump: (summary, error); never raises."""
    try:
        from vmcrash.vmcore._elf import ElfReader
        from vmcrash.vmcore._open import Dump
        from vmcrash.vmcore._triage import analyze_dump

        reader = ElfReader(HeldElfSource(image))  # type: ignore[arg-type]
        return analyze_dump(Dump(reader)).to_dict(), None
    except VmcrashError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot read the held image: {exc.strerror}"


# -- doctor ---------------------------------------------------------------------------------

#: What moving a domain's RAM into a shared memfd costs; doctor prints it with the fix.
MEMFD_TRADEOFFS = (
    "KSM does not merge shared memory (a host relying on KSM page sharing loses it for this guest)",
    "transparent huge pages for shmem follow /sys/kernel/mm/transparent_hugepage/shmem_enabled "
    "(now: {thp}), not the anonymous THP setting",
    "guest RAM counts as Shmem on the host; the host memory guard keeps staging.hold_headroom_mib free "
    "while an image is held",
)


def capture_plan(xml: str, requested: str, recovery: str, fallback: str) -> tuple[str, str, str]:
    """(memory backing, the capture mode a panic will get, why) for doctor. Pure (the memory guard,
    which depends on the moment, is named but not evaluated)."""
    backing = backing_of_xml(xml)
    choice = choose_mode(requested=requested, recovery=recovery, backing=backing, fallback=fallback,
                         guard=(True, "if the host memory guard allows at the time"))
    return backing, choice.mode.value, choice.reason


def with_memfd_backing(xml: str) -> tuple[str, str | None]:
    """The domain XML with ``<memoryBacking><source type='memfd'/><access mode='shared'/>``. Pure.

    Returns ``(xml, None)`` unchanged when the RAM is already shared, or when the domain uses
    hugepages or a file source (kept as they are: only ``access mode='shared'`` would be needed,
    which doctor names instead of rewriting).
    """
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    if backing_of_xml(xml) != "anonymous":
        return xml, None
    mb = root.find("memoryBacking")
    if mb is None:
        mb = ET.Element("memoryBacking")
        # libvirt's schema wants memoryBacking after memory/currentMemory; insert after them
        idx = max([i + 1 for i, el in enumerate(root) if el.tag in ("memory", "currentMemory", "maxMemory")],
                  default=len(root))
        root.insert(idx, mb)
    if mb.find("hugepages") is not None or (mb.find("source") is not None
                                            and mb.find("source").get("type") == "file"):  # type: ignore[union-attr]
        return xml, None
    for tag in ("source", "access"):
        old = mb.find(tag)
        if old is not None:
            mb.remove(old)
    ET.SubElement(mb, "source", {"type": "memfd"})
    ET.SubElement(mb, "access", {"mode": "shared"})
    return ET.tostring(root, encoding="unicode"), "guest RAM moved to a shared memfd (capture mode hold)"


def shmem_thp_setting(path: str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled") -> str:
    """The bracketed value of ``shmem_enabled`` (e.g. ``never``), or ``unknown``."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else text.strip() or "unknown"

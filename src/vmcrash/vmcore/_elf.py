"""Reader of ELF core dumps as QEMU writes them (``dump-guest-memory`` without paging).

Each ``PT_LOAD`` maps guest-physical ``[p_paddr, p_paddr + p_memsz)`` to the file at ``p_offset``
(the part past ``p_filesz`` reads as zeros); ``PT_NOTE`` segments hold the notes. With more than
65534 program headers the real count is in section header 0's ``sh_info`` (``PN_XNUM``). A sparse
file (holes where pages are zero) reads exactly like the full one.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vmcrash.errors import DumpFormatError, GuestMemoryError

from ._base import DumpReader
from ._io import DumpFile, unpack_from
from ._notes import MAX_NOTES_BYTES, Note, iter_notes

__all__ = ["ELF_MAGIC", "ElfReader", "LoadSegment", "parse_elf_headers"]

ELF_MAGIC = b"\x7fELF"
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
PT_LOAD = 1
PT_NOTE = 4
ET_CORE = 4
EM_X86_64 = 62
PN_XNUM = 0xFFFF
MAX_PHDRS = 262_144
_PAGE = 4096


@dataclass(frozen=True)
class LoadSegment:
    """One ``PT_LOAD``: guest-physical ``paddr`` .. ``paddr + mem_size`` at file ``offset``."""

    paddr: int
    mem_size: int
    file_size: int
    offset: int


@dataclass(frozen=True)
class ElfLayout:
    machine: int
    loads: tuple[LoadSegment, ...]
    notes: tuple[tuple[int, int], ...]  # (file offset, size)


def parse_elf_headers(f: DumpFile) -> ElfLayout:
    """Read and validate the ELF header and program headers of a core file.

    :raises DumpFormatError: not a 64-bit little-endian core, headers out of the file, a segment
        past the end of the file (truncated dump).
    """
    path = f.path
    ehdr = f.read_upto(0, _EHDR.size)
    if len(ehdr) < _EHDR.size:
        raise DumpFormatError("ELF header is cut short", path=path, offset=0)
    (ident, e_type, machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, shnum, _shstrndx) = unpack_from(_EHDR, ehdr, what="ELF header", path=path)
    if ident[:4] != ELF_MAGIC:
        raise DumpFormatError("not an ELF file", path=path, offset=0)
    if ident[4] != 2 or ident[5] != 1:
        raise DumpFormatError("only 64-bit little-endian ELF dumps are supported", path=path, offset=4)
    if e_type != ET_CORE:
        raise DumpFormatError(f"ELF type {e_type} is not a core dump", path=path, offset=16)
    if phnum == PN_XNUM:
        if shoff == 0 or shentsize < _SHDR.size or shnum == 0:
            raise DumpFormatError("ELF uses PN_XNUM but has no section header", path=path, offset=0)
        shdr = f.read(shoff, _SHDR.size)
        phnum = unpack_from(_SHDR, shdr, what="section header 0", path=path, file_offset=shoff)[7]
    if phnum == 0:
        raise DumpFormatError("ELF dump has no program headers", path=path, offset=0)
    if phnum > MAX_PHDRS:
        raise DumpFormatError(f"ELF dump claims {phnum} program headers", path=path, offset=0)
    if phentsize < _PHDR.size:
        raise DumpFormatError(f"ELF program header size {phentsize} is too small", path=path, offset=0)
    table = f.read(phoff, phnum * phentsize)
    loads: list[LoadSegment] = []
    notes: list[tuple[int, int]] = []
    size = f.size_bytes
    for i in range(phnum):
        (p_type, _pflags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align) = _PHDR.unpack_from(
            table, i * phentsize)
        where = phoff + i * phentsize
        if p_type == PT_NOTE:
            if p_filesz > MAX_NOTES_BYTES:
                raise DumpFormatError(f"note segment of {p_filesz} bytes", path=path, offset=where)
            if p_offset + p_filesz > size:
                raise DumpFormatError("file is truncated: note segment ends past the end of the file",
                                      path=path, offset=where)
            notes.append((p_offset, p_filesz))
        elif p_type == PT_LOAD:
            if p_filesz > p_memsz:
                raise DumpFormatError("PT_LOAD with p_filesz > p_memsz", path=path, offset=where)
            if p_paddr + p_memsz > 1 << 52:
                raise DumpFormatError(f"PT_LOAD beyond 2^52 (paddr {p_paddr:#x})", path=path, offset=where)
            if p_offset + p_filesz > size:
                raise DumpFormatError(
                    f"file is truncated: memory at {p_paddr:#x} needs {p_offset + p_filesz} bytes, "
                    f"file has {size}", path=path, offset=where)
            if p_memsz:
                loads.append(LoadSegment(p_paddr, p_memsz, p_filesz, p_offset))
    loads.sort(key=lambda s: s.paddr)
    for a, b in itertools.pairwise(loads):
        if b.paddr < a.paddr + a.mem_size:
            raise DumpFormatError(f"PT_LOAD segments overlap at {b.paddr:#x}", path=path)
    return ElfLayout(machine=machine, loads=tuple(loads), notes=tuple(notes))


class ElfReader(DumpReader):
    """A QEMU memory-only ELF core (also: the sparse ELF that vmcrash streams)."""

    format = "elf"

    def __init__(self, f: DumpFile) -> None:
        super().__init__()
        self._f = f
        self.path = f.path
        self.page_size_bytes = _PAGE
        self.layout = parse_elf_headers(f)
        self._starts = [s.paddr for s in self.layout.loads]
        self._notes: list[Note] | None = None

    @property
    def machine(self) -> int:
        return self.layout.machine

    @property
    def bytes_read(self) -> int:
        return self._f.bytes_read

    @property
    def file_size_bytes(self) -> int:
        return self._f.size_bytes

    def close(self) -> None:
        self._f.close()

    def notes(self) -> list[Note]:
        if self._notes is None:
            out: list[Note] = []
            total = 0
            for offset, size in self.layout.notes:
                total += size
                if total > MAX_NOTES_BYTES:
                    raise DumpFormatError("note segments too large in total", path=self.path, offset=offset)
                out.extend(iter_notes(self._f.read(offset, size), path=self.path, base_offset=offset))
            self._notes = out
        return self._notes

    def vmcoreinfo_raw(self) -> bytes | None:
        for note in self.notes():
            if note.name == b"VMCOREINFO":
                return note.desc
        return None

    def _segment(self, paddr: int) -> LoadSegment | None:
        i = bisect.bisect_right(self._starts, paddr) - 1
        if i < 0:
            return None
        seg = self.layout.loads[i]
        return seg if paddr < seg.paddr + seg.mem_size else None

    def page_present(self, pfn: int) -> bool:
        start = pfn * _PAGE
        i = bisect.bisect_right(self._starts, start + _PAGE - 1) - 1
        if i < 0:
            return False
        seg = self.layout.loads[i]
        return seg.paddr + seg.mem_size > start

    def present_ranges(self) -> Iterator[tuple[int, int]]:
        cur: tuple[int, int] | None = None
        for seg in self.layout.loads:
            start, end = seg.paddr // _PAGE, -(-(seg.paddr + seg.mem_size) // _PAGE)
            if cur is not None and start <= cur[1]:
                cur = (cur[0], max(cur[1], end))
                continue
            if cur is not None:
                yield cur
            cur = (start, end)
        if cur is not None:
            yield cur

    def stored_ranges(self) -> Iterator[tuple[int, int]]:
        """Pages with file bytes: a segment's tail past ``p_filesz`` is zeros and is left out."""
        cur: tuple[int, int] | None = None
        for seg in self.layout.loads:
            if not seg.file_size:
                continue
            start, end = seg.paddr // _PAGE, -(-(seg.paddr + seg.file_size) // _PAGE)
            if cur is not None and start <= cur[1]:
                cur = (cur[0], max(cur[1], end))
                continue
            if cur is not None:
                yield cur
            cur = (start, end)
        if cur is not None:
            yield cur

    def read_pages(self, pfn: int, count: int) -> list[bytes]:
        base = pfn * _PAGE
        seg = self._segment(base)
        if seg is not None and base + count * _PAGE <= seg.paddr + seg.file_size:
            data = self._f.read(seg.offset + base - seg.paddr, count * _PAGE)
            return [data[i:i + _PAGE] for i in range(0, len(data), _PAGE)]
        return super().read_pages(pfn, count)

    def _load_page_head(self, pfn: int, size: int) -> bytes:
        seg = self._segment(pfn * _PAGE)
        if seg is not None and pfn * _PAGE + size <= seg.paddr + seg.file_size:
            return self._f.read(seg.offset + pfn * _PAGE - seg.paddr, size)
        return self._load_page(pfn)

    def _load_page(self, pfn: int) -> bytes:
        base = pfn * _PAGE
        if not self.page_present(pfn):
            raise GuestMemoryError("physical page not in the dump", address=base)
        out = bytearray(_PAGE)
        i = bisect.bisect_right(self._starts, base + _PAGE - 1) - 1
        # A page may be covered by up to a few (unaligned) segments; walk left while they overlap.
        while i >= 0:
            seg = self.layout.loads[i]
            if seg.paddr + seg.mem_size <= base:
                break
            lo = max(base, seg.paddr)
            hi = min(base + _PAGE, seg.paddr + seg.file_size)
            if hi > lo:
                out[lo - base:hi - base] = self._f.read(seg.offset + (lo - seg.paddr), hi - lo)
            i -= 1
        return bytes(out)

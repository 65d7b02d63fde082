"""Where everything goes in a seekable kdump-compressed file, and the bytes of its headers.

Output layout (what :mod:`._kdump` reads, makedumpfile's ``diskdump_mod.h``), header version 6::

    block 0        disk_dump_header: utsname, status = codec bit, block size, bitmap size, nr_cpus
    block 1..      kdump_sub_header (phys_base, dump_level, 64-bit max_mapnr), then the ELF notes
                   (per-vCPU PRSTATUS/QEMU and VMCOREINFO notes as the source had them), then
                   VMCOREINFO text
    bitmaps        bitmap 1 = pages the source has, bitmap 2 = pages stored (zero pages excluded)
    descriptors    24 bytes per stored page; room is reserved for every present page, so data can
                   be appended in one pass (the unused tail of the area is a hole)
    data           each page compressed alone, or raw when it does not shrink

Pure but for :func:`kdump_headers`, which may read the kernel's utsname through the source dump.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass

from vmcrash.errors import GuestMemoryError

from ._base import DumpReader
from ._io import MASK64
from ._kdump import DISK_DUMP_HEADER, PAGE_DESC, SUB_HEADER, KdumpReader
from ._notes import NT_PRSTATUS, Note
from ._vmcoreinfo import VmcoreInfo

__all__ = ["Layout", "kdump_headers", "plan_layout", "present_bitmap", "serialize_notes"]

log = logging.getLogger(__name__)


def serialize_notes(notes: list[Note]) -> bytes:
    """ELF64 note area for ``notes`` (pure; names NUL-terminated, 4-byte padding)."""
    out = bytearray()
    for n in notes:
        name = n.name + b"\0"
        out += struct.pack("<III", len(name), len(n.desc), n.type)
        out += name + bytes(-len(name) % 4)
        out += n.desc + bytes(-len(n.desc) % 4)
    return bytes(out)


@dataclass(frozen=True)
class Layout:
    """Offsets and sizes of one output file (bytes; ``block_size`` = the dump's page size)."""

    block_size: int
    max_mapnr: int
    n_present: int
    sub_hdr_blocks: int
    bitmap_blocks: int
    note_offset: int
    note_size: int
    vmci_offset: int
    vmci_size: int

    @property
    def bitmap_offset(self) -> int:
        return self.block_size * (1 + self.sub_hdr_blocks)

    @property
    def bitmap_half(self) -> int:
        return self.bitmap_blocks * self.block_size // 2

    @property
    def desc_offset(self) -> int:
        return self.bitmap_offset + self.bitmap_blocks * self.block_size

    @property
    def data_offset(self) -> int:
        end = self.desc_offset + self.n_present * PAGE_DESC.size
        return -(-end // self.block_size) * self.block_size


def plan_layout(reader: DumpReader, ranges: list[tuple[int, int]], notes_blob: bytes, vmci: bytes) -> Layout:
    """The layout for the present pfn ``ranges`` of ``reader``, its notes and VMCOREINFO text."""
    bs = reader.page_size_bytes
    max_mapnr = ranges[-1][1] if ranges else 0
    note_offset = bs + SUB_HEADER.size
    vmci_offset = note_offset + len(notes_blob)
    sub_bytes = SUB_HEADER.size + len(notes_blob) + len(vmci)
    half_blocks = max(1, -(-max_mapnr // (8 * bs)))
    return Layout(block_size=bs, max_mapnr=max_mapnr, n_present=sum(e - s for s, e in ranges),
                  sub_hdr_blocks=max(1, -(-sub_bytes // bs)), bitmap_blocks=2 * half_blocks,
                  note_offset=note_offset, note_size=len(notes_blob), vmci_offset=vmci_offset,
                  vmci_size=len(vmci))


def _utsname(reader: DumpReader, vi: VmcoreInfo | None) -> list[bytes]:
    uts = [b"Linux", b"", b"", b"", b"x86_64", b""]
    if isinstance(reader, KdumpReader) and any(reader.header.utsname):
        return list(reader.header.utsname)
    if vi is None:
        return uts
    if vi.osrelease:
        uts[2] = vi.osrelease
    try:
        from ._triage import read_utsname
        from ._x86 import KernelMemory

        got = read_utsname(KernelMemory(reader, vi), vi)
        return [got[i] or uts[i] for i in range(6)]
    except GuestMemoryError as exc:
        log.info("utsname for the kdump header not readable: %s", exc)
        return uts


def kdump_headers(reader: DumpReader, lay: Layout, codec_flag: int, notes: list[Note], vi: VmcoreInfo | None,
                  exclude_zero: bool, exclude_free: bool = False) -> bytes:
    """Block 0 (disk_dump_header) padded to a block, followed by the kdump_sub_header."""
    uts = b"".join(f[:64].ljust(65, b"\0") for f in _utsname(reader, vi))
    nr_cpus = sum(1 for n in notes if n.name == b"CORE" and n.type == NT_PRSTATUS)
    head = DISK_DUMP_HEADER.pack(
        b"KDUMP   ", 6, uts, int(time.time()), 0, codec_flag, lay.block_size, lay.sub_hdr_blocks,
        lay.bitmap_blocks, min(lay.max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0, nr_cpus)
    phys_base = 0
    if vi is not None and "phys_base" in vi.numbers:
        phys_base = vi.numbers["phys_base"] & MASK64
    elif isinstance(reader, KdumpReader):
        phys_base = reader.header.phys_base
    dump_level = (1 if exclude_zero else 0) | (16 if exclude_free else 0)
    sub = SUB_HEADER.pack(phys_base, dump_level, 0, 0, 0,
                          lay.vmci_offset if lay.vmci_size else 0, lay.vmci_size,
                          lay.note_offset if lay.note_size else 0, lay.note_size, 0, 0, 0, 0, lay.max_mapnr)
    return head.ljust(lay.block_size, b"\0") + sub


def present_bitmap(lay: Layout, ranges: list[tuple[int, int]]) -> bytearray:
    """Bitmap 1: a bit per pfn of ``ranges`` (the pages the source has)."""
    bm = bytearray(lay.bitmap_half)
    for start, end in ranges:
        pfn = start
        while pfn < end and pfn & 7:
            bm[pfn >> 3] |= 1 << (pfn & 7)
            pfn += 1
        full_end = end & ~7
        if pfn < full_end:
            bm[pfn >> 3:full_end >> 3] = b"\xff" * ((full_end - pfn) >> 3)
            pfn = full_end
        while pfn < end:
            bm[pfn >> 3] |= 1 << (pfn & 7)
            pfn += 1
    return bm

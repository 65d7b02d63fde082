"""Independent builders of dump files and guest memory for the vmcore unit tests.

Written from the format descriptions (ELF64 core, makedumpfile's diskdump_mod.h, the flattened
stream, Linux's printk_ringbuffer.h and kallsyms layout), not from vmcrash.vmcore's code, so the
readers are checked against something they did not produce.
"""

from __future__ import annotations

import random
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vmcrash.errors import GuestMemoryError
from vmcrash.vmcore._base import DumpReader
from vmcrash.vmcore._notes import Note

PAGE = 4096
KMAP = 0xFFFFFFFF80000000


# -- notes ----------------------------------------------------------------------------------------


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    n = name + b"\0"
    return (struct.pack("<III", len(n), len(desc), ntype) + n + b"\0" * (-len(n) % 4)
            + desc + b"\0" * (-len(desc) % 4))


PRSTATUS_ORDER = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
                  "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
                  "es", "fs", "gs")


def prstatus(regs: dict[str, int], pid: int = 1) -> bytes:
    """336-byte x86-64 elf_prstatus with ``regs`` (others 0)."""
    head = bytearray(112)
    struct.pack_into("<i", head, 32, pid)
    body = struct.pack("<27Q", *(regs.get(r, 0) for r in PRSTATUS_ORDER))
    return bytes(head) + body + struct.pack("<i", 1) + b"\0" * 4


def qemu_cpu_state(gprs: dict[str, int], *, gs_base: int = 0, crs: tuple[int, ...] = (0,) * 5,
                   kernel_gs_base: int = 0) -> bytes:
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
             "r13", "r14", "r15", "rip", "rflags")
    out = struct.pack("<II", 1, 440) + struct.pack("<18Q", *(gprs.get(n, 0) for n in names))
    for seg in ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt"):
        out += struct.pack("<IIIIQ", 0, 0, 0, 0, gs_base if seg == "gs" else 0)
    out += struct.pack("<5Q", *crs) + struct.pack("<Q", kernel_gs_base)
    assert len(out) == 440
    return out


# -- ELF --------------------------------------------------------------------------------------------


def build_elf(segments: list[tuple[int, bytes]], notes: bytes = b"", *, memsz_extra: int = 0) -> bytes:
    """ELF64 core: one PT_NOTE then one PT_LOAD per (paddr, data), data page-aligned in the file."""
    phnum = 1 + len(segments)
    phoff = 64
    notes_off = phoff + 56 * phnum
    data_off = -(-(notes_off + len(notes)) // PAGE) * PAGE
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 4, 62, 1, 0, phoff, 0, 0,
                       64, 56, phnum, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_off, 0, 0, len(notes), len(notes), 0)
    body = b""
    off = data_off
    for paddr, data in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 0, off, 0, paddr, len(data), len(data) + memsz_extra, 0)
        body += data
        off += len(data)
    head = (ehdr + phdrs + notes).ljust(data_off, b"\0")
    return head + body


# -- kdump ------------------------------------------------------------------------------------------


def build_kdump(pages: dict[int, bytes], max_mapnr: int, *, vmcoreinfo: bytes = b"", notes: bytes = b"",
                excluded: Iterable[int] = (), raw: Iterable[int] = (), dump_level: int = 1,
                compress=lambda b: zlib.compress(b, 6), flag: int = 1, version: int = 6) -> bytes:
    """A seekable kdump-compressed file. ``excluded`` pfns are present (bitmap 1) but not dumped."""
    excluded = set(excluded)
    raw = set(raw)
    present = sorted(set(pages) | excluded)
    sub_payload = notes + vmcoreinfo
    sub_blocks = max(1, -(-(104 + len(sub_payload)) // PAGE))
    half = max(PAGE, -(-(max_mapnr // 8) // PAGE) * PAGE)
    bitmap_blocks = 2 * half // PAGE
    b1, b2 = bytearray(half), bytearray(half)
    for p in present:
        b1[p // 8] |= 1 << (p % 8)
    dumped = [p for p in present if p not in excluded]
    for p in dumped:
        b2[p // 8] |= 1 << (p % 8)
    desc_off = PAGE * (1 + sub_blocks) + 2 * half
    data_off = desc_off + 24 * len(dumped)
    descs, data = b"", b""
    for p in dumped:
        page = pages[p]
        blob, fl = compress(page), flag
        if p in raw or len(blob) >= PAGE:
            blob, fl = page, 0
        descs += struct.pack("<qIIQ", data_off + len(data), len(blob), fl, 0)
        data += blob
    uts = b"".join(x.ljust(65, b"\0") for x in (b"Linux", b"node", b"6.1.0", b"#1", b"x86_64", b""))
    head = struct.pack("<8si390s6xqqIiiIIIIIIi", b"KDUMP   ", version, uts, 0, 0, flag, PAGE, sub_blocks,
                       bitmap_blocks, min(max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0, 1)
    note_off = PAGE + 104
    vmci_off = note_off + len(notes)
    sub = struct.pack("<QiiQQqQqQqQQQQ", 0, dump_level, 0, 0, 0, vmci_off if vmcoreinfo else 0, len(vmcoreinfo),
                      note_off if notes else 0, len(notes), 0, 0, 0, 0, max_mapnr)
    out = head.ljust(PAGE, b"\0") + (sub + sub_payload).ljust(PAGE * sub_blocks, b"\0") + bytes(b1) + bytes(b2)
    return out + descs + data


def flatten(seekable: bytes, *, chunk: int = 5000, seed: int = 1, duplicate_first: bool = False) -> bytes:
    """The flattened stream of ``seekable``: records of ``chunk`` bytes in shuffled order."""
    out = bytearray(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1))
    out = out.ljust(4096, b"\0")
    pieces = [(off, seekable[off:off + chunk]) for off in range(0, len(seekable), chunk)]
    rng = random.Random(seed)
    rng.shuffle(pieces)
    if duplicate_first:
        # an early stale record for offset 0, overwritten by the later real one
        pieces.insert(0, (0, b"\xee" * min(chunk, len(seekable))))
    for off, data in pieces:
        out += struct.pack(">qq", off, len(data)) + data
    out += struct.pack(">qq", -1, -1)
    return bytes(out)


# -- guest memory -------------------------------------------------------------------------------------


class MemReader(DumpReader):
    """Guest-physical memory from a dict of pages (absent pfns raise GuestMemoryError)."""

    format = "test"
    path = "<memory>"

    def __init__(self, pages: dict[int, bytes | bytearray] | None = None, vmcoreinfo: bytes | None = None,
                 notes: list[Note] | None = None) -> None:
        super().__init__()
        self.pages: dict[int, bytearray] = {k: bytearray(v) for k, v in (pages or {}).items()}
        self._vmci = vmcoreinfo
        self._notes = notes or []

    def write(self, paddr: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            pfn, off = divmod(paddr + i, PAGE)
            self.pages.setdefault(pfn, bytearray(PAGE))[off] = byte

    def write_fast(self, paddr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            pfn, off = divmod(paddr + pos, PAGE)
            n = min(PAGE - off, len(data) - pos)
            self.pages.setdefault(pfn, bytearray(PAGE))[off:off + n] = data[pos:pos + n]
            pos += n

    def _load_page(self, pfn: int) -> bytes:
        if pfn not in self.pages:
            raise GuestMemoryError("not in test memory", address=pfn * PAGE)
        return bytes(self.pages[pfn])

    def page_present(self, pfn: int) -> bool:
        return pfn in self.pages

    def present_ranges(self):
        for p in sorted(self.pages):
            yield (p, p + 1)

    def notes(self) -> list[Note]:
        return self._notes

    def vmcoreinfo_raw(self) -> bytes | None:
        return self._vmci

    @property
    def bytes_read(self) -> int:
        return 0

    @property
    def file_size_bytes(self) -> int:
        return 0


# -- printk ring buffer (Linux 6.1 layout, offsets as its VMCOREINFO lists them) -------------------------

PRB_VMCOREINFO_61 = b"""SIZE(printk_ringbuffer)=88
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
OFFSET(printk_ringbuffer.fail)=80
SIZE(prb_desc_ring)=48
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.tail_id)=32
SIZE(prb_desc)=24
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
SIZE(prb_data_blk_lpos)=16
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
SIZE(printk_info)=88
OFFSET(printk_info.seq)=0
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.dev_info)=24
SIZE(dev_printk_info)=64
OFFSET(dev_printk_info.subsystem)=0
LENGTH(printk_info_subsystem)=16
OFFSET(dev_printk_info.device)=16
LENGTH(printk_info_device)=48
SIZE(prb_data_ring)=32
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.head_lpos)=16
OFFSET(prb_data_ring.tail_lpos)=24
"""


def build_prb(mem: MemReader, records: list[tuple[int, int, int, int, bytes]], *, count_bits: int = 4,
              size_bits: int = 9, first_id: int = 0, phys_base: int = 0x1000000,
              prb_vaddr: int = KMAP + 0x100000, exact_fit_wraps: bool = True) -> bytes:
    """Lay a 6.1 printk ring buffer in ``mem``; return the VMCOREINFO text describing it.

    ``records`` are (seq, ts_nsec, level, caller_id, text) in order; the text ring wraps when full,
    older records being overwritten as the kernel would (only the newest that fit stay valid).
    ``exact_fit_wraps``: Linux 6.1 moves a block that would end exactly at the end of the ring to
    the start; later kernels keep it at the end.
    Kernel image addresses map to physical ``vaddr - KMAP + phys_base``.
    """
    count = 1 << count_bits
    dsize = 1 << size_bits
    descs_v = prb_vaddr + 0x1000
    infos_v = descs_v + 24 * count
    data_v = infos_v + 88 * count + 64
    def phys(v: int) -> int:
        return v - KMAP + phys_base

    descs = bytearray(24 * count)
    infos = bytearray(88 * count)
    data = bytearray(dsize)
    lpos = 0
    placed = []  # (rid, data index)
    mask = (1 << 62) - 1
    for k, (seq, ts, level, caller, text) in enumerate(records):
        rid = (first_id + k) & mask
        need = (8 + len(text) + 7) & ~7
        begin = lpos
        end = (begin % dsize) + need
        if end > dsize or (exact_fit_wraps and end == dsize):
            # Linux: the block wraps; its data sits at the start of the next lap, ``begin`` keeps
            # the old position (the id is stored there too) and ``next`` counts from the new lap.
            if begin % dsize + 8 <= dsize:
                data[begin % dsize:begin % dsize + 8] = struct.pack("<Q", rid)
            nxt = (begin // dsize + 1) * dsize + need
            idx = 0
        else:
            nxt = begin + need
            idx = begin % dsize
        data[idx:idx + 8] = struct.pack("<Q", rid)
        data[idx + 8:idx + 8 + len(text)] = text
        lpos = nxt
        struct.pack_into("<QQQ", descs, (rid % count) * 24, (2 << 62) | rid, begin, nxt)
        i = (rid % count) * 88
        infos[i:i + 88] = bytes(88)
        struct.pack_into("<QQHBBI", infos, i, seq, ts, len(text), 0, (level << 5) | 2, caller)
        placed.append((rid, idx))
    # The tail is the oldest record whose descriptor and text block are both still intact.
    head_id = placed[-1][0] if placed else (first_id - 1) & mask
    tail_id = first_id
    for k in range(len(placed) - 1, -1, -1):
        rid, idx = placed[k]
        if k <= len(placed) - 1 - count or data[idx:idx + 8] != struct.pack("<Q", rid):
            break
        tail_id = rid
    prb = bytearray(88)
    struct.pack_into("<IxxxxQQQQ", prb, 0, count_bits, descs_v, infos_v, head_id, tail_id)
    struct.pack_into("<IxxxxQQQ", prb, 48, size_bits, data_v, lpos, 0)
    prb_ptr_v = prb_vaddr - 0x100
    mem.write_fast(phys(prb_ptr_v), struct.pack("<Q", prb_vaddr))
    mem.write_fast(phys(prb_vaddr), bytes(prb))
    mem.write_fast(phys(descs_v), bytes(descs))
    mem.write_fast(phys(infos_v), bytes(infos))
    mem.write_fast(phys(data_v), bytes(data))
    return (f"OSRELEASE=6.1.0-test\nPAGESIZE=4096\nSYMBOL(prb)={prb_ptr_v:x}\nNUMBER(phys_base)={phys_base}\n"
            .encode() + PRB_VMCOREINFO_61)


# -- lab dumps --------------------------------------------------------------------------------------------

CONSOLE_LINE = re.compile(r"^\[\s*\d+\.\d{6}\] ")


@dataclass(frozen=True)
class CrashedGuest:
    """Dumps of one crashed lab guest and what its console showed."""

    hostname: str
    kernel_release: str
    elf: Path
    kdump_flat: Path
    console: str

    def kernel_lines(self) -> list[str]:
        """The console lines that are kernel messages: exactly those starting with ``[ seconds]``.

        The init script's ``echo`` lines (``vmcrash-lab: ...``) go to the console without a
        timestamp and are not in the kernel log, so they are left out here.
        """
        return [line for line in self.console.splitlines() if CONSOLE_LINE.match(line)]

    def kernel_texts(self) -> list[str]:
        return [CONSOLE_LINE.sub("", line) for line in self.kernel_lines()]

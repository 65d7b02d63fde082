"""x86-64 translation over hand-built page tables: 4/5 levels, 1 GiB/2 MiB/4 KiB pages, phys_base < 0."""

from __future__ import annotations

import struct

import pytest
from vmcore_builders import KMAP, MemReader

from vmcrash.errors import GuestMemoryError
from vmcrash.vmcore import KernelMemory, parse_vmcoreinfo

P, PS = 1, 1 << 7  # present, page size
ROOT = 0x10000


def idx(vaddr: int, shift: int) -> int:
    return (vaddr >> shift) & 511


def entry(mem: MemReader, table: int, index: int, value: int) -> None:
    mem.write_fast(table + 8 * index, struct.pack("<Q", value))


def build(levels: int = 4, sme: int = 0) -> tuple[MemReader, KernelMemory]:
    mem = MemReader()
    # The kernel image: linked at KMAP + 16 MiB, loaded at physical 0 => phys_base = -16 MiB.
    top_v = KMAP + 0x1000000 + ROOT
    vi = parse_vmcoreinfo(
        f"NUMBER(phys_base)={-0x1000000}\nSYMBOL(init_top_pgt)={top_v:x}\n"
        f"NUMBER(pgtable_l5_enabled)={int(levels == 5)}\nNUMBER(sme_mask)={sme}\n".encode())
    mem.write_fast(ROOT, bytes(4096))
    shifts = (48, 39, 30, 21, 12) if levels == 5 else (39, 30, 21, 12)
    next_table = [0x20000]

    def table_for(vaddr: int, upto: int) -> int:
        """Walk/create tables down to the one whose entries map at ``upto`` shift."""
        t = ROOT
        for shift in shifts:
            if shift == upto:
                return t
            raw = struct.unpack_from("<Q", mem.read_page(t // 4096), (t % 4096) + 8 * idx(vaddr, shift))[0] \
                if t // 4096 in mem.pages else 0
            mem._cache.clear()
            if not raw & P:
                new = next_table[0]
                next_table[0] += 0x1000
                mem.write_fast(new, bytes(4096))
                entry(mem, t, idx(vaddr, shift), new | P | sme)
                t = new
            else:
                t = raw & 0x000FFFFFFFFFF000 & ~sme
        raise AssertionError

    # 1 GiB page: direct map at 0xffff888000000000 -> physical 0
    entry(mem, table_for(0xFFFF888000000000, 30), idx(0xFFFF888000000000, 30), 0 | P | PS | sme)
    # 2 MiB page: 0xffffc90000200000 -> physical 0x400000
    entry(mem, table_for(0xFFFFC90000200000, 21), idx(0xFFFFC90000200000, 21), 0x400000 | P | PS | sme)
    # 4 KiB page: 0xffffc90000001000 -> physical 0x5000
    entry(mem, table_for(0xFFFFC90000001000, 12), idx(0xFFFFC90000001000, 12), 0x5000 | P | sme)
    for addr, tag in ((0x5000, b"four-k"), (0x400000 + 0x1234, b"two-m"), (0x3000, b"one-g"),
                      (0x2000, b"image")):
        mem.write_fast(addr, tag)
    mem._cache.clear()
    return mem, KernelMemory(mem, vi)


@pytest.mark.parametrize("levels", [4, 5])
def test_translate(levels: int) -> None:
    _, km = build(levels)
    assert km.levels == levels
    assert km.vtop(KMAP + 0x1000000 + 0x2000) == 0x2000  # image, through negative phys_base
    assert km.read(KMAP + 0x1002000, 5) == b"image"
    assert km.read(0xFFFF888000003000, 5) == b"one-g"
    assert km.read(0xFFFFC90000201234, 5) == b"two-m"
    assert km.read(0xFFFFC90000001000, 6) == b"four-k"
    assert km.vtop(0xFFFF888000000000 + 0x12345678) == 0x12345678


def test_sme_mask_is_stripped() -> None:
    _, km = build(4, sme=1 << 47)
    assert km.read(0xFFFFC90000001000, 6) == b"four-k"


def test_unmapped_and_noncanonical() -> None:
    _, km = build()
    with pytest.raises(GuestMemoryError, match="not mapped"):
        km.read(0xFFFFC90000002000, 1)
    with pytest.raises(GuestMemoryError, match="non-canonical"):
        km.vtop(0x0000900000000000)
    with pytest.raises(GuestMemoryError, match="refusing"):
        km.read(0xFFFF888000000000, 1 << 30)


def test_page_table_outside_the_dump() -> None:
    mem, km = build()
    # Point the PML4 entry of 0xffffc9... at a table that is not in the dump.
    entry(mem, ROOT, idx(0xFFFFC90000001000, 39), 0x7000000 | P)
    mem._cache.clear()
    km._tlb.clear()
    with pytest.raises(GuestMemoryError, match="page table"):
        km.read(0xFFFFC90000001000, 1)


def test_cr3_fallback_without_vmcoreinfo() -> None:
    mem, _ = build()
    km = KernelMemory(mem, None, cr3=ROOT | 0x5)  # low CR3 bits are flags
    assert km.read(0xFFFF888000003000, 5) == b"one-g"
    with pytest.raises(GuestMemoryError, match="no way to translate"):
        KernelMemory(mem, None)

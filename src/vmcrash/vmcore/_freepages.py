"""Which guest pages were free at the crash: the buddy allocator's free blocks, from ``struct page``.

Like makedumpfile's dump level 16, compaction may leave free pages out: their content is stale
data of earlier allocations (a guest that was reset in place keeps the old boot's memory there),
never needed for triage. Everything is driven by VMCOREINFO (Linux ≥ 4.x layout, checked on 6.1):

* ``SYMBOL(mem_section)`` (the root array of SPARSEMEM_EXTREME), ``LENGTH(mem_section)`` roots,
  ``SIZE(mem_section)``, ``OFFSET(mem_section.section_mem_map)``, ``NUMBER(SECTION_SIZE_BITS)``;
* ``SIZE(page)``, ``OFFSET(page._mapcount)``, ``OFFSET(page.private)``,
  ``NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)``: a free block's head page has that ``_mapcount``
  (``page_type`` since 4.19) and its order in ``private``.

Guest memory is hostile: roots, sections and orders are bounded, and a value that makes no
sense is skipped (the page is then kept, never wrongly dropped beyond its own block).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmcrash.errors import GuestMemoryError

from ._io import MASK64
from ._vmcoreinfo import VmcoreInfo
from ._x86 import KernelMemory

__all__ = ["FreePages", "free_page_bitmap"]

#: Low bits of ``section_mem_map`` that are flags, not address (SECTION_MAP_LAST_BIT is bit 5 in 6.1;
#: older kernels use fewer bits, and masking more of a 64-byte-aligned address changes nothing).
_SECTION_FLAGS = 0x3F
_PRESENT = 1 << 0
_HAS_MEM_MAP = 1 << 1
#: MAX_ORDER is 11 (orders 0..10) on x86-64 6.1; allow a little more, refuse nonsense.
_MAX_ORDER = 12
_MAX_ROOTS = 1 << 16


@dataclass(frozen=True)
class FreePages:
    """A bitmap over pfns (bit set = free), the number of free pages, and the sections read."""

    bitmap: bytearray
    free_pages: int
    sections: int


def free_page_bitmap(km: KernelMemory, vi: VmcoreInfo, max_pfn: int) -> FreePages:
    """Free pages below ``max_pfn`` according to the guest's buddy allocator.

    :raises GuestMemoryError: VMCOREINFO lacks what the walk needs, or the mem_section roots are
        unreadable (then nothing can be excluded safely).
    """
    roots_addr = vi.symbol("mem_section")
    n_roots = vi.lengths.get("mem_section", 0)
    ms_size = vi.size("mem_section")
    map_off = vi.offset("mem_section.section_mem_map")
    section_bits = vi.number("SECTION_SIZE_BITS")
    page_size = vi.size("page")
    mapcount_off = vi.offset("page._mapcount")
    private_off = vi.offset("page.private")
    buddy = vi.number("PAGE_BUDDY_MAPCOUNT_VALUE")
    pagesize = vi.page_size_bytes or 4096
    if pagesize & (pagesize - 1) or not 4096 <= pagesize <= 65536:
        raise GuestMemoryError(f"implausible PAGESIZE {pagesize}")
    if not (0 < n_roots <= _MAX_ROOTS and 0 < ms_size <= 256 and 0 < page_size <= 256 and 12 < section_bits < 40
            and 0 <= mapcount_off <= page_size - 4 and 0 <= private_off <= page_size - 8):
        raise GuestMemoryError("implausible mem_section/page layout in VMCOREINFO")
    pfn_shift = section_bits - (pagesize.bit_length() - 1)
    pages_per_section = 1 << pfn_shift
    sections_per_root = max(1, pagesize // ms_size)
    max_section = (max_pfn + pages_per_section - 1) >> pfn_shift
    roots_needed = min(n_roots, (max_section + sections_per_root - 1) // sections_per_root)
    try:
        roots = struct.unpack(f"<{roots_needed}Q", km.read(roots_addr, 8 * roots_needed))
    except struct.error as exc:
        raise GuestMemoryError("mem_section roots unreadable", address=roots_addr) from exc
    bitmap = bytearray((max_pfn + 7) // 8)
    free = 0
    sections = 0
    for r, root in enumerate(roots):
        if not root:
            continue
        try:
            table = km.read(root, sections_per_root * ms_size)
        except GuestMemoryError:
            continue
        for j in range(sections_per_root):
            nr = r * sections_per_root + j
            start = nr << pfn_shift
            if start >= max_pfn:
                break
            (smap,) = struct.unpack_from("<Q", table, j * ms_size + map_off)
            if smap & (_PRESENT | _HAS_MEM_MAP) != (_PRESENT | _HAS_MEM_MAP):
                continue
            base = (smap & ~_SECTION_FLAGS) & MASK64
            count = min(pages_per_section, max_pfn - start)
            try:
                pages = km.read((base + start * page_size) & MASK64, count * page_size)
            except GuestMemoryError:
                continue
            sections += 1
            free += _mark_free(pages, count, start, page_size, mapcount_off, private_off, buddy, bitmap, max_pfn)
    return FreePages(bitmap, free, sections)


def _mark_free(pages: bytes, count: int, start: int, page_size: int, mapcount_off: int, private_off: int,
               buddy: int, bitmap: bytearray, max_pfn: int) -> int:
    """Mark the free blocks whose head pages are in ``pages`` (``count`` struct pages from pfn ``start``).

    Head pages are found by searching for the buddy marker's bytes (fast ``bytes.find``) at the
    ``_mapcount`` offset of a ``struct page``; each block is skipped as a whole.
    """
    marker = struct.pack("<I", buddy & 0xFFFFFFFF)
    privates = struct.Struct("<Q")
    limit = count * page_size
    free = 0
    pos = 0
    while True:
        hit = pages.find(marker, pos, limit)
        if hit < 0:
            break
        if (hit - mapcount_off) % page_size:
            pos = hit + 1
            continue
        i = (hit - mapcount_off) // page_size
        (order,) = privates.unpack_from(pages, i * page_size + private_off)
        n = 1 << order if order < _MAX_ORDER else 0
        pfn = start + i
        if not n or pfn % n:  # a buddy block is aligned to its size; anything else is no real head
            pos = hit + 1
            continue
        end = min(pfn + n, max_pfn, start + count)
        _set_bits(bitmap, pfn, end)
        free += end - pfn
        pos = (i + n) * page_size
    return free


def _set_bits(bitmap: bytearray, lo: int, hi: int) -> None:
    """Set bits [lo, hi) of ``bitmap``."""
    while lo < hi and lo & 7:
        bitmap[lo >> 3] |= 1 << (lo & 7)
        lo += 1
    full = (hi - lo) >> 3
    if full > 0:
        bitmap[lo >> 3:(lo >> 3) + full] = b"\xff" * full
        lo += full << 3
    while lo < hi:
        bitmap[lo >> 3] |= 1 << (lo & 7)
        lo += 1

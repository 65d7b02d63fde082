"""Free-page detection over literal struct page arrays (6.1 layout: 64-byte pages,
_mapcount at 48, private at 40, PAGE_BUDDY_MAPCOUNT_VALUE = -129)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from vmcrash.vmcore._freepages import _mark_free, _set_bits

PAGE, MAPCOUNT, PRIVATE, BUDDY = 64, 48, 40, -129


def pages(n: int, heads: dict[int, int], extra: dict[int, tuple[int, int]] | None = None) -> bytearray:
    buf = bytearray(n * PAGE)
    for i in range(n):
        struct.pack_into("<i", buf, i * PAGE + MAPCOUNT, -1)
    for i, order in heads.items():
        struct.pack_into("<i", buf, i * PAGE + MAPCOUNT, BUDDY)
        struct.pack_into("<Q", buf, i * PAGE + PRIVATE, order)
    for off, (value, size) in (extra or {}).items():
        buf[off:off + size] = value.to_bytes(size, "little", signed=value < 0)
    return buf


def bits(bm: bytearray, n: int) -> list[int]:
    return [p for p in range(n) if bm[p >> 3] >> (p & 7) & 1]


def test_heads_and_orders() -> None:
    bm = bytearray(16)
    buf = pages(128, {8: 3, 64: 5, 1: 0})
    free = _mark_free(bytes(buf), 128, 0, PAGE, MAPCOUNT, PRIVATE, BUDDY, bm, 128)
    assert bits(bm, 128) == [1, *range(8, 16), *range(64, 96)]
    assert free == 1 + 8 + 32


def test_impostors_are_ignored() -> None:
    bm = bytearray(16)
    # misaligned head (pfn 9, order 3), absurd order, and the marker bytes at a non-mapcount offset
    buf = pages(128, {9: 3, 32: 40}, extra={20 * PAGE + 4: (BUDDY, 4)})
    free = _mark_free(bytes(buf), 128, 0, PAGE, MAPCOUNT, PRIVATE, BUDDY, bm, 128)
    assert free == 0 and bits(bm, 128) == []


def test_section_offset_and_max_pfn() -> None:
    bm = bytearray(64)
    buf = pages(64, {0: 6})  # a 64-page block starting the section at pfn 256 ...
    free = _mark_free(bytes(buf), 64, 256, PAGE, MAPCOUNT, PRIVATE, BUDDY, bm, 300)
    assert free == 44 and bits(bm, 512) == list(range(256, 300))  # ... cut at max_pfn


@settings(max_examples=200)
@given(st.integers(0, 200), st.integers(0, 200))
def test_set_bits(lo: int, n: int) -> None:
    bm = bytearray(64)
    _set_bits(bm, lo, lo + n)
    assert bits(bm, 512) == list(range(lo, lo + n))

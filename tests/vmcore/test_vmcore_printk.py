"""The kernel log walkers over hand-laid ring buffers (6.1 lockless prb, and the 3.5-5.9 log_buf)."""

from __future__ import annotations

import struct

import pytest
from vmcore_builders import KMAP, MemReader, build_prb

from vmcrash.errors import GuestMemoryError
from vmcrash.vmcore import KernelMemory, PrintkRecord, for_each_record, parse_vmcoreinfo
from vmcrash.vmcore._printk import printk_layout, render_line_prefix


def walk(mem: MemReader, vmci: bytes) -> tuple[list[PrintkRecord], list[str]]:
    vi = parse_vmcoreinfo(vmci)
    problems: list[str] = []
    return list(for_each_record(KernelMemory(mem, vi), vi, problems=problems)), problems


def test_render_like_the_console() -> None:
    assert render_line_prefix(4_537_700_123) == "[    4.537700] "
    assert render_line_prefix(123_456_789_000_000) == "[123456.789000] "
    rec = PrintkRecord(seq=1, timestamp_ns=3_093_244_468, level=0, facility=0, flags=2, caller_id=94,
                       text=b"first\nsecond \xff")
    assert rec.render() == ["[    3.093244] first", "[    3.093244] second \ufffd"]
    assert rec.caller == "T94"
    assert PrintkRecord(1, 0, 0, 0, 0, 0x80000003, b"").caller == "C3"


def test_prb_in_order_with_metadata() -> None:
    mem = MemReader()
    recs = [(i, 1000 * i, i % 8, 0x80000001 if i == 2 else 7, f"line {i}".encode()) for i in range(5)]
    recs.append((5, 9000, 4, 7, b"multi\nline record"))
    records, problems = walk(mem, build_prb(mem, recs, count_bits=4, size_bits=10))
    assert problems == []
    assert [(r.seq, r.timestamp_ns, r.level, r.caller_id, r.text) for r in records] == \
        [(s, t, lv, c, x) for s, t, lv, c, x in recs]
    assert records[2].caller == "C1"
    assert records[5].lines() == [b"multi", b"line record"]


@pytest.mark.parametrize("exact_fit_wraps", [True, False])
@pytest.mark.parametrize("first_id", [0, (1 << 62) - 5])
def test_prb_wraps_text_and_ids(exact_fit_wraps: bool, first_id: int) -> None:
    mem = MemReader()
    recs = [(i, i, 6, 1, (b"%03d" % i) * (1 + i % 5)) for i in range(100)]
    records, problems = walk(mem, build_prb(mem, recs, count_bits=5, size_bits=9, first_id=first_id,
                                            exact_fit_wraps=exact_fit_wraps))
    assert problems == []
    seqs = [r.seq for r in records]
    assert seqs == list(range(seqs[0], 100)) and len(seqs) >= 5
    assert all(r.text == recs[r.seq][4] for r in records)


def test_prb_corrupt_block_is_skipped_not_fatal() -> None:
    mem = MemReader()
    vmci = build_prb(mem, [(i, i, 6, 1, b"message %d" % i) for i in range(6)], count_bits=4, size_bits=10)
    vi = parse_vmcoreinfo(vmci)
    km = KernelMemory(mem, vi)
    prb = km.u64(vi.symbol("prb"))
    data = km.u64(prb + 48 + 8)
    phys = km.vtop(data)
    mem.write_fast(phys, struct.pack("<Q", 12345))  # the first block's id no longer matches
    mem._cache.clear()
    records, problems = walk(mem, vmci)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert problems == ["kernel log: 1 record(s) with corrupt text blocks were skipped"]


def test_prb_implausible_header_raises() -> None:
    mem = MemReader()
    vmci = build_prb(mem, [(0, 0, 6, 1, b"x")])
    vi = parse_vmcoreinfo(vmci)
    km = KernelMemory(mem, vi)
    prb = km.u64(vi.symbol("prb"))
    mem.write_fast(km.vtop(prb), struct.pack("<I", 60))  # count_bits = 60
    mem._cache.clear()
    with pytest.raises(GuestMemoryError, match="implausible"):
        walk(mem, vmci)


def test_no_known_layout() -> None:
    vi = parse_vmcoreinfo(b"OSRELEASE=2.6.32\n")
    assert printk_layout(vi) is None
    with pytest.raises(GuestMemoryError, match="no known kernel log layout"):
        list(for_each_record(KernelMemory(MemReader(), vi, cr3=0), vi))


# -- Linux 3.5 .. 5.9 ------------------------------------------------------------------------------------


def legacy(older: list[tuple[int, int, bytes, bytes]], newer: list[tuple[int, int, bytes, bytes]] = (),
           buf_len: int = 4096) -> tuple[MemReader, bytes]:
    """log_buf with struct printk_log records (16-byte header, text, dict, 8-byte aligned).

    Without ``newer``: ``older`` from offset 0. With it: ``older`` from the middle up to a
    zero-length wrap marker, then ``newer`` from offset 0, as after the buffer wrapped.
    """
    mem = MemReader()
    phys_base = 0x100000
    buf_v = KMAP + 0x200000
    buf = bytearray(buf_len)

    def put(idx: int, recs: list[tuple[int, int, bytes, bytes]]) -> int:
        for ts, level, text, dct in recs:
            size = (16 + len(text) + len(dct) + 7) & ~7
            struct.pack_into("<QHHHBB", buf, idx, ts, size, len(text), len(dct), 0, (level << 5) | 2)
            buf[idx + 16:idx + 16 + len(text)] = text
            buf[idx + 16 + len(text):idx + 16 + len(text) + len(dct)] = dct
            idx += size
        return idx

    if newer:
        first = buf_len // 2
        end = put(first, older)
        struct.pack_into("<QH", buf, end, 0, 0)  # len 0: continue at the start
        nxt = put(0, list(newer))
    else:
        first, nxt = 0, put(0, older)
    sym = {"log_buf": KMAP + 0x1000, "log_buf_len": KMAP + 0x1008, "log_first_idx": KMAP + 0x100C,
           "log_next_idx": KMAP + 0x1010}
    def phys(v: int) -> int:
        return v - KMAP + phys_base

    mem.write_fast(phys(sym["log_buf"]), struct.pack("<Q", buf_v))
    mem.write_fast(phys(sym["log_buf_len"]), struct.pack("<I", buf_len))
    mem.write_fast(phys(sym["log_first_idx"]), struct.pack("<I", first))
    mem.write_fast(phys(sym["log_next_idx"]), struct.pack("<I", nxt))
    mem.write_fast(phys(buf_v), bytes(buf))
    text = f"NUMBER(phys_base)={phys_base}\nSIZE(printk_log)=16\nOFFSET(printk_log.ts_nsec)=0\n" \
           "OFFSET(printk_log.len)=8\nOFFSET(printk_log.text_len)=10\n"
    text += "".join(f"SYMBOL({k})={v:x}\n" for k, v in sym.items())
    return mem, text.encode()


def test_legacy_log_buf() -> None:
    recs = [(10 * k, k % 8, b"legacy %d" % k, b"SUBSYSTEM=pci" if k == 1 else b"") for k in range(5)]
    mem, vmci = legacy(recs)
    records, problems = walk(mem, vmci)
    assert problems == []
    assert [(r.timestamp_ns, r.level, r.text) for r in records] == [(t, lv, x) for t, lv, x, _ in recs]


def test_legacy_log_buf_wrapped() -> None:
    recs = [(k, 6, b"record %d" % k, b"") for k in range(6)]
    mem, vmci = legacy(recs[:3], recs[3:])
    records, problems = walk(mem, vmci)
    assert problems == []
    assert [r.text for r in records] == [b"record %d" % k for k in range(6)]


def test_legacy_log_buf_garbage_length_stops() -> None:
    mem, vmci = legacy([(1, 6, b"x", b"")])
    vi = parse_vmcoreinfo(vmci)
    km = KernelMemory(mem, vi)
    buf = km.u64(vi.symbol("log_buf"))
    mem.write_fast(km.vtop(buf) + 8, struct.pack("<H", 5))  # len shorter than the header
    mem.write_fast(km.vtop(vi.symbol("log_next_idx")), struct.pack("<I", 24))
    mem._cache.clear()
    records, problems = walk(mem, vmci)
    assert records == [] and "corrupt record" in problems[0]

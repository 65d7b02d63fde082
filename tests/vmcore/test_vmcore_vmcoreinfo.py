"""VMCOREINFO text -> typed fields; malformed lines are counted, never fatal."""

from __future__ import annotations

import pytest

from vmcrash.errors import GuestMemoryError
from vmcrash.vmcore import parse_vmcoreinfo

# Lines as a Debian 6.1 guest publishes them (from a lab dump).
REAL = (b"OSRELEASE=6.1.0-56-amd64\nBUILD-ID=eb4fbcd037e7253717950bf2b93bd5566f47c56f\nPAGESIZE=4096\n"
        b"SYMBOL(init_uts_ns)=ffffffffa8dfb000\nOFFSET(uts_namespace.name)=0\nSYMBOL(prb)=ffffffffa8c643e0\n"
        b"SIZE(printk_ringbuffer)=88\nLENGTH(zone.free_area)=11\nNUMBER(phys_base)=-216006656\n"
        b"NUMBER(pgtable_l5_enabled)=0\nKERNELOFFSET=26200000\nNUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n"
        b"CRASHTIME=1700000000\n\0\0\0")


def test_real_lines() -> None:
    vi = parse_vmcoreinfo(REAL)
    assert vi.osrelease == b"6.1.0-56-amd64"
    assert vi.build_id == b"eb4fbcd037e7253717950bf2b93bd5566f47c56f"
    assert vi.page_size_bytes == 4096
    assert vi.symbols["init_uts_ns"] == 0xFFFFFFFFA8DFB000
    assert vi.symbol("prb") == 0xFFFFFFFFA8C643E0
    assert vi.offsets["uts_namespace.name"] == 0
    assert vi.sizes["printk_ringbuffer"] == 88
    assert vi.lengths["zone.free_area"] == 11
    assert vi.numbers["phys_base"] == -216006656
    assert vi.number("PAGE_BUDDY_MAPCOUNT_VALUE") == -129
    assert vi.kernel_offset == 0x26200000
    assert vi.crash_time_s == 1700000000
    assert vi.bad_lines == 0
    assert vi.raw.endswith(b"CRASHTIME=1700000000\n")


def test_missing_names_raise_guest_memory_error() -> None:
    vi = parse_vmcoreinfo(b"OSRELEASE=x\n")
    for call in (lambda: vi.symbol("prb"), lambda: vi.offset("a.b"), lambda: vi.size("x"),
                 lambda: vi.number("y")):
        with pytest.raises(GuestMemoryError, match="VMCOREINFO has no"):
            call()


def test_malformed_lines_are_counted() -> None:
    text = (b"no equals sign\nSYMBOL(prb)=zzzz\nOFFSET(a.b)=12x\nSYMBOL(bad name)=10\n=value\n"
            b"PAGESIZE=big\nSYMBOL(ok)=10\nKEY WITH SPACE=1\nSYMBOL(huge)=" + b"f" * 100 + b"\n")
    vi = parse_vmcoreinfo(text)
    assert vi.symbols == {"ok": 0x10}
    assert vi.bad_lines == 8


def test_symbol_wraps_to_64_bits_and_text_stops_at_nul() -> None:
    vi = parse_vmcoreinfo(b"SYMBOL(a)=1ffffffffffffffff\n\0SYMBOL(b)=1\n")
    assert vi.symbols == {"a": 0xFFFFFFFFFFFFFFFF}


def test_size_bound() -> None:
    vi = parse_vmcoreinfo(b"SYMBOL(a)=1\n" * 200_000)
    assert len(vi.raw) <= 1 << 20
    assert vi.symbols == {"a": 1}

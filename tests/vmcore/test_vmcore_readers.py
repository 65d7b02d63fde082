"""The three readers against files built independently from the format descriptions."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from vmcore_builders import PAGE, build_elf, build_kdump, flatten, note, prstatus

from vmcrash.errors import DumpFormatError, GuestMemoryError, StorageError
from vmcrash.vmcore import open_dump
from vmcrash.vmcore._open import detect_format

VMCI = b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\nSYMBOL(prb)=ffffffff81000000\n"
NOTES = note(b"CORE", 1, prstatus({"rip": 0xFFFFFFFF81234567})) + note(b"VMCOREINFO", 0, VMCI)


def page(tag: int) -> bytes:
    return bytes([tag]) * 16 + os.urandom(16) + bytes(PAGE - 32)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# -- ELF -------------------------------------------------------------------------------------------------


def test_elf_pages_notes_and_holes(tmp_path: Path) -> None:
    seg0 = b"".join(page(i) for i in range(4))
    seg1 = page(9)
    path = write(tmp_path, "d.elf", build_elf([(0, seg0), (0x100000, seg1)], NOTES))
    with open_dump(path) as d:
        assert d.format == "elf"
        assert d.read_phys(PAGE * 2, PAGE) == seg0[2 * PAGE:3 * PAGE]
        assert d.read_phys(PAGE - 8, 16) == seg0[PAGE - 8:PAGE + 8]  # across a page boundary
        assert d.read_phys(0x100000 + 5, 10) == seg1[5:15]
        assert list(d.reader.present_ranges()) == [(0, 4), (256, 257)]
        assert d.vmcoreinfo is not None and d.vmcoreinfo.osrelease == b"6.1.0-test"
        assert d.cpus[0].registers["rip"] == 0xFFFFFFFF81234567
        with pytest.raises(GuestMemoryError, match="not in the dump"):
            d.read_phys(PAGE * 10, 1)


def test_elf_memsz_beyond_filesz_reads_zero(tmp_path: Path) -> None:
    path = write(tmp_path, "d.elf", build_elf([(0, page(1))], NOTES, memsz_extra=PAGE))
    with open_dump(path) as d:
        assert d.read_phys(PAGE, PAGE) == bytes(PAGE)


def test_sparse_elf_reads_like_the_full_one(tmp_path: Path) -> None:
    pages = [page(1), bytes(PAGE), bytes(PAGE), page(2)]
    full = build_elf([(0, b"".join(pages))], NOTES)
    full_path = write(tmp_path, "full.elf", full)
    # Same bytes, but the two zero pages are holes (never written).
    sparse_path = tmp_path / "sparse.elf"
    data_off = full.index(pages[0])
    with open(sparse_path, "wb") as f:
        f.write(full[:data_off + PAGE])
        f.seek(data_off + 3 * PAGE)
        f.write(pages[3])
    assert os.stat(sparse_path).st_blocks * 512 < len(full)
    with open_dump(full_path) as a, open_dump(sparse_path) as b:
        for pfn in range(4):
            assert a.reader.read_page(pfn) == b.reader.read_page(pfn) == pages[pfn]


def test_elf_truncated_and_garbage(tmp_path: Path) -> None:
    data = build_elf([(0, page(1) * 4)], NOTES)
    for cut in (10, 70, 200, len(data) - 1):
        with pytest.raises(DumpFormatError):
            open_dump(write(tmp_path, f"t{cut}", data[:cut]))
    with pytest.raises(DumpFormatError, match="not a core"):
        open_dump(write(tmp_path, "exe", data[:16] + struct.pack("<H", 2) + data[18:]))
    with pytest.raises(DumpFormatError, match="64-bit"):
        open_dump(write(tmp_path, "e32", data[:4] + b"\x01" + data[5:]))
    with pytest.raises(DumpFormatError, match="truncated"):
        open_dump(write(tmp_path, "cut", data[:-PAGE]))


def test_elf_pn_xnum(tmp_path: Path) -> None:
    base = bytearray(build_elf([(0, page(3))], NOTES))
    # Move the count into section header 0 (sh_info) and put 0xffff in e_phnum.
    shoff = len(base)
    base += struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 2, 0, 0)
    struct.pack_into("<Q", base, 40, shoff)
    struct.pack_into("<HHH", base, 56, 0xFFFF, 64, 1)
    with open_dump(write(tmp_path, "x.elf", bytes(base))) as d:
        assert d.read_phys(0, 16) == b"\x03" * 16


# -- kdump -------------------------------------------------------------------------------------------------


def kdump_pages() -> dict[int, bytes]:
    return {0: page(1), 1: page(2), 2: os.urandom(PAGE), 7: page(7), 40000: page(8)}


def test_kdump_reads_every_page_kind(tmp_path: Path) -> None:
    pages = kdump_pages()
    data = build_kdump(pages, 40001, vmcoreinfo=VMCI, notes=NOTES, excluded=[3, 4], raw=[2])
    with open_dump(write(tmp_path, "k", data)) as d:
        assert d.format == "kdump"
        for pfn, content in pages.items():
            assert d.reader.read_page(pfn) == content
        assert d.reader.read_page(3) == bytes(PAGE)  # excluded at dump level 1: a zero page
        assert d.reader.page_excluded(3) and not d.reader.page_excluded(2)
        with pytest.raises(GuestMemoryError, match="not in the dump"):
            d.reader.read_page(5)
        assert list(d.reader.present_ranges()) == [(0, 5), (7, 8), (40000, 40001)]
        assert d.vmcoreinfo is not None and d.vmcoreinfo.symbols["prb"] == 0xFFFFFFFF81000000
        assert d.cpus[0].registers["rip"] == 0xFFFFFFFF81234567
        assert d.reader.page_head(7, 16) == pages[7][:16]


def test_kdump_excluded_at_higher_dump_level_is_not_zero(tmp_path: Path) -> None:
    data = build_kdump(kdump_pages(), 40001, excluded=[3], dump_level=31)
    with open_dump(write(tmp_path, "k", data)) as d, pytest.raises(GuestMemoryError, match="excluded"):
        d.reader.read_page(3)


def test_kdump_corruption_is_a_format_error(tmp_path: Path) -> None:
    data = bytearray(build_kdump(kdump_pages(), 40001))
    for cut in (8, 500, 4100, len(data) // 2, len(data) - 1):
        with pytest.raises(DumpFormatError):
            open_dump(write(tmp_path, f"c{cut}", bytes(data[:cut])))
    bad_block = bytearray(data)
    struct.pack_into("<i", bad_block, 428, 1000)
    with pytest.raises(DumpFormatError, match="block size"):
        open_dump(write(tmp_path, "bs", bytes(bad_block)))
    huge_bitmap = bytearray(data)
    struct.pack_into("<I", huge_bitmap, 436, 1 << 24)  # 64 GiB of bitmap in a small file
    for blob in (bytes(huge_bitmap), flatten(bytes(huge_bitmap))):
        with pytest.raises(DumpFormatError, match="bitmap|page descriptors would start"):
            open_dump(write(tmp_path, "hb", blob))
    # Corrupt the compressed bytes of page 0: reading that page fails cleanly.
    d = open_dump(write(tmp_path, "ok", bytes(data)))
    first_data = struct.unpack_from("<q", data, d.reader.header.desc_offset)[0]
    d.close()
    broken = bytearray(data)
    broken[first_data:first_data + 8] = b"\xff" * 8
    with open_dump(write(tmp_path, "z", bytes(broken))) as d2, pytest.raises(DumpFormatError, match="zlib"):
        d2.reader.read_page(0)


def test_kdump_zlib_bomb_is_bounded(tmp_path: Path) -> None:
    bomb = zlib.compress(bytes(64 * PAGE), 9)  # decompresses to 64 pages
    assert len(bomb) < PAGE
    data = build_kdump({0: bytes(PAGE)}, 1, compress=lambda b: bomb)
    with open_dump(write(tmp_path, "b", data)) as d, pytest.raises(DumpFormatError, match="longer than a page"):
        d.reader.read_page(0)


# -- flattened ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [777, 4096, 100_000])
def test_flattened_reads_like_the_seekable_file(tmp_path: Path, chunk: int) -> None:
    pages = kdump_pages()
    seekable = build_kdump(pages, 40001, vmcoreinfo=VMCI, notes=NOTES, excluded=[3])
    path = write(tmp_path, "f", flatten(seekable, chunk=chunk, duplicate_first=True))
    with open_dump(path) as d:
        assert d.format == "kdump-flattened"
        for pfn, content in pages.items():
            assert d.reader.read_page(pfn) == content
        assert d.vmcoreinfo is not None and d.vmcoreinfo.osrelease == b"6.1.0-test"


def test_flattened_truncated_or_bad_records(tmp_path: Path) -> None:
    flat = flatten(build_kdump(kdump_pages(), 40001), chunk=3000)
    with pytest.raises(DumpFormatError, match="end marker"):
        open_dump(write(tmp_path, "t", flat[:-100]))
    bad = bytearray(flat)
    struct.pack_into(">qq", bad, 4096, 0, 1 << 40)  # first record claims a terabyte
    with pytest.raises(DumpFormatError, match="record with offset 0 and size"), \
            open_dump(write(tmp_path, "b", bytes(bad))) as d:
        d.reader.read_page(0)
    with pytest.raises(DumpFormatError, match="type"):
        open_dump(write(tmp_path, "v", flat[:16] + struct.pack(">q", 2) + flat[24:]))


# -- detection ---------------------------------------------------------------------------------------------


def test_detect_format_by_content() -> None:
    assert detect_format(b"\x7fELF\x02\x01") == "elf"
    assert detect_format(b"KDUMP   \x06") == "kdump"
    assert detect_format(b"makedumpfile\0\0\0\0") == "kdump-flattened"
    for head, msg in ((b"DISKDUMP", "diskdump"), (b"QEVM\0\0", "savevm"), (b"", "empty"),
                      (b"hello world", "not a dump")):
        with pytest.raises(DumpFormatError, match=msg):
            detect_format(head)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such file"):
        open_dump(tmp_path / "missing")
    with pytest.raises(StorageError, match="directory"):
        open_dump(tmp_path)

"""Pure parts of capture mode ``hold``: QEMU's memory map, its dump header, mode choice, memory guard,
and the held-image writer over a real memfd (holes stay holes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmcrash.capture.hold import (
    DumpHeader,
    HeldImage,
    HeldRange,
    LoadSpec,
    Mode,
    backing_of_xml,
    choose_mode,
    guard_decision,
    lost_image_note,
    parse_dump_header,
    write_held,
)
from vmcrash.config import parse_config
from vmcrash.errors import ConfigError, DumpFormatError, EnvironmentProblem
from vmcrash.host.qemu_memory import Backing, parse_flatview, parse_gpa2hva, parse_maps, resolve_ranges

DATA = Path(__file__).parent / "data"
MIB = 1 << 20

# real lines of /proc/<qemu>/maps of the 4 GiB memfd guest whose `info mtree -f` is in data/
MAPS_4G = """\
55d0c2a00000-55d0c2e6b000 r-xp 00000000 fe:00 1234 /usr/bin/qemu-system-x86_64
7fba87fff000-7fbbc7fff000 rw-s 00000000 00:01 6772 /memfd:memory-backend-memfd (deleted)
7fbbcc600000-7fbbcc640000 rw-p 00000000 00:00 0
"""


def test_flatview_of_a_4g_guest_has_low_ram_bios_and_high_ram() -> None:
    secs = [s for s in parse_flatview((DATA / "mtree_4g_memfd.txt").read_text()) if s.is_memory]
    assert (secs[0].start, secs[0].name, secs[0].offset) == (0, "pc.ram", 0)
    assert any(s.kind == "rom" and s.name == "pc.ram" and s.offset == 0xc3000 for s in secs)
    high = [s for s in secs if s.start == 0x100000000][0]
    assert high.offset == 0xc0000000 and high.size_bytes == 1 << 30
    bios = [s for s in secs if s.name == "pc.bios"][0]
    assert (bios.start, bios.size_bytes) == (0xfffc0000, 256 << 10)
    io = parse_flatview((DATA / "mtree_4g_memfd.txt").read_text())
    assert any(s.kind == "i/o" for s in io) and not any(s.name == "dma-chan" for s in io)  # not the I/O AS


def test_resolve_ranges_maps_guest_physical_to_memfd_offsets() -> None:
    secs = parse_flatview((DATA / "mtree_4g_memfd.txt").read_text())
    hvas = {0: 0x7fba87fff000, 0xfffc0000: 0x7fbbcc600000, 0x100000000: 0x7fbb47fff000}
    ranges = resolve_ranges(secs, hvas, parse_maps(MAPS_4G))
    assert [(r.paddr, r.size_bytes, r.backing) for r in ranges] == [
        (0, 3 << 30, Backing.SHARED_FILE), (0xfffc0000, 256 << 10, Backing.PRIVATE),
        (0x100000000, 1 << 30, Backing.SHARED_FILE)]
    assert ranges[0].file_offset == 0 and ranges[2].file_offset == 3 << 30
    assert ranges[0].inode == 6772 and ranges[0].dev == "00:01"
    with pytest.raises(EnvironmentProblem, match="in no mapping"):
        resolve_ranges(secs, {**hvas, 0: 0x1000}, parse_maps(MAPS_4G))


def test_small_guest_map_merges_ram_and_rom_of_one_region() -> None:
    secs = parse_flatview((DATA / "mtree_512m_memfd.txt").read_text())
    maps = parse_maps("7f2827fff000-7f2847fff000 rw-s 00000000 00:01 40 /memfd:memory-backend-memfd (deleted)\n"
                      "7f2900000000-7f2900040000 rw-p 00000000 00:00 0\n")
    ranges = resolve_ranges(secs, {0: 0x7f2827fff000, 0xfffc0000: 0x7f2900000000}, maps)
    assert [(r.paddr, r.size_bytes) for r in ranges] == [(0, 512 * MIB), (0xfffc0000, 256 << 10)]


def test_gpa2hva_answers() -> None:
    assert parse_gpa2hva("Host virtual address for 0x0 (pc.ram) is 0x7fba87fff000\r\n") == 0x7fba87fff000
    with pytest.raises(EnvironmentProblem):
        parse_gpa2hva("No memory is mapped at address 0xf0000000\r\n")


def test_qemu72_dump_header_layout_and_string_table() -> None:
    raw = (DATA / "qemu72_dump_head.bin").read_bytes()
    h = parse_dump_header(raw)
    assert [(ld.paddr, ld.file_size) for ld in h.loads] == [(0, 512 * MIB), (0xfffc0000, 256 << 10)]
    assert h.loads[0].offset == len(raw)  # memory follows the header immediately
    assert h.trailers == ((h.loads[1].offset + (256 << 10), b"\0.shstrtab\0"),)
    assert h.file_size_bytes == len(raw) + 512 * MIB + (256 << 10) + 11
    with pytest.raises(DumpFormatError):
        parse_dump_header(raw[:100])
    with pytest.raises(DumpFormatError):
        parse_dump_header(b"\x7fELF" + bytes(60))


def test_mode_choice() -> None:
    ok = (True, "plenty")
    assert choose_mode(requested="auto", recovery="restart", backing="memfd-shared", fallback="stream",
                       guard=ok).mode is Mode.HOLD
    assert choose_mode(requested="auto", recovery="destroy", backing="hugepages-shared", fallback="stream",
                       guard=ok).mode is Mode.HOLD
    # the same QEMU keeps (and reuses) shared memory: never hold with reset; copy it instead
    for recovery in ("reset", "resume"):
        c = choose_mode(requested="auto", recovery=recovery, backing="memfd-shared", fallback="stream", guard=ok)
        assert c.mode is Mode.COPY and f"recovery {recovery!r} keeps the same QEMU" in c.reason
    c = choose_mode(requested="auto", recovery="preserve", backing="memfd-shared", fallback="stream", guard=ok)
    assert c.mode is Mode.STREAM and "recovery 'preserve'" in c.reason
    c = choose_mode(requested="hold", recovery="reset", backing="memfd-shared", fallback="direct", guard=ok)
    assert c.mode is Mode.DIRECT  # never hold with reset, whatever was asked
    c = choose_mode(requested="hold", recovery="restart", backing="anonymous", fallback="stream", guard=ok)
    assert c.mode is Mode.STREAM and "anonymous" in c.reason  # hold asked, nothing to hold
    # auto on anonymous RAM copies the present pages, if the guard allows
    c = choose_mode(requested="auto", recovery="restart", backing="anonymous", fallback="stream", guard=ok)
    assert c.mode is Mode.COPY and "anonymous" in c.reason and "plenty" in c.reason
    c = choose_mode(requested="auto", recovery="restart", backing="anonymous", fallback="stream", guard=None)
    assert c.mode is Mode.STREAM and "memory guard" in c.reason
    c = choose_mode(requested="auto", recovery="restart", backing="memfd-shared", fallback="stream",
                    guard=(False, "host memory guard: x"))
    assert c.mode is Mode.STREAM and "hold refused by host memory guard" in c.reason
    assert choose_mode(requested="direct", recovery="restart", backing="memfd-shared", fallback="stream",
                       guard=ok).mode is Mode.DIRECT
    assert choose_mode(requested="stream", recovery="restart", backing="anonymous", fallback="direct",
                       guard=ok).mode is Mode.STREAM


def test_candidate_never_pairs_hold_with_the_same_qemu() -> None:
    from vmcrash.capture.hold import CAPTURE_MODES, candidate_mode

    for requested in CAPTURE_MODES:
        for backing in ("anonymous", "memfd-shared", "file-shared", "hugepages-shared"):
            for recovery in ("auto", "restart", "destroy", "reset", "resume", "preserve"):
                c = candidate_mode(requested=requested, recovery=recovery, backing=backing, fallback="stream")
                if c.mode is Mode.HOLD:
                    assert recovery in ("auto", "restart", "destroy") and backing != "anonymous"
                if c.mode is Mode.COPY:
                    assert recovery != "preserve"


def test_memory_guard() -> None:
    from vmcrash.capture.hold import MemoryNeed, memory_need

    g = MIB
    assert guard_decision(mem_available_bytes=8000 * g, need=MemoryNeed(new_guest_bytes=2048 * g),
                          headroom_bytes=1024 * g, held_now=0, max_held=2)[0]
    ok, why = guard_decision(mem_available_bytes=3000 * g, need=MemoryNeed(new_guest_bytes=2048 * g),
                             headroom_bytes=1024 * g, held_now=0, max_held=2)
    assert not ok and "952 MiB < headroom 1024 MiB" in why
    ok, why = guard_decision(mem_available_bytes=8000 * g, need=MemoryNeed(), headroom_bytes=0,
                             held_now=2, max_held=2)
    assert not ok and "limit 2" in why
    # copy with restart: the copy and the new guest count, the crashed QEMU's private memory comes back
    need = memory_need(Mode.COPY, recovery="restart", guest_ram_bytes=2048 * g, private_rss_bytes=1200 * g,
                       shared_rss_bytes=0)
    assert need == MemoryNeed(image_bytes=1200 * g, new_guest_bytes=2048 * g, freed_bytes=1200 * g)
    ok, why = guard_decision(mem_available_bytes=3000 * g, need=need, headroom_bytes=1024 * g, held_now=0,
                             max_held=2)
    assert not ok and "the copy takes 1200 MiB" in why and "952 MiB < headroom" in why
    # copy with reset: the same QEMU keeps its memory and may touch the rest of its RAM
    need = memory_need(Mode.COPY, recovery="reset", guest_ram_bytes=2048 * g, private_rss_bytes=1200 * g,
                       shared_rss_bytes=0)
    assert need == MemoryNeed(image_bytes=1200 * g, new_guest_bytes=848 * g, freed_bytes=0)
    # hold: the image is already allocated; a fresh QEMU may take all its RAM, destroy nothing
    assert memory_need(Mode.HOLD, recovery="restart", guest_ram_bytes=2048 * g, private_rss_bytes=9 * g,
                       shared_rss_bytes=900 * g) == MemoryNeed(0, 2048 * g, 0)
    assert memory_need(Mode.HOLD, recovery="destroy", guest_ram_bytes=2048 * g, private_rss_bytes=9 * g,
                       shared_rss_bytes=900 * g) == MemoryNeed(0, 0, 0)


def test_status_rss_parser() -> None:
    from vmcrash.host.qemu_memory import parse_status_rss

    text = "Name:\tqemu\nRssAnon:\t  123456 kB\nRssFile:\t 10 kB\nRssShmem:\t     64 kB\n"
    assert parse_status_rss(text) == (123456 * 1024, 64 * 1024)
    assert parse_status_rss("RssAnon: lots kB\n") == (0, 0)
    assert parse_status_rss("") == (0, 0)


def test_backing_of_xml() -> None:
    dom = "<domain><memoryBacking>{}</memoryBacking></domain>"
    assert backing_of_xml(dom.format("<source type='memfd'/><access mode='shared'/>")) == "memfd-shared"
    assert backing_of_xml(dom.format("<source type='memfd'/>")) == "anonymous"  # private memfd dies with QEMU
    assert backing_of_xml(dom.format("<hugepages/><access mode='shared'/>")) == "hugepages-shared"
    assert backing_of_xml(dom.format("<source type='file'/><access mode='shared'/>")) == "file-shared"
    assert backing_of_xml("<domain/>") == "anonymous"
    assert backing_of_xml("<not xml") == "anonymous"


def test_config_refuses_hold_with_reset() -> None:
    with pytest.raises(ConfigError, match="cannot work with recovery 'reset'"):
        parse_config({"domains": {"db": {"capture": "hold", "recovery": "reset"}}})
    with pytest.raises(ConfigError, match="unknown capture mode"):
        parse_config({"domains": {"db": {"capture": "fast"}}})
    assert parse_config({"domains": {"db": {"capture": "hold"}}}).policy_for("db").capture == "hold"
    assert parse_config({}).policy_for("x").capture == "auto"


def test_write_held_reads_only_data_extents_of_a_real_memfd(tmp_path: Path) -> None:
    fd = os.memfd_create("guest-ram")
    size = 64 * MIB
    os.ftruncate(fd, size)
    os.pwrite(fd, b"A" * 4096, 0)
    os.pwrite(fd, b"B" * 8192, 40 * MIB)
    os.pwrite(fd, bytes(4096), 50 * MIB)  # allocated, but all zero: a hole in the dump
    blocks = os.fstat(fd).st_blocks
    raw = b"HDR!" * 64
    rom = bytes(range(256)) * 16
    header = DumpHeader(raw, (LoadSpec(0, size, size, len(raw)), LoadSpec(0xfffc0000, 4096, 4096, len(raw) + size)),
                        (), ((len(raw) + size + 4096, b"\0.shstrtab\0"),))
    image = HeldImage("g", header, [HeldRange(0, size, fd=fd, file_offset=0),
                                    HeldRange(0xfffc0000, 4096, data=rom)], fds=[fd])
    assert list(image.data_extents(0, size))[0] == (0, 4096)
    out = tmp_path / "held.elf"
    stats = write_held(image, out)
    assert os.fstat(fd).st_blocks == blocks  # no hole of the memfd was faulted in
    data = out.read_bytes()
    assert len(data) == header.file_size_bytes
    assert data[:len(raw)] == raw
    assert data[len(raw):len(raw) + 4096] == b"A" * 4096
    assert data[len(raw) + 40 * MIB:len(raw) + 40 * MIB + 8192] == b"B" * 8192
    assert data[len(raw) + size:len(raw) + size + 4096] == rom
    assert data.endswith(b"\0.shstrtab\0")
    ram = data[len(raw):len(raw) + size]
    assert ram.count(0) == size - 4096 * 3  # everything else reads as zeros
    assert stats.extra["data_read_bytes"] < 2 * MIB + 4096 * 3  # extents only, not 64 MiB
    assert out.stat().st_blocks * 512 < 2 * MIB  # sparse
    image.close()


def test_write_held_gives_up_when_told(tmp_path: Path) -> None:
    fd = os.memfd_create("guest-ram")
    os.ftruncate(fd, 8 * MIB)
    os.pwrite(fd, b"x" * (8 * MIB), 0)
    header = DumpHeader(b"H" * 64, (LoadSpec(0, 8 * MIB, 8 * MIB, 64),), ())
    image = HeldImage("g", header, [HeldRange(0, 8 * MIB, fd=fd)], fds=[fd])
    from vmcrash.errors import StorageError

    with pytest.raises(StorageError, match="gave up writing the held image: stopping"):
        write_held(image, tmp_path / "x.elf", give_up=lambda: "stopping")
    image.close()


def test_lost_image_note() -> None:
    class Row:
        capture = {"mode": "hold", "held": True}
        dump_path = None

    assert "lost before it was written" in (lost_image_note(Row()) or "")
    Row.dump_path = "/x"  # type: ignore[assignment]
    assert lost_image_note(Row()) is None
    Row.capture = {"mode": "stream"}
    Row.dump_path = None
    assert lost_image_note(Row()) is None


def test_present_runs_and_copy_choice() -> None:
    import struct

    from vmcrash.capture.hold import PAGEMAP_PRESENT, PAGEMAP_SWAPPED, present_runs

    table = struct.pack("<4Q", PAGEMAP_PRESENT | 5, 0, PAGEMAP_SWAPPED, PAGEMAP_PRESENT)
    assert present_runs(table, 0x10000) == [(0x10000, 4096), (0x12000, 8192)]
    c = choose_mode(requested="copy", recovery="reset", backing="anonymous", fallback="stream", guard=(True, "ok"))
    assert c.mode is Mode.COPY
    c = choose_mode(requested="copy", recovery="preserve", backing="anonymous", fallback="stream",
                    guard=(True, "ok"))
    assert c.mode is Mode.STREAM
    c = choose_mode(requested="copy", recovery="restart", backing="anonymous", fallback="stream",
                    guard=(False, "host memory guard: no"))
    assert c.mode is Mode.STREAM and "host memory guard" in c.reason


def test_file_data_runs_and_copy_runs_on_a_real_sparse_file(tmp_path: Path) -> None:
    """SEEK_DATA finds the written extents of a real sparse file; the threaded copy reads exactly them."""
    import mmap
    import os

    from vmcrash.capture.hold import COPY_CHUNK_BYTES, CopyRun, copy_runs, file_data_runs

    path = tmp_path / "ram"
    size = 4 * COPY_CHUNK_BYTES
    blobs = {0: os.urandom(8192), COPY_CHUNK_BYTES - 4096: os.urandom(COPY_CHUNK_BYTES + 8192),
             3 * COPY_CHUNK_BYTES: os.urandom(4096)}
    with open(path, "wb") as f:
        f.truncate(size)
        for off, blob in blobs.items():
            f.seek(off)
            f.write(blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        runs = list(file_data_runs(fd, 0, size))
        # file systems report data at their block granularity: every written byte is inside a run,
        # and the runs are far smaller than the file
        for off, blob in blobs.items():
            assert any(o <= off and off + len(blob) <= o + n for o, n in runs), (off, runs)
        assert sum(n for _, n in runs) < size // 2
        assert list(file_data_runs(fd, size, 0)) == []
        # a window that starts inside a hole
        inner = list(file_data_runs(fd, 8192 + 4096, COPY_CHUNK_BYTES))
        assert inner and inner[0][0] >= 8192
        plan = [CopyRun(paddr=o, size_bytes=n, fd=fd, source_offset=o) for o, n in runs]
        total = sum(r.size_bytes for r in plan)
        buf = mmap.mmap(-1, total)
        view = memoryview(buf)
        copy_runs(plan, view, threads=3)
        at = 0
        with open(path, "rb") as f:
            for r in plan:
                f.seek(r.source_offset)
                assert view[at:at + r.size_bytes] == f.read(r.size_bytes)
                at += r.size_bytes
        view.release()
        buf.close()
        # a read past the end of the file is a short read: an error, not zeros
        with pytest.raises(Exception, match="short read"):
            copy_runs([CopyRun(0, 4096, fd, size)], memoryview(bytearray(4096)), threads=1)
    finally:
        os.close(fd)


def test_recovery_auto_restarts_only_for_a_held_image() -> None:
    from vmcrash.capture.hold import MemoryNeed, memory_need
    from vmcrash.capture.recovery import resolve_recovery

    assert resolve_recovery("auto", holds_image=True) == "restart"
    assert resolve_recovery("auto", holds_image=False) == "reset"
    for action in ("restart", "reset", "preserve", "destroy", "resume"):
        assert resolve_recovery(action, holds_image=True) == action == resolve_recovery(action, holds_image=False)
    ok = (True, "plenty")
    assert choose_mode(requested="auto", recovery="auto", backing="memfd-shared", fallback="stream",
                       guard=ok).mode is Mode.HOLD
    c = choose_mode(requested="auto", recovery="auto", backing="anonymous", fallback="stream", guard=ok)
    assert c.mode is Mode.COPY and "resets it in place" in c.reason
    g = MIB
    # auto with hold: a fresh QEMU; auto with copy: the same QEMU, reset
    assert memory_need(Mode.HOLD, recovery="auto", guest_ram_bytes=2048 * g, private_rss_bytes=9 * g,
                       shared_rss_bytes=900 * g) == MemoryNeed(0, 2048 * g, 0)
    assert memory_need(Mode.COPY, recovery="auto", guest_ram_bytes=2048 * g, private_rss_bytes=1200 * g,
                       shared_rss_bytes=0) == MemoryNeed(1200 * g, 848 * g, 0)

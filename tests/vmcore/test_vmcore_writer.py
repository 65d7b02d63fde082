"""The kdump writer and the flattened rearranger: content read back, zero pages, resumption, atomicity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vmcore_builders import PAGE, build_elf, build_kdump, flatten, note, prstatus

from vmcrash.errors import DumpFormatError, UsageError
from vmcrash.vmcore import convert_to_kdump, open_dump, rearrange_flattened
from vmcrash.vmcore._codecs import available_codecs

VMCI = b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\nNUMBER(phys_base)=-16777216\n"
NOTES = note(b"CORE", 1, prstatus({"rip": 0xFFFFFFFF81000010})) + note(b"CORE", 1, prstatus({"rip": 2})) \
    + note(b"VMCOREINFO", 0, VMCI)


def pages(n: int, seed: int = 0) -> list[bytes]:
    """A mix: text-like pages, zero pages and incompressible ones."""
    out = []
    for i in range(n):
        if i % 3 == 1:
            out.append(bytes(PAGE))
        elif i % 7 == 0:
            out.append(os.urandom(PAGE))
        else:
            text = (b"page %d seed %d " % (i, seed)) * 200
            out.append(text + bytes(PAGE - len(text)))
    return [p[:PAGE] for p in out]


@pytest.fixture
def elf(tmp_path: Path) -> tuple[Path, list[bytes], list[bytes]]:
    low, high = pages(40), pages(8, seed=1)
    path = tmp_path / "src.elf"
    path.write_bytes(build_elf([(0, b"".join(low)), (0x100000, b"".join(high))], NOTES))
    return path, low, high


def read_all(path: Path, low: list[bytes], high: list[bytes]) -> None:
    with open_dump(path) as d:
        assert d.format == "kdump"
        for i, p in enumerate(low):
            assert d.reader.read_page(i) == p, i
        for i, p in enumerate(high):
            assert d.reader.read_page(256 + i) == p
        assert list(d.reader.present_ranges()) == [(0, 40), (256, 264)]
        assert d.vmcoreinfo is not None and d.vmcoreinfo.osrelease == b"6.1.0-test"
        assert [c.registers["rip"] for c in d.cpus] == [0xFFFFFFFF81000010, 2]
        assert d.reader.header.phys_base == (-16777216) & ((1 << 64) - 1)
        assert d.reader.header.nr_cpus == 2


@pytest.mark.parametrize("codec", ["zlib", "zstd", "auto"])
def test_convert_elf(elf: tuple[Path, list[bytes], list[bytes]], tmp_path: Path, codec: str) -> None:
    src, low, high = elf
    dst = tmp_path / "out.kdump"
    seen: list[tuple[int, int]] = []
    res = convert_to_kdump(src, dst, codec=codec, progress=lambda d, t: seen.append((d, t)))
    read_all(dst, low, high)
    zeros = sum(p == bytes(PAGE) for p in low + high)
    assert res.pages_present == 48 and res.pages_excluded == zeros and res.pages_written == 48 - zeros
    assert res.pages_raw == sum(1 for i in range(40) if i % 7 == 0 and i % 3 != 1) + 1
    assert res.codec in available_codecs() and (codec == "auto" or res.codec == codec)
    assert res.dst_size_bytes == dst.stat().st_size and res.resumed_from is None
    assert seen[-1] == (48 * PAGE, 48 * PAGE)
    assert not (tmp_path / "out.kdump.part").exists() and not (tmp_path / "out.kdump.part.ckpt").exists()
    with open_dump(dst) as d:
        assert d.reader.page_excluded(1)  # a zero page


def test_keep_zero_pages(elf: tuple[Path, list[bytes], list[bytes]], tmp_path: Path) -> None:
    src, low, high = elf
    dst = tmp_path / "keep"
    res = convert_to_kdump(src, dst, codec="zlib", exclude_zero=False)
    read_all(dst, low, high)
    assert res.pages_excluded == 0 and res.pages_written == 48
    with open_dump(dst) as d:
        assert not d.reader.page_excluded(1) and d.reader.header.dump_level == 0


class Crash(Exception):
    pass


def test_resume_after_a_crash(elf: tuple[Path, list[bytes], list[bytes]], tmp_path: Path) -> None:
    src, low, high = elf
    dst = tmp_path / "r.kdump"

    def die(done: int, total: int) -> None:
        if done >= 30 * PAGE:
            raise Crash

    with pytest.raises(Crash):
        convert_to_kdump(src, dst, codec="zlib", progress=die, checkpoint_bytes=8 * PAGE)
    assert not dst.exists()
    assert (tmp_path / "r.kdump.part").exists() and (tmp_path / "r.kdump.part.ckpt").exists()
    res = convert_to_kdump(src, dst, codec="zlib", checkpoint_bytes=8 * PAGE)
    assert res.resumed_from is not None and 8 <= res.resumed_from < 40
    read_all(dst, low, high)
    fresh = convert_to_kdump(src, tmp_path / "fresh", codec="zlib")
    assert (res.pages_written, res.pages_excluded, res.pages_raw) == (
        fresh.pages_written, fresh.pages_excluded, fresh.pages_raw)
    # Same layout: identical bytes except the header timestamp.
    a, b = dst.read_bytes(), (tmp_path / "fresh").read_bytes()
    assert len(a) == len(b) and a[:408] == b[:408] and a[424:] == b[424:]


def test_checkpoint_of_other_options_is_not_reused(elf: tuple[Path, list[bytes], list[bytes]],
                                                   tmp_path: Path) -> None:
    src, low, high = elf
    dst = tmp_path / "x"

    def die(done: int, total: int) -> None:
        if done >= 20 * PAGE:
            raise Crash

    with pytest.raises(Crash):
        convert_to_kdump(src, dst, codec="zlib", progress=die, checkpoint_bytes=4 * PAGE)
    res = convert_to_kdump(src, dst, codec="zstd")
    assert res.resumed_from is None
    read_all(dst, low, high)


def test_refuses_existing_destination_and_bad_codec(elf: tuple[Path, list[bytes], list[bytes]],
                                                    tmp_path: Path) -> None:
    src, _, _ = elf
    (tmp_path / "exists").write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists"):
        convert_to_kdump(src, tmp_path / "exists")
    with pytest.raises(UsageError, match="unknown codec"):
        convert_to_kdump(src, tmp_path / "y", codec="brotli")


def test_convert_from_kdump_and_flattened(tmp_path: Path) -> None:
    content = {0: b"a" * PAGE, 1: os.urandom(PAGE), 5: bytes(PAGE), 9: b"b" * PAGE}
    seekable = build_kdump(content, 10, vmcoreinfo=VMCI, notes=NOTES)
    (tmp_path / "k").write_bytes(seekable)
    (tmp_path / "f").write_bytes(flatten(seekable, chunk=1000))
    for name in ("k", "f"):
        res = convert_to_kdump(tmp_path / name, tmp_path / (name + ".out"), codec="zlib")
        assert res.source_format == ("kdump" if name == "k" else "kdump-flattened")
        with open_dump(tmp_path / (name + ".out")) as d:
            for pfn, page in content.items():
                assert d.reader.read_page(pfn) == page


def test_rearrange_equals_the_seekable_file(tmp_path: Path) -> None:
    seekable = build_kdump({0: b"a" * PAGE, 3: os.urandom(PAGE), 7: b"c" * PAGE}, 8, vmcoreinfo=VMCI)
    (tmp_path / "f").write_bytes(flatten(seekable, chunk=700, duplicate_first=True))
    res = rearrange_flattened(tmp_path / "f", tmp_path / "r")
    assert (tmp_path / "r").read_bytes() == seekable
    assert res.codec == "unchanged" and res.pages_written == 3 and res.dst_size_bytes == len(seekable)


def test_rearrange_resumes(tmp_path: Path) -> None:
    seekable = build_kdump({i: os.urandom(PAGE) for i in range(30)}, 30)
    (tmp_path / "f").write_bytes(flatten(seekable, chunk=3000))

    def die(pos: int, total: int) -> None:
        if pos > total // 2:
            raise Crash

    with pytest.raises(Crash):
        rearrange_flattened(tmp_path / "f", tmp_path / "r", progress=die, checkpoint_bytes=10_000)
    assert not (tmp_path / "r").exists()
    res = rearrange_flattened(tmp_path / "f", tmp_path / "r", checkpoint_bytes=10_000)
    assert res.resumed_from is not None
    assert (tmp_path / "r").read_bytes() == seekable


def test_rearrange_rejects_non_flattened(elf: tuple[Path, list[bytes], list[bytes]], tmp_path: Path) -> None:
    src, _, _ = elf
    with pytest.raises(DumpFormatError, match="not a flattened"):
        rearrange_flattened(src, tmp_path / "r")
    assert not (tmp_path / "r").exists()

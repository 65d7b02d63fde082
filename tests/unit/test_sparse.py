"""The sparse stream writer: holes exactly where aligned zero pages are, content identical."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from vmcrash.capture.dumping import PAGE_BYTES, SparseWriter, zero_runs

Z = bytes(PAGE_BYTES)
D = b"\x01" * PAGE_BYTES


def _reference_runs(chunk: bytes) -> list[tuple[int, int, bool]]:
    """Obvious page-by-page classification, merged (independent of the implementation)."""
    kinds = []
    for off in range(0, len(chunk), PAGE_BYTES):
        page = chunk[off:off + PAGE_BYTES]
        kinds.append((off, off + len(page), len(page) == PAGE_BYTES and page == Z))
    merged: list[list] = []
    for start, end, z in kinds:
        if merged and merged[-1][2] == z:
            merged[-1][1] = end
        else:
            merged.append([start, end, z])
    return [tuple(m) for m in merged]  # type: ignore[misc]


def test_examples() -> None:
    assert zero_runs(Z + Z + D + Z) == [(0, 8192, True), (8192, 12288, False), (12288, 16384, True)]
    assert zero_runs(D + b"\0" * 100) == [(0, 4196, False)]
    assert zero_runs(b"") == []
    # zeros that straddle a page boundary are data
    chunk = D[:2048] + Z + D[:2048]
    assert zero_runs(chunk) == [(0, 8192, False)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["z", "d", "half", "edge"]), max_size=40), st.integers(0, 4095))
def test_matches_reference(pages: list[str], tail: int) -> None:
    parts = {"z": Z, "d": D, "half": b"\0" * 2048 + b"\x07" * 2048, "edge": b"\0" * 4095 + b"\x01"}
    chunk = b"".join(parts[p] for p in pages) + b"\x05" * tail
    assert zero_runs(chunk) == _reference_runs(chunk)


def test_sparse_file_reads_back_identical_and_has_holes(tmp_path: Path) -> None:
    data = [Z * 300, D * 3, Z * 700, b"x" * 10_000, Z * 1000]
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    w = SparseWriter(fd)
    for chunk in data:
        w.write(chunk)
    w.finish()
    os.close(fd)
    expected = b"".join(data)
    assert path.read_bytes() == expected
    allocated = os.stat(path).st_blocks * 512
    assert allocated < 64 * 1024, allocated  # the zero pages take no blocks
    assert w.zero_pages == 300 + 700 + 1000 - 0  # every aligned zero page skipped

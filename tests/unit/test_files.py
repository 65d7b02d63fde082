"""Dump file names can never leave the dump dir; files are 0600, the dir 0700; rename is atomic."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcrash.capture import files

NASTY = ["..", "../../etc/passwd", "a/b", " spaced name ", "quote'\"s", "naïve-émoji-😀", "", ".", ".hidden",
         "x" * 300, "\x00nul", "-dash", "中文域名", "..a..b..", "/abs/path"]


@pytest.mark.parametrize("name", NASTY)
def test_nasty_names_stay_inside(tmp_path: Path, name: str) -> None:
    d = files.ensure_dump_dir(tmp_path / "dumps")
    n = files.dump_name(d, name, "12345678-1234-1234-1234-123456789abc", 1_700_000_000 * 10**9, "elf")
    for p in (n.final, n.partial, n.sidecar):
        assert p.parent == d
        assert files.inside(d, p)
        assert "/" not in p.name and ".." not in p.name.replace(".partial", "")
    assert n.final.name.endswith("-12345678-20231114T221320Z.elf")
    assert n.partial.name.startswith(".") and n.partial.name.endswith(".partial")
    assert not n.final.name.startswith(".")


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_safe_component_property(name: str) -> None:
    s = files.safe_component(name)
    assert s and len(s) <= 64
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in s)
    assert not s.startswith(".") and ".." not in s


def test_name_collisions_get_a_suffix(tmp_path: Path) -> None:
    d = files.ensure_dump_dir(tmp_path / "d")
    a = files.dump_name(d, "vm", "u" * 32, 0, "elf")
    a.final.write_bytes(b"x")
    b = files.dump_name(d, "vm", "u" * 32, 0, "elf")
    assert b.final != a.final and b.final.name.endswith("-1.elf")


def test_modes_and_atomic_finalize(tmp_path: Path) -> None:
    d = files.ensure_dump_dir(tmp_path / "d")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    n = files.dump_name(d, "vm", "ab" * 16, 0, "kdump-zlib")
    fd = os.open(n.partial, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"data")
    os.close(fd)
    assert files.leftover_partials(d) == [n.partial]
    files.finalize(n.partial, n.final)
    assert not n.partial.exists() and n.final.read_bytes() == b"data"
    assert stat.S_IMODE(n.final.stat().st_mode) == 0o600
    files.write_sidecar(n.sidecar, {"a": 1})
    assert stat.S_IMODE(n.sidecar.stat().st_mode) == 0o600
    assert files.leftover_partials(d) == []
    assert n.final.suffix == ".flat"  # kdump formats arrive flattened


def test_storage_errors_are_translated(tmp_path: Path) -> None:
    from vmcrash.errors import StorageError

    with pytest.raises(StorageError, match="cannot finalize"):
        files.finalize(tmp_path / "missing.partial", tmp_path / "final")


def test_fsync_by_path_of_a_file_its_directory_and_a_missing_name(tmp_path: Path) -> None:
    from vmcrash.durable import fsync_parent, fsync_path
    from vmcrash.errors import StorageError

    f = tmp_path / "f"
    f.write_bytes(b"x")
    fsync_path(f)
    fsync_path(tmp_path)
    fsync_parent(f)
    fsync_parent(str(tmp_path / "not-yet"))  # the directory exists, the name need not
    with pytest.raises(StorageError, match="fsync failed: No such file or directory") as err:
        fsync_path(tmp_path / "gone")
    assert err.value.path == str(tmp_path / "gone")

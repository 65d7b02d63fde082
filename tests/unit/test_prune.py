"""The retention executor on real files in a real dump directory (and a real tmpfs for space)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmcrash.capture import prune
from vmcrash.capture.pipeline import CrashHandler
from vmcrash.config import Config, Retention, Staging
from vmcrash.store.catalog import Catalog

MIB = 1024 * 1024
DAY_NS = 86400 * 10**9


def make_dump(cat: Catalog, d: Path, domain: str, uuid: str, *, size_mib: int, ended_ns: int,
              compact: bool = False) -> int:
    """A finished dump as the pipeline leaves it: file with real blocks, sidecar, catalogue row."""
    crash = cat.new_crash(domain=domain, uuid=uuid, domain_id=1, source="event", panic_ns=ended_ns - 10**9)
    path = d / f"{domain}-{crash}.elf"
    path.write_bytes(os.urandom(size_mib * MIB))
    side = path.with_name(path.name + ".json")
    side.write_text("{}")
    values: dict[str, object] = {"state": "done", "dump_path": str(path), "sidecar_path": str(side),
                                 "dump_ended_ns": ended_ns}
    if compact:
        kd = path.with_suffix(".kdump")
        kd.write_bytes(os.urandom(MIB))
        values["compact_path"] = str(kd)
    cat.update(crash, **values)
    return crash


def on_disk(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


@pytest.fixture
def dump_dir(tmp_path: Path) -> Path:
    d = tmp_path / "dumps"
    d.mkdir(mode=0o700)
    return d


def test_count_age_and_total_limits_delete_the_oldest_files(dump_dir: Path, tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    now = time.time_ns()
    a = [make_dump(cat, dump_dir, "web1", "u-a", size_mib=1, ended_ns=now - (5 - i) * DAY_NS) for i in range(4)]
    b = make_dump(cat, dump_dir, "db1", "u-b", size_mib=1, ended_ns=now - 30 * DAY_NS, compact=True)
    # leftovers of an interrupted compaction of b go with it
    kd = Path(cat.get(b).compact_path)  # type: ignore[arg-type,union-attr]
    Path(str(kd) + ".part").write_bytes(b"x")
    Path(str(kd) + ".part.ckpt").write_text("{}")
    # count: 2 per domain → the two oldest of web1 go, files and sidecars both
    deleted = prune.apply_retention(cat, Retention(max_dumps_per_domain=2), now)
    assert deleted == a[:2]
    for crash in a[:2]:
        assert f"web1-{crash}.elf" not in on_disk(dump_dir) and f"web1-{crash}.elf.json" not in on_disk(dump_dir)
        row = cat.get(crash)
        assert row is not None and row.dump_path is None and row.state == "done"
        assert cat.events(crash)[-1]["kind"] == "deleted"
    # age: 20 days → db1's dump (30 days old), its compacted copy and compaction leftovers
    assert prune.apply_retention(cat, Retention(max_dumps_per_domain=0, max_age_days=20), now) == [b]
    assert not [n for n in on_disk(dump_dir) if n.startswith("db1-")]
    # total size: keep at most ~1.5 MiB → only the newest dump survives (the newest is never deleted)
    assert prune.apply_retention(cat, Retention(max_dumps_per_domain=0, max_total_gib=1.5 / 1024), now) == [a[2]]
    assert on_disk(dump_dir) == {f"web1-{a[3]}.elf", f"web1-{a[3]}.elf.json"}


def test_a_dump_being_written_and_foreign_files_are_never_deleted(dump_dir: Path, tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    now = time.time_ns()
    old = make_dump(cat, dump_dir, "web1", "u-a", size_mib=1, ended_ns=now - DAY_NS)
    writing = cat.new_crash(domain="web1", uuid="u-a", domain_id=2, source="event", panic_ns=now)
    partial = dump_dir / f".web1-{writing}.elf.partial"
    partial.write_bytes(os.urandom(MIB))
    cat.update(writing, state="dumping", dump_temp_path=str(partial))
    stranger = dump_dir / "notes.txt"
    stranger.write_text("an operator's file")
    # a sidecar whose dump was removed by hand: not a kept dump, left alone, counts for nothing
    gone = make_dump(cat, dump_dir, "web1", "u-a", size_mib=1, ended_ns=now - 2 * DAY_NS)
    Path(cat.get(gone).dump_path).unlink()  # type: ignore[arg-type,union-attr]
    assert [k.crash_id for k in prune.kept_dumps(cat)] == [old]
    assert prune.apply_retention(cat, Retention(max_dumps_per_domain=1), now) == []
    assert {partial.name, stranger.name, f"web1-{gone}.elf.json", f"web1-{old}.elf"} <= on_disk(dump_dir)
    # even a limit of one byte keeps the newest finished dump and never the one being written
    assert prune.apply_retention(cat, Retention(max_dumps_per_domain=0, max_total_gib=1e-9), now) == []
    assert partial.exists()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 48 MiB filesystem, so that free space is exact and ours alone (needs root, as CI is)."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


def test_pruning_for_space_deletes_oldest_and_keeps_the_minimum_per_domain(small_fs: Path, tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    now = time.time_ns()
    web = [make_dump(cat, small_fs, "web1", "u-a", size_mib=8, ended_ns=now - (9 - i) * DAY_NS) for i in range(3)]
    db = make_dump(cat, small_fs, "db1", "u-b", size_mib=8, ended_ns=now - 20 * DAY_NS)  # oldest of all
    cfg = Config(dump_dir=small_fs, min_free_mib=3, retention=Retention(max_dumps_per_domain=0, keep_min_per_domain=1),
                 staging=Staging(tmpfs="never"))
    handler = CrashHandler(cfg, lambda: None, cat)  # type: ignore[arg-type,return-value]
    # 16 MiB free; a 4 MiB guest's dump is estimated at 4 + 16 MiB, plus 3 MiB reserve: one 8 MiB dump must go
    info = SimpleNamespace(name="web1", uuid="u-a", memory_bytes=4 * MIB)
    new = cat.new_crash(domain="web1", uuid="u-a", domain_id=3, source="event", panic_ns=now)
    names, staged, skip = handler._prepare_target(new, info, cfg.policy_for("web1"))
    assert skip is None and names is not None and staged is None
    # db1's only dump is older but kept (keep_min_per_domain); web1's oldest went
    assert f"db1-{db}.elf" in on_disk(small_fs)
    assert f"web1-{web[0]}.elf" not in on_disk(small_fs)
    assert {f"web1-{web[1]}.elf", f"web1-{web[2]}.elf"} <= on_disk(small_fs)
    assert any("to make room for crash" in e["message"] for e in cat.events(web[0]))
    # a guest too big for what may be deleted is skipped, and nothing is deleted for it
    before = on_disk(small_fs)
    big = SimpleNamespace(name="web1", uuid="u-a", memory_bytes=64 * MIB)
    names, staged, skip = handler._prepare_target(new, big, cfg.policy_for("web1"))
    assert names is None and skip is not None and "not enough space" in skip
    assert on_disk(small_fs) == before

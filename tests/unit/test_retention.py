"""Disk planning: oldest first, per-domain minimum kept, limits enforced."""

from __future__ import annotations

from pathlib import Path

from vmcrash.capture.retention import KeptDump, plan_retention, plan_space
from vmcrash.capture.staging import decide_staging
from vmcrash.config import Retention

MiB = 1024 * 1024


def _d(i: int, uuid: str, size_mib: int, t: int) -> KeptDump:
    return KeptDump(i, uuid, Path(f"/d/{i}"), size_mib * MiB, t)


def test_fits_without_deleting() -> None:
    plan = plan_space([], need_bytes=100 * MiB, free_bytes=500 * MiB, reserve_bytes=100 * MiB,
                      keep_min_per_domain=1)
    assert plan.fits and plan.delete == ()


def test_deletes_oldest_first_but_keeps_minimum_per_domain() -> None:
    kept = [_d(1, "a", 100, 10), _d(2, "b", 100, 20), _d(3, "a", 100, 30), _d(4, "a", 100, 40)]
    plan = plan_space(kept, need_bytes=300 * MiB, free_bytes=150 * MiB, reserve_bytes=0, keep_min_per_domain=1)
    assert plan.fits
    assert [d.crash_id for d in plan.delete] == [1, 3]  # "b" has only one dump: kept


def test_does_not_fit_even_after_pruning() -> None:
    kept = [_d(1, "a", 10, 1)]
    plan = plan_space(kept, need_bytes=1000 * MiB, free_bytes=100 * MiB, reserve_bytes=50 * MiB,
                      keep_min_per_domain=0)
    assert not plan.fits and plan.delete == ()
    assert "not enough space" in plan.reason and "1000 MiB" in plan.reason


def test_retention_limits() -> None:
    kept = [_d(i, "a" if i % 2 else "b", 100, i) for i in range(1, 9)]
    doomed = plan_retention(kept, Retention(max_dumps_per_domain=2), now_ns=100)
    assert sorted(d.crash_id for d in doomed) == [1, 2, 3, 4]
    doomed = plan_retention(kept, Retention(max_dumps_per_domain=0, max_total_gib=300 * MiB / 1024**3), 100)
    assert [d.crash_id for d in doomed] == [1, 2, 3, 4, 5]
    doomed = plan_retention(kept, Retention(max_dumps_per_domain=0, max_age_days=1), now_ns=86400 * 10**9 + 5)
    assert [d.crash_id for d in doomed] == [1, 2, 3, 4]


def test_staging_decision() -> None:
    args = {"mode": "always", "tmpfs_dir": Path("/dev/shm"), "expected_bytes": 1000 * MiB,
            "headroom_bytes": 2000 * MiB, "dirty_allowance": 0}
    assert decide_staging(**args, mem_available=4000 * MiB, tmpfs_free=8000 * MiB).directory is not None
    assert decide_staging(**args, mem_available=2500 * MiB, tmpfs_free=8000 * MiB).directory is None
    assert decide_staging(**args, mem_available=9000 * MiB, tmpfs_free=500 * MiB).directory is None
    never = {**args, "mode": "never"}
    assert decide_staging(**never, mem_available=9 << 40, tmpfs_free=9 << 40).directory is None
    # auto: the page cache takes it unthrottled -> straight to the dump dir; too big -> tmpfs
    auto = {**args, "mode": "auto"}
    d = decide_staging(**{**auto, "dirty_allowance": 3000 * MiB}, mem_available=9 << 40, tmpfs_free=9 << 40)
    assert d.directory is None and "page cache" in d.reason
    d = decide_staging(**{**auto, "dirty_allowance": 500 * MiB}, mem_available=9 << 40, tmpfs_free=9 << 40)
    assert d.directory is not None


def test_dirty_allowance_from_proc(tmp_path: Path) -> None:
    from vmcrash.capture.staging import dirty_allowance_bytes

    (tmp_path / "sys" / "vm").mkdir(parents=True)
    for name, value in {"dirty_ratio": 20, "dirty_background_ratio": 10, "dirty_bytes": 0,
                        "dirty_background_bytes": 0}.items():
        (tmp_path / "sys" / "vm" / name).write_text(f"{value}\n")
    (tmp_path / "meminfo").write_text("MemAvailable:   10240000 kB\nDirty:   102400 kB\nWriteback:   0 kB\n")
    # midpoint of 10% and 20% of 10240000 kB = 1536000 kB, minus 102400 kB dirty
    assert dirty_allowance_bytes(tmp_path) == (1536000 - 102400) * 1024

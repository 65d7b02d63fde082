"""Fixtures of the guest-side tests: the real Debian 12 root (debootstrap, cached), copies of it, and
the one concurrent boot of the systemd guests (:func:`systemd_boots`, see _systemd_boots.py)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
from _systemd_boots import BootContext, Booted, Staged

if TYPE_CHECKING:  # libvirt is imported by the lab fixtures only, when they run
    from vmcrash.host.connection import Hypervisor
    from vmcrash.lab.rootfs import Rootfs
    from vmcrash.lab.systemd_guest import LabBootResult

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def debian_root() -> object:
    """The cached debootstrapped Debian 12 root (built here when absent: about a minute).

    Read-only by convention: tests that change files work on :func:`debian_copy`.
    """
    from vmcrash.lab.rootfs import build_rootfs

    t0 = time.monotonic()
    rootfs = build_rootfs()
    log.warning("debian root %s ready in %.1f s (build %.1f s)", rootfs.key, time.monotonic() - t0,
                rootfs.build_seconds)
    return rootfs


@pytest.fixture
def debian_copy(debian_root: object, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the Debian root (``cp -a``), removed after the test."""
    from vmcrash.lab.rootfs import copy_tree

    dest = tmp_path / "root"
    copy_tree(debian_root.root, dest)  # type: ignore[attr-defined]
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


def _staging_modules(session: pytest.Session) -> list[ModuleType]:
    """The modules of the session's selected tests that use :func:`systemd_boots`, in test order.

    :raises pytest.UsageError: such a module has no ``stage`` function.
    """
    modules: list[ModuleType] = []
    for item in session.items:
        module = getattr(item, "module", None)
        if module is None or module in modules or "systemd_boots" not in getattr(item, "fixturenames", ()):
            continue
        if not callable(getattr(module, "stage", None)):
            raise pytest.UsageError(f"{module.__name__} uses systemd_boots but has no stage(ctx) function")
        modules.append(module)
    return modules


@pytest.fixture(scope="session")
def systemd_boots(request: pytest.FixtureRequest, hv: Hypervisor, debian_root: Rootfs,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Booted]]:
    """Every systemd guest of the session's modules that use this fixture, booted in ONE ``boot_all`` call.

    Each module (test_guest_boot_proof.py, test_guest_boot_bound.py) stages its guests with its
    ``stage(ctx)`` (roots under its own directory, the lab NTP server on 127.0.0.1:123, the NTP gate
    in front of it); all of them then start at the same moment, one vCPU each, and run until every
    one has written its evidence and powered off (at most the longest timeout a module asked for).
    Only the modules of the selected tests are staged: a module run alone boots its own guests only.
    Yields module name -> :class:`Booted` (its state and its results by label).
    """
    from vmcrash.lab.image import LAB_DIR
    from vmcrash.lab.labntp import HostNtpServer, NtpGate
    from vmcrash.lab.systemd_guest import boot_all, build_boot_files

    modules = _staging_modules(request.session)
    work = LAB_DIR / "run" / f"guest-boots-{time.strftime('%H%M%S')}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        boot_files = build_boot_files()
        with HostNtpServer(port=123) as ntp, NtpGate(upstream_port=ntp.port) as gate:
            t0 = time.monotonic()
            staged: dict[str, Staged] = {}
            for module in modules:
                (work / module.__name__).mkdir()
                ctx = BootContext(hv=hv, debian_root=debian_root, work=work / module.__name__, ntp=ntp, gate=gate,
                                  tmp_path_factory=tmp_path_factory)
                staged[module.__name__] = module.stage(ctx)
                labels = [plan.label for plan in staged[module.__name__].plans]
                assert len(set(labels)) == len(labels), f"{module.__name__}: labels not unique: {labels}"
            owners = [name for name, st in staged.items() for _ in st.plans]
            plans = [plan for st in staged.values() for plan in st.plans]
            log.warning("%d systemd guests staged in %.1f s: %s", len(plans), time.monotonic() - t0,
                        ", ".join(f"{owner}:{plan.label}" for owner, plan in zip(owners, plans, strict=True)))
            results = boot_all(hv, plans, work, ntp, boot=boot_files,
                               timeout_s=max(st.timeout_s for st in staged.values())) if plans else []
        by_module: dict[str, dict[str, LabBootResult]] = {name: {} for name in staged}
        for owner, result in zip(owners, results, strict=True):
            by_module[owner][result.label] = result
            log.warning("%s %s: ran %.1f s (disk image %.1f s), console marks at %s s", owner, result.label,
                        result.run_seconds, result.image_seconds,
                        {k: round(v, 1) for k, v in result.console_seen_s.items()})
        yield {name: Booted(st.state, by_module[name], work / name) for name, st in staged.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""Fixtures of the guest-side tests: the real Debian 12 root (debootstrap, cached) and copies of it."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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

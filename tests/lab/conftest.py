"""Fixtures for lab tests of the daemon."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from labdaemon import Daemon, start_libvirtd_stable


@pytest.fixture
def daemon(tmp_path: Path, hv: object) -> Iterator[Callable[..., Daemon]]:
    """Factory for ``vmcrash watch`` subprocesses; all are killed at the end of the test."""
    made: list[Daemon] = []

    def make(extra: str = "", **kw: object) -> Daemon:
        d = Daemon(tmp_path / f"daemon{len(made)}", extra, **kw)  # type: ignore[arg-type]
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


class HugePagePool:
    """The host's pool of 2 MiB pages, grown for one test (hugepage-backed lab guests)."""

    NR = Path("/proc/sys/vm/nr_hugepages")

    def __init__(self, hv: object) -> None:
        self.hv = hv
        self.before = int(self.NR.read_text())

    def __call__(self, pages: int) -> None:
        """Make the pool ``pages`` larger than before the test (and have that many free)."""
        from vmcrash.lab.daemons import ensure_hugetlbfs

        assert ensure_hugetlbfs() is not None, "this kernel cannot mount hugetlbfs"
        self.NR.write_text(str(self.before + pages))
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(meminfo["HugePages_Free"].split()[0])
        assert free >= pages, f"the kernel gave only {free} of {pages} huge pages"

    def boot(self, guest: object, timeout_s: float) -> None:
        """Boot a lab guest; a libvirtd started before hugetlbfs was mounted is restarted once."""
        from vmcrash.errors import VmcrashError
        from vmcrash.lab.daemons import LIBVIRTD, stop_daemon

        try:
            guest.start()  # type: ignore[attr-defined]
        except VmcrashError as exc:
            if "hugetlbfs" not in str(exc):
                raise
            stop_daemon(LIBVIRTD)
            start_libvirtd_stable()
            self.hv.reconnect()  # type: ignore[attr-defined]
            guest.dom = self.hv.lookup(guest.name)  # type: ignore[attr-defined]
            guest.start()  # type: ignore[attr-defined]
        guest.wait_ready(timeout_s)  # type: ignore[attr-defined]

    def restore(self) -> None:
        self.NR.write_text(str(self.before))


@pytest.fixture
def hugepages(hv: object) -> Iterator[HugePagePool]:
    """``hugepages(n)`` grows the host's huge page pool by n for this test; ``hugepages.boot(guest, s)``
    boots a guest whose RAM may be hugepage-backed. The pool is put back after."""
    pool = HugePagePool(hv)
    yield pool
    pool.restore()

"""Fixtures for the ops features (fleet catalogue, notifications, metrics) against the real programs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lab"))

from labdaemon import Daemon  # noqa: E402
from pgcluster import PgCluster  # noqa: E402


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    """A PostgreSQL 15 cluster of this test module (initdb, Unix socket), removed after."""
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.close()


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

"""Fixtures for lab tests of the daemon."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from labdaemon import Daemon


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

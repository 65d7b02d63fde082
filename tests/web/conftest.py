"""Fixtures for the dashboard's tests: the lab daemon helper, a headless Chromium, an artifacts directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "lab"))

CHROMIUM = "/usr/bin/chromium"
#: Headless Chromium as root in a container: no sandbox (root), no GPU, nothing phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-default-apps", "--disable-extensions", "--disable-sync",
                 "--metrics-recording-only", "--no-first-run", "--mute-audio", "--disable-breakpad"]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$VMCRASH_ARTIFACTS/web`` or a session temp dir (printed)."""
    base = os.environ.get("VMCRASH_ARTIFACTS")
    path = Path(base) / "web" if base else tmp_path_factory.mktemp("web-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nweb test artifacts (screenshots): {path}", file=sys.stderr)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never a downloaded browser); a missing one fails."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (make setup does)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()

"""What a person sees in a terminal: `vmcrash dump`'s progress bar is never cut by log lines.

The ground truth is the byte stream a real pseudo-terminal received from the real command.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from labdaemon import Daemon

pytestmark = pytest.mark.lab

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BAR = "━"


def run_in_pty(args: list[str], timeout_s: float) -> tuple[int, bytes]:
    """Run ``args`` with stdin/stdout/stderr on a fresh pseudo-terminal; return (exit code, bytes seen)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    try:
        return proc.wait(10), bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_log_lines_print_above_the_progress_bar_not_inside_it(hv, lab_guest, daemon) -> None:  # type: ignore[no-untyped-def]
    g = lab_guest(memory_mib=384)
    d: Daemon = daemon(watch=[g.name])
    g.boot()
    rc, raw = run_in_pty([sys.executable, "-m", "vmcrash.cli.main", "--config", str(d.config), "-vv",
                          "dump", g.name, "--no-compact"], 240)
    assert rc == 0, raw.decode(errors="replace")[-3000:]
    # what the terminal shows as separate lines: split where the cursor goes back to column 0
    fragments = [ANSI.sub(b"", f).decode(errors="replace") for f in re.split(rb"\r\n|\r|\n", raw)]
    bars = [f for f in fragments if BAR in f]
    logs = [f for f in fragments if re.search(r"\b(INFO|WARNING|DEBUG)\b", f)]
    assert bars, "no progress bar drawn"
    assert logs, "no log lines at -vv"
    for f in fragments:
        assert not (BAR in f and re.search(r"\b(INFO|WARNING|DEBUG)\b", f)), f"log line inside the bar: {f!r}"
    assert any(g.name in f and "crash #" in f for f in fragments)

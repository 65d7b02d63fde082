"""One daemon per hypervisor (issue 17), against real libvirtd + QEMU + lab guests.

Ground truth: the processes' exit codes and stderr, ``virsh domstate``, the dump files on disk,
the catalogue rows.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labdaemon import Daemon, done

pytestmark = pytest.mark.lab


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def watch_once(d: Daemon, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(d.config), "watch", *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_second_daemon_refuses_whatever_its_dump_dir(hv, daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    first: Daemon = daemon(run_dir=run)
    first.start()
    assert first.proc is not None
    # the same config started by hand (an operator wanting to "see the logs")
    same = watch_once(first)
    assert same.returncode == 3, same.stderr
    lines = [ln for ln in same.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, same.stderr
    assert f"pid {first.proc.pid}" in lines[0] and str(first.config) in lines[0]
    assert "Traceback" not in same.stderr
    # another config, other dump dir and catalogue, the same hypervisor spelled another way
    other: Daemon = daemon('libvirt_uri = "qemu+unix:///system"\n', run_dir=run)
    assert other.dump_dir != first.dump_dir and other.catalog_path != first.catalog_path
    refused = watch_once(other)
    assert refused.returncode == 3 and f"pid {first.proc.pid}" in refused.stderr, refused.stderr
    # neither refused daemon touched anything
    assert not other.catalog_path.exists() and not other.dump_dir.exists()
    # doctor names the holder
    doc = first.cli("doctor", "--json")
    assert f"vmcrash watch pid {first.proc.pid}" in first.cli("doctor").stdout, doc.stderr
    assert first.stop() == 0
    # the lock went with the daemon
    again: Daemon = daemon(run_dir=run)
    again.start()
    assert again.stop() == 0


def test_standby_takes_over_after_sigkill_and_handles_a_panic_in_the_gap(  # type: ignore[no-untyped-def]
        hv, lab_guest, daemon, tmp_path: Path) -> None:
    run = tmp_path / "run"
    g = lab_guest(memory_mib=384)
    extra = f'[domains."{g.name}"]\nwatch = true\nrecovery = "restart"\n'
    a: Daemon = daemon(extra, run_dir=run)
    b: Daemon = daemon(extra, run_dir=run)
    c: Daemon = daemon(extra, run_dir=run)
    g.boot()
    a.start()
    b.start(args=("--standby",), ready="waiting to take over")
    # 1. the holder dies: the standby takes over within a second (its own log's clock)
    assert a.proc is not None
    killed_ns = time.time_ns()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    b.wait_log("reconciled:", 30)
    took = re.search(r"took over \S+ after ([0-9.]+) s", b.log_text())
    assert took is not None, b.log_text()[-2000:]
    assert float(took.group(1)) < 1.0
    assert (time.time_ns() - killed_ns) / 1e9 < 30
    # 2. a panic while nobody watches: b dies, c is a standby that is frozen until the panic is in
    c.start(args=("--standby",), ready="waiting to take over")
    assert b.proc is not None and c.proc is not None
    os.kill(c.proc.pid, signal.SIGSTOP)
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()
    g.crash()
    g.wait_state("crashed", 60)
    os.kill(c.proc.pid, signal.SIGCONT)
    c.wait_log("reconciled:", 60)
    rows = c.wait_row(g.name, done, 240)
    assert len(rows) == 1 and rows[0].state == "done", [(r.id, r.state, r.error) for r in rows]
    row = rows[0]
    assert row.source == "reconcile"
    path = Path(row.dump_path or "")
    assert path.exists() and path.stat().st_size >= 384 << 20
    assert Path(row.sidecar_path or "").exists()
    assert not list(path.parent.glob(".*.partial"))
    assert virsh("domstate", g.name) == "running"
    # the other daemons' catalogues have nothing of this panic: exactly one row in all
    assert a.rows(g.name) == [] and b.rows(g.name) == []
    assert c.stop() == 0


def test_manual_dump_refused_while_the_daemon_handles_the_crash(hv, lab_guest, daemon,  # type: ignore[no-untyped-def]
                                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    g = lab_guest(memory_mib=384)
    d: Daemon = daemon(f'[domains."{g.name}"]\nwatch = true\nrecovery = "restart"\n', run_dir=run)
    g.boot()
    d.start()
    g.crash()
    # the dump is done and the guest restarted; the daemon still owns the crash while it waits for
    # the rebooting guest's agent to correct its clock
    d.wait_row(g.name, lambda r: r.state in ("recovered", "clock"), 120)
    refused = d.cli("dump", g.name)
    assert refused.returncode == 3, (refused.returncode, refused.stdout, refused.stderr)
    assert "its crash is being handled by vmcrash watch pid" in refused.stderr
    assert len([ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]) == 1
    rows = d.wait_row(g.name, done, 180)
    assert len(rows) == 1 and rows[0].state == "done"
    assert d.stop() == 0
    assert len(d.rows(g.name)) == 1

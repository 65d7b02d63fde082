"""The one-daemon-per-hypervisor and per-crash locks (real flock on real files, real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmcrash.capture.daemon_lock import (
    CrashLocks,
    FileLock,
    HypervisorLock,
    _parse_holder,
    hypervisor_key,
    normalize_uri,
)
from vmcrash.errors import EXIT_ENVIRONMENT, OwnedElsewhere

HOLD_SCRIPT = """
import sys, time
from pathlib import Path
from vmcrash.capture.daemon_lock import HypervisorLock
lock = HypervisorLock(Path(sys.argv[1]), sys.argv[2], config="/etc/other.toml")
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder_process(run_dir: Path, key: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(run_dir), key], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_uri_spellings_of_one_local_hypervisor_share_a_key() -> None:
    assert normalize_uri("qemu+unix:///system") == "qemu:///system"
    assert normalize_uri(" qemu:///system ") == "qemu:///system"
    assert normalize_uri("qemu+ssh://h1/system") == "qemu+ssh://h1/system"
    assert hypervisor_key("qemu+unix:///system", "Host1") == hypervisor_key("qemu:///system", "host1")
    assert hypervisor_key("qemu:///system", "a") != hypervisor_key("qemu:///session", "a")


def test_second_holder_is_refused_with_pid_and_config(tmp_path: Path) -> None:
    proc = _holder_process(tmp_path, "h|qemu:///system")
    try:
        mine = HypervisorLock(tmp_path, "h|qemu:///system", config="/etc/mine.toml")
        with pytest.raises(OwnedElsewhere) as err:
            mine.acquire()
        assert err.value.pid == proc.pid
        assert err.value.config == "/etc/other.toml"
        assert err.value.exit_code == EXIT_ENVIRONMENT
        assert f"pid {proc.pid}" in str(err.value) and "/etc/other.toml" in str(err.value)
        assert "\n" not in str(err.value)
        # another hypervisor is another lock
        HypervisorLock(tmp_path, "h|qemu:///session").acquire()
    finally:
        proc.kill()
        proc.wait()


def test_sigkilled_holder_leaves_no_stale_lock_and_standby_takes_over_at_once(tmp_path: Path) -> None:
    proc = _holder_process(tmp_path, "h|x")
    standby = HypervisorLock(tmp_path, "h|x", config="/etc/standby.toml")
    holder = standby.holder()
    assert holder is not None and holder.pid == proc.pid
    took: list[float] = []

    def wait() -> None:
        assert standby.wait()
        took.append(time.monotonic())

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.3)
    assert not took  # still held
    killed = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t.join(5)
    assert took and took[0] - killed < 1.0
    holder = standby.holder()
    assert holder is not None and holder.pid == os.getpid() and holder.config == "/etc/standby.toml"
    standby.release()
    assert standby.holder() is None


def test_standby_wait_ends_when_asked_to_stop(tmp_path: Path) -> None:
    first = HypervisorLock(tmp_path, "k")
    first.acquire()
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert HypervisorLock(tmp_path, "k").wait(stop) is False
    first.release()


def test_crash_lock_refuses_a_second_handler_and_names_stay_in_the_run_dir(tmp_path: Path) -> None:
    locks = CrashLocks(tmp_path, "h|qemu:///system", config="/etc/a.toml")
    uuid = "3f1c6f1e-0d6e-4a43-9b59-0a1d2c3b4a5f"
    with locks.hold(uuid, role="watch", domain="web1"):
        with pytest.raises(OwnedElsewhere, match=r"web1: its crash is being handled by vmcrash watch pid \d+"):
            with CrashLocks(tmp_path, "h|qemu:///system").hold(uuid, role="dump", domain="web1"):
                pass
    with CrashLocks(tmp_path, "h|qemu:///system").hold(uuid, role="dump", domain="web1"):
        pass
    hostile = locks.lock_for("../../etc/passwd\x00")
    assert hostile.path.parent == tmp_path


def test_garbage_in_a_lock_file_gives_an_unknown_holder() -> None:
    for raw in (b"", b"\xff\xfe", b"[1,2]", b'{"pid": "1", "config": 5}', b'{"pid": true}', b"{" * 10000):
        h = _parse_holder(raw)
        assert h.pid is None and h.config is None
    assert "vmcrash process" in _parse_holder(b"").describe()


def test_lock_files_are_private(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lock = FileLock(run / "hv-x.lock")
    assert lock.try_acquire(role="watch", config=None, key="k")
    assert (run.stat().st_mode & 0o777) == 0o700
    assert (lock.path.stat().st_mode & 0o777) == 0o600
    lock.release()


def test_manual_dump_refuses_what_a_daemon_or_another_host_owns(tmp_path: Path) -> None:
    from vmcrash.capture.daemon_lock import Holder
    from vmcrash.cli.dump import daemon_watches, refuse_if_owned
    from vmcrash.store.catalog import Catalog

    here = Catalog(tmp_path / "c.sqlite", host="hostA")
    daemon = Holder(pid=os.getpid() + 1, role="watch", config=None, key="k", since_ns=1)
    # panicked and a daemon watches this hypervisor: the daemon's
    with pytest.raises(OwnedElsewhere, match="has panicked and vmcrash watch pid"):
        refuse_if_owned("web1", "u1", True, daemon, here)
    # running (a manual dump of a live guest), or nobody watching, or not a domain the daemon watches: ok
    refuse_if_owned("web1", "u1", False, daemon, here)
    refuse_if_owned("web1", "u1", True, None, here)
    refuse_if_owned("web1", "u1", True, daemon, here, watched=False)
    # a shared catalogue: host B is handling this domain's crash right now
    there = Catalog(tmp_path / "c.sqlite", host="hostB")
    crash = there.new_crash(domain="web1", uuid="u1", domain_id=3, source="event", panic_ns=time.time_ns())
    with pytest.raises(OwnedElsewhere, match=f"crash #{crash} is being handled by host hostB"):
        refuse_if_owned("web1", "u1", False, None, here)
    there.update(crash, state="done")
    refuse_if_owned("web1", "u1", False, None, here)
    # the holder's own config decides whether it watches the domain
    cfg = tmp_path / "daemon.toml"
    cfg.write_text('[domains."*"]\nwatch = false\n[domains."db1"]\nwatch = true\n')
    owner = Holder(pid=1, role="watch", config=str(cfg), key="k", since_ns=1)
    assert daemon_watches(owner, "db1") and not daemon_watches(owner, "web1")
    assert daemon_watches(Holder(1, "watch", "/nonexistent.toml", "k", 1), "web1")
    assert not daemon_watches(None, "web1")

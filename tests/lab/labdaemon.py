"""A real ``vmcrash watch`` process for lab tests: its own config, dump dir, catalogue and staging dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vmcrash.store.catalog import Catalog, CrashRow


class Daemon:
    """``vmcrash --config <tmp> watch`` as a subprocess, watching only the domains in ``watch``.

    ``extra`` is TOML inserted after the top-level keys (top-level keys first, then tables). A
    domain that ``extra`` already has a table for must set ``watch = true`` there itself.

    ``capture`` and ``recovery`` are the capture mode and recovery of every domain
    (``[domains."*"]``) unless a domain's own table says otherwise: ``stream`` and ``restart`` by
    default, because most lab tests are about the streamed pipeline with a fresh QEMU (killed
    mid-dump or between a restart's destroy and start, libvirt's dump jobs, tmpfs staging); the tests
    of the default policy (``auto``: hold + restart, or copy + reset) pass ``capture="auto",
    recovery="auto"``.
    """

    def __init__(self, directory: Path, extra: str = "", *, watch: list[str] | None = None,
                 dump_dir: Path | None = None, min_free_mib: int = 64, staging: str = "",
                 env: dict[str, str] | None = None, run_dir: Path | None = None, capture: str = "stream",
                 recovery: str = "restart") -> None:
        self.env = {**os.environ, **(env or {})}
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dump_dir = dump_dir or self.dir / "dumps"
        self.staging = Path("/dev/shm") / f"vmcrash-test-{os.getpid()}-{id(self):x}"
        self.config = self.dir / "vmcrash.toml"
        # Each test daemon gets its own lock directory unless a test shares one on purpose: the
        # one-daemon-per-hypervisor lock would otherwise serialize unrelated tests' daemons.
        self.run_dir = run_dir or self.dir / "run"
        self.catalog_path = self.dir / "catalog.sqlite"
        self.config.write_text(
            f'dump_dir = "{self.dump_dir}"\n'
            f'catalog = "{self.catalog_path}"\n'
            f"min_free_mib = {min_free_mib}\n"
            f'run_dir = "{self.run_dir}"\n'
            + extra + "\n"
            # Only this test's guests: other lab guests on the host (other tests, benchmarks) are not ours.
            + f'[domains."*"]\nwatch = false\ncapture = "{capture}"\nrecovery = "{recovery}"\n'
            + "".join(f'[domains.{json.dumps(n)}]\nwatch = true\n' for n in (watch or []) if n not in extra)
            + ("" if "[clock]" in extra else "[clock]\nsweep_interval_s = 0\nagent_wait_s = 60\n")
            + f'[staging]\ntmpfs_dir = "{self.staging}"\n' + staging)
        self.log_path = self.dir / "watch.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def cli(self, *args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run another vmcrash verb with this daemon's config."""
        return subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(self.config), *args],
                              capture_output=True, text=True, check=check, timeout=timeout)

    def start(self, timeout_s: float = 60, *, args: tuple[str, ...] = (), ready: str | None = "reconciled:") -> None:
        """Start ``vmcrash watch ARGS``; wait until ``ready`` is logged (None: do not wait)."""
        self.staging.mkdir(exist_ok=True)
        log = open(self.log_path, "ab")
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmcrash.cli.main", "--config", str(self.config), "-v", "watch", *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        if ready is not None:
            self.wait_log(ready, timeout_s)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout_s: float, count: int = 1) -> None:
        """Wait until ``text`` was logged ``count`` times since the last start."""
        deadline = time.monotonic() + timeout_s
        while self.log_text()[self._log_offset:].count(text) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout_s} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.proc = None

    def catalog(self) -> Catalog:
        return Catalog(self.catalog_path)

    def rows(self, domain: str | None = None) -> list[CrashRow]:
        if not self.catalog_path.exists():
            return []
        cat = self.catalog()
        try:
            return cat.crashes(domain=domain)
        finally:
            cat.close()

    def wait_row(self, domain: str, pred: Callable[[CrashRow], bool], timeout_s: float = 120,
                 count: int = 1) -> list[CrashRow]:
        """Wait until ``count`` rows of ``domain`` satisfy ``pred``; return them (newest first)."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = [r for r in self.rows(domain) if pred(r)]
            if len(rows) >= count:
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching catalogue row for {domain} within {timeout_s} s: "
                                     f"{[(r.id, r.state, r.error) for r in self.rows(domain)]}\n"
                                     f"{self.log_text()[-3000:]}")
            time.sleep(0.2)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.staging, ignore_errors=True)


def done(r: CrashRow) -> bool:
    """The row reached a final state (``vmcrash.store.states.FINAL``, spelled out: the test's own truth)."""
    return r.state in ("done", "skipped", "failed", "lost")


def start_libvirtd_stable(stable_s: float = 5.0, tries: int = 3) -> list[str]:
    """Start libvirtd after a test killed it, and make sure it stays up for ``stable_s``.

    A libvirtd that reconnects to a QEMU in the middle of a dump job has been seen to exit seconds
    after it first answered (CI, stop 20: the socket refused connections for the next 4 minutes).
    That is libvirt's restart, not vmcrash's; the test needs a libvirtd to go on with, so one that
    dies at once is started again (at most ``tries`` times). Returns one line per extra start, for
    the test's failure message.
    """
    from vmcrash.lab.daemons import LIBVIRTD, LibvirtDaemons, socket_alive

    notes: list[str] = []
    for attempt in range(tries):
        LibvirtDaemons().start()
        deadline = time.monotonic() + stable_s
        while time.monotonic() < deadline and socket_alive(LIBVIRTD.socket):
            time.sleep(0.2)
        if socket_alive(LIBVIRTD.socket):
            return notes
        notes.append(f"libvirtd exited within {stable_s} s of start {attempt + 1}; starting it again")
        print(notes[-1], file=sys.stderr)
    raise AssertionError("; ".join(notes))


def virsh(*args: str) -> str:
    """``virsh -c qemu:///system ARGS`` (the test's own look at libvirt); its stdout, stripped."""
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def sha256_of(path: Path) -> str:
    """The test's own checksum of a file (never the daemon's)."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

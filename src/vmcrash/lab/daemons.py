"""Start virtlogd/libvirtd when they are not running, and stop exactly what we started.

The lab hosts have no systemd as PID 1, so nothing starts libvirt for us. A daemon counts as
running when its UNIX socket accepts a connection.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmcrash.errors import EnvironmentProblem

__all__ = ["DaemonSpec", "LibvirtDaemons", "ensure_libvirtd", "ensure_hugetlbfs", "hugetlbfs_mounts", "socket_alive",
           "LIBVIRTD", "VIRTLOGD"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonSpec:
    """How to start one daemon and how to tell it is up."""

    name: str
    argv: tuple[str, ...]
    socket: Path
    pidfile: Path


VIRTLOGD = DaemonSpec("virtlogd", ("virtlogd", "-d"), Path("/run/libvirt/virtlogd-sock"),
                      Path("/run/virtlogd.pid"))
LIBVIRTD = DaemonSpec("libvirtd", ("libvirtd", "-d"), Path("/run/libvirt/libvirt-sock"),
                      Path("/run/libvirtd.pid"))


def socket_alive(path: Path, timeout_s: float = 1.0) -> bool:
    """True when a UNIX stream socket at ``path`` accepts a connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _pid_of(spec: DaemonSpec) -> int | None:
    try:
        pid = int(spec.pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise EnvironmentProblem(f"{what} did not happen within {timeout_s:.0f} s")


@dataclass
class LibvirtDaemons:
    """Context manager: libvirt's daemons up for the duration, stopped after if we started them."""

    specs: tuple[DaemonSpec, ...] = (VIRTLOGD, LIBVIRTD)
    started: list[DaemonSpec] = field(default_factory=list)

    def start(self, timeout_s: float = 20.0) -> None:
        """Start each daemon whose socket does not answer. :raises EnvironmentProblem:"""
        for spec in self.specs:
            if socket_alive(spec.socket):
                continue
            if spec is LIBVIRTD:
                ensure_hugetlbfs()  # libvirtd finds hugetlbfs mounts only when it starts
            log.info("starting %s", spec.name)
            try:
                subprocess.run(spec.argv, check=True, capture_output=True, timeout=30)
            except FileNotFoundError as exc:
                raise EnvironmentProblem(f"{spec.name} is not installed; run 'make setup'") from exc
            except subprocess.CalledProcessError as exc:
                raise EnvironmentProblem(f"{spec.name} failed to start: {exc.stderr.decode()[:300]}") from exc
            _wait(lambda s=spec: socket_alive(s.socket), timeout_s, f"{spec.name} answering on {spec.socket}")
            self.started.append(spec)

    def stop(self) -> None:
        """Stop the daemons this object started (newest first)."""
        for spec in reversed(self.started):
            stop_daemon(spec)
        self.started.clear()

    def __enter__(self) -> LibvirtDaemons:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


HUGETLBFS_MOUNT = Path("/dev/hugepages")


def hugetlbfs_mounts(mounts_text: str) -> list[str]:
    """Mount points of hugetlbfs in ``/proc/mounts`` text. Pure."""
    return [words[1] for line in mounts_text.splitlines() if len(words := line.split()) >= 3
            and words[2] == "hugetlbfs"]


def ensure_hugetlbfs(mount_point: Path = HUGETLBFS_MOUNT) -> str | None:
    """Mount hugetlbfs at ``mount_point`` unless one is mounted (lab guests with hugepage-backed RAM
    need it, and libvirtd must see it when it starts). Returns the mount point in use, or None
    when the kernel has no hugetlbfs or the mount is refused (those guests then cannot start)."""
    try:
        with open("/proc/mounts") as f:
            found = hugetlbfs_mounts(f.read())
        with open("/proc/filesystems") as f:
            supported = "hugetlbfs" in f.read().split()
    except OSError:
        return None
    if found:
        return found[0]
    if not supported:
        return None
    mount_point.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "hugetlbfs", "hugetlbfs", str(mount_point)], capture_output=True,
                         text=True, timeout=30)
    if res.returncode != 0:
        log.warning("cannot mount hugetlbfs at %s: %s", mount_point, res.stderr.strip())
        return None
    log.info("mounted hugetlbfs at %s", mount_point)
    return str(mount_point)


def stop_daemon(spec: DaemonSpec, *, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
    """Signal the daemon named in ``spec``'s pidfile and wait until it is gone."""
    pid = _pid_of(spec)
    if pid is None:
        return
    log.info("stopping %s (pid %d)", spec.name, pid)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True

    _wait(gone, timeout_s, f"{spec.name} (pid {pid}) exiting")


def ensure_libvirtd() -> LibvirtDaemons:
    """Start libvirt's daemons if needed and return the handle that can stop them again."""
    daemons = LibvirtDaemons()
    daemons.start()
    return daemons

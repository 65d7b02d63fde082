"""A real Debian 12 root file system for the guest-side tests, built by debootstrap and cached.

The root holds real unit files as Debian ships them: systemd as init, chrony, nginx, MariaDB,
cron and OpenSSH, plus python3 so the guest can run ``python3 -m vmcrash.guest``. It is built
once per content key (package list + build script + format) under
``/var/lib/vmcrash/lab/rootfs-<key>/root`` and then only read: tests that change files copy it
first (:func:`copy_tree`). :func:`make_disk_image` turns a tree into a raw ext4 image with
``mkfs.ext4 -d`` (no loop mounts).

Building needs root, ``debootstrap`` and a Debian mirror (found in apt's own sources, or
``VMCRASH_DEBIAN_MIRROR``). Services are never started on the host while packages install:
``policy-rc.d`` denies every start for the duration of the build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmcrash.errors import EnvironmentProblem, StorageError
from vmcrash.lab.image import LAB_DIR

__all__ = [
    "BASE_PACKAGES",
    "EXTRA_PACKAGES",
    "SUITE",
    "Rootfs",
    "VARIANTS",
    "build_rootfs",
    "build_variant",
    "copy_tree",
    "find_mirror",
    "make_disk_image",
    "rootfs_key",
]

log = logging.getLogger(__name__)

SUITE = "bookworm"
#: Bump when the build steps change so caches are rebuilt.
ROOTFS_FORMAT = 1
#: Installed by debootstrap itself (``--include``): init and device management.
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev")
#: Installed afterwards with apt in the chroot (no recommends): the services audited by the tests.
EXTRA_PACKAGES = ("chrony", "nginx-light", "mariadb-server", "cron", "openssh-server", "python3")
#: A fixed machine id: an empty one would make the first boot run presets (ConditionFirstBoot).
MACHINE_ID = "5ca1ab1e0ddba11c10c0ffee5eed0001"
HOSTNAME = "vmcrash-guest"
_POLICY_RC_D = "#!/bin/sh\n# vmcrash rootfs build: never start services in the build chroot\nexit 101\n"
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_BUILD_TIMEOUT_S = 1500


@dataclass(frozen=True)
class Rootfs:
    """A built root tree (read-only by convention).

    :ivar root: the tree itself. :ivar key: its content key. :ivar build_seconds: how long the
        build took (0.0 when it came from the cache). :ivar packages: dpkg's ``name version`` lines.
    """

    root: Path
    key: str
    build_seconds: float
    packages: tuple[str, ...]


def rootfs_key() -> str:
    """The cache key: a hash of the suite, package lists and build format (16 hex digits)."""
    h = hashlib.sha256()
    h.update(f"format={ROOTFS_FORMAT}\nsuite={SUITE}\n".encode())
    h.update(("base=" + ",".join(BASE_PACKAGES) + "\n").encode())
    h.update(("extra=" + ",".join(EXTRA_PACKAGES) + "\n").encode())
    h.update(f"machine-id={MACHINE_ID}\nhostname={HOSTNAME}\n".encode())
    h.update(_POLICY_RC_D.encode())
    return h.hexdigest()[:16]


def _sources_uris(text: str) -> list[tuple[str, str]]:
    """(uri, suites) pairs from a one-line ``.list`` or a deb822 ``.sources`` text (pure)."""
    found: list[tuple[str, str]] = []
    uris: list[str] = []
    suites = ""
    for raw in text.splitlines() + [""]:
        line = raw.strip()
        if line.startswith("#"):
            continue
        m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            found.append((m.group(1), m.group(2)))
            continue
        if not line:
            found.extend((u, suites) for u in uris)
            uris, suites = [], ""
        elif line.lower().startswith("uris:"):
            uris = line.split(":", 1)[1].split()
        elif line.lower().startswith("suites:"):
            suites = line.split(":", 1)[1].strip()
    return found


def find_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses for ``bookworm`` (``VMCRASH_DEBIAN_MIRROR`` overrides)."""
    forced = os.environ.get("VMCRASH_DEBIAN_MIRROR")
    if forced:
        return forced
    files = [apt_dir / "sources.list"] + sorted((apt_dir / "sources.list.d").glob("*"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for uri, suites in _sources_uris(text):
            if SUITE in suites.split() and "security" not in uri and uri.startswith("http"):
                return uri.rstrip("/")
    return _DEFAULT_MIRROR


def _run(cmd: list[str], *, timeout_s: float = _BUILD_TIMEOUT_S, env: dict[str, str] | None = None) -> str:
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    full_env.update(env or {})
    try:
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout_s, env=full_env)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{cmd[0]} not found; run 'make setup'") from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentProblem(f"{' '.join(cmd[:3])} took more than {timeout_s:.0f} s") from exc
    except subprocess.CalledProcessError as exc:
        tail = (exc.stdout or "")[-800:] + (exc.stderr or "")[-800:]
        raise EnvironmentProblem(f"{' '.join(cmd[:4])} failed (exit {exc.returncode}): {tail.strip()}") from exc
    return done.stdout


@contextmanager
def _proc_mounted(root: Path) -> Iterator[None]:
    target = root / "proc"
    _run(["mount", "-t", "proc", "proc", str(target)], timeout_s=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True, timeout=30)


def _build(root: Path, mirror: str) -> None:
    """Debootstrap ``root`` and install the extra packages into it (slow: about a minute)."""
    _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
          SUITE, str(root), mirror])
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(_POLICY_RC_D)
    policy.chmod(0o755)
    try:
        with _proc_mounted(root):
            _run(["chroot", str(root), "apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0",
                  "install", "--no-install-recommends", *EXTRA_PACKAGES])
            _run(["chroot", str(root), "apt-get", "clean"])
    finally:
        policy.unlink(missing_ok=True)
    (root / "etc/machine-id").write_text(MACHINE_ID + "\n")
    (root / "etc/hostname").write_text(HOSTNAME + "\n")


def _package_list(root: Path) -> tuple[str, ...]:
    out = _run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ${Version}\\n"], timeout_s=60)
    return tuple(sorted(line for line in out.splitlines() if line.strip()))


def build_rootfs(lab_dir: Path = LAB_DIR, *, mirror: str | None = None) -> Rootfs:
    """Build (or reuse) the cached Debian 12 root tree.

    :returns: the :class:`Rootfs`; ``build_seconds`` is 0.0 when it came from the cache.
    :raises EnvironmentProblem: not root, debootstrap missing, or the mirror failed.
    """
    key = rootfs_key()
    out = lab_dir / f"rootfs-{key}"
    manifest = out / "manifest.json"
    t0 = time.monotonic()
    built = 0.0
    if not manifest.exists():
        if os.geteuid() != 0:
            raise EnvironmentProblem("building the test root file system needs root (debootstrap, chroot)")
        lab_dir.mkdir(parents=True, exist_ok=True)
        for p in (lab_dir.parent, lab_dir):
            p.chmod(0o755)
        for stale in lab_dir.glob(".rootfs-build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        mirror = mirror or find_mirror()
        log.warning("building the Debian %s test root with debootstrap from %s (about a minute)", SUITE, mirror)
        tmp = Path(tempfile.mkdtemp(dir=lab_dir, prefix=".rootfs-build-"))
        try:
            (tmp / "root").mkdir()
            _build(tmp / "root", mirror)
            packages = _package_list(tmp / "root")
            built = time.monotonic() - t0
            (tmp / "manifest.json").write_text(json.dumps(
                {"key": key, "suite": SUITE, "mirror": mirror, "build_seconds": round(built, 1),
                 "packages": list(packages)}, indent=1))
            tmp.chmod(0o755)
            try:
                os.rename(tmp, out)
            except OSError:
                if not manifest.exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(manifest.read_text())
    return Rootfs(root=out / "root", key=key, build_seconds=built, packages=tuple(meta["packages"]))


#: Derived roots: name -> packages installed on top of the base root (apt resolves the conflicts:
#: systemd-timesyncd and ntpsec ``Conflicts: time-daemon``, so installing either purges chrony, as
#: on a stock Debian 12 that never installed chrony). The timesyncd root also has the QEMU guest
#: agent, for the host-side audit (``vmcrash guest audit --domain``).
VARIANTS = {"timesyncd": ("systemd-timesyncd", "qemu-guest-agent"), "ntpsec": ("ntpsec",)}


def build_variant(base: Rootfs, name: str, lab_dir: Path = LAB_DIR) -> Rootfs:
    """The base root with the packages of :data:`VARIANTS` ``[name]`` installed (cached like the base).

    Only the variant's packages are downloaded (the base keeps apt's lists), so this takes seconds.

    :raises EnvironmentProblem: not root, unknown variant, or apt failed.
    """
    if name not in VARIANTS:
        raise EnvironmentProblem(f"unknown root variant {name!r} (known: {', '.join(VARIANTS)})")
    key = f"{base.key}-{name}-{hashlib.sha256(('purge,' + ','.join(VARIANTS[name])).encode()).hexdigest()[:8]}"
    out = lab_dir / f"rootfs-{key}"
    manifest = out / "manifest.json"
    t0 = time.monotonic()
    built = 0.0
    if not manifest.exists():
        if os.geteuid() != 0:
            raise EnvironmentProblem("building the test root file system needs root (chroot)")
        tmp = Path(tempfile.mkdtemp(dir=lab_dir, prefix=".rootfs-build-"))
        try:
            copy_tree(base.root, tmp / "root")
            policy = tmp / "root/usr/sbin/policy-rc.d"
            policy.write_text(_POLICY_RC_D)
            policy.chmod(0o755)
            try:
                with _proc_mounted(tmp / "root"):
                    _run(["chroot", str(tmp / "root"), "apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0",
                          "install", "--purge", "--no-install-recommends", *VARIANTS[name]])
                    _run(["chroot", str(tmp / "root"), "apt-get", "clean"])
            finally:
                policy.unlink(missing_ok=True)
            packages = _package_list(tmp / "root")
            built = time.monotonic() - t0
            (tmp / "manifest.json").write_text(json.dumps(
                {"key": key, "base": base.key, "variant": name, "build_seconds": round(built, 1),
                 "packages": list(packages)}, indent=1))
            tmp.chmod(0o755)
            try:
                os.rename(tmp, out)
            except OSError:
                if not manifest.exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(manifest.read_text())
    return Rootfs(root=out / "root", key=key, build_seconds=built, packages=tuple(meta["packages"]))


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a root tree with owners, modes, links and device nodes (``cp -a``).

    :raises StorageError: the copy failed (disk full, ...).
    """
    try:
        subprocess.run(["cp", "-a", "--", str(src), str(dest)], check=True, capture_output=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        raise StorageError(f"cp -a failed: {exc.stderr.decode(errors='replace')[:300]}", path=str(dest)) from exc


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += max(st.st_size, 4096) if not os.path.islink(os.path.join(dirpath, name)) else 64
    return total


def make_disk_image(root: Path, image: Path, *, slack_bytes: int = 384 << 20, label: str = "vmcrash-root") -> int:
    """Write ``root`` into a fresh raw ext4 image at ``image`` (``mkfs.ext4 -d``); return its size in bytes.

    The image is sparse; ``slack_bytes`` of free space is left for the guest to write to.

    :raises EnvironmentProblem: mkfs.ext4 is missing or failed.
    """
    size_bytes = (_tree_bytes(root) * 5 // 4 + slack_bytes + (1 << 20) - 1) // (1 << 20) * (1 << 20)
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_bytes)
    _run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d", str(root), str(image)],
         timeout_s=600)
    return size_bytes

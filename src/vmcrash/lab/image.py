"""Build the lab guest's kernel + initramfs from the host's own packages, cached by content hash.

Inputs (all from Debian packages, see ``../shared/LAB.md``): ``/boot/vmlinuz-<ver>`` of
linux-image-amd64 with its modules, busybox-static, qemu-guest-agent and the libraries it links.
The output lives in ``/var/lib/vmcrash/lab/<hash>/`` and is world-readable, because QEMU runs as
``libvirt-qemu`` and must read the kernel and initrd.
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
from dataclasses import dataclass
from pathlib import Path

from vmcrash.errors import EnvironmentProblem
from vmcrash.lab.cpio import CpioEntry, write_newc

__all__ = ["LAB_DIR", "LabImage", "build_image", "find_kernel", "INIT_SCRIPT"]

log = logging.getLogger(__name__)

LAB_DIR = Path(os.environ.get("VMCRASH_LAB_DIR", "/var/lib/vmcrash/lab"))

#: Bump when the image layout changes so caches are rebuilt.
IMAGE_FORMAT = 4

#: Modules the guest loads (modprobe resolves their dependencies through depmod's index).
GUEST_MODULES = ("pvpanic-mmio", "pvpanic-pci", "qemu_fw_cfg", "virtio_pci", "virtio_console")

#: Busybox applets linked into the image (plus everything ``busybox --list-full`` reports).
BUSYBOX = "/bin/busybox"
QEMU_GA = "/usr/sbin/qemu-ga"

# The guest's /init. Kernel command-line words it understands:
#   fill_mb=N            fill N MiB of a tmpfs with random data before reporting ready
#   vmcrash.agent=MODE   qemu-ga (default) | garbage (a script answering junk) | none
#   vmcrash.hwclock=0    remove /sbin/hwclock, so guest-set-time is refused
#   vmcrash.host=NAME    the guest's hostname
# Serial-console markers the host waits for: "vmcrash-lab: ready".
INIT_SCRIPT = r"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp /var /dev/pts
mount -t tmpfs -o mode=0755 run /run
ln -sf /run /var/run
echo "vmcrash-lab: init started"
fill=0; agent=qemu-ga; hw=1
for w in $(cat /proc/cmdline); do
  case "$w" in
    fill_mb=*) fill="${w#fill_mb=}" ;;
    vmcrash.agent=*) agent="${w#vmcrash.agent=}" ;;
    vmcrash.hwclock=*) hw="${w#vmcrash.hwclock=}" ;;
    vmcrash.host=*) hostname "${w#vmcrash.host=}" ;;
  esac
done
[ "$hw" = 0 ] && rm -f /sbin/hwclock
modprobe -a pvpanic-mmio pvpanic-pci qemu_fw_cfg virtio_pci virtio_console
if [ "$fill" -gt 0 ] 2>/dev/null; then
  mkdir -p /fill
  mount -t tmpfs -o size=$((fill + 32))m,mode=0700 fill /fill
  # 16 MiB from /dev/urandom (about 50 MiB/s under TCG), then copies of it, each after a few bytes
  # of its own (a different odd count each time): no two 4 KiB pages are alike and none compresses,
  # about 3x faster than urandom throughout
  blk=16; [ "$fill" -lt "$blk" ] && blk="$fill"
  dd if=/dev/urandom of=/fill/block bs=1M count="$blk" 2>/dev/null
  left=$((fill - blk)); i=1
  { cat /fill/block
    while [ "$left" -gt 0 ]; do
      dd if=/dev/urandom bs=$((i * 2 + 1)) count=1 2>/dev/null
      if [ "$left" -ge "$blk" ]; then cat /fill/block; else dd if=/fill/block bs=1M count="$left" 2>/dev/null; fi
      left=$((left - blk)); i=$((i + 1))
    done; } > /fill/random
  rm -f /fill/block
  echo "vmcrash-lab: filled $fill MiB"
fi
port=""
# Wait for the agent port only if there is a virtio console device (device id 3) at all.
has_console=""
for f in /sys/bus/virtio/devices/*/device; do
  [ -r "$f" ] && [ "$(cat "$f")" = 0x0003 ] && has_console=1
done
if [ "$agent" != none ] && [ -n "$has_console" ]; then
  i=0
  while [ -z "$port" ] && [ $i -lt 600 ]; do
    for d in /sys/class/virtio-ports/vport*; do
      [ -r "$d/name" ] && [ "$(cat "$d/name")" = org.qemu.guest_agent.0 ] && port="/dev/${d##*/}"
    done
    [ -z "$port" ] && sleep 0.1
    i=$((i + 1))
  done
  [ -z "$port" ] && echo "vmcrash-lab: no agent port"
fi
if [ -n "$port" ] && [ "$agent" = qemu-ga ]; then
  qemu-ga -m virtio-serial -p "$port" -d -t /run && echo "vmcrash-lab: agent on $port"
elif [ -n "$port" ] && [ "$agent" = garbage ]; then
  # one open of the port for reading and writing (a second open fails: the port is busy)
  ( while true; do
      read -r line || sleep 0.1
      printf '\377{"return": {"bogus": [1e999, "\\u0000'
      printf '%s\n' '"]}} {{{ not json'
    done ) <>"$port" >&0 2>/dev/null &
  echo "vmcrash-lab: garbage agent on $port"
fi
echo "vmcrash-lab: ready"
while true; do sleep 3600; done
"""


@dataclass(frozen=True)
class LabImage:
    """A built lab image. Paths are world-readable files inside the cache dir."""

    directory: Path
    kernel: Path
    initrd: Path
    kernel_release: str
    content_hash: str


def find_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> tuple[Path, str]:
    """The newest ``/boot/vmlinuz-<ver>`` that has ``/lib/modules/<ver>``.

    :raises EnvironmentProblem: none installed (install ``linux-image-amd64``).
    """
    found: list[tuple[tuple[int, ...], Path, str]] = []
    for kernel in boot.glob("vmlinuz-*"):
        release = kernel.name.removeprefix("vmlinuz-")
        if (modules / release / "modules.dep").exists() or (modules / release / "kernel").is_dir():
            key = tuple(int(x) for x in re.findall(r"\d+", release))
            found.append((key, kernel, release))
    if not found:
        raise EnvironmentProblem(
            "no guest kernel: /boot/vmlinuz-<ver> with /lib/modules/<ver> not found; "
            "install linux-image-amd64 (make setup does)"
        )
    found.sort()
    _, kernel, release = found[-1]
    return kernel, release


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{cmd[0]} not found; run 'make setup'") from exc
    except subprocess.CalledProcessError as exc:
        raise EnvironmentProblem(f"{' '.join(cmd)} failed: {exc.stderr.strip()[:300]}") from exc


def _module_closure(release: str, names: tuple[str, ...]) -> list[Path]:
    """The .ko files of ``names`` and everything they depend on (via modinfo)."""
    seen: dict[str, Path] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or not name:
            continue
        filename = _run(["modinfo", "-k", release, "-F", "filename", name]).strip().splitlines()
        if not filename or filename[0] == "(builtin)" or not filename[0].startswith("/"):
            seen[name] = Path()
            continue
        seen[name] = Path(filename[0])
        depends = _run(["modinfo", "-k", release, "-F", "depends", name]).strip()
        todo.extend(d for d in depends.split(",") if d)
    return sorted(p for p in seen.values() if p != Path())


def _shared_libraries(binary: str) -> list[Path]:
    libs: list[Path] = []
    for line in _run(["ldd", binary]).splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _inputs(release: str, kernel: Path) -> dict[str, Path]:
    """Map of in-image path -> host file, everything the image is made of."""
    files: dict[str, Path] = {"/bin/busybox": Path(BUSYBOX), "/usr/sbin/qemu-ga": Path(QEMU_GA)}
    for lib in _shared_libraries(QEMU_GA):
        files[str(lib)] = lib
    base = Path("/lib/modules") / release
    for ko in _module_closure(release, GUEST_MODULES):
        files[str(Path("/lib/modules") / release / ko.relative_to(base))] = ko
    for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (base / extra).exists():
            files[f"/lib/modules/{release}/{extra}"] = base / extra
    for path in files.values():
        if not path.exists():
            raise EnvironmentProblem(f"{path} is missing; run 'make setup'")
    return files


def _hash_inputs(kernel: Path, files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    h.update(f"format={IMAGE_FORMAT}\n".encode())
    h.update(INIT_SCRIPT.encode())
    for dest, src in sorted(files.items()) + [("/vmlinuz", kernel)]:
        h.update(dest.encode() + b"\0")
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def _applets() -> list[str]:
    out = _run([BUSYBOX, "--list-full"])
    return [line.strip() for line in out.splitlines() if line.strip()]


def _tree_entries(root: Path) -> list[CpioEntry]:
    entries: list[CpioEntry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = "/" + os.path.relpath(dirpath, root) if dirpath != str(root) else ""
        if rel_dir:
            entries.append(CpioEntry(rel_dir, "dir", 0o755))
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            rel = f"{rel_dir}/{name}"
            if os.path.islink(full):
                entries.append(CpioEntry(rel, "symlink", data=os.readlink(full).encode()))
            else:
                mode = os.stat(full).st_mode & 0o777
                entries.append(CpioEntry(rel, "file", mode, Path(full).read_bytes()))
    return entries


def _assemble(stage: Path, release: str, files: dict[str, Path]) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc", "lib64"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    for dest, src in files.items():
        target = stage / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        os.chmod(target, 0o755 if os.access(src, os.X_OK) else 0o644)
    for applet in _applets():
        link = stage / applet.lstrip("/")
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (stage / "etc" / "hostname").write_text("vmcrash-lab\n")
    (stage / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (stage / "etc" / "group").write_text("root:x:0:\n")
    init = stage / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    _run(["depmod", "-b", str(stage), release])


def build_image(lab_dir: Path = LAB_DIR) -> LabImage:
    """Build (or reuse) the lab image for the host's newest installed Debian kernel.

    :raises EnvironmentProblem: a needed package is missing.
    """
    kernel, release = find_kernel()
    files = _inputs(release, kernel)
    digest = _hash_inputs(kernel, files)
    out = lab_dir / digest
    manifest = out / "manifest.json"
    if not manifest.exists():
        lab_dir.mkdir(parents=True, exist_ok=True)
        for p in (lab_dir.parent, lab_dir):
            p.chmod(0o755)
        with tempfile.TemporaryDirectory(dir=lab_dir, prefix=".build-") as tmp:
            stage = Path(tmp) / "root"
            _assemble(stage, release, files)
            result = Path(tmp) / "out"
            result.mkdir()
            (result / "initrd.img").write_bytes(write_newc(_tree_entries(stage)))
            shutil.copyfile(kernel, result / "vmlinuz")
            (result / "manifest.json").write_text(json.dumps(
                {"kernel_release": release, "hash": digest, "format": IMAGE_FORMAT}, indent=2))
            for p in result.iterdir():
                p.chmod(0o644)
            result.chmod(0o755)
            try:
                os.rename(result, out)
            except OSError:
                if not manifest.exists():  # a concurrent builder won the race: fine
                    raise
        log.info("built lab image %s for %s", digest, release)
    meta = json.loads(manifest.read_text())
    return LabImage(
        directory=out,
        kernel=out / "vmlinuz",
        initrd=out / "initrd.img",
        kernel_release=meta["kernel_release"],
        content_hash=digest,
    )

"""Boot the Debian test root under QEMU with systemd as init, its clock wrong, and bring back evidence.

The proof that services start only after the clock is stepped needs a real boot: the host's
Debian kernel, a small initramfs of our own (busybox + virtio/ext4 modules) that mounts the root
disk and hands over to ``/sbin/init`` (systemd), the root as a raw ext4 image, the guest clock
started 10 minutes behind (``<clock offset='variable' adjustment='-600'>``) and an NTP server
reachable only inside the lab: a chronyd started here, bound to 127.0.0.1, serving the host clock
(``local stratum 1``, ``-x``: it never touches the host clock), reached through QEMU's user-mode
network at 10.0.2.2. The guest gets a static address and no default route, so nothing it sends
can leave the machine.

Inside the guest a collector (:data:`COLLECTOR`) waits until boot has finished and chrony is
synchronised, records what systemd itself reports (``systemctl show`` with dual timestamps,
``systemd-analyze critical-chain``), the journal's (monotonic, realtime) stamps and the guest's
own ``python3 -m vmcrash.guest audit --json``, writes that as JSON to a second disk and powers
off. :func:`read_evidence` reads it back on the host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import libvirt

from vmcrash.errors import BadDataError, EnvironmentProblem
from vmcrash.host.connection import Hypervisor, call
from vmcrash.lab.cpio import CpioEntry, write_newc
from vmcrash.lab.guest import LabGuest
from vmcrash.lab.image import BUSYBOX, LAB_DIR, LabImage, find_kernel
from vmcrash.lab.rootfs import copy_tree, make_disk_image

__all__ = [
    "COLLECTOR",
    "EVIDENCE_MAGIC",
    "UNREACHABLE_NTP",
    "HostNtpServer",
    "SystemdGuest",
    "boot_all",
    "build_boot_files",
    "ntp_query",
    "prepare_lab_root",
    "read_evidence",
]

log = logging.getLogger(__name__)

BOOT_FORMAT = 1
#: Modules the initramfs loads (modprobe pulls in their dependencies).
BOOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "crc32c_generic", "ext4")
EVIDENCE_MAGIC = b"VMCRASH-EVIDENCE1\n"
EVIDENCE_DISK_BYTES = 32 << 20
#: The disk holds two evidence slots (the second for the boot after a live fix).
EVIDENCE_SLOT_BYTES = 16 << 20
#: Guest address on QEMU's user network; 10.0.2.2 is the host's loopback seen through slirp.
GUEST_ADDRESS = "10.0.2.15/24"
HOST_ALIAS = "10.0.2.2"

INITRAMFS_INIT = r"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "vmcrash-sysboot: initramfs"
modprobe -a virtio_pci virtio_blk virtio_net virtio_console crc32c_generic ext4
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /newroot
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "vmcrash-sysboot: cannot mount /dev/vda"
  poweroff -f
fi
echo "vmcrash-sysboot: switching to systemd"
umount /proc /sys
mount --move /dev /newroot/dev || umount /dev
exec switch_root /newroot /sbin/init
"""

#: The in-guest evidence collector (runs with the guest's python3; test harness, not product code).
COLLECTOR = r'''#!/usr/bin/python3
"""vmcrash lab: wait for boot and clock sync, record what systemd reports, write it to /dev/vdb, power off."""
import json, os, re, subprocess, sys, time

OUT = "/dev/vdb"
MAGIC = b"VMCRASH-EVIDENCE1\n"
SLOT = 16 << 20  # the second boot's evidence (live-fix proof) starts here
PROPS = ("Id,Names,LoadState,ActiveState,SubState,Type,After,Before,Wants,Requires,WantedBy,"
         "DefaultDependencies,FragmentPath,DropInPaths,UnitFileState,"
         "InactiveExitTimestamp,InactiveExitTimestampMonotonic,ActiveEnterTimestamp,"
         "ActiveEnterTimestampMonotonic,ExecMainStartTimestamp,ExecMainStartTimestampMonotonic,TimeoutStartUSec")
ENV = dict(os.environ, LC_ALL="C", SYSTEMD_COLORS="0", SYSTEMD_PAGER="", PYTHONPATH="/opt/vmcrash")


def run(cmd, timeout=180):
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except Exception as exc:
        rc, out, err = -1, "", repr(exc)
    return {"cmd": cmd, "rc": rc, "out": out, "err": err[-4000:], "seconds": round(time.monotonic() - t0, 3)}


ev = {"collector_started_monotonic_us": time.monotonic_ns() // 1000}
try:
    with open("/etc/vmcrash-lab.json") as f:
        lab = json.load(f)
except (OSError, ValueError):
    lab = {"daemon": "chrony", "reachable": True}
ev["lab"] = lab
ev["is_system_running"] = run(["systemctl", "is-system-running", "--wait"], timeout=400)
if lab.get("daemon") == "chrony":
    if lab.get("reachable", True):
        ev["waitsync"] = run(["chronyc", "-n", "-h", "127.0.0.1", "waitsync", "150", "0.1", "0", "1"], timeout=200)
    ev["tracking"] = run(["chronyc", "-n", "-h", "127.0.0.1", "tracking"])
    ev["sources"] = run(["chronyc", "-n", "-h", "127.0.0.1", "sources"])
ev["adjtimex_sync_file"] = os.path.exists("/run/systemd/timesync/synchronized")
units = run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full"])
names = sorted({line.split()[0] for line in units["out"].splitlines() if line.split()})
ev["list_units"] = units
ev["show"] = run(["systemctl", "show", "--timestamp=us+utc", "-p", PROPS, "--", *names])
ev["audit"] = run([sys.executable, "-m", "vmcrash.guest", "audit", "--json"])
if lab.get("hold_for_host"):
    # the host audits this running guest through its agent now, then creates the flag file
    ev["hold_started_monotonic_us"] = time.monotonic_ns() // 1000
    print("vmcrash-evidence: waiting for the host", flush=True)
    deadline = time.monotonic() + 400
    while not os.path.exists("/run/vmcrash-host-done") and time.monotonic() < deadline:
        time.sleep(0.5)
    ev["host_done"] = os.path.exists("/run/vmcrash-host-done")
    ev["audit_after_host"] = run([sys.executable, "-m", "vmcrash.guest", "audit", "--json"])
try:
    audited = [s["unit"] for s in json.loads(ev["audit"]["out"])["services"]]
except Exception:
    audited = []
# one call for all units (each call costs seconds under TCG); chains start at column 0
ev["critical_chain_all"] = run(["systemd-analyze", "critical-chain", "--no-pager", *audited]) if audited else None
ev["critical_chain_default"] = run(["systemd-analyze", "critical-chain", "--no-pager"])
entries = []
j = subprocess.run(["journalctl", "-b", "-o", "json", "--no-pager"], capture_output=True, timeout=120, env=ENV)
for line in j.stdout.splitlines():
    try:
        e = json.loads(line)
    except ValueError:
        continue
    msg = e.get("MESSAGE")
    if not isinstance(msg, str):
        msg = ""
    entries.append([int(e.get("__MONOTONIC_TIMESTAMP", 0)), int(e.get("__REALTIME_TIMESTAMP", 0)),
                    e.get("SYSLOG_IDENTIFIER", ""), e.get("_SYSTEMD_UNIT", ""), msg[:200]])
ev["journal"] = entries
ev["collector_done_monotonic_us"] = time.monotonic_ns() // 1000
MARK = "/var/lib/vmcrash-lab-first-boot-done"
second = os.path.exists(MARK)
reboot = bool(lab.get("live_fix")) and not second
if reboot:
    # live proof: fix the running system itself (--root /), then reboot into the fixed boot
    ev["live_fix"] = run([sys.executable, "-m", "vmcrash.guest", "fix", "--root", "/", *lab["live_fix"]])
    ev["live_audit"] = run([sys.executable, "-m", "vmcrash.guest", "audit", "--json"])
data = json.dumps(ev).encode()
with open(OUT, "r+b") as f:
    f.seek(SLOT if second else 0)
    f.write(MAGIC + b"%d\n" % len(data) + data)
    f.flush()
    os.fsync(f.fileno())
print("vmcrash-evidence: written %d bytes" % len(data), flush=True)
if reboot:
    open(MARK, "w").close()
    subprocess.run(["systemctl", "reboot", "--no-block"])
else:
    subprocess.run(["systemctl", "poweroff", "--no-block"])
'''

COLLECTOR_UNIT = """[Unit]
Description=vmcrash lab: collect boot evidence, then power off
After=multi-user.target

[Service]
# simple, not oneshot: the boot must be able to finish while the collector waits for it
Type=simple
ExecStart=/usr/bin/python3 /usr/local/sbin/vmcrash-evidence
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

NETWORK_FILE = f"""[Match]
Name=e*

[Network]
Address={GUEST_ADDRESS}
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


# -- kernel + initramfs --------------------------------------------------------------------


def _modinfo(release: str, field_name: str, module: str) -> str:
    try:
        return subprocess.run(["modinfo", "-k", release, "-F", field_name, module], check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise EnvironmentProblem(f"modinfo {module} for {release} failed; install linux-image-amd64") from exc


def _module_files(release: str) -> list[Path]:
    seen: dict[str, Path | None] = {}
    todo = list(BOOT_MODULES)
    while todo:
        name = todo.pop()
        if not name or name in seen:
            continue
        filename = _modinfo(release, "filename", name).splitlines()
        seen[name] = Path(filename[0]) if filename and filename[0].startswith("/") else None
        todo.extend(d for d in _modinfo(release, "depends", name).split(",") if d)
    return sorted(p for p in seen.values() if p is not None)


def _entries(stage: Path) -> list[CpioEntry]:
    out: list[CpioEntry] = []
    for dirpath, dirnames, filenames in os.walk(stage):
        dirnames.sort()
        rel = os.path.relpath(dirpath, stage)
        if rel != ".":
            out.append(CpioEntry("/" + rel, "dir", 0o755))
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            path = "/" + os.path.normpath(os.path.join(rel, name))
            if os.path.islink(full):
                out.append(CpioEntry(path, "symlink", data=os.readlink(full).encode()))
            else:
                out.append(CpioEntry(path, "file", os.stat(full).st_mode & 0o777, Path(full).read_bytes()))
    return out


def build_boot_files(lab_dir: Path = LAB_DIR) -> LabImage:
    """Kernel + an initramfs that mounts ``/dev/vda`` (ext4) and switches to systemd; cached by hash.

    :raises EnvironmentProblem: kernel, modules or busybox missing.
    """
    kernel, release = find_kernel()
    modules = _module_files(release)
    h = hashlib.sha256(f"format={BOOT_FORMAT}\n{INITRAMFS_INIT}".encode())
    for path in [kernel, Path(BUSYBOX), *modules]:
        h.update(str(path).encode() + b"\0" + path.read_bytes())
    digest = h.hexdigest()[:16]
    out = lab_dir / f"sysboot-{digest}"
    if not (out / "initrd.img").exists():
        lab_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lab_dir, prefix=".sysboot-") as tmp:
            stage = Path(tmp) / "stage"
            for d in ("bin", "sbin", "proc", "sys", "dev", "newroot"):
                (stage / d).mkdir(parents=True)
            shutil.copyfile(BUSYBOX, stage / "bin/busybox")
            (stage / "bin/busybox").chmod(0o755)
            for applet in ("sh", "mount", "umount", "mkdir", "sleep", "modprobe", "switch_root", "poweroff",
                           "echo", "cat", "ls"):
                (stage / "bin" / applet).symlink_to("busybox")
            for ko in modules:
                dest = stage / str(ko).lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ko, dest)
            base = Path("/lib/modules") / release
            for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
                if (base / extra).exists():
                    shutil.copyfile(base / extra, stage / "lib/modules" / release / extra)
            subprocess.run(["depmod", "-b", str(stage), release], check=True, capture_output=True)
            init = stage / "init"
            init.write_text(INITRAMFS_INIT)
            init.chmod(0o755)
            result = Path(tmp) / "out"
            result.mkdir()
            (result / "initrd.img").write_bytes(write_newc(_entries(stage)))
            shutil.copyfile(kernel, result / "vmlinuz")
            for p in result.iterdir():
                p.chmod(0o644)
            result.chmod(0o755)
            try:
                os.rename(result, out)
            except OSError:
                if not (out / "initrd.img").exists():
                    raise
    return LabImage(directory=out, kernel=out / "vmlinuz", initrd=out / "initrd.img",
                    kernel_release=release, content_hash=digest)


# -- the lab NTP server ----------------------------------------------------------------------


def ntp_query(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> float | None:
    """Ask an NTP server for the time once (SNTP client packet); its transmit time as a Unix time, or None."""
    packet = b"\x23" + b"\0" * 47  # LI=0, VN=4, mode=3 (client)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.sendto(packet, (host, port))
            data, _ = s.recvfrom(512)
        except OSError:
            return None
    if len(data) < 48 or data[0] & 0x07 != 4:
        return None
    seconds, fraction = struct.unpack("!II", data[40:48])
    return seconds - 2208988800 + fraction / 2**32


@dataclass
class HostNtpServer:
    """A chronyd of our own on 127.0.0.1:``port`` serving the host clock; never adjusts the host clock."""

    port: int = 0
    directory: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        """Start it and wait until it answers. :raises EnvironmentProblem:"""
        self.directory = Path(tempfile.mkdtemp(prefix="vmcrash-ntp-"))
        if not self.port:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        conf = self.directory / "chrony.conf"
        conf.write_text(
            f"bindaddress 127.0.0.1\nport {self.port}\ncmdport 0\nlocal stratum 1\nallow 127.0.0.1\n"
            f"pidfile {self.directory}/chronyd.pid\n")
        log_path = self.directory / "chronyd.log"
        try:
            with open(log_path, "wb") as logf:
                self.proc = subprocess.Popen(["chronyd", "-d", "-x", "-u", "root", "-f", str(conf)],
                                             stdout=logf, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise EnvironmentProblem("chronyd not found; install chrony (make setup does)") from exc
        deadline = time.monotonic() + timeout_s
        while ntp_query(self.port, timeout_s=0.5) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = log_path.read_text(errors="replace")[-500:]
                self.stop()
                raise EnvironmentProblem(f"lab chronyd on 127.0.0.1:{self.port} did not answer: {text}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the chronyd this object started and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the lab root ------------------------------------------------------------------------------


def _link(root: Path, link: str, target: str) -> None:
    path = root / link.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


#: An address on QEMU's user network where nothing answers: a guest given it has no time source.
UNREACHABLE_NTP = "10.0.2.99"


def prepare_lab_root(base: Path, dest: Path, *, ntp_port: int, vmcrash_src: Path | None = None,
                     ntp_host: str = HOST_ALIAS, hold_for_host: bool = False,
                     live_fix: tuple[str, ...] = ()) -> Path:
    """Copy ``base`` to ``dest`` and add what the lab boot needs; return ``dest``.

    Added: a static address without default route (systemd-networkd), the time daemon's only
    source = ``ntp_host``:``ntp_port`` (chrony: Debian's pool line commented out, ``makestep`` and
    everything else left as shipped; systemd-timesyncd: ``NTP=`` and an empty ``FallbackNTP=``
    in a drop-in, port 123 only, timesyncd has no port setting), the collector unit with its
    mode in ``/etc/vmcrash-lab.json``, and ``vmcrash`` (errors + guest only) under
    ``/opt/vmcrash`` so the guest can run ``python3 -m vmcrash.guest``. ``ntp_host`` =
    :data:`UNREACHABLE_NTP` gives a guest without a time source. ``hold_for_host``: the collector
    prints ``vmcrash-evidence: waiting for the host`` and waits (at most 400 s) for
    ``/run/vmcrash-host-done`` before it goes on, so the host can work on the running guest.
    ``live_fix``: after the first boot's evidence the collector runs ``python3 -m vmcrash.guest fix
    --root / LIVE_FIX...`` on the running guest and reboots; the second boot's evidence goes to
    slot 1 (boot the domain with ``restart_on_reboot``). chrony's ``rtcsync`` is commented out so
    the RTC keeps the wrong time across that reboot.
    """
    copy_tree(base, dest)
    (dest / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (dest / "etc/systemd/network/10-vmcrash-lab.network").write_text(NETWORK_FILE)
    _link(dest, "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
          "/lib/systemd/system/systemd-networkd.service")
    _link(dest, "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
          "/lib/systemd/system/systemd-networkd.socket")
    conf = dest / "etc/chrony/chrony.conf"
    if conf.exists():
        daemon = "chrony"
        text = re.sub(r"(?m)^(pool\s)", r"# vmcrash lab: no outside sources\n# \1", conf.read_text())
        if live_fix:
            text = re.sub(r"(?m)^(rtcsync)", r"# vmcrash lab: keep the RTC wrong across the reboot\n# \1", text)
        conf.write_text(text)
        (dest / "etc/chrony/sources.d").mkdir(parents=True, exist_ok=True)
        (dest / "etc/chrony/sources.d/vmcrash-lab.sources").write_text(
            f"server {ntp_host} port {int(ntp_port)} iburst minpoll 0 maxpoll 2\n")
    elif (dest / "lib/systemd/system/systemd-timesyncd.service").exists():
        daemon = "timesyncd"
        if int(ntp_port) != 123 and ntp_host != UNREACHABLE_NTP:
            raise EnvironmentProblem("systemd-timesyncd only talks to port 123; start the lab server there")
        (dest / "etc/systemd/timesyncd.conf.d").mkdir(parents=True, exist_ok=True)
        (dest / "etc/systemd/timesyncd.conf.d/vmcrash-lab.conf").write_text(
            f"[Time]\nNTP={ntp_host}\nFallbackNTP=\nPollIntervalMinSec=16\n")
    else:
        raise EnvironmentProblem(f"{base}: neither chrony nor systemd-timesyncd installed")
    (dest / "etc/vmcrash-lab.json").write_text(json.dumps(
        {"daemon": daemon, "ntp": f"{ntp_host}:{int(ntp_port)}", "reachable": ntp_host != UNREACHABLE_NTP,
         "hold_for_host": hold_for_host, "live_fix": list(live_fix)}))
    collector = dest / "usr/local/sbin/vmcrash-evidence"
    collector.parent.mkdir(parents=True, exist_ok=True)
    collector.write_text(COLLECTOR)
    collector.chmod(0o755)
    (dest / "etc/systemd/system/vmcrash-evidence.service").write_text(COLLECTOR_UNIT)
    _link(dest, "/etc/systemd/system/multi-user.target.wants/vmcrash-evidence.service",
          "/etc/systemd/system/vmcrash-evidence.service")
    src = vmcrash_src or Path(__file__).resolve().parents[1]
    pkg = dest / "opt/vmcrash/vmcrash"
    (pkg / "guest").mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "errors.py"):
        shutil.copyfile(src / name, pkg / name)
    for py in sorted((src / "guest").glob("*.py")):
        shutil.copyfile(py, pkg / "guest" / py.name)
    return dest


# -- the guest ------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


@dataclass
class SystemdGuest(LabGuest):
    """A lab domain that boots a disk image with systemd as init (see the module docstring).

    ``disk`` is the root image (the domain writes to it), ``evidence_disk`` the collector's output.
    """

    disk: Path = Path()
    evidence_disk: Path = Path()
    clock_offset_s: int = -600
    memory_mib: int = 1024
    vcpus: int = 1
    #: let a reboot inside the guest restart it (the live-fix proof) instead of ending the domain
    restart_on_reboot: bool = False

    def domain_xml(self) -> str:
        """The libvirt XML of this guest (pure given the fields)."""
        assert self.image is not None
        dom = ET.Element("domain", {"type": self.accel or "qemu"})
        _sub(dom, "name", self.name)
        _sub(dom, "memory", str(self.memory_mib), unit="MiB")
        _sub(dom, "vcpu", str(self.vcpus))
        os_el = _sub(dom, "os")
        _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
        _sub(os_el, "kernel", str(self.image.kernel))
        _sub(os_el, "initrd", str(self.image.initrd))
        _sub(os_el, "cmdline", "console=ttyS0 panic=-1 printk.time=1 net.ifnames=0")
        feats = _sub(dom, "features")
        _sub(feats, "acpi")
        _sub(feats, "apic")
        _sub(dom, "clock", offset="variable", adjustment=str(int(self.clock_offset_s)), basis="utc")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            _sub(dom, event, "restart" if event == "on_reboot" and self.restart_on_reboot else "destroy")
        devs = _sub(dom, "devices")
        _sub(devs, "emulator", "/usr/bin/qemu-system-x86_64")
        for path, dev in ((self.disk, "vda"), (self.evidence_disk, "vdb")):
            disk = _sub(devs, "disk", type="file", device="disk")
            _sub(disk, "driver", name="qemu", type="raw", cache="unsafe")
            _sub(disk, "source", file=str(path))
            _sub(disk, "target", dev=dev, bus="virtio")
        channel = _sub(devs, "channel", type="unix")
        _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
        iface = _sub(devs, "interface", type="user")
        _sub(iface, "model", type="virtio")
        serial = _sub(devs, "serial", type="file")
        _sub(serial, "source", path=str(self.serial_path), append="on")
        _sub(serial, "target", port="0")
        _sub(devs, "memballoon", model="none")
        ET.indent(dom)
        return ET.tostring(dom, encoding="unicode")

    def define(self) -> libvirt.virDomain:
        """Define the domain (TCG unless ``accel`` was set); does not start it."""
        assert self.hv is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        self.accel = self.accel or os.environ.get("VMCRASH_LAB_ACCEL", "qemu")
        self.dom = call(self.hv.conn.defineXML, self.domain_xml(), domain=self.name)
        return self.dom


def new_evidence_disk(path: Path, size_bytes: int = EVIDENCE_DISK_BYTES) -> Path:
    """A zero-filled raw disk for the collector to write to."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    return path


def read_evidence(path: Path, slot: int = 0) -> dict[str, object]:
    """The collector's JSON from the evidence disk (``slot`` 1: the second boot of a live-fix guest).

    :raises BadDataError: nothing written (the collector did not run) or the data is corrupt.
    """
    base = slot * EVIDENCE_SLOT_BYTES
    with open(path, "rb") as f:
        f.seek(base)
        head = f.read(len(EVIDENCE_MAGIC) + 16)
        if not head.startswith(EVIDENCE_MAGIC):
            raise BadDataError(f"{path}: no evidence written by the guest collector")
        rest = head[len(EVIDENCE_MAGIC):]
        length_text, _, _ = rest.partition(b"\n")
        if not length_text.isdigit() or int(length_text) > EVIDENCE_SLOT_BYTES - 64:
            raise BadDataError(f"{path}: bad evidence length {length_text[:20]!r}")
        f.seek(base + len(EVIDENCE_MAGIC) + len(length_text) + 1)
        data = f.read(int(length_text))
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise BadDataError(f"{path}: evidence is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadDataError(f"{path}: evidence is not a JSON object")
    return value


@dataclass
class LabBootResult:
    """What one lab boot produced: the evidence, the console, timings."""

    evidence: dict[str, object]
    serial: str
    run_seconds: float
    image_seconds: float
    extra: dict[str, object] = field(default_factory=dict)
    #: watched console string -> host seconds from start until it first appeared
    console_seen_s: dict[str, float] = field(default_factory=dict)


def boot_all(hv: Hypervisor, roots: list[Path], work: Path, ntp: HostNtpServer, *,
             clock_offset_s: int = -600, timeout_s: float = 600.0,
             boot: LabImage | None = None, vcpus: int = 1, watch: tuple[str, ...] = (),
             on_console: dict[str, Callable[[SystemdGuest], None]] | None = None,
             restart_on_reboot: tuple[bool, ...] = ()) -> list[LabBootResult]:
    """Boot one guest per root *at the same time* (one vCPU each) and return their evidence, in order.

    ``watch``: console strings whose first appearance is timed (host seconds since the guests were
    started, polled every 0.5 s): :attr:`LabBootResult.console_seen_s`. ``on_console``: console
    string -> function called once with the guest when the string first appears (it runs in this
    loop; the guests keep running meanwhile).

    :raises EnvironmentProblem: a guest did not power off in time (its console tail is in the message).
    :raises BadDataError: a guest powered off without writing evidence (console tail in the message).
    """
    boot = boot or build_boot_files()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    guests: list[SystemdGuest] = []
    image_s: list[float] = []
    try:
        for root in roots:
            tag = secrets.token_hex(3)
            disk = work / f"root-{tag}.img"
            evidence_disk = new_evidence_disk(work / f"evidence-{tag}.img")
            t0 = time.monotonic()
            make_disk_image(root, disk)
            image_s.append(time.monotonic() - t0)
            guest = SystemdGuest(hv=hv, image=boot, run_dir=work, keep_serial=False, disk=disk,
                                 evidence_disk=evidence_disk, clock_offset_s=clock_offset_s, vcpus=vcpus,
                                 restart_on_reboot=len(guests) < len(restart_on_reboot)
                                 and restart_on_reboot[len(guests)])
            guests.append(guest)
            guest.define()
        t0 = time.monotonic()
        for guest in guests:
            guest.start()
        ran: dict[str, float] = {}
        seen: dict[str, dict[str, float]] = {g.name: {} for g in guests}
        while len(ran) < len(guests):
            for guest in guests:
                if guest.name in ran:
                    continue
                assert guest.dom is not None
                if watch or on_console:
                    console = guest.serial_bytes()
                    for marker in (*watch, *(on_console or {})):
                        if marker not in seen[guest.name] and marker.encode() in console:
                            seen[guest.name][marker] = time.monotonic() - t0
                            if on_console and marker in on_console:
                                on_console[marker](guest)
                if not call(guest.dom.isActive, domain=guest.name):
                    ran[guest.name] = time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                late = [g for g in guests if g.name not in ran]
                raise EnvironmentProblem(f"{late[0].name}: still running after {timeout_s:.0f} s; console tail: "
                                         f"{late[0].serial_text()[-1500:]!r}")
            time.sleep(0.5)
        results = []
        for guest, img_s in zip(guests, image_s, strict=True):
            serial = guest.serial_text()
            try:
                evidence = read_evidence(guest.evidence_disk)
            except BadDataError as exc:
                raise BadDataError(f"{exc}; console tail: {serial[-1500:]!r}") from exc
            extra: dict[str, object] = {"ntp_port": ntp.port}
            if guest.restart_on_reboot:
                try:
                    extra["second_boot"] = read_evidence(guest.evidence_disk, 1)
                except BadDataError as exc:
                    raise BadDataError(f"second boot: {exc}; console tail: {serial[-1500:]!r}") from exc
            results.append(LabBootResult(evidence=evidence, serial=serial, run_seconds=ran[guest.name],
                                         image_seconds=img_s, extra=extra, console_seen_s=seen[guest.name]))
        return results
    finally:
        for guest in guests:
            guest.cleanup()
            guest.disk.unlink(missing_ok=True)
            guest.evidence_disk.unlink(missing_ok=True)

"""Throwaway crash guests: domain XML from a :class:`GuestSpec`, and their whole life cycle.

Every domain a :class:`LabGuest` defines it also destroys and undefines (context manager, and
:func:`sweep_stale` for leftovers of processes that died). Names are unique per run:
``vmcrash-lab-<pid>-<n>-<random>``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import libvirt

from vmcrash.errors import AgentUnavailable, EnvironmentProblem, UsageError, VmcrashError
from vmcrash.host.agent import Agent
from vmcrash.host.connection import Hypervisor, call, state_name
from vmcrash.lab import kvm
from vmcrash.lab.image import LAB_DIR, LabImage, build_image

__all__ = [
    "NAME_PREFIX",
    "GuestSpec",
    "LabGuest",
    "domain_xml",
    "sweep_stale",
    "destroy_and_undefine",
    "unique_name",
    "PANIC_LINE",
    "READY_MARK",
]

log = logging.getLogger(__name__)

NAME_PREFIX = "vmcrash-lab"
READY_MARK = "vmcrash-lab: ready"
#: What the guest kernel prints when it panics (checked on the serial console).
PANIC_LINE = "Kernel panic - not syncing"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_DISK_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_counter = itertools.count(1)


def unique_name(prefix: str = NAME_PREFIX) -> str:
    """A domain name unique to this process and call: ``<prefix>-<pid>-<n>-<hex4>``."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class GuestSpec:
    """Parameters of a lab guest.

    :ivar memory_mib: guest RAM. :ivar vcpus: virtual CPUs.
    :ivar fill_mb: MiB of random data written into a guest tmpfs before it reports ready.
    :ivar panic_model: ``"isa"`` (pvpanic at 0x505, via ACPI) or ``"pci"`` (pvpanic-pci).
    :ivar rtc: ``"host"`` (RTC follows host time) or ``"guest"`` (RTC stops with the guest).
    :ivar clock_offset_s: start the guest clock this many seconds off (``offset='variable'``).
    :ivar vmcoreinfo: the vmcoreinfo feature (VMCOREINFO reaches dumps).
    :ivar agent: a guest agent channel, with ``agent_mode`` answering on it.
    :ivar agent_mode: ``"qemu-ga"`` or ``"garbage"`` (a guest script that answers junk).
    :ivar hwclock: keep ``/sbin/hwclock`` in the guest (``guest-set-time`` needs it).
    :ivar on_crash: libvirt's ``<on_crash>`` action; ``preserve`` leaves the guest to vmcrash.
    :ivar on_reboot: libvirt's ``<on_reboot>`` action (``destroy``: a reboot inside the guest ends it).
    :ivar kernel_cmdline: the whole kernel command line, instead of the lab init's (:meth:`cmdline`):
        for guests that boot another init (the systemd guest of :mod:`vmcrash.lab.systemd_guest`).
    :ivar disks: raw disk images attached as virtio ``vda``, ``vdb``... (``cache='unsafe'``: throwaway).
    :ivar network: ``"user"``: a virtio NIC on QEMU's user-mode network (the host is 10.0.2.2).
    :ivar accel: ``"kvm"``, ``"qemu"`` (TCG) or ``None`` for the probed best.
    :ivar memory_backing: ``"anonymous"`` (QEMU's private RAM, the default), or RAM in a shared
        file the QEMU process holds (what capture mode ``hold`` needs): ``"memfd"`` (one memfd),
        ``"hugepages"`` (hugetlbfs, 2 MiB pages from the host's pool: ``/proc/sys/vm/nr_hugepages``
        must have room, and libvirtd must have seen hugetlbfs mounted when it started), ``"file"``
        (a file in libvirt's ``memory_backing_dir``).
    :ivar numa_cells: 0 for none, else that many guest NUMA cells splitting the RAM evenly (and the
        vCPUs round robin): one QEMU memory backend per cell.
    """

    memory_mib: int = 512
    vcpus: int = 1
    fill_mb: int = 0
    panic_model: Literal["isa", "pci", "none"] = "isa"
    rtc: Literal["host", "guest"] = "host"
    clock_offset_s: int | None = None
    vmcoreinfo: bool = True
    agent: bool = True
    agent_mode: Literal["qemu-ga", "garbage"] = "qemu-ga"
    hwclock: bool = True
    on_crash: str = "preserve"
    on_reboot: str = "restart"
    kernel_cmdline: str | None = None
    disks: tuple[Path, ...] = ()
    network: Literal["none", "user"] = "none"
    accel: str | None = None
    hostname: str | None = None
    extra_cmdline: str = ""
    memory_backing: Literal["anonymous", "memfd", "hugepages", "file"] = "anonymous"
    numa_cells: int = 0

    def cmdline(self) -> str:
        """The guest kernel command line."""
        words = ["console=ttyS0", "panic=0", "ignore_loglevel", "printk.time=1"]
        if self.fill_mb:
            words.append(f"fill_mb={int(self.fill_mb)}")
        # The init starts the agent whenever the channel exists (so `doctor --fix` adding it works).
        words.append(f"vmcrash.agent={self.agent_mode}")
        if not self.hwclock:
            words.append("vmcrash.hwclock=0")
        if self.hostname:
            words.append(f"vmcrash.host={self.hostname}")
        if self.extra_cmdline:
            words.append(self.extra_cmdline)
        return " ".join(words)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def domain_xml(name: str, spec: GuestSpec, image: LabImage, serial_path: Path, accel: str) -> str:
    """The libvirt domain XML of a lab guest (pure)."""
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.Element("domain", {"type": accel})
    _sub(dom, "name", name)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    if spec.memory_backing != "anonymous":
        backing = _sub(dom, "memoryBacking")
        if spec.memory_backing == "hugepages":
            _sub(backing, "hugepages")
        else:
            _sub(backing, "source", type=spec.memory_backing)
        _sub(backing, "access", mode="shared")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", str(image.kernel))
    _sub(os_el, "initrd", str(image.initrd))
    _sub(os_el, "cmdline", spec.kernel_cmdline if spec.kernel_cmdline is not None else spec.cmdline())
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    _sub(feats, "apic")
    if spec.vmcoreinfo:
        _sub(feats, "vmcoreinfo", state="on")
    if accel == "kvm" or spec.numa_cells:
        cpu = _sub(dom, "cpu", mode="host-passthrough") if accel == "kvm" else _sub(dom, "cpu")
        if spec.numa_cells:
            numa = _sub(cpu, "numa")
            per_cell_mib = spec.memory_mib // spec.numa_cells
            for cell in range(spec.numa_cells):
                attrs = {"id": str(cell), "memory": str(per_cell_mib), "unit": "MiB"}
                cpus = ",".join(str(c) for c in range(spec.vcpus) if c % spec.numa_cells == cell)
                if cpus:  # a cell without CPUs is a memory-only node (libvirt >= 6.5)
                    attrs["cpus"] = cpus
                if spec.memory_backing != "anonymous":
                    attrs["memAccess"] = "shared"
                _sub(numa, "cell", **attrs)
    if spec.clock_offset_s is not None:
        clock = _sub(dom, "clock", offset="variable", adjustment=str(int(spec.clock_offset_s)), basis="utc")
    else:
        clock = _sub(dom, "clock", offset="utc")
    if spec.rtc == "guest":
        _sub(clock, "timer", name="rtc", track="guest")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", spec.on_reboot)
    _sub(dom, "on_crash", spec.on_crash)
    devs = _sub(dom, "devices")
    _sub(devs, "emulator", "/usr/bin/qemu-system-x86_64")
    if len(spec.disks) > len(_DISK_LETTERS):
        raise UsageError(f"a lab guest takes at most {len(_DISK_LETTERS)} disks, not {len(spec.disks)}")
    for index, path in enumerate(spec.disks):
        disk = _sub(devs, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="raw", cache="unsafe")
        _sub(disk, "source", file=str(path))
        _sub(disk, "target", dev="vd" + _DISK_LETTERS[index], bus="virtio")
    serial = _sub(devs, "serial", type="file")
    _sub(serial, "source", path=str(serial_path), append="on")
    _sub(serial, "target", port="0")
    if spec.agent:
        chan = _sub(devs, "channel", type="unix")
        _sub(chan, "target", type="virtio", name="org.qemu.guest_agent.0")
    if spec.network == "user":
        nic = _sub(devs, "interface", type="user")
        _sub(nic, "model", type="virtio")
    if spec.panic_model == "isa":
        panic = _sub(devs, "panic", model="isa")
        _sub(panic, "address", type="isa", iobase="0x505")
    _sub(devs, "memballoon", model="none")
    if spec.panic_model == "pci":
        # libvirt 9.0 has no <panic model='pvpanic'/> (PCI) yet: pass the device to QEMU directly.
        # libvirt still reports QEMU's GUEST_PANICKED event as CRASHED/PANICKED.
        cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": "-device"})
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": "pvpanic-pci,bus=pci.0,addr=0x1e"})
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


_NAME_RE = re.compile(rf"^{NAME_PREFIX}-(\d+)-\d+-[0-9a-f]{{4}}$")


def destroy_and_undefine(dom: libvirt.virDomain) -> None:
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
            log.warning("destroy %s: %s", dom.name(), exc)
    try:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def sweep_stale(hv: Hypervisor) -> list[str]:
    """Destroy and undefine lab domains left behind by processes that no longer exist."""
    removed = []
    for dom in hv.domains():
        m = _NAME_RE.match(dom.name())
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        destroy_and_undefine(dom)
        removed.append(dom.name())
    return removed


def probe_kvm(hv: Hypervisor, image: LabImage, timeout_s: float = kvm.PROBE_TIMEOUT_S) -> bool:
    """Boot a minimal guest under KVM; True when its init runs within ``timeout_s`` seconds."""
    spec = GuestSpec(memory_mib=256, agent=False, accel="kvm")
    guest = LabGuest(spec, hv=hv, image=image, name=unique_name())
    try:
        guest.start()
        guest.wait_serial("vmcrash-lab: init started", timeout_s)
        return True
    except Exception as exc:  # any failure means "KVM is not usable here"
        log.info("KVM probe failed: %s", str(exc)[:200])
        return False
    finally:
        guest.cleanup()


def best_accel(hv: Hypervisor, image: LabImage) -> str:
    """``"kvm"`` when a KVM guest really boots here, else ``"qemu"`` (TCG); see :mod:`vmcrash.lab.kvm`."""
    return kvm.best_accel(hv, image, probe_kvm)


@dataclass
class LabGuest:
    """One throwaway lab domain. Use as a context manager: it is always destroyed and undefined.

    ``guest.serial_text()`` is the ground truth of what the guest kernel printed.
    """

    spec: GuestSpec = field(default_factory=GuestSpec)
    hv: Hypervisor | None = None
    name: str = field(default_factory=unique_name)
    image: LabImage | None = None
    run_dir: Path = LAB_DIR / "run"
    keep_serial: bool = False
    dom: libvirt.virDomain | None = None
    accel: str = ""

    def __post_init__(self) -> None:
        self._own_hv = self.hv is None
        if self.hv is None:
            self.hv = Hypervisor()
        if self.image is None:
            self.image = build_image()
        self.serial_path = self.run_dir / f"{self.name}.serial"

    # -- life cycle ------------------------------------------------------------------------

    def define(self) -> libvirt.virDomain:
        """Define (persistently) the domain; returns it. Does not start it."""
        assert self.hv is not None and self.image is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        self.accel = self.spec.accel or best_accel(self.hv, self.image)
        xml = domain_xml(self.name, self.spec, self.image, self.serial_path, self.accel)
        self.dom = call(self.hv.conn.defineXML, xml, domain=self.name)
        return self.dom

    def start(self) -> None:
        """Start the defined domain (defining it first if needed)."""
        if self.dom is None:
            self.define()
        assert self.dom is not None
        call(self.dom.create, domain=self.name)

    def boot(self, timeout_s: float = 180.0) -> float:
        """Define, start and wait until ready; return seconds from start to ready."""
        t0 = time.monotonic()
        self.start()
        self.wait_ready(timeout_s)
        return time.monotonic() - t0

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Wait for the guest's ready mark on its console and, with an agent, for the agent to answer.

        :raises EnvironmentProblem: not ready in time (the console tail is in the message).
        """
        deadline = time.monotonic() + timeout_s
        self.wait_serial(READY_MARK, timeout_s)
        if self.spec.agent and self.spec.agent_mode == "qemu-ga":
            agent = self.agent(timeout_s=2)
            while True:
                try:
                    agent.ping(timeout_s=2)
                    return
                except AgentUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def wait_serial(self, text: str, timeout_s: float, *, after: int = 0) -> int:
        """Wait until ``text`` appears in the console log after byte ``after``; return its offset."""
        deadline = time.monotonic() + timeout_s
        while True:
            data = self.serial_bytes()
            pos = data.find(text.encode(), after)
            if pos >= 0:
                return pos
            if time.monotonic() > deadline:
                tail = data[-600:].decode("utf-8", "replace")
                raise EnvironmentProblem(f"{self.name}: {text!r} not on the console within {timeout_s:.0f} s; "
                                         f"console tail: {tail!r}")
            if self.dom is not None and not call(self.dom.isActive):
                raise EnvironmentProblem(f"{self.name}: domain stopped while waiting for {text!r}")
            time.sleep(0.1)

    def serial_bytes(self) -> bytes:
        """Everything the guest wrote to its serial console so far."""
        try:
            return self.serial_path.read_bytes()
        except FileNotFoundError:
            return b""

    def serial_text(self) -> str:
        """The console log as text (undecodable bytes replaced)."""
        return self.serial_bytes().decode("utf-8", "replace")

    def agent(self, *, timeout_s: int = 5) -> Agent:
        """The guest agent of this domain."""
        assert self.dom is not None
        return Agent(self.dom, timeout_s=timeout_s)

    def crash(self) -> None:
        """Make the guest kernel panic through the agent (sysrq 'c', after its reply is out)."""
        self.agent().exec("/bin/sh", ["-c", "sleep 0.3; echo c > /proc/sysrq-trigger"])

    def state(self) -> tuple[str, int]:
        """(state name, reason code) as libvirt reports them."""
        assert self.dom is not None
        state, reason = call(self.dom.state, domain=self.name)
        return state_name(state), reason

    def wait_state(self, state: str, timeout_s: float) -> None:
        """Poll until libvirt reports ``state`` (lab helper; the daemon uses events)."""
        deadline = time.monotonic() + timeout_s
        while self.state()[0] != state:
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"{self.name}: not {state} within {timeout_s:.0f} s "
                                         f"(now {self.state()[0]})")
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Destroy and undefine the domain (if it exists) and remove its console log."""
        assert self.hv is not None
        try:
            dom = self.dom or self.hv.conn.lookupByName(self.name)
        except libvirt.libvirtError:
            dom = None
        if dom is not None:
            try:
                destroy_and_undefine(dom)
            except (libvirt.libvirtError, VmcrashError) as exc:
                log.warning("cleanup of %s: %s", self.name, exc)
        self.dom = None
        if not self.keep_serial:
            self.serial_path.unlink(missing_ok=True)
        if self._own_hv:
            self.hv.close()

    def __enter__(self) -> LabGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def with_spec(self, **changes: object) -> GuestSpec:
        """A copy of this guest's spec with ``changes``."""
        return replace(self.spec, **changes)  # type: ignore[arg-type]

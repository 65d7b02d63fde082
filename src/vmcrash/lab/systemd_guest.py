"""Boot a debootstrapped Debian root under QEMU with systemd as init, its clock wrong, and bring back evidence.

The proof that services start only after the clock is stepped needs a real boot: the host's
Debian kernel, a small initramfs of our own (busybox + virtio/ext4 modules, its init script is
``data/sysboot-init.sh``) that mounts the root disk and hands over to ``/sbin/init`` (systemd),
the root as a raw ext4 image, the guest clock started 10 minutes behind
(``<clock offset='variable' adjustment='-600'>``) and an NTP server reachable only inside the lab
(:class:`~vmcrash.lab.labntp.HostNtpServer`, reached through QEMU's user-mode network at
10.0.2.2, optionally behind an :class:`~vmcrash.lab.labntp.NtpGate`). The guest gets a static
address and no default route, so nothing it sends can leave the machine. Its domain XML is the
lab's one builder (:func:`vmcrash.lab.guest.domain_xml`, from :func:`systemd_guest_spec`).

Inside the guest a collector (``data/evidence_collector.py``) waits until boot has finished and
the time daemon is synchronised, records what systemd itself reports (``systemctl show`` with dual
timestamps and condition results, ``systemd-analyze critical-chain``), the journal's
(monotonic, realtime) stamps and the guest's own ``python3 -m vmcrash.guest audit --json``,
writes that as JSON to a second disk and powers off. :func:`read_evidence` reads it back on the host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from vmcrash.errors import BadDataError, EnvironmentProblem
from vmcrash.host.connection import Hypervisor, call
from vmcrash.lab.cpio import CpioEntry, write_newc
from vmcrash.lab.guest import GuestSpec, LabGuest
from vmcrash.lab.image import BUSYBOX, LAB_DIR, LabImage, find_kernel
from vmcrash.lab.labntp import HostNtpServer
from vmcrash.lab.rootfs import copy_tree, make_disk_image

__all__ = [
    "EVIDENCE_MAGIC",
    "HOLD_MARK",
    "HOST_ALIAS",
    "NTP_GATE_MARK",
    "UNREACHABLE_NTP",
    "LabBootPlan",
    "LabBootResult",
    "boot_all",
    "build_boot_files",
    "lab_data",
    "prepare_lab_root",
    "read_evidence",
    "systemd_guest_spec",
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
#: An address on QEMU's user network where nothing answers: a guest given it has no time source.
UNREACHABLE_NTP = "10.0.2.99"
#: The systemd guest's kernel command line: its console, no reboot on panic, classic NIC names (eth0).
KERNEL_CMDLINE = "console=ttyS0 panic=-1 printk.time=1 net.ifnames=0"
#: Console lines of the collector: it waits for the host (``hold_for_host``) / the NTP gate may open.
HOLD_MARK = "vmcrash-evidence: waiting for the host"
NTP_GATE_MARK = "vmcrash-evidence: open the NTP gate"

NETWORK_FILE = f"""[Match]
Name=e*

[Network]
Address={GUEST_ADDRESS}
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


def lab_data(name: str) -> str:
    """The text of the lab data file ``name`` (``vmcrash/lab/data/``, shipped as package data)."""
    return resources.files("vmcrash.lab").joinpath("data", name).read_text(encoding="utf-8")


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
    init_script = lab_data("sysboot-init.sh")
    h = hashlib.sha256(f"format={BOOT_FORMAT}\n{init_script}".encode())
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
            init.write_text(init_script)
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


# -- the lab root ------------------------------------------------------------------------------


def _link(root: Path, link: str, target: str) -> None:
    path = root / link.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def _comment_out(text: str, pattern: str, why: str) -> str:
    """``text`` with every line matching ``pattern`` (a regex anchored at the line start) commented out."""
    return re.sub(rf"(?m)^({pattern})", rf"# vmcrash lab: {why}\n# \1", text)


def _owner(root: Path, user: str) -> tuple[int, int] | None:
    """(uid, gid) of ``user`` in the root's own /etc/passwd, or None."""
    for line in (root / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if len(parts) > 3 and parts[0] == user and parts[2].isascii() and parts[2].isdigit() \
                and parts[3].isascii() and parts[3].isdigit():
            return int(parts[2]), int(parts[3])
    return None


def _time_source(dest: Path, ntp_host: str, ntp_port: int, live_fix: bool) -> str:
    """Point the root's time daemon at ``ntp_host``:``ntp_port`` only; return which daemon it is."""
    ntpsec_conf = dest / "etc/ntpsec/ntp.conf"
    chrony_conf = dest / "etc/chrony/chrony.conf"
    reachable = ntp_host != UNREACHABLE_NTP
    if ntpsec_conf.exists():
        if int(ntp_port) != 123 and reachable:
            raise EnvironmentProblem("ntpd (NTPsec) has no port setting, it talks to port 123: start the lab "
                                     "server there")
        text = _comment_out(ntpsec_conf.read_text(), r"pool\s", "no outside sources")
        text = _comment_out(text, r"tos minclock\s", "one source is enough")
        text += (f"\n# vmcrash lab: the only source\nserver {ntp_host} iburst minpoll 0 maxpoll 2\n"
                 "tos minclock 1 minsane 1\n")
        if live_fix:
            text += ("# vmcrash lab: keep the RTC wrong across the reboot (the kernel's 11-minute mode writes it "
                     "once ntpd's kernel discipline says synchronized)\ndisable kernel\n")
        ntpsec_conf.write_text(text)
        # a system that has run before has a drift file: ntpd then steps at its first update and is
        # synchronized at the next, instead of training its frequency for 300 s first
        drift = dest / "var/lib/ntpsec/ntp.drift"
        drift.parent.mkdir(parents=True, exist_ok=True)
        drift.write_text("0.000\n")
        owner = _owner(dest, "ntpsec")
        if owner is not None:
            os.chown(drift, *owner)
        return "ntpsec"
    if chrony_conf.exists():
        text = _comment_out(chrony_conf.read_text(), r"pool\s", "no outside sources")
        if live_fix:
            text = _comment_out(text, r"rtcsync", "keep the RTC wrong across the reboot")
        chrony_conf.write_text(text)
        (dest / "etc/chrony/sources.d").mkdir(parents=True, exist_ok=True)
        (dest / "etc/chrony/sources.d/vmcrash-lab.sources").write_text(
            f"server {ntp_host} port {int(ntp_port)} iburst minpoll 0 maxpoll 2\n")
        return "chrony"
    if (dest / "lib/systemd/system/systemd-timesyncd.service").exists():
        if int(ntp_port) != 123 and reachable:
            raise EnvironmentProblem("systemd-timesyncd only talks to port 123; start the lab server there")
        (dest / "etc/systemd/timesyncd.conf.d").mkdir(parents=True, exist_ok=True)
        (dest / "etc/systemd/timesyncd.conf.d/vmcrash-lab.conf").write_text(
            f"[Time]\nNTP={ntp_host}\nFallbackNTP=\nPollIntervalMinSec=16\n")
        return "timesyncd"
    raise EnvironmentProblem(f"{dest}: none of ntpsec, chrony or systemd-timesyncd installed")


def prepare_lab_root(base: Path, dest: Path, *, ntp_port: int, vmcrash_src: Path | None = None,
                     ntp_host: str = HOST_ALIAS, hold_for_host: bool = False,
                     live_fix: tuple[str, ...] = (), ntp_gate: bool = False) -> Path:
    """Copy ``base`` to ``dest`` and add what the lab boot needs; return ``dest``.

    Added: a static address without default route (systemd-networkd), the time daemon's only
    source = ``ntp_host``:``ntp_port`` (chrony: Debian's pool line commented out, ``makestep`` and
    everything else left as shipped; NTPsec: its pool lines and ``tos minclock 4 minsane 3``
    commented out, one ``server`` with ``tos minsane 1``, and a drift file; systemd-timesyncd:
    ``NTP=`` and an empty ``FallbackNTP=`` in a drop-in; NTPsec and timesyncd talk to port 123
    only), the collector unit with its settings in ``/etc/vmcrash-lab.json``, and ``vmcrash``
    (errors + guest only) under ``/opt/vmcrash`` so the guest can run ``python3 -m vmcrash.guest``.
    ``ntp_host`` = :data:`UNREACHABLE_NTP` gives a guest without a time source.

    ``hold_for_host``: the collector prints :data:`HOLD_MARK` and waits (at most 400 s) for
    ``/run/vmcrash-host-done`` before it goes on, so the host can work on the running guest.
    ``live_fix``: after the first boot's evidence the collector runs ``python3 -m vmcrash.guest fix
    --root / LIVE_FIX...`` on the running guest and reboots; the second boot's evidence goes to
    slot 1 (boot the domain with ``restart_on_reboot``); the daemon's RTC sync is turned off
    (chrony's ``rtcsync`` commented out, NTPsec's ``disable kernel``) so the RTC keeps the wrong
    time across that reboot. ``ntp_gate``: the collector waits until time-sync.target is active,
    then prints :data:`NTP_GATE_MARK` (for a relay that holds NTP back until then).
    """
    copy_tree(base, dest)
    (dest / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (dest / "etc/systemd/network/10-vmcrash-lab.network").write_text(NETWORK_FILE)
    _link(dest, "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
          "/lib/systemd/system/systemd-networkd.service")
    _link(dest, "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
          "/lib/systemd/system/systemd-networkd.socket")
    daemon = _time_source(dest, ntp_host, ntp_port, bool(live_fix))
    (dest / "etc/vmcrash-lab.json").write_text(json.dumps(
        {"daemon": daemon, "ntp": f"{ntp_host}:{int(ntp_port)}", "reachable": ntp_host != UNREACHABLE_NTP,
         "hold_for_host": hold_for_host, "live_fix": list(live_fix), "ntp_gate": ntp_gate,
         "evidence": {"magic": EVIDENCE_MAGIC.decode(), "slot_bytes": EVIDENCE_SLOT_BYTES}}))
    collector = dest / "usr/local/sbin/vmcrash-evidence"
    collector.parent.mkdir(parents=True, exist_ok=True)
    collector.write_text(lab_data("evidence_collector.py"))
    collector.chmod(0o755)
    (dest / "etc/systemd/system/vmcrash-evidence.service").write_text(lab_data("vmcrash-evidence.service"))
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


def systemd_guest_spec(disk: Path, evidence_disk: Path, *, clock_offset_s: int = -600, vcpus: int = 1,
                       restart_on_reboot: bool = False) -> GuestSpec:
    """The lab guest that boots ``disk`` (root, ``vda``) with systemd, evidence on ``vdb`` (pure).

    1 GiB, the agent channel, a NIC on QEMU's user network, no panic device, TCG unless
    ``VMCRASH_LAB_ACCEL`` says otherwise; a reboot inside the guest ends the domain unless
    ``restart_on_reboot`` (the live-fix proof reboots once).
    """
    return GuestSpec(memory_mib=1024, vcpus=vcpus, panic_model="none", vmcoreinfo=False, agent=True,
                     clock_offset_s=clock_offset_s, on_crash="destroy",
                     on_reboot="restart" if restart_on_reboot else "destroy",
                     accel=os.environ.get("VMCRASH_LAB_ACCEL", "qemu"), kernel_cmdline=KERNEL_CMDLINE,
                     disks=(disk, evidence_disk), network="user")


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


@dataclass(frozen=True)
class LabBootPlan:
    """One guest of a :func:`boot_all` call: the staged root and what the host does while it runs.

    ``label``: names the guest in logs and errors. ``clock_offset_s``: the guest clock's offset from
    the host's at start (negative: behind). ``restart_on_reboot``: a reboot inside the guest
    restarts the domain (the live-fix proof reboots once) instead of ending it. ``watch``: console
    strings whose first appearance is timed (host seconds since the guests were started, polled
    every 0.5 s): :attr:`LabBootResult.console_seen_s`. ``on_console``: console string -> function
    called once with this guest when the string first appears on *its* console (timed as well).
    """

    root: Path
    label: str = ""
    clock_offset_s: int = -600
    restart_on_reboot: bool = False
    watch: tuple[str, ...] = ()
    on_console: Mapping[str, Callable[[LabGuest], None]] = field(default_factory=dict)

    @property
    def markers(self) -> tuple[str, ...]:
        """Every console string to look for: the watched ones, then those with a function."""
        return (*self.watch, *(m for m in self.on_console if m not in self.watch))


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
    label: str = ""


def _finished_callback(running: dict[Future[None], str]) -> None:
    """Re-raise the error of the first console function that failed (with a note naming it)."""
    for future, what in running.items():
        if future.done() and future.exception() is not None:
            try:
                future.result()
            except Exception as exc:
                exc.add_note(f"raised by the console function {what}")
                raise


def boot_all(hv: Hypervisor, plans: Sequence[LabBootPlan], work: Path, ntp: HostNtpServer, *,
             timeout_s: float = 600.0, boot: LabImage | None = None, vcpus: int = 1) -> list[LabBootResult]:
    """Boot one guest per plan *at the same time* (``vcpus`` each) and return their evidence, in order.

    While they run, each guest's console is polled for its plan's markers every 0.5 s. A plan's
    ``on_console`` function runs in a thread of its own, so that a long one (a host-side audit through
    the guest agent takes tens of seconds under TCG) does not hold back the watch on the other
    guests; its error is raised here as soon as it is seen, and every function has returned before
    the results are read.

    :raises EnvironmentProblem: a guest did not power off in time (its console tail is in the message),
        or a console function was still running then.
    :raises BadDataError: a guest powered off without writing evidence (console tail in the message).
    :raises Exception: whatever a console function raised (a note names the function's guest and marker).
    """
    boot = boot or build_boot_files()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    guests: list[LabGuest] = []
    image_s: list[float] = []
    pool = ThreadPoolExecutor(max_workers=max(1, sum(len(p.on_console) for p in plans)),
                              thread_name_prefix="lab-console")
    running: dict[Future[None], str] = {}
    try:
        for plan in plans:
            tag = secrets.token_hex(3)
            disk = work / f"root-{tag}.img"
            evidence_disk = new_evidence_disk(work / f"evidence-{tag}.img")
            t0 = time.monotonic()
            make_disk_image(plan.root, disk)
            image_s.append(time.monotonic() - t0)
            spec = systemd_guest_spec(disk, evidence_disk, clock_offset_s=plan.clock_offset_s, vcpus=vcpus,
                                      restart_on_reboot=plan.restart_on_reboot)
            guest = LabGuest(spec, hv=hv, image=boot, run_dir=work, keep_serial=False)
            guests.append(guest)
            guest.define()
        t0 = time.monotonic()
        for guest in guests:
            guest.start()
        ran: dict[str, float] = {}
        seen: dict[str, dict[str, float]] = {g.name: {} for g in guests}
        while len(ran) < len(guests):
            for guest, plan in zip(guests, plans, strict=True):
                if guest.name in ran:
                    continue
                assert guest.dom is not None
                todo = [m for m in plan.markers if m not in seen[guest.name]]
                console = guest.serial_bytes() if todo else b""
                for marker in todo:
                    if marker.encode() in console:
                        seen[guest.name][marker] = time.monotonic() - t0
                        log.info("%s (%s): %r on the console at %.1f s", plan.label, guest.name, marker,
                                 seen[guest.name][marker])
                        if marker in plan.on_console:
                            running[pool.submit(plan.on_console[marker], guest)] = f"{marker!r} of {plan.label}"
                if not call(guest.dom.isActive, domain=guest.name):
                    ran[guest.name] = time.monotonic() - t0
            _finished_callback(running)
            if time.monotonic() - t0 > timeout_s:
                late = [(g, p) for g, p in zip(guests, plans, strict=True) if g.name not in ran]
                guest, plan = late[0]
                raise EnvironmentProblem(f"{plan.label} ({guest.name}): still running after {timeout_s:.0f} s; "
                                         f"console tail: {guest.serial_text()[-1500:]!r}")
            time.sleep(0.5)
        _, late_callbacks = wait(running, timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
        _finished_callback(running)
        if late_callbacks:
            raise EnvironmentProblem(f"console function still running after the guests ended: "
                                     f"{', '.join(running[f] for f in late_callbacks)}")
        results = []
        for guest, plan, img_s in zip(guests, plans, image_s, strict=True):
            serial = guest.serial_text()
            evidence_disk = guest.spec.disks[1]
            try:
                evidence = read_evidence(evidence_disk)
            except BadDataError as exc:
                raise BadDataError(f"{plan.label}: {exc}; console tail: {serial[-1500:]!r}") from exc
            extra: dict[str, object] = {"ntp_port": ntp.port}
            if guest.spec.on_reboot == "restart":
                try:
                    extra["second_boot"] = read_evidence(evidence_disk, 1)
                except BadDataError as exc:
                    raise BadDataError(f"{plan.label}: second boot: {exc}; console tail: {serial[-1500:]!r}"
                                       ) from exc
            results.append(LabBootResult(evidence=evidence, serial=serial, run_seconds=ran[guest.name],
                                         image_seconds=img_s, extra=extra, console_seen_s=seen[guest.name],
                                         label=plan.label))
        return results
    finally:
        for guest in guests:
            guest.cleanup()
            for path in guest.spec.disks:
                path.unlink(missing_ok=True)
        # the guests are gone: a console function still running fails fast now
        pool.shutdown(wait=True, cancel_futures=True)

"""The lab's one domain-XML builder: new optional GuestSpec fields leave every existing guest's XML as it was.

The literals below are what ``domain_xml`` wrote before the systemd guest's fields (``on_reboot``,
``kernel_cmdline``, ``disks``, ``network``) were added, byte for byte; the systemd guest's own XML
(disks, NIC, its kernel command line) is checked against libvirt's schema.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmcrash.errors import UsageError
from vmcrash.lab.guest import GuestSpec, domain_xml
from vmcrash.lab.image import LabImage

IMAGE = LabImage(Path("/lab/img"), Path("/lab/img/vmlinuz"), Path("/lab/img/initrd.img"), "6.1.0-test", "0" * 16)
NAME = "vmcrash-lab-1-1-abcd"
SERIAL = Path("/lab/run/x.serial")

DEFAULT_XML = """<domain type="qemu">
  <name>vmcrash-lab-1-1-abcd</name>
  <memory unit="MiB">512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>/lab/img/vmlinuz</kernel>
    <initrd>/lab/img/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=0 ignore_loglevel printk.time=1 vmcrash.agent=qemu-ga</cmdline>
  </os>
  <features>
    <acpi />
    <apic />
    <vmcoreinfo state="on" />
  </features>
  <clock offset="utc" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>preserve</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type="file">
      <source path="/lab/run/x.serial" append="on" />
      <target port="0" />
    </serial>
    <channel type="unix">
      <target type="virtio" name="org.qemu.guest_agent.0" />
    </channel>
    <panic model="isa">
      <address type="isa" iobase="0x505" />
    </panic>
    <memballoon model="none" />
  </devices>
</domain>"""

KVM_OFFSET_XML = """<domain type="kvm">
  <name>vmcrash-lab-1-1-abcd</name>
  <memory unit="MiB">512</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>/lab/img/vmlinuz</kernel>
    <initrd>/lab/img/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=0 ignore_loglevel printk.time=1 vmcrash.agent=qemu-ga vmcrash.host=h1 x=1</cmdline>
  </os>
  <features>
    <acpi />
    <apic />
    <vmcoreinfo state="on" />
  </features>
  <cpu mode="host-passthrough" />
  <clock offset="variable" adjustment="-600" basis="utc">
    <timer name="rtc" track="guest" />
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>coredump-restart</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type="file">
      <source path="/lab/run/x.serial" append="on" />
      <target port="0" />
    </serial>
    <channel type="unix">
      <target type="virtio" name="org.qemu.guest_agent.0" />
    </channel>
    <memballoon model="none" />
  </devices>
</domain>"""

PCI_MEMFD_XML = """<domain xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0" type="qemu">
  <name>vmcrash-lab-1-1-abcd</name>
  <memory unit="MiB">512</memory>
  <memoryBacking>
    <source type="memfd" />
    <access mode="shared" />
  </memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>/lab/img/vmlinuz</kernel>
    <initrd>/lab/img/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=0 ignore_loglevel printk.time=1 vmcrash.agent=garbage vmcrash.hwclock=0</cmdline>
  </os>
  <features>
    <acpi />
    <apic />
  </features>
  <clock offset="utc" />
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>preserve</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type="file">
      <source path="/lab/run/x.serial" append="on" />
      <target port="0" />
    </serial>
    <memballoon model="none" />
  </devices>
  <qemu:commandline>
    <qemu:arg value="-device" />
    <qemu:arg value="pvpanic-pci,bus=pci.0,addr=0x1e" />
  </qemu:commandline>
</domain>"""


@pytest.mark.parametrize(("spec", "accel", "expected"), [
    (GuestSpec(), "qemu", DEFAULT_XML),
    (GuestSpec(clock_offset_s=-600, vcpus=2, on_crash="coredump-restart", panic_model="none", rtc="guest",
               hostname="h1", extra_cmdline="x=1"), "kvm", KVM_OFFSET_XML),
    (GuestSpec(panic_model="pci", agent=False, vmcoreinfo=False, memory_backing="memfd", hwclock=False,
               agent_mode="garbage"), "qemu", PCI_MEMFD_XML),
], ids=["default", "kvm-offset-rtc", "pci-memfd-noagent"])
def test_existing_guests_get_the_same_xml_byte_for_byte(spec: GuestSpec, accel: str, expected: str) -> None:
    assert domain_xml(NAME, spec, IMAGE, SERIAL, accel) == expected


def test_the_systemd_guests_disks_nic_cmdline_and_reboot_action(tmp_path: Path) -> None:
    spec = GuestSpec(memory_mib=1024, panic_model="none", vmcoreinfo=False, on_crash="destroy", on_reboot="destroy",
                     clock_offset_s=-600, kernel_cmdline="console=ttyS0 panic=-1 net.ifnames=0",
                     disks=(tmp_path / "root.img", tmp_path / "evidence.img"), network="user")
    xml = domain_xml(NAME, spec, IMAGE, tmp_path / "serial.log", "qemu")
    assert "<cmdline>console=ttyS0 panic=-1 net.ifnames=0</cmdline>" in xml
    assert "<on_reboot>destroy</on_reboot>" in xml and "<on_crash>destroy</on_crash>" in xml
    assert f'<source file="{tmp_path}/root.img" />\n      <target dev="vda" bus="virtio" />' in xml
    assert f'<source file="{tmp_path}/evidence.img" />\n      <target dev="vdb" bus="virtio" />' in xml
    assert '<interface type="user">\n      <model type="virtio" />' in xml
    assert "<panic" not in xml and "vmcoreinfo" not in xml
    path = tmp_path / "dom.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_more_disks_than_virtio_names_is_refused() -> None:
    spec = GuestSpec(disks=tuple(Path(f"/d{i}.img") for i in range(27)))
    with pytest.raises(UsageError, match="at most 26 disks"):
        domain_xml(NAME, spec, IMAGE, SERIAL, "qemu")

"""Domain XML: is a domain ready for vmcrash (panic device, vmcoreinfo, agent, on_crash), and fix it.

Pure functions over XML text; ``vmcrash doctor`` feeds them libvirt's inactive XML and defines
the fixed XML (which takes effect at the domain's next boot).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vmcrash.decimal_text import ascii_int
from vmcrash.errors import BadDataError

__all__ = ["Check", "readiness", "apply_fixes", "AGENT_CHANNEL", "memory_bytes"]

AGENT_CHANNEL = "org.qemu.guest_agent.0"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


@dataclass(frozen=True)
class Check:
    """One readiness check. ``fixable``: ``apply_fixes`` can make it pass."""

    name: str
    ok: bool
    detail: str
    fixable: bool = True


def _parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise BadDataError(f"domain XML does not parse: {exc}") from exc


def _has_pci_pvpanic(root: ET.Element) -> bool:
    for arg in root.iter(f"{{{QEMU_NS}}}arg"):
        if "pvpanic" in (arg.get("value") or ""):
            return True
    return False


def memory_bytes(xml: str) -> int:
    """The domain's maximum memory in bytes (``<memory unit=...>``)."""
    root = _parse(xml)
    mem = root.find("memory")
    if mem is None:
        return 0
    number = ascii_int((mem.text or "").strip(), 20)
    if number is None:
        return 0
    units = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
             "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4}
    return number * units.get((mem.get("unit") or "KiB").lower(), 1024)


def readiness(xml: str) -> list[Check]:
    """The crash-readiness checks of a domain's XML (pure)."""
    root = _parse(xml)
    checks = []
    panic = root.find("devices/panic")
    pci = _has_pci_pvpanic(root)
    if panic is not None or pci:
        model = panic.get("model", "default") if panic is not None else "pvpanic-pci"
        checks.append(Check("panic-device", True, f"panic device {model}"))
    else:
        checks.append(Check("panic-device", False, "no panic device: guest panics are invisible to the host"))
    acpi = root.find("features/acpi") is not None
    isa = panic is not None and panic.get("model", "isa") == "isa"
    checks.append(Check("acpi", acpi or not isa,
                        "ACPI on" if acpi else ("ACPI off: the ISA pvpanic device is found through ACPI"
                                                if isa else "ACPI off (not needed)")))
    vmci = root.find("features/vmcoreinfo")
    on = vmci is not None and vmci.get("state", "on") == "on"
    checks.append(Check("vmcoreinfo", on, "vmcoreinfo feature on" if on else
                        "no vmcoreinfo feature: dumps lack VMCOREINFO, triage cannot read the kernel log"))
    agent = any(ch.find("target") is not None and ch.find("target").get("name") == AGENT_CHANNEL  # type: ignore[union-attr]
                for ch in root.findall("devices/channel"))
    checks.append(Check("agent-channel", agent, "guest agent channel present" if agent else
                        "no guest agent channel: the clock cannot be corrected after a freeze"))
    on_crash = (root.findtext("on_crash") or "destroy").strip()
    ok = on_crash == "preserve"
    hint = {
        "destroy": "libvirt destroys the guest on panic (memory lost before vmcrash can dump it)",
        "restart": "libvirt restarts the guest on panic (memory lost)",
        "rename-restart": "libvirt restarts the guest on panic (memory lost)",
        "coredump-destroy": "libvirt writes its own slow raw dump (vmcrash adopts it), then destroys",
        "coredump-restart": "libvirt freezes the guest for its own raw dump (vmcrash adopts it), then resets it",
    }.get(on_crash, f"on_crash={on_crash}")
    checks.append(Check("on-crash", ok, "on_crash=preserve: vmcrash handles panics" if ok else
                        f"on_crash={on_crash}: {hint}; --fix sets preserve so that vmcrash captures "
                        f"panics itself"))
    return checks


def _ensure(parent: ET.Element, tag: str, index: int | None = None) -> ET.Element:
    el = parent.find(tag)
    if el is None:
        el = ET.Element(tag)
        if index is None:
            parent.append(el)
        else:
            parent.insert(index, el)
    return el


def apply_fixes(xml: str) -> tuple[str, list[str]]:
    """Return the XML with every fixable failed check fixed, and what was changed (pure)."""
    ET.register_namespace("qemu", QEMU_NS)
    root = _parse(xml)
    changes: list[str] = []
    failing = {c.name for c in readiness(xml) if not c.ok}
    features = root.find("features")
    if features is None:
        features = ET.Element("features")
        os_node = root.find("os")
        root.insert(list(root).index(os_node) + 1 if os_node is not None else len(root), features)
    devices = _ensure(root, "devices")
    if "panic-device" in failing:
        panic = ET.SubElement(devices, "panic", {"model": "isa"})
        ET.SubElement(panic, "address", {"type": "isa", "iobase": "0x505"})
        changes.append("added <panic model='isa'> (pvpanic at 0x505)")
    needs_acpi = "acpi" in failing or ("panic-device" in failing and features.find("acpi") is None)
    if needs_acpi and features.find("acpi") is None:
        features.insert(0, ET.Element("acpi"))
        changes.append("enabled ACPI (the ISA pvpanic device is found through it)")
    if "vmcoreinfo" in failing:
        v = features.find("vmcoreinfo")
        if v is None:
            v = ET.SubElement(features, "vmcoreinfo")
        v.set("state", "on")
        changes.append("enabled the vmcoreinfo feature")
    if "agent-channel" in failing:
        ch = ET.SubElement(devices, "channel", {"type": "unix"})
        ET.SubElement(ch, "target", {"type": "virtio", "name": AGENT_CHANNEL})
        changes.append("added the guest agent channel org.qemu.guest_agent.0")
    if "on-crash" in failing:
        oc = root.find("on_crash")
        if oc is None:
            oc = ET.Element("on_crash")
            anchor = root.find("on_reboot") if root.find("on_reboot") is not None else root.find("on_poweroff")
            pos = list(root).index(anchor) + 1 if anchor is not None else len(root)
            root.insert(pos, oc)
        oc.text = "preserve"
        changes.append("set <on_crash>preserve</on_crash> so that vmcrash handles panics")
    return ET.tostring(root, encoding="unicode"), changes

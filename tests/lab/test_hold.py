"""Capture mode ``hold`` against real libvirtd + QEMU + memfd-backed lab guests (never skipped).

Ground truth from outside vmcrash: libvirt's own memory-only dump of the same crashed guest
(``virsh dump``), ``cmp`` and ``readelf``, the guest's serial console, libvirt's domain state and
QEMU's pid, the kernel's accounting of the held memfd (``st_blocks``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from labdaemon import done

pytestmark = pytest.mark.lab


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())


def readelf(flag: str, path: Path) -> str:
    return subprocess.run(["readelf", flag, str(path)], capture_output=True, text=True, check=True).stdout


def console_kernel_lines(text: str) -> list[str]:
    return [ln.rstrip() for ln in text.splitlines() if re.match(r"^\[\s*\d+\.\d+\] ", ln)]


def dmesg_lines(doc: dict) -> list[str]:
    lines = doc.get("dmesg") or []
    return [ln if isinstance(ln, str) else ln.get("text", "") for ln in lines]


def analyze_cli(path: Path) -> dict:
    import sys

    res = subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "analyze", str(path), "--json", "--dmesg"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_held_image_dump_is_qemus_dump(hv, lab_guest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One crash: libvirt's plain dump before recovery == the dump written from the held image after it."""
    from vmcrash.capture.hold import grab_dump_header, hold_image, triage_held, write_held
    from vmcrash.capture.recovery import recover

    g = lab_guest(memory_mib=512, vcpus=2, fill_mb=64, memory_backing="memfd")
    g.boot(240)
    old_pid = qemu_pid(g.name)
    g.crash()
    g.wait_state("crashed", 60)
    header = grab_dump_header(g.dom, tmp_path)
    image = hold_image(g.dom, g.name, old_pid, header)
    assert virsh("domstate", "--reason", g.name) == "crashed (panicked)"  # the header grab left it so
    plain = tmp_path / "plain.elf"  # the reference, by libvirt/QEMU, taken before recovery
    subprocess.run(["virsh", "-c", "qemu:///system", "dump", "--memory-only", "--format", "elf", g.name,
                    str(plain)], check=True, capture_output=True)
    result, g.dom = recover(hv, g.dom, "restart")
    assert result.running and qemu_pid(g.name) != old_pid  # a fresh QEMU runs while the image is held
    triage, err = triage_held(image)
    assert err is None and triage is not None
    assert triage["panic_line"] and triage["panic_line"] in g.serial_text()
    held = tmp_path / "held.elf"
    stats = write_held(image, held)
    image.close()
    assert stats.zero_pages_skipped > 0
    assert held.stat().st_size == plain.stat().st_size
    assert subprocess.run(["cmp", "-s", str(plain), str(held)]).returncode == 0  # byte for byte
    assert readelf("-n", plain) == readelf("-n", held)
    notes = readelf("-n", held)
    assert notes.count("NT_PRSTATUS") == 2 and notes.count("QEMU") >= 2 and "VMCOREINFO" in notes
    assert readelf("-l", plain) == readelf("-l", held)
    # every PT_LOAD identical, page by page (implied by cmp; checked through the reader too)
    from vmcrash.vmcore import open_dump

    with open_dump(plain) as a, open_dump(held) as b:
        la, lb = a.reader.layout.loads, b.reader.layout.loads  # type: ignore[attr-defined]
        assert la == lb and len(la) >= 2
        for seg in la:
            for off in range(0, seg.file_size, 1 << 20):
                n = min(1 << 20, seg.file_size - off)
                assert a.reader._f.read(seg.offset + off, n) == b.reader._f.read(seg.offset + off, n)  # type: ignore[attr-defined]
    # makedumpfile 1.7.2 fails on QEMU's ELF (LAB.md) — and fails the same way on both files
    mk = [subprocess.run(["makedumpfile", "--dump-dmesg", str(p), str(tmp_path / f"{p.stem}.dmesg")],
                         capture_output=True, text=True) for p in (plain, held)]
    assert mk[0].returncode == mk[1].returncode
    if mk[1].returncode == 0:
        text = (tmp_path / "held.dmesg").read_text(errors="replace")
        assert "Kernel panic - not syncing" in text
    else:
        assert "PT_LOAD" in mk[1].stdout + mk[1].stderr
    # vmcrash analyze --dmesg gives the console's kernel lines
    doc = analyze_cli(held)
    console = console_kernel_lines(g.serial_text())
    lines = dmesg_lines(doc)
    assert lines and len([ln for ln in lines if ln in console]) >= 0.95 * len(lines)
    assert any("Kernel panic - not syncing" in ln for ln in lines)

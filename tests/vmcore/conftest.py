"""Fixtures of the vmcore tests: real dumps of crashed lab guests, made once per session.

Two guests boot together (TCG, 512 MiB): one publishes VMCOREINFO, one does not and has two
vCPUs (so the crashing CPU must be told apart from the other by the dump alone). Both are made
to panic (sysrq ``c``), their serial consoles are kept as the ground truth of what the kernel
printed, and libvirt dumps each in memory-only ELF and kdump-zlib (which libvirt writes in the
flattened format). The guests are destroyed as soon as the dumps exist.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from vmcore_builders import CrashedGuest


@pytest.fixture(scope="session")
def crashed(hv: Any, lab_image: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CrashedGuest]]:
    """``{"vmcoreinfo": CrashedGuest, "plain": CrashedGuest}`` (the second without VMCOREINFO)."""
    import libvirt

    from vmcrash.lab.guest import GuestSpec, LabGuest

    out_dir = tmp_path_factory.mktemp("vmcore-dumps")
    specs = {"vmcoreinfo": GuestSpec(memory_mib=512, hostname="vmcore-triage-a"),
             "plain": GuestSpec(memory_mib=512, vcpus=2, hostname="vmcore-triage-b", vmcoreinfo=False)}
    guests = {k: LabGuest(spec, hv=hv, image=lab_image, keep_serial=True) for k, spec in specs.items()}
    result: dict[str, CrashedGuest] = {}
    try:
        for g in guests.values():
            g.start()
        for g in guests.values():
            g.wait_ready(240)
        for g in guests.values():
            g.crash()
        for g in guests.values():
            g.wait_state("crashed", 60)
        time.sleep(1.0)  # let the console file receive the whole panic output
        for key, g in guests.items():
            elf, flat = out_dir / f"{key}.elf", out_dir / f"{key}.kdump-zlib"
            g.dom.coreDumpWithFormat(str(elf), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, libvirt.VIR_DUMP_MEMORY_ONLY)
            g.dom.coreDumpWithFormat(str(flat), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB,
                                     libvirt.VIR_DUMP_MEMORY_ONLY)
            result[key] = CrashedGuest(hostname=g.spec.hostname or "", kernel_release=lab_image.kernel_release,
                                       elf=elf, kdump_flat=flat, console=g.serial_text())
    finally:
        for g in guests.values():
            g.cleanup()
            g.serial_path.unlink(missing_ok=True)
    yield result
    shutil.rmtree(out_dir, ignore_errors=True)

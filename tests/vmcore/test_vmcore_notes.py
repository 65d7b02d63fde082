"""ELF note walking and the per-vCPU register notes (PRSTATUS and QEMU's CPU state)."""

from __future__ import annotations

import pytest
from vmcore_builders import note, prstatus, qemu_cpu_state

from vmcrash.errors import DumpFormatError
from vmcrash.vmcore._notes import cpu_states, iter_notes


def test_walk_and_padding() -> None:
    blob = note(b"CORE", 1, b"abc") + note(b"VMCOREINFO", 0, b"OSRELEASE=1\n") + b"\0" * 24
    notes = list(iter_notes(blob))
    assert [(n.name, n.type, n.desc) for n in notes] == [(b"CORE", 1, b"abc"),
                                                        (b"VMCOREINFO", 0, b"OSRELEASE=1\n")]


def test_note_past_the_area_is_a_format_error() -> None:
    blob = note(b"CORE", 1, b"x" * 100)[:60]
    with pytest.raises(DumpFormatError, match="past the note area"):
        list(iter_notes(blob, path="f", base_offset=10))


def test_cpu_registers_from_prstatus_and_qemu_notes() -> None:
    blob = b""
    for cpu in range(2):
        blob += note(b"CORE", 1, prstatus({"rip": 0xFFFFFFFF81000000 + cpu, "rsp": 0x1000 * cpu, "cs": 0x10},
                                          pid=cpu + 1))
        blob += note(b"QEMU", 0, qemu_cpu_state({"rip": 0xDEAD}, gs_base=0xFFFF888000000000 + cpu,
                                                crs=(1, 0, 0xCAFE, 0x1000, 0x6F0), kernel_gs_base=7))
    cpus = cpu_states(list(iter_notes(blob)))
    assert [c.index for c in cpus] == [0, 1]
    assert cpus[1].registers["rip"] == 0xFFFFFFFF81000001  # PRSTATUS wins over the QEMU note
    assert cpus[1].registers["rsp"] == 0x1000
    assert cpus[1].pid == 2
    # gs_base: PRSTATUS says 0 here, and it wins; the control registers come from the QEMU note
    assert cpus[0].registers["cr2"] == 0xCAFE and cpus[0].registers["cr3"] == 0x1000
    assert cpus[0].registers["kernel_gs_base"] == 7
    assert "rflags" not in cpus[0].registers


def test_short_register_notes_are_ignored() -> None:
    blob = note(b"CORE", 1, b"\0" * 50) + note(b"QEMU", 0, b"\0" * 20)
    assert cpu_states(list(iter_notes(blob))) == []


def test_crashing_cpu_notes_matched_by_gs_base() -> None:
    from vmcrash.vmcore import CpuState
    from vmcrash.vmcore._triage import _cpu_for

    per_cpu = [0xFFFF888000000000, 0xFFFF888000100000]
    # QEMU's note order differs from Linux's CPU numbering here; the GS base decides.
    cpus = [CpuState(0, {"gs_base": per_cpu[1], "rip": 1}), CpuState(1, {"gs_base": 0, "kernel_gs_base": per_cpu[0],
                                                                        "rip": 2})]
    assert _cpu_for(cpus, 1, per_cpu) is cpus[0]
    assert _cpu_for(cpus, 0, per_cpu) is cpus[1]  # in user mode: the kernel's GS base is swapped out
    assert _cpu_for(cpus, 1, []) is cpus[1]  # no per-CPU offsets: by order
    assert _cpu_for(cpus, 5, per_cpu) is None

"""ELF notes of a dump: the note walker, and the per-vCPU register notes QEMU writes (pure).

QEMU writes, per vCPU, a ``CORE``/``NT_PRSTATUS`` note (``struct elf_prstatus`` of x86-64, the
general registers as the kernel's ``user_regs_struct``) and a ``QEMU`` note (``QEMUCPUState``
from QEMU's ``target/i386/arch_dump.c``: general registers, segments with bases, CR0-CR4 and,
when the note is long enough, ``kernel_gs_base``); plus one ``VMCOREINFO`` note when the guest
published it. kdump-compressed files carry the same notes in their sub-header.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from vmcrash.errors import DumpFormatError

__all__ = [
    "MAX_NOTES",
    "MAX_NOTES_BYTES",
    "NT_PRSTATUS",
    "CpuState",
    "Note",
    "cpu_states",
    "iter_notes",
]

NT_PRSTATUS = 1
#: Notes are small: one pair per vCPU plus VMCOREINFO. 16 MiB covers thousands of vCPUs.
MAX_NOTES_BYTES = 16 << 20
MAX_NOTES = 65_536

_NOTE_HDR = struct.Struct("<III")

# struct elf_prstatus (x86-64): siginfo(12) cursig(2) pad(2) sigpend(8) sighold(8) pid ppid pgrp sid
# (4 each) four timevals (16 each), then pr_reg (27 x u64), then pr_fpvalid.
_PRSTATUS_PID_OFFSET = 32
_PRSTATUS_REG_OFFSET = 112
PRSTATUS_REGS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
    "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
    "es", "fs", "gs",
)
_PRSTATUS_MIN = _PRSTATUS_REG_OFFSET + 8 * len(PRSTATUS_REGS)

_QEMU_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
              "r12", "r13", "r14", "r15", "rip", "rflags")
_QEMU_SEGS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")
_QEMU_SEG_OFFSET = 8 + 8 * len(_QEMU_GPRS)
_QEMU_CR_OFFSET = _QEMU_SEG_OFFSET + 24 * len(_QEMU_SEGS)
_QEMU_KGS_OFFSET = _QEMU_CR_OFFSET + 40
_QEMU_MIN = _QEMU_KGS_OFFSET


@dataclass(frozen=True)
class Note:
    """One ELF note. ``name`` without its NUL; ``desc`` as stored."""

    name: bytes
    type: int
    desc: bytes


@dataclass(frozen=True)
class CpuState:
    """Registers of one vCPU at dump time.

    :ivar index: 0-based position of the vCPU's notes in the dump (QEMU's CPU order).
    :ivar registers: name -> unsigned value; general registers from NT_PRSTATUS, and from the QEMU
        note ``cr0``..``cr4``, ``gs_base``/``fs_base`` (segment bases) and ``kernel_gs_base``.
    :ivar pid: ``pr_pid`` of the PRSTATUS note (QEMU stores the vCPU number + 1), or ``None``.
    """

    index: int
    registers: dict[str, int] = field(default_factory=dict)
    pid: int | None = None


def iter_notes(data: bytes, *, path: str | None = None, base_offset: int | None = None) -> Iterator[Note]:
    """Walk an ELF64 note area (pure). Stops at trailing zero padding.

    :raises DumpFormatError: a note's sizes run past the area, or more than :data:`MAX_NOTES`.
    """
    pos = 0
    count = 0
    end = len(data)
    while pos + _NOTE_HDR.size <= end:
        namesz, descsz, ntype = _NOTE_HDR.unpack_from(data, pos)
        if namesz == 0 and descsz == 0 and ntype == 0:
            return  # padding
        name_start = pos + _NOTE_HDR.size
        desc_start = name_start + ((namesz + 3) & ~3)
        desc_end = desc_start + descsz
        if desc_end > end:
            where = None if base_offset is None else base_offset + pos
            raise DumpFormatError(f"ELF note claims {namesz}+{descsz} bytes past the note area",
                                  path=path, offset=where)
        count += 1
        if count > MAX_NOTES:
            raise DumpFormatError(f"more than {MAX_NOTES} ELF notes", path=path, offset=base_offset)
        name = data[name_start:name_start + namesz].split(b"\0", 1)[0]
        yield Note(name=name, type=ntype, desc=data[desc_start:desc_end])
        pos = desc_end + ((-descsz) & 3)


def _prstatus(desc: bytes) -> tuple[dict[str, int], int] | None:
    if len(desc) < _PRSTATUS_MIN:
        return None
    regs = struct.unpack_from(f"<{len(PRSTATUS_REGS)}Q", desc, _PRSTATUS_REG_OFFSET)
    (pid,) = struct.unpack_from("<i", desc, _PRSTATUS_PID_OFFSET)
    return dict(zip(PRSTATUS_REGS, regs, strict=True)), pid


def _qemu_state(desc: bytes) -> dict[str, int] | None:
    if len(desc) < _QEMU_MIN:
        return None
    _version, size = struct.unpack_from("<II", desc, 0)
    regs = dict(zip(_QEMU_GPRS, struct.unpack_from(f"<{len(_QEMU_GPRS)}Q", desc, 8), strict=True))
    for i, seg in enumerate(_QEMU_SEGS):
        selector, _limit, _flags, _pad, base = struct.unpack_from("<IIIIQ", desc, _QEMU_SEG_OFFSET + 24 * i)
        if seg in ("fs", "gs"):
            regs[f"{seg}_base"] = base
        if seg in ("cs", "ss", "ds", "es", "fs", "gs"):
            regs[seg] = selector
    for i, value in enumerate(struct.unpack_from("<5Q", desc, _QEMU_CR_OFFSET)):
        regs[f"cr{i}"] = value
    if min(size, len(desc)) >= _QEMU_KGS_OFFSET + 8:
        (regs["kernel_gs_base"],) = struct.unpack_from("<Q", desc, _QEMU_KGS_OFFSET)
    return regs


def cpu_states(notes: list[Note], *, max_cpus: int = 8192) -> list[CpuState]:
    """Per-vCPU registers from a dump's notes (pure): the n-th PRSTATUS and n-th QEMU note are vCPU n.

    A dump without register notes gives ``[]``. Notes too short to hold their structure are
    ignored. At most ``max_cpus`` vCPUs are returned.
    """
    prs = [n for n in notes if n.name == b"CORE" and n.type == NT_PRSTATUS]
    qemu = [n for n in notes if n.name == b"QEMU"]
    out: list[CpuState] = []
    for i in range(min(max(len(prs), len(qemu)), max_cpus)):
        regs: dict[str, int] = {}
        pid = None
        if i < len(qemu):
            regs.update(_qemu_state(qemu[i].desc) or {})
        if i < len(prs):
            got = _prstatus(prs[i].desc)
            if got is not None:
                pr_regs, pid = got
                # PRSTATUS is what the kernel's own tools read; its values win. QEMU's note
                # adds CRs and kernel_gs_base, and its rflags is the same as eflags.
                regs.update(pr_regs)
        if "eflags" in regs:
            regs.pop("rflags", None)
        if regs:
            out.append(CpuState(index=i, registers=regs, pid=pid))
    return out

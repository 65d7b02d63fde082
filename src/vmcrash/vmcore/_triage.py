"""Crash triage of one dump: release, host name, panic, oops, call trace, crashing CPU, RIP, uptime.

:func:`analyze` never stops at the first thing it cannot determine: each step that fails on
guest data (:class:`~vmcrash.errors.GuestMemoryError`) adds a sentence to ``problems`` and the
rest goes on. A broken *file* (:class:`~vmcrash.errors.DumpFormatError`), an unreadable one
(:class:`~vmcrash.errors.StorageError`) or a missing codec (:class:`~vmcrash.errors.MissingCodec`)
ends the analysis with that error.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from vmcrash.errors import GuestMemoryError

from ._kallsyms import Kallsyms, load_kallsyms
from ._modules import module_symbol
from ._notes import CpuState
from ._oops import Frame, find_crash
from ._open import Dump, open_dump
from ._printk import PrintkRecord, for_each_record, printk_layout
from ._scan import recover_vmcoreinfo, scan_without_vmcoreinfo
from ._signature import crash_signature
from ._vmcoreinfo import VmcoreInfo
from ._x86 import KernelMemory, to_signed64

__all__ = ["NO_VMCOREINFO", "SCHEMA_VERSION", "Triage", "analyze", "analyze_dump", "has_vmcoreinfo"]

#: Version of the JSON document :meth:`Triage.to_dict` produces (docs/analyze-json.md).
SCHEMA_VERSION = 1
NO_VMCOREINFO = ("no VMCOREINFO in the dump: the guest did not publish it (that needs libvirt's "
                 "<vmcoreinfo state='on'/> feature and the guest's qemu_fw_cfg module)")
NOT_RECOVERED = ("no VMCOREINFO page found in guest memory either: the kernel log, host name and symbols "
                 "cannot be located")
_MAX_CPUS = 8192
#: Console lines kept in ``Triage.dmesg_tail`` (the catalogue stores them with every crash).
DMESG_TAIL_LINES = 60
_UTS_FIELD = 65
_REG_ORDER = ("rip", "rsp", "rbp", "eflags", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10",
              "r11", "r12", "r13", "r14", "r15", "orig_rax", "cs", "ss", "ds", "es", "fs", "gs", "fs_base",
              "gs_base", "kernel_gs_base", "cr0", "cr2", "cr3", "cr4")


@dataclass(frozen=True)
class Triage:
    """What one dump says about its crash. Absent facts are ``None``/empty, with a reason in ``problems``.

    :ivar format: ``elf``, ``kdump`` or ``kdump-flattened``.
    :ivar panic_line: text of the last ``Kernel panic - not syncing: ...`` line (no timestamp).
    :ivar oops_lines: the report that led to the panic (``BUG:``/``Oops:``/``RIP:``/``CPU:``...),
        without call-trace frames and register dumps.
    :ivar call_trace: frames of that report's first call trace, innermost first.
    :ivar crashing_cpu: the CPU that panicked (``panic_cpu``, else the report's ``CPU:`` line).
    :ivar registers: that CPU's registers at dump time (from the dump's per-vCPU notes).
    :ivar rip_symbol: its RIP as ``func+0xoff/0xsize`` (``[module]`` for module code).
    :ivar uptime_s: seconds since boot at the panic line (else at the last log record).
    :ivar dmesg: the whole kernel log as console lines, when asked for.
    :ivar dmesg_tail: the last :data:`DMESG_TAIL_LINES` console lines of the log, always.
    """

    path: str
    format: str
    file_size_bytes: int
    memory_bytes: int
    vmcoreinfo_present: bool
    kernel_release: str | None = None
    kernel_version: str | None = None
    hostname: str | None = None
    panic_line: str | None = None
    panic_timestamp_s: float | None = None
    oops_lines: tuple[str, ...] = ()
    call_trace: tuple[Frame, ...] = ()
    crashing_cpu: int | None = None
    cpu_count: int = 0
    registers: dict[str, int] = field(default_factory=dict)
    rip_symbol: str | None = None
    uptime_s: float | None = None
    log_records: int = 0
    dmesg: tuple[str, ...] | None = None
    dmesg_tail: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def rip(self) -> int | None:
        return self.registers.get("rip")

    @property
    def signature(self) -> str | None:
        """The crash signature (:func:`~vmcrash.vmcore._signature.crash_signature`), or ``None``."""
        return crash_signature(self.panic_line, self.oops_lines, self.call_trace)

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON document (``docs/analyze-json.md``, schema version 1)."""
        regs = {name: f"{self.registers[name]:#018x}" for name in _REG_ORDER if name in self.registers}
        regs.update({k: f"{v:#018x}" for k, v in sorted(self.registers.items()) if k not in regs})
        return {
            "schema_version": SCHEMA_VERSION,
            "path": self.path,
            "format": self.format,
            "file_size_bytes": self.file_size_bytes,
            "memory_bytes": self.memory_bytes,
            "vmcoreinfo_present": self.vmcoreinfo_present,
            "kernel_release": self.kernel_release,
            "kernel_version": self.kernel_version,
            "hostname": self.hostname,
            "panic_line": self.panic_line,
            "panic_timestamp_s": self.panic_timestamp_s,
            "oops_lines": list(self.oops_lines),
            "call_trace": [f.to_dict() for f in self.call_trace],
            "crashing_cpu": self.crashing_cpu,
            "cpu_count": self.cpu_count,
            "registers": regs,
            "rip_symbol": self.rip_symbol,
            "uptime_s": self.uptime_s,
            "log_records": self.log_records,
            "dmesg": list(self.dmesg) if self.dmesg is not None else None,
            "dmesg_tail": list(self.dmesg_tail),
            "signature": self.signature,
            "problems": list(self.problems),
            "bytes_read": self.bytes_read,
        }


def has_vmcoreinfo(path: str | os.PathLike[str]) -> bool:
    """Whether the dump carries a VMCOREINFO (reads only headers and notes).

    :raises StorageError: unreadable file. :raises DumpFormatError: not a dump / corrupt header.
    """
    with open_dump(path) as dump:
        return dump.vmcoreinfo is not None


def analyze(path: str | os.PathLike[str], *, dmesg: bool = False, recover: bool = True) -> Triage:
    """Triage the dump at ``path``; see :func:`analyze_dump`."""
    with open_dump(path) as dump:
        return analyze_dump(dump, dmesg=dmesg, recover=recover)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


@dataclass
class _State:
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def attempt(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except GuestMemoryError as exc:
            self.problems.append(f"{what}: {exc}")
            return None


def read_utsname(mem: KernelMemory, vi: VmcoreInfo) -> tuple[bytes, ...]:
    """``init_uts_ns``'s six utsname fields (sysname, nodename, release, version, machine, domain)."""
    base = vi.symbol("init_uts_ns")
    if "uts_namespace.name" in vi.offsets:
        candidates = [vi.offsets["uts_namespace.name"]]
    else:  # before Linux 5.x the name followed a struct kref (4 bytes), sometimes padded
        candidates = [4, 8, 0]
    for off in candidates:
        if not 0 <= off <= 4096:
            continue
        raw = mem.read(base + off, 6 * _UTS_FIELD)
        fields = tuple(raw[i * _UTS_FIELD:(i + 1) * _UTS_FIELD].split(b"\0", 1)[0] for i in range(6))
        if fields[0] == b"Linux" or len(candidates) == 1:
            return fields
    raise GuestMemoryError("init_uts_ns does not hold a utsname")


def _per_cpu_offsets(mem: KernelMemory, syms: dict[str, int]) -> list[int]:
    if "__per_cpu_offset" not in syms or "nr_cpu_ids" not in syms:
        return []
    n = mem.u32(syms["nr_cpu_ids"])
    if not 0 < n <= _MAX_CPUS:
        raise GuestMemoryError(f"nr_cpu_ids = {n} is not plausible")
    return list(struct.unpack(f"<{n}Q", mem.read(syms["__per_cpu_offset"], 8 * n)))


def _cpu_for(cpus: list[CpuState], cpu: int, per_cpu: list[int]) -> CpuState | None:
    """The vCPU notes of Linux CPU ``cpu``: matched by GS base = __per_cpu_offset[cpu], else by order."""
    if 0 <= cpu < len(per_cpu) and per_cpu[cpu]:
        want = per_cpu[cpu]
        for state in cpus:
            r = state.registers
            if want in (r.get("gs_base"), r.get("kernel_gs_base")):
                return state
    return cpus[cpu] if 0 <= cpu < len(cpus) else None


def analyze_dump(dump: Dump, *, dmesg: bool = False, recover: bool = True) -> Triage:
    """Triage an open dump (pure analysis over the dump's reader).

    :param dmesg: also render the whole kernel log into ``Triage.dmesg``.
    :param recover: when the dump has no VMCOREINFO note, look for the guest kernel's own
        VMCOREINFO page in memory (a scan of up to 16 GiB, reading only page starts).

    :raises DumpFormatError: the file is corrupt or truncated where the analysis needed it.
    :raises MissingCodec: pages are compressed with a codec whose library is missing.
    :raises StorageError: the file cannot be read.
    """
    t0 = time.perf_counter()
    st = _State()
    problems = st.problems
    reader = dump.reader
    vi: VmcoreInfo | None = dump.vmcoreinfo
    cpus = dump.cpus
    out: dict[str, Any] = {
        "path": dump.path, "format": dump.format, "file_size_bytes": reader.file_size_bytes,
        "memory_bytes": reader.present_pages() * reader.page_size_bytes, "vmcoreinfo_present": vi is not None,
        "cpu_count": len(cpus),
    }
    if not cpus:
        problems.append("the dump has no per-vCPU register notes")
    records: list[PrintkRecord] = []
    crash_cpu: int | None = None
    mem: KernelMemory | None = None
    syms: Kallsyms | None = None
    if vi is None:
        problems.append(NO_VMCOREINFO)
        recovered = recover_vmcoreinfo(reader) if recover else None
        if recovered is not None:
            vi, paddr = recovered
            problems.append(f"recovered the guest kernel's own VMCOREINFO page by scanning memory (physical "
                            f"{paddr:#x}); everything below is read through it")
        else:
            problems.append(NOT_RECOVERED if recover else "kernel log, host name and symbols cannot be "
                            "located without VMCOREINFO (recovery scan not requested)")
            cr3 = next((c.registers["cr3"] for c in cpus if c.registers.get("cr3")), None)
            found = scan_without_vmcoreinfo(reader, cpus, cr3)
            problems.extend(found.problems)
            out["kernel_release"] = found.kernel_release
            out["kernel_version"] = found.kernel_version
    if vi is not None:
        if vi.bad_lines:
            problems.append(f"VMCOREINFO: {vi.bad_lines} malformed line(s) ignored")
        if vi.osrelease:
            out["kernel_release"] = _text(vi.osrelease)
        mem = st.attempt("address translation", KernelMemory, reader, vi)
    if mem is not None and vi is not None:
        uts = st.attempt("host name (init_uts_ns)", read_utsname, mem, vi)
        if uts is not None:
            out["hostname"] = _text(uts[1])
            out["kernel_version"] = _text(uts[3]) or None
            out.setdefault("kernel_release", _text(uts[2]) or None)
        if printk_layout(vi) is None:
            problems.append("kernel log: VMCOREINFO describes neither the prb ring buffer (>= 5.10) nor "
                            "log_buf (3.5-5.9)")
        else:
            got = st.attempt("kernel log", lambda: list(for_each_record(mem, vi, problems=problems)))
            records = got or []
        syms = st.attempt("kernel symbols (kallsyms)", load_kallsyms, mem, vi)

    # -- the log: panic, oops, trace -------------------------------------------------------
    lines: list[tuple[int, str]] = [(r.timestamp_ns, _text(line)) for r in records for line in r.lines()]
    texts = [t for _, t in lines]
    report = find_crash(texts)
    if records:
        out["log_records"] = len(records)
        if report.panic_index is not None:
            ts, text = lines[report.panic_index]
            out["panic_line"] = text[text.index("Kernel panic"):] if "Kernel panic" in text else text
            out["panic_timestamp_s"] = ts / 1e9
            out["uptime_s"] = ts / 1e9
        else:
            out["uptime_s"] = lines[-1][0] / 1e9 if lines else None
            problems.append("kernel log: no 'Kernel panic - not syncing' line (the guest may not have "
                            "panicked, or the dump was taken before the message)")
        out["oops_lines"] = tuple(texts[i] for i in report.oops_indices)
        out["call_trace"] = report.call_trace
        if dmesg:
            out["dmesg"] = tuple(line for r in records for line in r.render())
        out["dmesg_tail"] = tuple(line for r in records[-DMESG_TAIL_LINES:] for line in r.render()
                                  )[-DMESG_TAIL_LINES:]
    elif dmesg:
        out["dmesg"] = ()

    # -- crashing CPU, its registers, RIP ---------------------------------------------------
    extra: dict[str, int] = {}
    if syms is not None and mem is not None:
        extra = syms.addresses_of(["panic_cpu", "__per_cpu_offset", "nr_cpu_ids", "modules"])
        value = st.attempt("panic_cpu", lambda: to_signed64(mem.s32(extra["panic_cpu"])) if "panic_cpu" in extra
                           else None)
        if value is not None and 0 <= value < _MAX_CPUS:
            crash_cpu = value
    if crash_cpu is None and report.cpu is not None:
        crash_cpu = report.cpu
    if crash_cpu is None and len(cpus) == 1:
        crash_cpu = 0
    out["crashing_cpu"] = crash_cpu
    per_cpu = (st.attempt("per-CPU offsets", _per_cpu_offsets, mem, extra) or []) if mem is not None else []
    state = _cpu_for(cpus, crash_cpu, per_cpu) if crash_cpu is not None else None
    if crash_cpu is None:
        problems.append("crashing CPU: not determined (no panic_cpu, no 'CPU:' line)")
    elif state is None:
        problems.append(f"registers: the dump has no notes for CPU {crash_cpu}")
    if state is not None:
        out["registers"] = dict(state.registers)
        rip = state.registers.get("rip")
        if rip is not None and syms is not None:
            out["rip_symbol"] = _symbolize(st, mem, syms, extra, rip)
        elif rip is not None:
            problems.append("RIP: no kernel symbols to name it")
    out["problems"] = tuple(problems)
    out["bytes_read"] = reader.bytes_read
    out["seconds"] = time.perf_counter() - t0
    return Triage(**out)


def _symbolize(st: _State, mem: KernelMemory | None, syms: Kallsyms, extra: dict[str, int], rip: int) -> str | None:
    if rip < 1 << 63:
        st.problems.append(f"RIP {rip:#x} is a user-space address")
        return None
    if mem is not None and "modules" in extra:
        found = st.attempt("module symbols", module_symbol, mem, extra["modules"], rip)
        if found is not None:
            mod, sym = found
            if sym is None:
                st.problems.append(f"RIP {rip:#x} is in module {mod}, whose symbols were not found")
                return f"{rip:#x} [{mod}]"
            return f"{sym} [{mod}]"
    sym = syms.lookup(rip)
    if sym is None:
        st.problems.append(f"RIP {rip:#x} is below every kernel symbol")
        return None
    if sym.size is None or sym.offset >= 1 << 24:
        st.problems.append(f"RIP {rip:#x} is outside the core kernel's symbols")
        return None
    return str(sym)

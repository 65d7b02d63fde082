"""Crash triage from a guest dump alone (no debuginfo, no libvirt): readers, VMCOREINFO, kernel log.

Writing the seekable kdump-compressed format takes four private modules, one job each:
``_layout`` (where everything goes, the header bytes), ``_partfile`` (the resumable, atomic
output file), ``_convert`` (any dump to kdump-compressed) and ``_rearrange`` (a flattened stream
to the seekable file); ``_result`` is what both report.

Public surface::

    open_dump(path) -> Dump              # ELF, kdump, flattened kdump (FORMATS); by content
    analyze(path, *, dmesg=False) -> Triage   # (SCHEMA_VERSION of its JSON); analyze_dump(dump)
    has_vmcoreinfo(path) -> bool
    convert_to_kdump(src, dst, *, codec="auto", progress=None, exclude_zero=True) -> ConvertResult
    rearrange_flattened(src, dst) -> ConvertResult

and the pieces they are made of, for other tools: ``VmcoreInfo`` / ``parse_vmcoreinfo``,
``KernelMemory`` (virtual → physical), ``Kallsyms`` / ``Symbol``, ``Note`` / ``CpuState``,
``PrintkRecord`` / ``for_each_record``, ``Frame``.

Everything reads the dump lazily and bounds every structure it takes from guest memory; errors
are :class:`~vmcrash.errors.VmcrashError` subclasses only.
"""

from __future__ import annotations

from ._convert import convert_to_kdump
from ._kallsyms import Kallsyms, Symbol
from ._notes import CpuState, Note
from ._oops import Frame
from ._open import FORMATS, Dump, open_dump
from ._printk import PrintkRecord, for_each_record
from ._rearrange import rearrange_flattened
from ._result import ConvertResult
from ._triage import SCHEMA_VERSION, Triage, analyze, analyze_dump, has_vmcoreinfo
from ._vmcoreinfo import VmcoreInfo, parse_vmcoreinfo
from ._x86 import KernelMemory

__all__ = [
    "FORMATS",
    "SCHEMA_VERSION",
    "ConvertResult",
    "CpuState",
    "Dump",
    "Frame",
    "Kallsyms",
    "KernelMemory",
    "Note",
    "PrintkRecord",
    "Symbol",
    "Triage",
    "VmcoreInfo",
    "analyze",
    "analyze_dump",
    "convert_to_kdump",
    "for_each_record",
    "has_vmcoreinfo",
    "open_dump",
    "parse_vmcoreinfo",
    "rearrange_flattened",
]

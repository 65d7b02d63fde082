"""Format detection by content and the :class:`Dump` handle the rest of the package works on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Self

from vmcrash.errors import DumpFormatError, VmcrashError

from ._base import DumpReader
from ._elf import ELF_MAGIC, ElfReader
from ._flat import FLAT_SIGNATURE, FlattenedSource
from ._io import DumpFile
from ._kdump import KDUMP_SIGNATURE, KdumpReader
from ._notes import CpuState, Note, cpu_states
from ._vmcoreinfo import VmcoreInfo, parse_vmcoreinfo

__all__ = ["FORMATS", "Dump", "detect_format", "open_dump"]

#: Formats :func:`open_dump` recognises, as reported in ``Dump.format``.
FORMATS = ("elf", "kdump", "kdump-flattened")


def detect_format(head: bytes) -> str:
    """Name the dump format from the file's first bytes (pure).

    :raises DumpFormatError: none of :data:`FORMATS` (the message says what it looks like).
    """
    if head[:4] == ELF_MAGIC:
        return "elf"
    if head[:8] == KDUMP_SIGNATURE:
        return "kdump"
    if head[:16] == FLAT_SIGNATURE + bytes(4):
        return "kdump-flattened"
    if head[:8] == b"DISKDUMP":
        raise DumpFormatError("this is an old diskdump file; only kdump-compressed (KDUMP) is supported")
    if head[:4] == b"QEVM":
        raise DumpFormatError("this is a QEMU migration/savevm stream (virsh save), not a memory dump")
    if not head:
        raise DumpFormatError("the file is empty")
    raise DumpFormatError("not a dump: neither ELF core, kdump-compressed nor flattened makedumpfile")


@dataclass
class Dump:
    """An open dump: its reader (physical memory, notes) plus parsed VMCOREINFO and vCPU registers.

    Use as a context manager (closes the file). Nothing is read until asked for.
    """

    reader: DumpReader

    @property
    def format(self) -> str:
        return self.reader.format

    @property
    def path(self) -> str:
        return self.reader.path

    @cached_property
    def notes(self) -> list[Note]:
        return self.reader.notes()

    @cached_property
    def vmcoreinfo(self) -> VmcoreInfo | None:
        """Parsed VMCOREINFO, or ``None`` when the dump has none (guest without the feature)."""
        raw = self.reader.vmcoreinfo_raw()
        if raw is None or not raw.strip(b"\0"):
            return None
        return parse_vmcoreinfo(raw)

    @cached_property
    def cpus(self) -> list[CpuState]:
        """Registers of each vCPU from the per-vCPU notes (``[]`` when the dump has none)."""
        return cpu_states(self.notes)

    def read_phys(self, paddr: int, size: int) -> bytes:
        return self.reader.read_phys(paddr, size)

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dump(path: str | os.PathLike[str]) -> Dump:
    """Open a dump file of any supported format, detected by content (not by name).

    :raises StorageError: the file cannot be opened or read.
    :raises DumpFormatError: unknown format, or a corrupt or truncated header.
    :raises MissingCodec: never here (only when a page is read).
    """
    f = DumpFile(path)
    try:
        fmt = detect_format(f.read_upto(0, 16))
        if fmt == "elf":
            reader: DumpReader = ElfReader(f)
        elif fmt == "kdump":
            reader = KdumpReader(f)
        else:
            reader = KdumpReader(FlattenedSource(f), fmt="kdump-flattened", check_end=False)
    except DumpFormatError as exc:
        f.close()
        if exc.path is None:
            raise DumpFormatError(exc.message, path=f.path) from exc
        raise
    except VmcrashError:
        f.close()
        raise
    return Dump(reader)

"""VMCOREINFO: the key=value text a Linux kernel leaves for dump tools, parsed into typed fields.

The kernel writes lines such as ``SYMBOL(prb)=ffffffffa8c643e0`` (hex), ``OFFSET(printk_info.seq)=0``,
``SIZE(page)=64``, ``LENGTH(zone.free_area)=11``, ``NUMBER(phys_base)=-216006656`` (decimal,
signed), ``KERNELOFFSET=26200000`` (hex), ``OSRELEASE=6.1.0-56-amd64``, ``PAGESIZE=4096`` (see
``kernel/vmcore_info.c`` and ``arch/x86/kernel/machine_kexec_64.c``). The text comes from guest
memory, so it is bounded and every malformed line is skipped and remembered, never fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmcrash.errors import GuestMemoryError

from ._io import MASK64

__all__ = ["MAX_VMCOREINFO_BYTES", "VmcoreInfo", "parse_vmcoreinfo"]

#: The kernel reserves one page for it (VMCOREINFO_BYTES); be generous but bounded.
MAX_VMCOREINFO_BYTES = 1 << 20
_MAX_LINES = 20_000
_KEY_RE = re.compile(rb"^(SYMBOL|OFFSET|SIZE|LENGTH|NUMBER)\(([A-Za-z0-9_.$]{1,128})\)$")
_PLAIN_KEY_RE = re.compile(rb"^[A-Za-z0-9_.\-]{1,128}$")


@dataclass(frozen=True)
class VmcoreInfo:
    """Typed VMCOREINFO.

    :ivar symbols: ``SYMBOL(name)`` -> address (unsigned 64-bit).
    :ivar offsets: ``OFFSET(struct.member)`` -> byte offset.
    :ivar sizes: ``SIZE(struct)`` -> bytes. :ivar lengths: ``LENGTH(array)`` -> elements.
    :ivar numbers: ``NUMBER(name)`` -> signed integer.
    :ivar osrelease: ``OSRELEASE`` as bytes, or ``None``. :ivar build_id: ``BUILD-ID`` or ``None``.
    :ivar page_size_bytes: ``PAGESIZE`` or ``None``. :ivar kernel_offset: ``KERNELOFFSET`` or ``None``.
    :ivar crash_time_s: ``CRASHTIME`` (only when kdump's crash_save_vmcoreinfo ran) or ``None``.
    :ivar other: any other ``KEY=value`` line (``CONFIG_*``...), values as bytes.
    :ivar bad_lines: how many lines were malformed and skipped.
    :ivar raw: the text as found (bounded by :data:`MAX_VMCOREINFO_BYTES`).
    """

    symbols: dict[str, int] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    lengths: dict[str, int] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    osrelease: bytes | None = None
    build_id: bytes | None = None
    page_size_bytes: int | None = None
    kernel_offset: int | None = None
    crash_time_s: int | None = None
    other: dict[str, bytes] = field(default_factory=dict)
    bad_lines: int = 0
    raw: bytes = b""

    def symbol(self, name: str) -> int:
        """Address of ``SYMBOL(name)``. :raises GuestMemoryError: VMCOREINFO does not list it."""
        try:
            return self.symbols[name]
        except KeyError:
            raise GuestMemoryError(f"VMCOREINFO has no SYMBOL({name})") from None

    def offset(self, name: str) -> int:
        """``OFFSET(name)``. :raises GuestMemoryError: VMCOREINFO does not list it."""
        try:
            return self.offsets[name]
        except KeyError:
            raise GuestMemoryError(f"VMCOREINFO has no OFFSET({name})") from None

    def size(self, name: str) -> int:
        """``SIZE(name)``. :raises GuestMemoryError: VMCOREINFO does not list it."""
        try:
            return self.sizes[name]
        except KeyError:
            raise GuestMemoryError(f"VMCOREINFO has no SIZE({name})") from None

    def number(self, name: str) -> int:
        """``NUMBER(name)``. :raises GuestMemoryError: VMCOREINFO does not list it."""
        try:
            return self.numbers[name]
        except KeyError:
            raise GuestMemoryError(f"VMCOREINFO has no NUMBER({name})") from None


def _int(text: bytes, base: int) -> int | None:
    if not text or len(text) > 40:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def parse_vmcoreinfo(raw: bytes) -> VmcoreInfo:
    """Parse VMCOREINFO text (pure). Malformed lines are counted in ``bad_lines``, never raised.

    The text ends at the first NUL byte (the ELF note descriptor is padded). Only the first
    :data:`MAX_VMCOREINFO_BYTES` are looked at.
    """
    raw = raw[:MAX_VMCOREINFO_BYTES].split(b"\0", 1)[0]
    typed: dict[bytes, dict[str, int]] = {b"SYMBOL": {}, b"OFFSET": {}, b"SIZE": {}, b"LENGTH": {},
                                          b"NUMBER": {}}
    other: dict[str, bytes] = {}
    osrelease = build_id = None
    page_size = kernel_offset = crash_time = None
    bad = 0
    for line in raw.split(b"\n")[:_MAX_LINES]:
        line = line.strip(b"\r")
        if not line:
            continue
        key, sep, value = line.partition(b"=")
        if not sep:
            bad += 1
            continue
        m = _KEY_RE.match(key)
        if m:
            kind, name = m.group(1), m.group(2).decode("ascii")
            number = _int(value, 16 if kind == b"SYMBOL" else 10)
            if number is None:
                bad += 1
                continue
            if kind == b"SYMBOL":
                number &= MASK64
            typed[kind][name] = number
            continue
        if not _PLAIN_KEY_RE.match(key):
            bad += 1
            continue
        if key == b"OSRELEASE":
            osrelease = value[:256]
        elif key == b"BUILD-ID":
            build_id = value[:256]
        elif key == b"PAGESIZE":
            page_size = _int(value, 10)
            bad += page_size is None
        elif key == b"KERNELOFFSET":
            kernel_offset = _int(value, 16)
            bad += kernel_offset is None
        elif key == b"CRASHTIME":
            crash_time = _int(value, 10)
            bad += crash_time is None
        else:
            other[key.decode("ascii")] = value[:256]
    return VmcoreInfo(
        symbols=typed[b"SYMBOL"], offsets=typed[b"OFFSET"], sizes=typed[b"SIZE"],
        lengths=typed[b"LENGTH"], numbers=typed[b"NUMBER"], osrelease=osrelease, build_id=build_id,
        page_size_bytes=page_size, kernel_offset=kernel_offset, crash_time_s=crash_time, other=other,
        bad_lines=bad, raw=raw,
    )

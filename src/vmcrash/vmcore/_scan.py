"""What a dump without a VMCOREINFO note can still tell, found by bounded scans of guest memory.

1. The guest kernel builds its VMCOREINFO text whether or not the hypervisor is told where it is
   (``vmcoreinfo_data``, one page from ``get_zeroed_page()``, text from byte 0). Pages are checked
   from the top of memory down for one that starts with ``OSRELEASE=`` and parses into a usable
   VMCOREINFO (at most :data:`MAX_RECOVERY_PAGES` pages; only each page's first bytes are decoded).
2. Failing that, a vCPU's CR3 still translates kernel addresses: the kernel image is the first
   mapped 2 MiB-aligned range above ``__START_KERNEL_map`` (KASLR moves it in 2 MiB steps within
   1 GiB); its pages (at most :data:`MAX_IMAGE_BYTES`) are scanned for ``linux_banner``.

Everything found this way is labelled as such in ``problems``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmcrash.errors import GuestMemoryError

from ._base import DumpReader
from ._notes import CpuState
from ._vmcoreinfo import VmcoreInfo, parse_vmcoreinfo
from ._x86 import START_KERNEL_MAP, KernelMemory

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_RECOVERY_PAGES",
    "ScanResult",
    "find_banner",
    "recover_vmcoreinfo",
    "scan_without_vmcoreinfo",
]

MAX_IMAGE_BYTES = 256 << 20
#: 16 GiB of 4 KiB pages; only the first bytes of each are decoded.
MAX_RECOVERY_PAGES = 1 << 22
_VMCOREINFO_HEAD = b"OSRELEASE="
_STEP = 2 << 20
_CHUNK = 4 << 20
_OVERLAP = 1024
_BANNER = b"Linux version "
_RELEASE = re.compile(rb"^[0-9]+\.[0-9]+[0-9A-Za-z.+~_-]*$")


@dataclass(frozen=True)
class ScanResult:
    kernel_release: str | None = None
    kernel_version: str | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)


def _printable_run(data: bytes, start: int, limit: int = 512) -> bytes:
    end = start
    stop = min(len(data), start + limit)
    while end < stop and 0x20 <= data[end] < 0x7F:
        end += 1
    return data[start:end]


def find_banner(data: bytes) -> tuple[str, str | None] | None:
    """``(release, version)`` from the ``Linux version ...`` texts in ``data`` (pure).

    The first text with a plausible release and a ``#N ...`` version wins; else the first with a
    plausible release (the image also holds a build-time template without the number).
    """
    fallback = None
    pos = data.find(_BANNER)
    for _ in range(64):
        if pos < 0:
            break
        text = _printable_run(data, pos)
        words = text[len(_BANNER):].split(b" ", 1)
        if words and _RELEASE.match(words[0]):
            m = re.search(rb"(#\d+ .*)$", text)
            if m:
                return words[0].decode("ascii"), m.group(1).decode("ascii", "replace")
            fallback = fallback or (words[0].decode("ascii"), None)
        pos = data.find(_BANNER, pos + 1)
    return fallback


def _image_range(mem: KernelMemory) -> tuple[int, int] | None:
    """Physical (start, size) of the kernel image mapped at __START_KERNEL_map + n * 2 MiB."""
    start = None
    size = 0
    for k in range((1 << 30) // _STEP):
        vaddr = START_KERNEL_MAP + k * _STEP
        try:
            phys = mem.vtop(vaddr)
        except GuestMemoryError:
            if start is not None:
                break
            continue
        if start is None:
            start = phys
        elif phys != start + size:
            break
        size += _STEP
        if size >= MAX_IMAGE_BYTES:
            break
    return (start, size) if start is not None else None


def recover_vmcoreinfo(reader: DumpReader, *, max_pages: int = MAX_RECOVERY_PAGES
                       ) -> tuple[VmcoreInfo, int] | None:
    """Find the guest kernel's own VMCOREINFO page; ``(parsed, physical address)`` or ``None``.

    A candidate must parse into OSRELEASE, PAGESIZE and at least 10 symbols including a
    kernel log (``prb`` or ``log_buf``). Pages that cannot be read are skipped, and so are pages
    the file does not store (an ELF segment's zero tail past ``p_filesz``, which a hostile header
    can make terabytes long).
    """
    ranges = list(reader.stored_ranges())
    seen = 0
    for start, end in reversed(ranges):
        for pfn in range(end - 1, start - 1, -1):
            seen += 1
            if seen > max_pages:
                return None
            try:
                if reader.page_head(pfn, len(_VMCOREINFO_HEAD)) != _VMCOREINFO_HEAD:
                    continue
                page = reader.read_page(pfn)
            except GuestMemoryError:
                continue
            vi = parse_vmcoreinfo(page)
            if (vi.osrelease and vi.page_size_bytes and len(vi.symbols) >= 10
                    and ("prb" in vi.symbols or "log_buf" in vi.symbols)):
                return vi, pfn * reader.page_size_bytes
    return None


def scan_without_vmcoreinfo(reader: DumpReader, cpus: list[CpuState], cr3: int | None) -> ScanResult:
    """Kernel release of a dump without VMCOREINFO, from the image's banner; never raises guest errors."""
    if cr3 is None:
        return ScanResult(problems=("no vCPU CR3 in the dump either: nothing can be located",))
    try:
        mem = KernelMemory(reader, None, cr3=cr3)
        found = _image_range(mem)
    except GuestMemoryError as exc:
        return ScanResult(problems=(f"kernel image not found through CR3: {exc}",))
    if found is None:
        return ScanResult(problems=("kernel image not found through CR3",))
    start, size = found
    banner: tuple[str, str | None] | None = None
    pos = 0
    while pos < size and (banner is None or banner[1] is None):
        n = min(_CHUNK + _OVERLAP, size - pos)
        try:
            hit = find_banner(b"".join(reader.read_phys(start + pos + o, min(1 << 20, n - o))
                                       for o in range(0, n, 1 << 20)))
        except GuestMemoryError:
            hit = None
        if hit is not None and (banner is None or hit[1] is not None):
            banner = hit
        pos += _CHUNK
    problems = [(f"scanned the kernel image ({size >> 20} MiB at physical {start:#x}, found through CR3) "
                 "for its version banner")]
    if banner is None:
        problems.append("kernel release: no 'Linux version' banner found")
    return ScanResult(kernel_release=banner[0] if banner else None, kernel_version=banner[1] if banner else None,
                      problems=tuple(problems))

"""x86-64 kernel virtual addresses to guest-physical ones, driven by VMCOREINFO alone.

Kernel image addresses (``__START_KERNEL_map`` .. + ``KERNEL_IMAGE_SIZE``) translate with
``phys_base`` (``paddr = vaddr - __START_KERNEL_map + phys_base``, modulo 2^64: ``phys_base`` is
negative when the kernel runs below its link address). Every other address is found by walking the
kernel page tables from ``init_top_pgt`` (4-level, or 5-level when ``pgtable_l5_enabled``), with
1 GiB and 2 MiB pages. Without ``phys_base`` the walk starts from a vCPU's CR3 instead.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from vmcrash.errors import GuestMemoryError

from ._base import DumpReader
from ._io import MASK64
from ._vmcoreinfo import VmcoreInfo

__all__ = ["START_KERNEL_MAP", "KernelMemory", "to_signed64"]

START_KERNEL_MAP = 0xFFFFFFFF80000000
_DEFAULT_IMAGE_SIZE = 1 << 30  # KERNEL_IMAGE_SIZE with KASLR (512 MiB without)
_PRESENT = 1 << 0
_PSE = 1 << 7
_ADDR_MASK = 0x000FFFFFFFFFF000
_PAGE = 4096
_MAX_READ = 16 << 20


def to_signed64(value: int) -> int:
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value


class KernelMemory:
    """Reads guest kernel virtual memory of one dump.

    :param reader: the dump's physical memory.
    :param vmcoreinfo: gives ``phys_base``, ``init_top_pgt``, ``pgtable_l5_enabled``, ``sme_mask``
        and ``KERNEL_IMAGE_SIZE``; may be ``None`` with ``cr3`` given.
    :param cr3: page-table root to use when VMCOREINFO cannot give one.
    :raises GuestMemoryError: neither source of a page-table root is available.
    """

    def __init__(self, reader: DumpReader, vmcoreinfo: VmcoreInfo | None, *, cr3: int | None = None) -> None:
        self.reader = reader
        vi = vmcoreinfo
        self.phys_base: int | None = None
        self.image_size = _DEFAULT_IMAGE_SIZE
        self.levels = 4
        self.sme_mask = 0
        root: int | None = None
        if vi is not None:
            if "phys_base" in vi.numbers:
                self.phys_base = vi.numbers["phys_base"] & MASK64
            self.image_size = vi.numbers.get("KERNEL_IMAGE_SIZE", _DEFAULT_IMAGE_SIZE) & MASK64
            if not 0 < self.image_size <= 1 << 31:
                self.image_size = _DEFAULT_IMAGE_SIZE
            self.levels = 5 if vi.numbers.get("pgtable_l5_enabled", 0) else 4
            self.sme_mask = vi.numbers.get("sme_mask", 0) & MASK64
            if self.phys_base is not None and "init_top_pgt" in vi.symbols:
                root = self._image_phys(vi.symbols["init_top_pgt"])
        if root is None and cr3 is not None:
            root = cr3 & _ADDR_MASK & ~self.sme_mask
        if root is None and self.phys_base is None:
            raise GuestMemoryError("no way to translate addresses: VMCOREINFO lacks phys_base and no CR3")
        self.root = root
        self._tlb: OrderedDict[int, int] = OrderedDict()

    # -- translation -----------------------------------------------------------------------

    def _image_phys(self, vaddr: int) -> int | None:
        if self.phys_base is None:
            return None
        if START_KERNEL_MAP <= vaddr < START_KERNEL_MAP + self.image_size:
            return (vaddr - START_KERNEL_MAP + self.phys_base) & MASK64
        return None

    def _entry(self, table: int, index: int, vaddr: int) -> int:
        try:
            raw = self.reader.read_phys(table + 8 * index, 8)
        except GuestMemoryError as exc:
            raise GuestMemoryError(f"page table at {table:#x} is not in the dump", address=vaddr) from exc
        (entry,) = struct.unpack("<Q", raw)
        return entry & ~self.sme_mask

    def vtop(self, vaddr: int) -> int:
        """Physical address of kernel virtual ``vaddr``.

        :raises GuestMemoryError: not canonical, not mapped, or a page table is missing.
        """
        vaddr &= MASK64
        phys = self._image_phys(vaddr)
        if phys is not None:
            return phys
        vpage = vaddr >> 12
        cached = self._tlb.get(vpage)
        if cached is not None:
            return cached | (vaddr & 0xFFF)
        top_bit = 56 if self.levels == 5 else 47
        high = vaddr >> top_bit
        if high not in (0, (1 << (64 - top_bit)) - 1):
            raise GuestMemoryError("non-canonical kernel address", address=vaddr)
        if self.root is None:
            raise GuestMemoryError("address outside the kernel image and no page-table root "
                                   "(VMCOREINFO lacks init_top_pgt)", address=vaddr)
        table = self.root
        shifts = (48, 39, 30, 21, 12) if self.levels == 5 else (39, 30, 21, 12)
        for shift in shifts:
            entry = self._entry(table, (vaddr >> shift) & 511, vaddr)
            if not entry & _PRESENT:
                raise GuestMemoryError("kernel address not mapped", address=vaddr)
            if shift in (30, 21) and entry & _PSE:
                size = 1 << shift
                base = entry & _ADDR_MASK & ~(size - 1)
                phys = base | (vaddr & (size - 1))
                break
            table = entry & _ADDR_MASK
        else:
            phys = table | (vaddr & 0xFFF)
        self._tlb[vpage] = phys & ~0xFFF
        if len(self._tlb) > 4096:
            self._tlb.popitem(last=False)
        return phys

    # -- reads -------------------------------------------------------------------------------

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes of kernel virtual memory at ``vaddr`` (at most 16 MiB).

        :raises GuestMemoryError: any page unmapped or absent from the dump, or the size too big.
        """
        if size < 0 or size > _MAX_READ:
            raise GuestMemoryError(f"refusing a {size}-byte read", address=vaddr)
        vaddr &= MASK64
        if vaddr + size > 1 << 64:
            raise GuestMemoryError("read wraps around the address space", address=vaddr)
        # Kernel image ranges are physically contiguous: one physical read.
        phys = self._image_phys(vaddr)
        if phys is not None and self._image_phys(vaddr + size - 1 if size else vaddr) is not None:
            return self.reader.read_phys(phys, size)
        out = []
        while size > 0:
            chunk = min(size, _PAGE - (vaddr & 0xFFF))
            out.append(self.reader.read_phys(self.vtop(vaddr), chunk))
            vaddr += chunk
            size -= chunk
        return b"".join(out)

    def u8(self, vaddr: int) -> int:
        return self.read(vaddr, 1)[0]

    def u16(self, vaddr: int) -> int:
        return int(struct.unpack("<H", self.read(vaddr, 2))[0])

    def u32(self, vaddr: int) -> int:
        return int(struct.unpack("<I", self.read(vaddr, 4))[0])

    def s32(self, vaddr: int) -> int:
        return int(struct.unpack("<i", self.read(vaddr, 4))[0])

    def u64(self, vaddr: int) -> int:
        return int(struct.unpack("<Q", self.read(vaddr, 8))[0])

    def cstring(self, vaddr: int, max_bytes: int) -> bytes:
        """A NUL-terminated string of at most ``max_bytes`` (without the NUL)."""
        return self.read(vaddr, max_bytes).split(b"\0", 1)[0]

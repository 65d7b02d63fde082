"""Symbols of loaded modules, for addresses outside the core kernel's kallsyms (heuristic, bounded).

VMCOREINFO does not describe ``struct module``, so this relies only on its long-stable head
(``state``, ``list``, ``name[56]`` at offsets 0, 8, 24 since Linux 2.6) and then *recognises*
two members by their shape and validates them against the address being looked up:

* the core layout ``{void *base; unsigned int size, text_size, ...}``: a page-aligned base in
  the module area with ``text_size <= size <= 64 MiB`` and the address inside;
* the module's ``struct mod_kallsyms {Elf64_Sym *symtab; unsigned int num_symtab; char *strtab;}``:
  pointers into the module area, and symbols whose values fall inside the module.

A match is reported as ``func+0xoff/0xsize [module]``, like the kernel prints it.
"""

from __future__ import annotations

import struct

from vmcrash.errors import GuestMemoryError

from ._kallsyms import Symbol
from ._x86 import KernelMemory

__all__ = ["MODULES_END", "MODULES_VADDR", "module_symbol"]

MODULES_VADDR = 0xFFFFFFFFC0000000
MODULES_END = 0xFFFFFFFFFF000000
_MAX_MODULES = 4096
_SCAN_BYTES = 4096
_MAX_SYMTAB = 50_000
#: Symbol-table bytes one lookup may read while trying candidate members.
_SYMTAB_BUDGET = 8 << 20


def _in_modules(addr: int) -> bool:
    return MODULES_VADDR <= addr < MODULES_END


def _find_layout(blob: bytes, address: int) -> tuple[int, int] | None:
    for p in range(80, len(blob) - 16, 8):
        base, size, text_size = struct.unpack_from("<QII", blob, p)
        if (_in_modules(base) and base & 0xFFF == 0 and 0 < text_size <= size <= 64 << 20
                and base <= address < base + size):
            return base, size
    return None


def _find_symbol(mem: KernelMemory, blob: bytes, base: int, size: int, address: int
                 ) -> tuple[str, int, int] | None:
    budget = _SYMTAB_BUDGET
    for p in range(80, len(blob) - 24, 8):
        symtab, num = struct.unpack_from("<QI", blob, p)
        (strtab,) = struct.unpack_from("<Q", blob, p + 16)
        if not (_in_modules(symtab) and _in_modules(strtab) and 0 < num <= _MAX_SYMTAB):
            continue
        budget -= 24 * num
        if budget < 0:
            return None
        try:
            table = mem.read(symtab, 24 * num)
        except GuestMemoryError:
            continue
        best = None
        inside = 0
        for i in range(num):
            st_name, st_info, _other, _shndx, value, st_size = struct.unpack_from("<IBBHQQ", table, 24 * i)
            if base <= value < base + size:
                inside += 1
                if st_info & 0xF == 2 and value <= address and (best is None or value > best[1]):
                    best = (st_name, value, st_size)
        if best is None or inside < 1:
            continue
        st_name, value, st_size = best
        if st_size and address >= value + st_size:
            continue
        try:
            name = mem.cstring(strtab + st_name, 128)
        except GuestMemoryError:
            continue
        if not name or not all(33 <= c < 127 for c in name):
            continue
        return name.decode("ascii"), value, st_size
    return None


def module_symbol(mem: KernelMemory, modules_list: int, address: int) -> tuple[str, Symbol | None] | None:
    """Which loaded module holds ``address``, and the function there if its symbols are found.

    :param modules_list: address of the kernel's ``modules`` list head.
    :returns: ``(module name, symbol or None)``, or ``None`` when no module contains it.
    :raises GuestMemoryError: the module list cannot be read at all.
    """
    if not _in_modules(address):
        return None
    node = mem.u64(modules_list)
    for _ in range(_MAX_MODULES):
        if node == modules_list or node == 0:
            return None
        mod = node - 8
        try:
            blob = mem.read(mod, _SCAN_BYTES)
        except GuestMemoryError:
            return None
        layout = _find_layout(blob, address)
        if layout is not None:
            name = blob[24:80].split(b"\0", 1)[0].decode("ascii", "replace")
            found = _find_symbol(mem, blob, layout[0], layout[1], address)
            if found is None:
                return name, None
            func, value, st_size = found
            return name, Symbol(name=func, address=value, offset=address - value, size=st_size or None, type="t")
        (node,) = struct.unpack_from("<Q", blob, 8)
    return None

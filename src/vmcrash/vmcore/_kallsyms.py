"""Kernel symbols from the kallsyms tables the kernel keeps in its own image (no debuginfo needed).

VMCOREINFO lists ``kallsyms_names``, ``kallsyms_num_syms``, ``kallsyms_token_table``,
``kallsyms_token_index``, ``kallsyms_offsets`` and ``kallsyms_relative_base`` (Linux >= 6.0;
see ``kernel/vmcore_info.c``). Layout (``scripts/kallsyms.c``):

* ``kallsyms_names``: per symbol a length (one byte; from 6.1 two bytes, ULEB128, when >= 0x80)
  and that many token numbers; the expanded text starts with the type letter (``T``, ``t``, ...).
* ``kallsyms_token_table``: 256 NUL-terminated tokens; ``kallsyms_token_index``: their offsets (u16).
* ``kallsyms_offsets``: s32 per symbol, sorted by address. With ``KALLSYMS_ABSOLUTE_PERCPU``
  (x86-64 SMP) a non-negative value is the absolute address and a negative one means
  ``relative_base - 1 - value``; otherwise ``relative_base + (u32)value``.

Everything read here is bounded: symbol count, table sizes, name lengths.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from vmcrash.errors import GuestMemoryError

from ._io import MASK64
from ._vmcoreinfo import VmcoreInfo
from ._x86 import KernelMemory

__all__ = ["REQUIRED_SYMBOLS", "Kallsyms", "Symbol", "decode_kallsyms"]

REQUIRED_SYMBOLS = ("kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table",
                    "kallsyms_token_index", "kallsyms_offsets", "kallsyms_relative_base")
MAX_SYMS = 2_000_000
MAX_NAMES_BYTES = 16 << 20
_TOKEN_TABLE_MAX = 64 << 10


@dataclass(frozen=True)
class Symbol:
    """Where an address falls: ``name+0xoffset/0xsize`` like the kernel prints it."""

    name: str
    address: int
    offset: int
    size: int | None
    type: str

    def __str__(self) -> str:
        size = f"/{self.size:#x}" if self.size is not None else ""
        return f"{self.name}+{self.offset:#x}{size}"


def _split_tokens(token_table: bytes, token_index: bytes) -> list[bytes]:
    idx = struct.unpack("<256H", token_index[:512])
    tokens = []
    for off in idx:
        if off >= len(token_table):
            raise GuestMemoryError("kallsyms token index points past the token table")
        tokens.append(token_table[off:].split(b"\0", 1)[0])
    return tokens


def _entries(names: bytes, count: int) -> Iterable[tuple[int, int]]:
    """(start, end) of each symbol's token bytes in ``names``."""
    pos = 0
    end = len(names)
    for _ in range(count):
        if pos >= end:
            raise GuestMemoryError("kallsyms_names ends before the last symbol")
        length = names[pos]
        pos += 1
        if length & 0x80:
            if pos >= end:
                raise GuestMemoryError("kallsyms_names ends inside a length")
            length = (length & 0x7F) | (names[pos] << 7)
            pos += 1
        if pos + length > end:
            raise GuestMemoryError("kallsyms_names entry runs past its table")
        yield pos, pos + length
        pos += length


def decode_kallsyms(names: bytes, offsets: bytes, count: int, relative_base: int,
                    token_table: bytes, token_index: bytes) -> Kallsyms:
    """Build the symbol table from the raw kallsyms arrays (pure).

    :raises GuestMemoryError: inconsistent tables.
    """
    if count <= 0 or count > MAX_SYMS or len(offsets) < 4 * count:
        raise GuestMemoryError(f"kallsyms_num_syms = {count} is not plausible")
    tokens = _split_tokens(token_table, token_index)
    raw = struct.unpack(f"<{count}i", offsets[:4 * count])
    absolute_percpu = any(v < 0 for v in raw)
    if absolute_percpu:
        addrs = [v if v >= 0 else (relative_base - 1 - v) & MASK64 for v in raw]
    else:
        addrs = [(relative_base + (v & 0xFFFFFFFF)) & MASK64 for v in raw]
    spans = list(_entries(names, count))
    return Kallsyms(addrs, spans, names, tokens)


class Kallsyms:
    """A decoded kallsyms table: address -> symbol, and name -> address."""

    def __init__(self, addresses: list[int], spans: list[tuple[int, int]], names: bytes,
                 tokens: list[bytes]) -> None:
        order = sorted(range(len(addresses)), key=addresses.__getitem__)
        self._addrs = [addresses[i] for i in order]
        self._spans = [spans[i] for i in order]
        self._names = names
        self._tokens = tokens
        self._by_name: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self._addrs)

    def _expand(self, i: int) -> bytes:
        start, end = self._spans[i]
        return b"".join(self._tokens[b] for b in self._names[start:end])

    def symbol(self, index: int) -> tuple[str, str]:
        """(type letter, name) of the ``index``-th symbol in address order."""
        text = self._expand(index)
        return text[:1].decode("ascii", "replace"), text[1:].decode("ascii", "replace")

    def lookup(self, address: int) -> Symbol | None:
        """The symbol containing ``address`` (the last one at or below it), ``None`` below all.

        Of several symbols at one address the first is used, as the kernel does; the size runs
        to the next higher address (``None`` for the last symbol).
        """
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        start = self._addrs[i]
        while i > 0 and self._addrs[i - 1] == start:
            i -= 1
        j = bisect.bisect_right(self._addrs, start)
        size = self._addrs[j] - start if j < len(self._addrs) else None
        if size is not None and address - start >= size:  # pragma: no cover - bisect guarantees
            return None
        kind, name = self.symbol(i)
        return Symbol(name=name, address=start, offset=address - start, size=size, type=kind)

    def addresses_of(self, wanted: Iterable[str]) -> dict[str, int]:
        """Addresses of the named symbols that exist (the lowest address of each name)."""
        want = {w.encode() for w in wanted}
        if not want:
            return {}
        prefixes = {w[:k] for w in want for k in range(len(w) + 1)}
        longest = max(len(w) for w in want)
        tokens = self._tokens
        names = self._names
        # A token can only start a wanted name if its text after the type letter is a prefix of
        # one: most symbols are rejected on their first byte, the rest token by token.
        first_ok = bytes(int(bool(t) and t[1:longest + 1] in prefixes) for t in tokens)
        found: dict[str, int] = {}
        for i, (start, end) in enumerate(self._spans):
            if start >= end or not first_ok[names[start]]:
                continue
            text = tokens[names[start]]
            for b in names[start + 1:end]:
                text += tokens[b]
                if len(text) - 1 > longest or text[1:] not in prefixes:
                    break
            else:
                name = text[1:]
                if name in want and name.decode() not in found:
                    found[name.decode()] = self._addrs[i]
        return found


def load_kallsyms(mem: KernelMemory, vi: VmcoreInfo) -> Kallsyms:
    """Read and decode the kallsyms tables of the dumped kernel.

    :raises GuestMemoryError: VMCOREINFO lacks a kallsyms symbol, or the tables are absent/garbage.
    """
    missing = [s for s in REQUIRED_SYMBOLS if s not in vi.symbols]
    if missing:
        raise GuestMemoryError(f"VMCOREINFO lists no {', '.join(missing)} (kernel older than 6.0?)")
    s = vi.symbols
    count = mem.u32(s["kallsyms_num_syms"])
    if count <= 0 or count > MAX_SYMS:
        raise GuestMemoryError(f"kallsyms_num_syms = {count} is not plausible")
    relative_base = mem.u64(s["kallsyms_relative_base"])
    offsets = mem.read(s["kallsyms_offsets"], 4 * count)
    token_table_len = s["kallsyms_token_index"] - s["kallsyms_token_table"]
    if not 0 < token_table_len <= _TOKEN_TABLE_MAX:
        token_table_len = _TOKEN_TABLE_MAX
    token_table = mem.read(s["kallsyms_token_table"], token_table_len)
    token_index = mem.read(s["kallsyms_token_index"], 512)
    names_len = s["kallsyms_token_table"] - s["kallsyms_names"]
    if not 0 < names_len <= MAX_NAMES_BYTES:
        raise GuestMemoryError(f"kallsyms_names spans {names_len} bytes")
    names = mem.read(s["kallsyms_names"], names_len)
    return decode_kallsyms(names, offsets, count, relative_base, token_table, token_index)

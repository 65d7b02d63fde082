"""kallsyms decoding over tables built by hand (token compression, both offset encodings, big names)."""

from __future__ import annotations

import struct

import pytest

from vmcrash.errors import GuestMemoryError
from vmcrash.vmcore._kallsyms import decode_kallsyms

BASE = 0xFFFFFFFF81000000
# A few multi-character tokens, the rest single characters (token number = its byte).
MULTI = {1: b"Tpa", 2: b"nic", 3: b"_cpu", 4: b"t", 5: b"T", 6: b"D", 7: b"d"}


def tables() -> tuple[bytes, bytes]:
    toks = [MULTI.get(i, bytes([i]) if 32 < i < 127 else b"?") for i in range(256)]
    table = b""
    index = []
    for t in toks:
        index.append(len(table))
        table += t + b"\0"
    return table, struct.pack("<256H", *index)


def encode(text: bytes) -> bytes:
    """Greedy: a multi-char token where it matches, else the character itself."""
    out = bytearray()
    i = 0
    while i < len(text):
        for num, tok in sorted(MULTI.items(), key=lambda kv: -len(kv[1])):
            if text.startswith(tok, i):
                out.append(num)
                i += len(tok)
                break
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


def names_blob(entries: list[bytes]) -> bytes:
    out = b""
    for e in entries:
        if len(e) < 0x80:
            out += bytes([len(e)]) + e
        else:  # Linux >= 6.1 "big" symbols: ULEB128 length
            out += bytes([(len(e) & 0x7F) | 0x80, len(e) >> 7]) + e
    return out


SYMS = [  # (type+name, address), in address order as the kernel sorts them
    (b"Dfixed_percpu_data", 0x0),
    (b"Tstartup", BASE),
    (b"Tpanic", BASE + 0x100),
    (b"tpanic_alias", BASE + 0x100),
    (b"Tdump_stack_lvl", BASE + 0x3F4),
    (b"d" + b"x" * 200, BASE + 0x500),  # a big name
    (b"Dpanic_cpu", BASE + 0x2000),
    (b"Dlast", BASE + 0x3000),
]


def build(absolute_percpu: bool):
    table, index = tables()
    names = names_blob([encode(n) for n, _ in SYMS])
    rel = BASE
    offs = []
    for _, addr in SYMS:
        if absolute_percpu:
            offs.append(addr if addr < 1 << 31 else rel - 1 - addr)
        else:
            offs.append((addr - rel) & 0xFFFFFFFF if addr >= rel else 0)
    fmt = f"<{len(offs)}i" if absolute_percpu else f"<{len(offs)}I"
    return decode_kallsyms(names, struct.pack(fmt, *offs), len(SYMS), rel, table, index)


@pytest.mark.parametrize("absolute_percpu", [True, False])
def test_lookup(absolute_percpu: bool) -> None:
    ks = build(absolute_percpu)
    sym = ks.lookup(BASE + 0x118)
    assert sym is not None and str(sym) == "panic+0x18/0x2f4" and sym.type == "T"  # the first alias
    assert str(ks.lookup(BASE + 0x3F4 + 0x44)) == "dump_stack_lvl+0x44/0x10c"
    assert ks.lookup(BASE + 0x501).name == "x" * 200
    last = ks.lookup(BASE + 0x3001)
    assert last is not None and last.name == "last" and last.size is None
    if absolute_percpu:
        assert ks.lookup(0x10).name == "fixed_percpu_data"


def test_addresses_of() -> None:
    ks = build(True)
    assert ks.addresses_of(["panic_cpu", "panic", "nosuch", "dump_stack_lvl"]) == {
        "panic_cpu": BASE + 0x2000, "panic": BASE + 0x100, "dump_stack_lvl": BASE + 0x3F4}
    assert ks.addresses_of([]) == {}


def test_inconsistent_tables() -> None:
    table, index = tables()
    names = names_blob([encode(n) for n, _ in SYMS])
    offs = struct.pack(f"<{len(SYMS)}i", *range(len(SYMS)))
    with pytest.raises(GuestMemoryError, match="kallsyms_names"):
        decode_kallsyms(names[:20], offs, len(SYMS), BASE, table, index)
    with pytest.raises(GuestMemoryError, match="not plausible"):
        decode_kallsyms(names, offs, 10**9, BASE, table, index)
    with pytest.raises(GuestMemoryError, match="token index"):
        decode_kallsyms(names, offs, len(SYMS), BASE, table[:10], index)

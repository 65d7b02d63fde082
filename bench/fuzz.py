"""Fuzz campaign (issue 11 item 8): generated and mutated hostile input through vmcrash's parsers.

Not run in CI. Targets (each input is reproducible from ``--seed``, the target and its index, for one
version of this script: ``runs.jsonl`` records the commit of each run):

============  =====================================================================================
``elf``        memory-only ELF dumps: the corpus heads (sparse-extended) and small complete dumps
               built with ``tests/vmcore/vmcore_builders.py`` (printk ring, kallsyms, utsname,
               notes), mutated; through ``open_dump``, the reader API, ``analyze`` (with the
               recovery scan), ``has_vmcoreinfo``, ``Triage.to_dict``; sometimes ``convert_to_kdump``
``kdump``      the same for seekable kdump-compressed files
``flattened``  the same for flattened makedumpfile streams; sometimes ``rearrange_flattened``
``printk``     built 6.1 printk rings and pre-5.10 ``log_buf`` logs with corrupted pages and VMCOREINFO
               -> ``for_each_record``
``kallsyms``   built kallsyms tables, mutated -> ``decode_kallsyms``, ``lookup``, ``addresses_of``
``vmcoreinfo`` mutated VMCOREINFO text -> ``parse_vmcoreinfo`` and the code that reads it first
``oops``       kernel log lines (guest-written text) around a crash report -> ``find_crash``, ``parse_frame``
``agent``      guest-agent reply text -> ``host/agent_protocol.py`` decoders, ``Agent`` methods over a replay
               transport, ``clock/_transport.py`` validators, ``host/guest_exec.py``'s ``decode_result``
               (what the guest audit run through guest-exec prints)
``unitfile``   generated/mutated unit files (with ``Condition*=``/``Assert*=`` lines: ``|``/``!`` forms,
               specifiers, resets, tricky characters) -> ``decode_unit_bytes``, ``parse_unit_text``,
               and the file's conditions -> ``unit_conditions`` over a fixed tree, offline and live
``units``      small generated unit trees (links, masks, drop-ins, .wants, conditions) -> ``UnitLoader``,
               ``BootGraph``, the whole ``audit_graph`` (conditions, clock units, daemon reports,
               roles; ``to_json``, ``render_text``), every 4th input ``plan_fix`` + ``render_plan``
``timecfg``    time-daemon configuration trees (chrony.conf + include/confdir, ntp.conf, timesyncd.conf)
               -> ``guest/timecfg.py`` readers and what the audit computes from them
``conditions`` a unit (fragment, drop-ins) full of conditions and assertions plus the facts they read:
               ``/etc/machine-id``, ``/etc/hostname``, ``/proc/cmdline``, PID 1's ``CapBnd``,
               ``/proc/self/mountinfo``, ``/sys`` security/firmware/power-supply/cgroup files,
               ``/run``, ``.updated`` stamps with mtimes, modes, links, ``systemd-detect-virt``'s
               answer -> ``guest/conditions.py``: offline over memory; ``probe_machine`` over the
               tree written to tmpfs (a ``RootSource``; links kept inside it); or a ``Machine``
               built from the facts as they are -> ``unit_conditions``, ``conditions_of``
``qemumem``    ``info mtree -f`` text, ``gpa2hva`` answers, ``/proc/<pid>/maps`` and ``status`` text,
               pagemap slices, and QEMU's dump header (its real 7.2 header and QEMU-7.2-style headers
               of small built guests; ELF, program and section header fields and notes mutated) ->
               ``host/qemu_memory.py`` parsers and ``resolve_ranges`` (must cover every merged
               section), ``capture/hold.py`` ``header_extent``, ``parse_dump_header``
               (``section_trailers``), a held image read through ``HeldElfSource``, every 4th
               ``triage_held``, every 16th ``write_held`` to tmpfs
============  =====================================================================================

A *crash* is an exception that is not a :class:`vmcrash.errors.VmcrashError` (deduplicated by type
and innermost vmcrash frame), an input taking more than ``--timeout-s`` of CPU time (its worker is
killed; 20 times that in wall time also counts),
or memory beyond ``--max-rss-mib`` / a sampled tracemalloc peak above ``--max-peak-mib``. Each
first input of a crash is written to ``OUT/crashes/``, the slowest input of each target (CPU time;
the inputs sampled under tracemalloc, which makes them ~5x slower, are left out of this and get
8 times the time bound) to ``OUT/slowest/``. Every run appends its per-target totals to ``OUT/runs.jsonl``; a later run
continues each target at the next unused index, so a campaign can run in chunks.

How to run (the machine is shared: always ``nice -n 19``)::

    nice -n 19 .venv/bin/python bench/fuzz.py --budget 200000            # one chunk, all targets
    nice -n 19 .venv/bin/python bench/fuzz.py --budget 20000 --targets agent,units
    .venv/bin/python bench/fuzz.py --report                              # totals of all chunks
    .venv/bin/python bench/fuzz.py --replay OUT/crashes/<file>.bin --target elf   # traceback
    .venv/bin/python bench/fuzz.py --replay OUT/slowest/<file>.bin --target elf   # profile it
    .venv/bin/python bench/fuzz.py --minimize OUT/crashes/<file>.bin --target units

``--budget`` is the number of executions of this run, split over the targets by their weights;
``--jobs`` worker processes (default 2), ``--out`` (default ``/tmp/vmcrash-fuzz``), ``--seed`` (1).
Dump files are written to ``/dev/shm`` (tmpfs). ``--minimize`` shrinks a crashing input while its
crash key stays the same (cuts the tail; deletes chunks of text inputs, zeroes chunks of binary ones)
and writes ``<file>.min.bin``: that is what goes to ``tests/vmcore/fuzz-regressions/`` with a test in
``tests/vmcore/test_fuzz_regressions.py`` (also the host and capture targets' inputs; guest inputs go
to ``tests/guest/fuzz-regressions/`` and ``tests/guest/test_guest_fuzz_regressions.py``). Exit status 0
when it ran (crashes are reported, not an error status).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import tracemalloc
import zlib
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "vmcore"))

from vmcore_builders import (  # noqa: E402
    KMAP,
    PAGE,
    MemReader,
    build_elf,
    build_kdump,
    build_prb,
    flatten,
    note,
    prstatus,
    qemu_cpu_state,
)

from vmcrash.errors import AgentRefused, VmcrashError  # noqa: E402

CORPUS = ROOT / "tests" / "vmcore" / "corpus"
DUMP_TARGETS = ("elf", "kdump", "flattened")
#: share of the budget per target (cheap pure parsers get more executions than whole dumps)
WEIGHTS = {"elf": 2, "kdump": 2, "flattened": 2, "printk": 10, "kallsyms": 14, "vmcoreinfo": 16, "oops": 8,
           "agent": 24, "unitfile": 27, "units": 3, "timecfg": 6, "conditions": 12, "qemumem": 12}
BLOCK = {"elf": 200, "kdump": 200, "flattened": 200, "printk": 500, "units": 500, "conditions": 1000,
         "qemumem": 1000}
DEFAULT_BLOCK = 4000
SAMPLE_TRACEMALLOC = 50  # one input in this many runs under tracemalloc
TRACEMALLOC_SLOWDOWN = 8  # such an input gets this many times the time bound (measured: ~5x slower)

# -- mutation ---------------------------------------------------------------------------------------

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 0x10, 0x3F, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x1FF, 0x200, 0xFFF, 0x1000,
               0x1001, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32,
               (1 << 40), (1 << 62) - 1, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 4096)
_FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclass(frozen=True)
class Field:
    """An integer field of a seed's structure: offset, size in bytes, byte order ``<`` or ``>``."""

    offset: int
    size: int
    order: str = "<"


def _put_int(data: bytearray, f: Field, value: int) -> None:
    if f.offset + f.size <= len(data):
        struct.pack_into(f.order + _FMT[f.size], data, f.offset, value & ((1 << 8 * f.size) - 1))


def _get_int(data: bytearray, f: Field) -> int:
    if f.offset + f.size > len(data):
        return 0
    return int(struct.unpack_from(f.order + _FMT[f.size], data, f.offset)[0])


def mutate(rng: random.Random, seed: bytes, fields: tuple[Field, ...] = (), *, max_ops: int = 8,
           resize: bool = True) -> bytes:
    """Bit flips, byte sets, boundary values and inflation of header fields, splices, truncation.

    ``resize`` allows inserting and deleting bytes (for text; dump offsets are kept otherwise).
    """
    data = bytearray(seed)
    for _ in range(rng.randint(1, max_ops)):
        if not data:
            data += bytes([rng.randrange(256)])
        op = rng.randrange(12 if resize else 10)
        n = len(data)
        if op == 0:  # bit flip
            pos = rng.randrange(n)
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:  # random byte
            data[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:  # interesting byte
            data[rng.randrange(n)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0x3D, 0x5C))
        elif op in (3, 4, 5) and fields:  # structure-aware: boundary value / inflation of a header field
            f = rng.choice(fields)
            if op == 3:
                value = rng.choice(INTERESTING)
            elif op == 4:
                value = _get_int(data, f) << rng.choice((1, 4, 8, 16, 31))
            else:
                value = _get_int(data, f) + rng.choice((-4096, -8, -1, 1, 8, 4096, 1 << 20))
            _put_int(data, f, value)
        elif op in (3, 4, 5, 6):  # integer boundary value at a random aligned offset
            size = rng.choice((2, 4, 8))
            pos = rng.randrange(max(1, n - size + 1)) & ~(size - 1)
            _put_int(data, Field(pos, size, rng.choice("<>")), rng.choice(INTERESTING))
        elif op == 7:  # splice: copy a chunk over another place
            size = rng.randint(1, max(1, min(n, 512)))
            src, dst = rng.randrange(max(1, n - size + 1)), rng.randrange(max(1, n - size + 1))
            data[dst:dst + size] = data[src:src + size]
        elif op == 8:  # zero or 0xff a range
            size = rng.randint(1, max(1, min(n, 4096)))
            pos = rng.randrange(n)
            data[pos:pos + size] = bytes([rng.choice((0, 0xFF))]) * len(data[pos:pos + size])
        elif op == 9:  # truncation
            if rng.random() < 0.3:
                del data[rng.randrange(n):]
        elif op == 10:  # insert bytes
            pos = rng.randrange(n + 1)
            data[pos:pos] = rng.choice((b"\0", b"\n", b"=", b"\\\n", b"[", b"\xff", b"%", b"@",
                                        data[pos:pos + rng.randint(1, 64)]))
        else:  # delete a range
            pos = rng.randrange(n)
            del data[pos:pos + rng.randint(1, 32)]
    return bytes(data)


# -- seeds: dumps -----------------------------------------------------------------------------------

UTS_V = KMAP + 0x300000
PANIC_CPU_V = KMAP + 0x301000
KSYMS_V = KMAP + 0x200000
LOG_LINES = (
    b"Linux version 6.1.0-fuzz (fuzz@vmcrash) #1 SMP PREEMPT_DYNAMIC",
    b"Command line: console=ttyS0",
    b"sysrq: Trigger a crash",
    b"Kernel panic - not syncing: sysrq triggered crash",
    b"BUG: kernel NULL pointer dereference, address: 0000000000000000",
    b"CPU: 0 PID: 1 Comm: sh Not tainted 6.1.0-fuzz #1",
    b"RIP: 0010:sysrq_handle_crash+0x16/0x20",
    b"Call Trace:",
    b" <TASK>",
    b" __handle_sysrq+0x8a/0x1a0",
    b" write_sysrq_trigger+0x24/0x40",
    b" </TASK>",
    b"Kernel panic - not syncing: Fatal exception",
)
SYMBOLS = (("T", "_stext", 0x0), ("T", "sysrq_handle_crash", 0x5000), ("T", "__handle_sysrq", 0x6000),
           ("T", "write_sysrq_trigger", 0x6800), ("T", "panic", 0x7000), ("D", "panic_cpu", 0x301000),
           ("T", "a_symbol_with_a_very_long_name_" + "x" * 120, 0x8000), ("t", "zzz_last", 0x9000))


def kallsyms_tables(symbols: tuple[tuple[str, str, int], ...], *, multi_tokens: bool = True
                    ) -> tuple[bytes, bytes, bytes, bytes]:
    """(names, offsets, token_table, token_index) of ``symbols`` (type, name, offset from the base)."""
    tokens = [bytes([i]) if 0x20 <= i < 0x7F else b"" for i in range(256)]
    if multi_tokens:
        for i, tok in zip((1, 2, 3, 4, 5), (b"sysrq_", b"handle", b"Tpa", b"_trigger", b"__")):
            tokens[i] = tok
    table = b""
    index = []
    for tok in tokens:
        index.append(len(table))
        table += tok + b"\0"
    names = b""
    for kind, name, _ in sorted(symbols, key=lambda s: s[2]):
        text = (kind + name).encode()
        out: list[int] = []
        pos = 0
        while pos < len(text):
            for i in (1, 2, 3, 4, 5):
                tok = tokens[i]
                if tok and text.startswith(tok, pos):
                    out.append(i)
                    pos += len(tok)
                    break
            else:
                out.append(text[pos])
                pos += 1
        n = len(out)
        names += (bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7])) + bytes(out)
    offsets = b"".join(struct.pack("<i", off) for _, _, off in sorted(symbols, key=lambda s: s[2]))
    return names, offsets, table, struct.pack("<256H", *index)


def rich_memory(rng: random.Random) -> tuple[MemReader, bytes]:
    """Guest memory with a printk ring, kallsyms, utsname and panic_cpu; returns (memory, VMCOREINFO)."""
    mem = MemReader()
    nrec = rng.randint(0, 40)
    recs = []
    for i in range(nrec):
        text = LOG_LINES[i % len(LOG_LINES)] if i >= nrec - len(LOG_LINES) else b"line %d " % i * (i % 3 + 1)
        if rng.random() < 0.1:
            text += b"\ncontinued"
        recs.append((i, i * 1_000_000 + rng.randrange(1000), i % 8, i, text))
    vmci = build_prb(mem, recs, count_bits=rng.choice((3, 4, 5, 6)), size_bits=rng.choice((9, 10, 11, 12)),
                     first_id=rng.choice((0, 7, (1 << 62) - 3)), exact_fit_wraps=rng.random() < 0.5)

    def phys(v: int) -> int:
        return v - KMAP + 0x1000000

    names, offsets, table, index = kallsyms_tables(SYMBOLS, multi_tokens=rng.random() < 0.7)
    num_v, base_v = KSYMS_V, KSYMS_V + 8
    off_v = KSYMS_V + 16
    names_v = off_v + len(offsets) + 8
    table_v = names_v + len(names)
    index_v = table_v + len(table)
    mem.write_fast(phys(num_v), struct.pack("<I", len(SYMBOLS)))
    mem.write_fast(phys(base_v), struct.pack("<Q", KMAP))
    mem.write_fast(phys(off_v), offsets)
    mem.write_fast(phys(names_v), names)
    mem.write_fast(phys(table_v), table)
    mem.write_fast(phys(index_v), index)
    uts = b"".join(x.ljust(65, b"\0") for x in (b"Linux", b"fuzzhost", b"6.1.0-fuzz", b"#1 SMP", b"x86_64", b""))
    mem.write_fast(phys(UTS_V) + 4, uts)
    mem.write_fast(phys(PANIC_CPU_V), struct.pack("<i", 0))
    vmci += (f"SYMBOL(kallsyms_num_syms)={num_v:x}\nSYMBOL(kallsyms_relative_base)={base_v:x}\n"
             f"SYMBOL(kallsyms_offsets)={off_v:x}\nSYMBOL(kallsyms_names)={names_v:x}\n"
             f"SYMBOL(kallsyms_token_table)={table_v:x}\nSYMBOL(kallsyms_token_index)={index_v:x}\n"
             f"SYMBOL(init_uts_ns)={UTS_V:x}\nOFFSET(uts_namespace.name)=4\nCRASHTIME=1700000000\n"
             "KERNELOFFSET=0\nBUILD-ID=0123456789abcdef\n").encode()
    return mem, vmci


def dump_notes(rng: random.Random, vmci: bytes | None) -> bytes:
    out = b""
    for cpu in range(rng.choice((1, 1, 2))):
        regs = {"rip": KMAP + 0x5016, "rsp": KMAP + 0x400000, "cs": 0x10}
        out += note(b"CORE", 1, prstatus(regs, pid=cpu + 1))
        if rng.random() < 0.7:
            out += note(b"QEMU", 0, qemu_cpu_state(regs, gs_base=KMAP + 0x500000, crs=(0x80050033, 0, 0, 0, 0)))
    if vmci is not None:
        out += note(b"VMCOREINFO", 0, vmci)
    return out


def _runs(pfns: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for p in pfns:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def elf_fields(data: bytes) -> tuple[Field, ...]:
    fields = [Field(o, s) for o, s in ((16, 2), (18, 2), (32, 8), (40, 8), (52, 2), (54, 2), (56, 2))]
    if len(data) >= 64:
        phoff, phnum = struct.unpack_from("<Q", data, 32)[0], struct.unpack_from("<H", data, 56)[0]
        for i in range(min(phnum, 64)):
            base = phoff + 56 * i
            fields += [Field(base + o, s) for o, s in ((0, 4), (8, 8), (24, 8), (32, 8), (40, 8))]
            if base + 56 <= len(data) and struct.unpack_from("<I", data, base)[0] == 4:
                off, size = struct.unpack_from("<QQ", data, base + 8)[0], struct.unpack_from("<Q", data, base + 32)[0]
                fields += note_fields(data, off, size)
    return tuple(fields)


def note_fields(data: bytes, off: int, size: int) -> list[Field]:
    out = []
    pos, end = off, min(off + size, len(data))
    while pos + 12 <= end and len(out) < 60:
        namesz, descsz, _ = struct.unpack_from("<III", data, pos)
        out += [Field(pos, 4), Field(pos + 4, 4), Field(pos + 8, 4)]
        pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return out


def kdump_fields(data: bytes, base: int = 0, order: str = "<") -> tuple[Field, ...]:
    head = [(8, 4), (424, 4), (428, 4), (432, 4), (436, 4), (440, 4), (456, 4), (460, 4)]
    fields = [Field(base + o, s) for o, s in head]
    if len(data) >= base + 432:
        block = struct.unpack_from("<i", data, base + 428)[0]
        if 0 < block <= 1 << 16:
            sub = [(0, 8), (8, 4), (32, 8), (40, 8), (48, 8), (56, 8), (64, 8), (72, 8), (96, 8)]
            fields += [Field(base + block + o, s) for o, s in sub]
            if len(data) >= base + block + 104:
                note_off, note_size = struct.unpack_from("<qQ", data, base + block + 48)
                if 0 < note_off < len(data) - base:
                    fields += [Field(f.offset + base, 4) for f in note_fields(data[base:], note_off, note_size)]
    return tuple(fields)


def desc_fields(data: bytes) -> tuple[Field, ...]:
    """Page descriptors of a built (seekable) kdump: offset, size, flags of each."""
    block, sub_blocks, bitmap_blocks = struct.unpack_from("<iiI", data, 428)
    start = block * (1 + sub_blocks + bitmap_blocks)
    out = []
    for pos in range(start, min(len(data), start + 24 * 40), 24):
        out += [Field(pos, 8), Field(pos + 8, 4), Field(pos + 12, 4)]
    return tuple(out)


def flat_fields(data: bytes) -> tuple[Field, ...]:
    fields = [Field(16, 8, ">"), Field(24, 8, ">")]
    pos = 4096
    while pos + 16 <= len(data) and len(fields) < 400:
        off, size = struct.unpack_from(">qq", data, pos)
        fields += [Field(pos, 8, ">"), Field(pos + 8, 8, ">")]
        if size < 0:
            break
        if off == 0 and pos + 16 + 464 <= len(data):
            fields += kdump_fields(data, pos + 16)
        pos += 16 + size
    return tuple(fields)


def _flat_complete(head: bytes) -> bytes:
    """Whole records of a flattened head, closed with the end marker."""
    pos = 4096
    while pos + 16 <= len(head):
        _off, size = struct.unpack_from(">qq", head, pos)
        if pos + 16 + size > len(head):
            break
        pos += 16 + size
    return head[:pos] + struct.pack(">qq", -1, -1)


@dataclass(frozen=True)
class DumpSeed:
    """One seed file: its bytes, sparse zeros to add after them, and the fields worth mutating."""

    name: str
    data: bytes
    extend: int
    fields: tuple[Field, ...]


def build_dump_seeds(fmt: str, rng: random.Random, count: int = 10) -> list[DumpSeed]:
    seeds: list[DumpSeed] = []
    if fmt == "elf":
        for name in ("elf-head.bin", "elf-novmcoreinfo-head.bin"):
            head = (CORPUS / name).read_bytes()
            for ext in (0, 1 << 20, 600 << 20):
                seeds.append(DumpSeed(f"{name}+{ext}", head, ext, elf_fields(head)))
    elif fmt == "kdump":
        head = (CORPUS / "kdump-head.bin").read_bytes()
        for ext in (0, 1 << 20, 600 << 20):
            seeds.append(DumpSeed(f"kdump-head.bin+{ext}", head, ext, kdump_fields(head)))
    else:
        head = _flat_complete((CORPUS / "flattened-head.bin").read_bytes())
        seeds.append(DumpSeed("flattened-head.bin", head, 0, flat_fields(head)))
    for i in range(count):
        mem, vmci = rich_memory(rng)
        with_vmci = rng.random() < 0.8
        if not with_vmci:  # the guest's own VMCOREINFO page, for the recovery scan to find
            mem.write_fast(0x1400 * PAGE, vmci)
        pfns = sorted(mem.pages)
        if fmt == "elf":
            segs = [(lo * PAGE, b"".join(bytes(mem.pages[p]) for p in range(lo, hi))) for lo, hi in _runs(pfns)]
            data = build_elf(segs, dump_notes(rng, vmci if with_vmci else None),
                             memsz_extra=rng.choice((0, 0, PAGE)))
            seeds.append(DumpSeed(f"built-elf-{i}", data, 0, elf_fields(data)))
            continue
        pages = {p: bytes(mem.pages[p]) for p in pfns}
        spare = rng.sample(range(pfns[-1] + 1), 3)
        kd = build_kdump(pages, pfns[-1] + 1 + rng.choice((0, 1, 5000)), vmcoreinfo=vmci if with_vmci else b"",
                         notes=dump_notes(rng, None), excluded=[p for p in spare if p not in pages],
                         raw=rng.sample(pfns, 2), dump_level=rng.choice((1, 31)))
        if fmt == "kdump":
            seeds.append(DumpSeed(f"built-kdump-{i}", kd, 0, kdump_fields(kd) + desc_fields(kd)))
        else:
            flat = flatten(kd, chunk=rng.choice((777, 3000, 5000, 1 << 16)), seed=i,
                           duplicate_first=rng.random() < 0.3)
            seeds.append(DumpSeed(f"built-flat-{i}", flat, 0, flat_fields(flat)))
    return seeds


# -- seeds: printk, kallsyms, vmcoreinfo --------------------------------------------------------------


def pack_memory(vmci: bytes, pages: dict[int, bytes | bytearray]) -> bytes:
    out = b"PRB1" + struct.pack("<I", len(vmci)) + vmci
    for pfn in sorted(pages):
        out += struct.pack("<I", pfn) + bytes(pages[pfn])
    return out


def unpack_memory(data: bytes) -> tuple[bytes, dict[int, bytes]]:
    if len(data) < 8:
        return b"", {}
    (n,) = struct.unpack_from("<I", data, 4)
    vmci = data[8:8 + n]
    pos = 8 + n
    pages: dict[int, bytes] = {}
    while pos + 4 < len(data) and len(pages) < 512:
        (pfn,) = struct.unpack_from("<I", data, pos)
        pages[pfn] = data[pos + 4:pos + 4 + PAGE].ljust(PAGE, b"\0")
        pos += 4 + PAGE
    return vmci, pages


def vmci_edit(rng: random.Random, vmci: bytes) -> bytes:
    """Structure-aware VMCOREINFO edits: boundary values, dropped/duplicated lines, hex garbage."""
    lines = vmci.split(b"\n")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        key, sep, _ = lines[i].partition(b"=")
        op = rng.randrange(6)
        if op == 0 and sep:
            value = rng.choice(INTERESTING)
            lines[i] = key + b"=" + (b"%x" % value if key.startswith(b"SYMBOL") else b"%d" % value)
        elif op == 1 and sep:
            lines[i] = key + b"=" + rng.choice((b"-1", b"-9223372036854775808", b"0x10", b"", b"1e9", b"9" * 41,
                                                 b"ffffffffffffffffffff", b" 12", b"\xff"))
        elif op == 2:
            del lines[i]
            if not lines:
                lines = [b""]
        elif op == 3:
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
        elif op == 4:
            lines[i] = rng.choice((b"NUMBER(pgtable_l5_enabled)=1", b"NUMBER(KERNEL_IMAGE_SIZE)=0",
                                   b"NUMBER(phys_base)=18446744073709551615", b"SYMBOL(init_top_pgt)=ffffffff81000000",
                                   b"NUMBER(sme_mask)=-1", b"PAGESIZE=0", b"SYMBOL(log_buf)=ffffffff82000000",
                                   b"SYMBOL(log_buf_len)=ffffffff82000008", b"OFFSET(printk_log.len)=8",
                                   b"SIZE(printk_log)=16", b"SYMBOL(log_first_idx)=ffffffff82000010",
                                   b"SYMBOL(log_next_idx)=ffffffff82000018", b"NUMBER(nr_cpu_ids)=4096"))
        else:
            lines[i] = lines[i] + b"\r"
    return b"\n".join(lines)


def build_legacy_log(mem: MemReader, texts: list[bytes], *, buf_len: int = 4096, caller: bool = False,
                     phys_base: int = 0x1000000) -> bytes:
    """Lay a Linux 3.5..5.9 ``log_buf`` of ``struct printk_log`` records; return its VMCOREINFO text."""
    hdr = 20 if caller else 16
    sym_v = KMAP + 0x200000
    buf_v = sym_v + 0x1000
    data = bytearray(buf_len)
    idx = 0
    for i, text in enumerate(texts):
        n = (hdr + len(text) + 7) & ~7
        if idx + n > buf_len:
            break
        struct.pack_into("<QHHHBB", data, idx, i * 1000, n, len(text), 0, 0, (6 << 5) | 2)
        if caller:
            struct.pack_into("<I", data, idx + 16, i)
        data[idx + hdr:idx + hdr + len(text)] = text
        idx += n
    mem.write_fast(sym_v - KMAP + phys_base, struct.pack("<QIII", buf_v, buf_len, 0, idx))
    mem.write_fast(buf_v - KMAP + phys_base, bytes(data))
    return (f"OSRELEASE=4.19.0\nPAGESIZE=4096\nNUMBER(phys_base)={phys_base}\nSYMBOL(log_buf)={sym_v:x}\n"
            f"SYMBOL(log_buf_len)={sym_v + 8:x}\nSYMBOL(log_first_idx)={sym_v + 12:x}\n"
            f"SYMBOL(log_next_idx)={sym_v + 16:x}\nSIZE(printk_log)={hdr}\nOFFSET(printk_log.ts_nsec)=0\n"
            "OFFSET(printk_log.len)=8\nOFFSET(printk_log.text_len)=10\n").encode()


def build_printk_seeds(rng: random.Random, count: int = 16) -> list[tuple[bytes, tuple[Field, ...]]]:
    out = []
    for k in range(count):
        mem = MemReader()
        if k % 4 == 3:  # the pre-5.10 log_buf
            texts = [b"legacy record %d" % i * (i % 3 + 1) for i in range(rng.randint(0, 60))]
            vmci = build_legacy_log(mem, texts, buf_len=rng.choice((512, 4096, 8192)), caller=rng.random() < 0.5)
            blob = pack_memory(vmci, mem.pages)
            start = 8 + len(vmci)
            out.append((blob, tuple(Field(start + 4 + k * (PAGE + 4) + o, rng.choice((2, 4, 8)))
                                    for k in range(len(mem.pages)) for o in range(0, 512, 8))))
            continue
        nrec = rng.randint(0, 90)
        recs = [(i, i * 1000, i % 8, i, b"record %d " % i * (i % 4 + 1)) for i in range(nrec)]
        vmci = build_prb(mem, recs, count_bits=rng.randint(1, 6), size_bits=rng.randint(6, 12),
                         first_id=rng.choice((0, 3, (1 << 62) - 2)), exact_fit_wraps=rng.random() < 0.5)
        blob = pack_memory(vmci, mem.pages)
        # the prb struct, its pointer and the first descriptors are the interesting words
        start = 8 + len(vmci)
        fields = tuple(Field(start + 4 + k * (PAGE + 4) + o, 8) for k in range(len(mem.pages))
                       for o in range(0, 256, 8))
        out.append((blob, fields))
    return out


def pack_kallsyms(count: int, base: int, names: bytes, offsets: bytes, table: bytes, index: bytes) -> bytes:
    return struct.pack("<iQIII", count, base, len(names), len(offsets), len(table)) + names + offsets + table + index


def unpack_kallsyms(data: bytes) -> tuple[int, int, bytes, bytes, bytes, bytes]:
    if len(data) < 24:
        data = data.ljust(24, b"\0")
    count, base, ln, lo, lt = struct.unpack_from("<iQIII", data, 0)
    pos = 24
    names = data[pos:pos + ln]
    pos += ln
    offsets = data[pos:pos + lo]
    pos += lo
    table = data[pos:pos + lt]
    pos += lt
    index = data[pos:pos + 512].ljust(512, b"\0")  # the reader always reads 512 bytes of index
    return count, base, names, offsets, table, index


def build_kallsyms_seeds(rng: random.Random, count: int = 12) -> list[tuple[bytes, tuple[Field, ...]]]:
    out = []
    for _ in range(count):
        syms = []
        off = 0
        for i in range(rng.randint(1, 60)):
            off += rng.choice((0, 0, 16, 0x40, 0x1000))
            name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.choice((1, 5, 12, 140))))
            if i % 7 == 0:
                name = rng.choice(("panic_cpu", "modules", "__per_cpu_offset", "nr_cpu_ids")) + name[:0]
            syms.append((rng.choice("TtDdBbr"), name, -off - 1 if rng.random() < 0.05 else off))
        names, offsets, table, index = kallsyms_tables(tuple(syms), multi_tokens=rng.random() < 0.5)
        blob = pack_kallsyms(len(syms), rng.choice((KMAP, 0, (1 << 64) - 4096)), names, offsets, table, index)
        ln, lo, lt = len(names), len(offsets), len(table)
        idx = 24 + ln + lo + lt
        fields = ((Field(0, 4), Field(4, 8), Field(12, 4), Field(16, 4), Field(20, 4))
                  + tuple(Field(24 + ln + 4 * k, 4) for k in range(0, len(syms), max(1, len(syms) // 8)))
                  + tuple(Field(idx + 2 * k, 2) for k in range(0, 256, 16)))
        out.append((blob, fields))
    return out


# -- seeds: kernel log text (the guest writes it) ----------------------------------------------------

OOPS_LINES = (*(line.decode() for line in LOG_LINES), "Oops: 0002 [#1] PREEMPT SMP NOPTI",
              "WARNING: CPU: 1 PID: 0 at kernel/x.c:1 f+0x1/0x2", "watchdog: BUG: soft lockup - CPU#0 stuck",
              " ? some_func+0x10/0x20 [mod_x]", " [<ffffffff81000000>] f+0x0/0x1", "RSP: 0018:ffff EFLAGS: 0246",
              "Code: 00 00 <0f> 0b", " <IRQ>", " </IRQ>", "Hardware name: QEMU Standard PC", "---[ end Kernel panic",
              "CPU: 3 PID: 4294967295 Comm: x", "INFO: task x:1 blocked for more than 120 seconds.")


def gen_oops(rng: random.Random) -> bytes:
    """A kernel log (one text per line) around a crash report, with hostile variants of its lines."""
    lines = [rng.choice(OOPS_LINES) for _ in range(rng.randint(0, 30))]
    for _ in range(rng.randint(0, 3)):
        big = rng.choice(("9" * rng.choice((10, 400, 5000)), "f" * rng.choice((16, 5000)), "-1", "٣"))
        lines.insert(rng.randint(0, len(lines)), rng.choice((
            f"CPU: {big} PID: 1 Comm: sh", f"CPU: 0 PID: {big} Comm: sh", f" func+0x{big}/0x{big}",
            f"RIP: 0010:func+0x{big}/0x10", " " * 10000 + "x+0x1/0x2", "Kernel panic - not syncing: " + big,
            "Call Trace:", "BUG: " + big)))
    text = "\n".join(lines).encode("utf-8", "surrogatepass")
    return mutate(rng, text, max_ops=5) if rng.random() < 0.4 else text


# -- seeds: agent replies -------------------------------------------------------------------------------

def _json_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.randrange(12 if depth < 4 else 8)
    if r == 0:
        return rng.choice(INTERESTING) * rng.choice((1, -1))
    if r == 1:
        return rng.choice((True, False, None))
    if r == 2:
        return rng.choice((0.5, -1.0, 1e308, 1.7e9 * 1e9))
    if r == 3:
        return rng.choice(("", "x", "é", "\ud800", "\0", "a" * 300, base64.b64encode(b"hello").decode()))
    if r == 4:
        return rng.randrange(1, 1 << 63)
    if r == 5:
        return time.time_ns() + rng.randrange(-10**12, 10**12)
    if r == 6:
        return 10 ** rng.choice((19, 30, 200, 1000))
    if r == 7:
        return rng.randrange(-5, 100000)
    if r in (8, 9):
        keys = ("exited", "exitcode", "out-data", "err-data", "pid", "desc", "class", "return", "error", "x")
        return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def gen_agent(rng: random.Random) -> bytes:
    """One operation byte then a reply text (structure-aware JSON, raw tricks, or a mutation of one)."""
    op = rng.randrange(256)
    r = rng.randrange(10)
    if r < 4:
        doc: Any = {"return": _json_value(rng)}
    elif r == 4:
        doc = {"error": rng.choice(({"class": "GenericError", "desc": _json_value(rng)}, _json_value(rng)))}
    elif r == 5:
        doc = {"return": {"exited": rng.choice((True, False, 1, None)), "exitcode": _json_value(rng),
                          "out-data": rng.choice((base64.b64encode(os.urandom(rng.randrange(64))).decode(),
                                                  "!!!", "QQ", "A" * 100000, _json_value(rng))),
                          "err-data": _json_value(rng)}}
    elif r == 6:
        doc = _json_value(rng)
    else:
        doc = None
    if op % 11 == 10 and doc is not None and rng.random() < 0.6:  # the guest audit's result (host/guest_exec.py)
        doc = {"rc": rng.choice((0, 1, True, "0", None, _json_value(rng))),
               "out": rng.choice(("", "{}", '{"findings": []}', _json_value(rng))), "err": _json_value(rng)}
    if doc is not None:
        try:
            text = json.dumps(doc).encode("utf-8", "surrogatepass")
        except (ValueError, OverflowError):
            text = b'{"return": 0}'
    else:
        text = rng.choice((b"[" * 100000, b'{"return": ' + b"1" * 5000 + b"}", b'{"return": NaN}',
                           b'{"return": Infinity}', b'{"return": -0}', b'{"return": 1.0}', b"\xff{\"return\": {}}",
                           b'{"return": {}, "return": 5}', b"", b"null", b'{"return": 17000000000000000000}',
                           b'{"error": null}', b'{"error": {"desc": ' + b'"' + b"e" * 10000 + b'"}}'))
    if rng.random() < 0.25:
        text = mutate(rng, text, max_ops=4)
    return bytes([op]) + text


# -- seeds: unit files and unit trees ------------------------------------------------------------------

UNIT_KEYS = ("Description", "After", "Before", "Wants", "Requires", "WantedBy", "ExecStart", "Type",
             "DefaultDependencies", "Alias", "Also", "BindsTo", "PartOf", "Conflicts", "RequiresMountsFor",
             "Slice", "OnFailure", "Requisite", "Upholds", "Environment", "Sockets", "Unit", "What", "Where")
UNIT_NAMES = ("a.service", "b.service", "c.target", "default.target", "multi-user.target", "basic.target",
              "sysinit.target", "x@.service", "x@1.service", "d.socket", "e.timer", "-.mount", "var-lib.mount",
              "dev-sda1.device", "sshd.service", "ssh.service", "f.path", "g.slice", "local-fs.target",
              "bad name", "%i.service", "x@%i.service", "..service", "a.b.c.service")


#: Condition*=/Assert*= keys (systemd 252) and some it does not know
COND_KEYS = ("PathExists", "PathExistsGlob", "PathIsDirectory", "PathIsSymbolicLink", "PathIsMountPoint",
             "PathIsReadWrite", "PathIsEncrypted", "DirectoryNotEmpty", "FileNotEmpty", "FileIsExecutable",
             "NeedsUpdate", "FirstBoot", "Architecture", "Firmware", "Virtualization", "Host",
             "KernelCommandLine", "KernelVersion", "Credential", "Security", "Capability", "ACPower", "Memory",
             "CPUFeature", "CPUs", "Environment", "User", "Group", "ControlGroupController", "OSRelease",
             "MemoryPressure", "CPUPressure", "IOPressure", "Foo", "pathexists", "PathExist")
COND_PATHS = ("/etc/machine-id", "/etc/hostname", "/etc/systemd/system", "/lib/systemd/system/a.service",
              "/proc/cmdline", "/proc/1", "/sys/fs/selinux", "/sys/firmware/efi", "/run/systemd/first-boot",
              "/run", "/dev/null", "/usr", "/var", "/etc", "/", "//", "/etc/../etc/./hostname", "relative/path",
              "/etc/x*", "/etc/systemd/*/*.service", "/*", "/**", "/[", "/etc/[!a-", "/*/*/*/*/*/*/*/*",
              "/?tc/*", "/%i", "/%n/%p", "/etc/%Z", "/run/%v", "/var/%H", "/proc/self/../1", "/loop/a",
              "/etc/link", "/etc/empty", "/etc/exe", "/var/.updated", "/etc/.updated", "/mnt/ro", "/mnt/rw")
COND_VALUES = {
    "FirstBoot": ("yes", "no", "true", "0", "maybe", "", "TRUE "),
    "ACPower": ("yes", "no", "1", "off", "sometimes"),
    "Virtualization": ("kvm", "qemu", "vm", "container", "private-users", "yes", "no", "none", "KVM", "docker",
                       "other"),
    "Host": ("fuzzhost", "fuzz*", "[a-", "*" * 40 + "x", "0123456789abcdef0123456789abcdef",
             "01234567-89ab-cdef-0123-456789abcdef", "%H", "%v", "FUZZ?OST"),
    "KernelCommandLine": ("quiet", "console=ttyS0", "systemd.condition-first-boot=1", 'a="b c"', "'", "=",
                          "ro", "init"),
    "Capability": ("CAP_SYS_TIME", "cap_sys_time", "21", "40", "41", "99999999999999999999", "CAP_FOO", "-1",
                   "0x1"),
    "Security": ("apparmor", "selinux", "smack", "ima", "tomoyo", "audit", "uefi-secureboot", "tpm2", "x"),
    "Architecture": ("x86-64", "native", "arm64", "x86", ""),
    "Firmware": ("uefi", "device-tree", "smbios-field(board_name = x)", "bios"),
    "User": ("root", "0", "@system", "nobody", "1000"),
    "Group": ("root", "0", "wheel"),
    "ControlGroupController": ("v1", "v2", "cpu", "memory io"),
    "KernelVersion": (">=6.1", "<  5", "6.1.0"),
    "OSRelease": ("ID=debian", "VERSION_ID>=12", "ID!=x"),
    "Memory": (">=1G", "<=x"), "CPUs": (">1", "4"), "Environment": ("A=b", "A"),
}
#: Characters that are digits to str.isdigit() but not to int(), change length when lowered, split lines...
TRICKY = ("\u00b2", "\u0663", "\u0130", "\u00df", "\u2028", "\x85", "\u00a0", "\x1c", "\ufeff",
          "\u00bd", "\U0001d7d9", "%", "%%", "\\", '"', "'", "*", "[", " ", "\t", "..", "/", "=", "|", "!")


def hostile_text(rng: random.Random, text: str) -> str:
    """``text`` with a tricky character inserted or substituted, repeated, or replaced by a long run."""
    r = rng.randrange(4)
    tricky = rng.choice(TRICKY)
    if r == 0:
        pos = rng.randint(0, len(text))
        return text[:pos] + tricky + text[pos:]
    if r == 1:
        return tricky * rng.choice((1, 2, 30))
    if r == 2:
        return (text * rng.choice((2, 50, 1000)))[:70000]
    return text + tricky


def gen_condition_line(rng: random.Random) -> str:
    """One ``Condition*=``/``Assert*=`` assignment: ``|``/``!`` forms, specifiers, hostile values, resets."""
    key = rng.choice(COND_KEYS)
    prefix = rng.choice(("Condition", "Condition", "Assert"))
    if rng.random() < 0.06:
        return f"{prefix}{key}="  # an empty assignment resets the list
    if key.startswith(("Path", "Directory", "File", "Needs")) or (key not in COND_VALUES and rng.random() < 0.5):
        value = rng.choice(COND_PATHS)
    else:
        value = rng.choice(COND_VALUES.get(key, ("x", "")))
    if rng.random() < 0.2:
        value = hostile_text(rng, value)
    mark = rng.choice(("", "", "", "|", "!", "|!", "| !", "!|", "||", "!!", "|  ", "! "))
    return f"{prefix}{key}={mark}{value}"


def gen_unit_text(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(0, 25)):
        r = rng.randrange(12)
        if r == 0:
            lines.append(rng.choice(("[Unit]", "[Service]", "[Install]", "[Socket]", "[Timer]", "[Mount]",
                                     "[ Unit ]", "[]", "[Unit", "[a]b]", "[X-Vendor]")))
        elif r == 1:
            lines.append(rng.choice(("# comment", "; comment", "#", "")))
        elif r == 2:
            lines.append(f"{rng.choice(UNIT_KEYS)}={' '.join(rng.sample(UNIT_NAMES, rng.randint(0, 3)))} \\")
        elif r == 3:
            lines.append(rng.choice((".include /etc/foo", "novalue", "=value", "Key With Space=1", "K\t=v",
                                     "ExecStart=/bin/sh -c 'a \\\\'", "\\", "A=\\\\", "\ufeffDescription=x")))
        elif r == 4:
            lines.append("X" * rng.choice((100, 5000)) + "=" + "y" * rng.choice((1, 70000)))
        elif r in (5, 6):
            if not any(ln.strip() == "[Unit]" for ln in lines):
                lines.append("[Unit]")
            lines.append(gen_condition_line(rng))
        else:
            key = rng.choice(UNIT_KEYS)
            value = " ".join(rng.sample(UNIT_NAMES, rng.randint(0, 4)))
            if key in ("DefaultDependencies",):
                value = rng.choice(("yes", "no", "maybe", "", "TRUE", "0"))
            lines.append(f"{key}={value}")
    text = rng.choice(("\n", "\r\n")).join(lines).encode("utf-8", "surrogatepass")
    if rng.random() < 0.5:
        text = mutate(rng, text, max_ops=6)
    return text


def gen_unit_tree(rng: random.Random) -> bytes:
    """A small tree: entries ``path \\x1f content`` (content ``@target`` = symlink) joined by \\x1e."""
    dirs = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system", "/run/systemd/system")
    entries = []
    for _ in range(rng.randint(1, 14)):
        d = rng.choice(dirs)
        name = rng.choice(UNIT_NAMES)
        r = rng.randrange(10)
        if r < 5:
            entries.append((f"{d}/{name}", gen_unit_text(rng)))
        elif r == 5:
            entries.append((f"{d}/{name}", b"@" + rng.choice((b"/dev/null", f"{d}/{rng.choice(UNIT_NAMES)}".encode(),
                                                              f"../{rng.choice(UNIT_NAMES)}".encode(),
                                                              f"{d}/{name}".encode()))))
        elif r == 6:
            entries.append((f"{d}/{name}.d/{rng.choice(('a', 'b', '10-x', 'z'))}.conf", gen_unit_text(rng)))
        elif r == 7:
            entries.append((f"{d}/{name}.{rng.choice(('wants', 'requires', 'upholds'))}/{rng.choice(UNIT_NAMES)}",
                            b"@" + f"{d}/{rng.choice(UNIT_NAMES)}".encode()))
        elif r == 8:
            entries.append(rng.choice(((f"{d}/{name}", b""),  # empty file: a mask
                                       (d, b"@" + rng.choice(dirs).encode()),  # a search dir that is a link
                                       (f"{d}/{name}.d", b"@" + rng.choice(dirs).encode()),
                                       (f"{d}/{name}", b"@" + f"{d}/{name}.d/../{name}".encode()),
                                       (f"{d}/{name}.wants", b"@.."))))
        else:
            entries.append((f"{rng.choice(dirs)}/{rng.choice(('service.d', 'x@.service.d', 'a-.service.d'))}/o.conf",
                            gen_unit_text(rng)))
    blob = b"\x1e".join(p.encode("utf-8", "surrogatepass") + b"\x1f" + c for p, c in entries)
    if rng.random() < 0.3:
        blob = mutate(rng, blob, max_ops=4)
    return blob


CHRONY_WORDS = ("makestep 1 3", "makestep 1 -1", "makestep", "makestep x y", "makestep 1e999 -1",
                "makestep nan 1", "maxslewrate 500", "maxslewrate 0", "maxslewrate -1", "maxslewrate inf",
                "maxslewrate nan", "maxslewrate 1e-320", "include /etc/chrony/conf.d/*.conf",
                "confdir /etc/chrony/conf.d /run/chrony-dhcp", "confdir", "include", "pool 2.debian.pool.ntp.org",
                "! comment", "% comment", "driftfile /var/lib/chrony/chrony.drift", "makestep 0.1 " + "9" * 5000,
                "include /etc/chrony/chrony.conf", "confdir /etc/chrony")
NTP_WORDS = ("tinker panic 0", "tinker step 0", "tinker panic nan step inf", "tinker step", "tinker panic x",
             "server 1.2.3.4 iburst", "# tinker panic 0", "tinker step -1 panic 1e999")


def gen_timecfg(rng: random.Random) -> bytes:
    """A tree of time-daemon configuration (chrony.conf, its conf.d, ntp.conf, timesyncd.conf, defaults)."""
    def lines(words: tuple[str, ...]) -> bytes:
        return "\n".join(rng.choice(words) for _ in range(rng.randint(0, 12))).encode()

    entries = [("/etc/chrony/chrony.conf", lines(CHRONY_WORDS)),
               ("/etc/default/chrony", rng.choice((b"", b'DAEMON_OPTS="-F 1"', b"DAEMON_OPTS='-f /etc/x.conf",
                                                   b"DAEMON_OPTS=-f /etc/chrony.conf", b'DAEMON_OPTS="-f"'))),
               ("/etc/ntp.conf", lines(NTP_WORDS)),
               ("/etc/default/ntp", rng.choice((b"", b'NTPD_OPTS="-g -x"', b"NTPD_OPTS='-g", b"NTPD_OPTS=-xg"))),
               ("/etc/systemd/timesyncd.conf", rng.choice((b"[Time]\nNTP=a b\n", b"NTP=", b"FallbackNTP= x")))]
    for i in range(rng.randint(0, 3)):
        entries.append((f"/etc/chrony/conf.d/{i}.conf", lines(CHRONY_WORDS)))
    if rng.random() < 0.2:
        entries.append(("/etc/chrony.conf", b"@/etc/chrony/chrony.conf"))
    if rng.random() < 0.2:
        entries.append(("/etc/chrony/conf.d/loop.conf", b"@/etc/chrony/conf.d/loop.conf"))
    blob = b"\x1e".join(p.encode() + b"\x1f" + c for p, c in entries)
    return mutate(rng, blob, max_ops=4) if rng.random() < 0.3 else blob


MOUNTINFO_LINES = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
                   "23 22 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
                   "24 22 8:2 / /usr ro,relatime shared:2 - ext4 /dev/sda2 ro",
                   "25 22 8:3 / /mnt/ro ro - ext4 /dev/sda3 ro", "26 22 8:3 / /mnt/rw rw - ext4 /dev/sda3 rw",
                   "27 22 0:6 / /mnt/a\\040b rw - tmpfs t rw", "28 22 0:7 / /mnt/\\777\\000 ro - tmpfs t ro",
                   "29 22 0:8 / /etc ro", "30 1 0:9 / / ro - overlay o ro", "x y z", "", "1 2 3 4 5",
                   "31 22 0:10 / /mnt/ro rw - tmpfs t rw")
CMDLINE_WORDS = ("BOOT_IMAGE=/vmlinuz", "root=/dev/sda1", "ro", "quiet", "console=ttyS0", "init=/bin/sh",
                 "systemd.condition-needs-update=1", "systemd.condition-needs-update=maybe",
                 "systemd.condition-needs-update", "systemd.condition-first-boot=0", 'a="b c"', "'", '"',
                 "x=\\", "=")


def gen_facts(rng: random.Random) -> list[tuple[str, bytes]]:
    """What the conditions read from a tree and from the running machine: machine-id, hostname,
    /proc (cmdline, PID 1's CapBnd, mountinfo, hostname), /sys (security, firmware, power supplies,
    cgroup), /run, /usr and .updated stamps (with mtimes), executables, directories, links."""
    def pick(*options: str) -> bytes:
        text = rng.choice(options)
        return (hostile_text(rng, text) if rng.random() < 0.15 else text).encode("utf-8", "surrogatepass")

    out: list[tuple[str, bytes]] = []
    if rng.random() < 0.8:
        out.append(("/etc/machine-id", pick("0123456789abcdef0123456789abcdef\n", "uninitialized\n", "", "\n",
                                            "UNINITIALIZED", "01234567-89ab-cdef-0123-456789abcdef",
                                            "0123456789ABCDEF0123456789ABCDEF", "xyz")))
    if rng.random() < 0.7:
        out.append(("/etc/hostname", pick("fuzzhost\n", "# comment\nfuzzhost", "", "  \n\n", "FuzzHost",
                                          "\u0130stanbul", "a" * 300)))
    out.append(("/proc/cmdline", " ".join(rng.choice(CMDLINE_WORDS) for _ in range(rng.randint(0, 8))).encode()
                if rng.random() < 0.85 else pick("", "\n", "\x00", "a" * 70000)))
    out.append(("/proc/1/status", ("Name:\tsystemd\n" + rng.choice((
        "CapBnd:\t000001ffffffffff\n", "CapBnd:\t0000000000000000\n", "CapBnd:\t\n", "CapBnd:\txyz\n",
        "CapBnd: " + "f" * 5000 + "\n", "CapBnd:\t\u00b2\n", "CapBnd:\t\uff10\n", "", "CapBnd:\n"))).encode()))
    mi = [rng.choice(MOUNTINFO_LINES) for _ in range(rng.randint(0, 12))]
    if rng.random() < 0.15:
        mi = [hostile_text(rng, line) for line in mi]
    out.append(("/proc/self/mountinfo", "\n".join(mi).encode("utf-8", "surrogatepass")))
    if rng.random() < 0.5:
        out.append(("/proc/sys/kernel/hostname", pick("fuzzhost\n", "", "FUZZ", "\u0130")))
    if rng.random() < 0.5:
        out.append(("/sys/module/apparmor/parameters/enabled", pick("Y\n", "N\n", "yes", "")))
    for path in ("/sys/kernel/security/ima", "/sys/fs/smackfs", "/sys/fs/selinux", "/sys/firmware/efi",
                 "/sys/firmware/devicetree", "/run/systemd/first-boot", "/sys/kernel/security/tomoyo/version",
                 "/sys/fs/cgroup/cgroup.controllers", "/run/systemd/system", "/var/empty.d", "/etc/emptydir"):
        if rng.random() < 0.3:
            out.append((path, rng.choice((DIR, b"", b"x"))))
    for i in range(rng.choice((0, 0, 1, 2, 3))):
        dev = f"/sys/class/power_supply/{rng.choice(('AC', 'BAT0', 'usb', 'x'))}{i}"
        out.append((dev + "/type", pick("Mains\n", "Battery\n", "USB\n", "UPS", "")))
        out.append((dev + "/online", pick("1\n", "0\n", "", "\u00b2", "99999999999999999999999", "-1")))
        out.append((dev + "/status", pick("Discharging\n", "Charging", "Full", "")))
    if rng.random() < 0.4:
        out.append(("/usr/bin/true", b"\x7fELF"))
        for d in ("/var", "/etc"):
            if rng.random() < 0.6:
                out.append((f"{d}/.updated", pick("# systemd-update-done\nTIMESTAMP_NSEC=1700000000000000000\n",
                                                   "TIMESTAMP_NSEC=\u00b2", "TIMESTAMP_NSEC=" + "9" * 5000, "",
                                                   "TIMESTAMP_NSEC=\u0663\u0663", "TIMESTAMP_NSEC= 12")))
        second = rng.choice((1_700_000_000, 1_600_000_000))
        out.append(("!mtime:/usr", str(second * 10**9 + rng.choice((0, 0, 1, 999_999_999))).encode()))
        out.append(("!mtime:/var/.updated", str(rng.choice((1_700_000_000, 1_600_000_000)) * 10**9
                                                 + rng.choice((0, 0, 5))).encode()))
    if rng.random() < 0.4:
        out.append(("/etc/exe", b"#!/bin/sh\n"))
        out.append(("!mode:/etc/exe", rng.choice((b"755", b"644", b"100", b"7777", b"x"))))
    if rng.random() < 0.3:
        out.append(("/etc/empty", b""))
    for _ in range(rng.choice((0, 0, 1, 3))):
        link = rng.choice(("/etc/link", "/loop/a", "/loop/b", "/etc/systemd/system/l.service", "/var/l", "/lib"))
        target = rng.choice(("/etc/hostname", "/loop/b", "/loop/a", "../etc", "/dev/null", "..", ".",
                             "/etc/link", "usr/lib", "/nonexistent", "../../../../../../etc/hostname", ""))
        out.append((link, b"@" + target.encode()))
    out.append(("!virt", pick("kvm", "qemu", "none", "docker", "", "lxc", "vm-other", "\n")))
    out.append(("!userns", rng.choice((b"yes", b"no", b"?"))))
    return out


#: the content that makes an entry of a generated tree a directory
DIR = b"\x7fdir"


def gen_conditions(rng: random.Random) -> bytes:
    """A unit (fragment and drop-ins full of conditions and assertions), the facts they ask about, and
    how to evaluate: ``!mode`` 0 offline over memory, 1 probed from a real tree on tmpfs, 2 a machine
    built from the facts directly."""
    name = rng.choice(("fuzz.service", "fuzz@inst.service", "fuzz@a-b\\x2dc.service", "fuzz@.service",
                       "a.service", "fuzz.mount", "fuzz@%i.service"))
    frag = name if "@" not in name else name.split("@")[0] + "@.service"
    entries: list[tuple[str, bytes]] = []

    def unit_text() -> bytes:
        lines = ["[Unit]"] + [gen_condition_line(rng) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.3:
            lines.append(rng.choice(("[Service]", "ExecStart=/bin/true", "[Install]", "WantedBy=a.target")))
            lines.append(gen_condition_line(rng))  # not in [Unit]: not a condition
        return "\n".join(lines).encode("utf-8", "surrogatepass")

    entries.append((f"/etc/systemd/system/{frag}", unit_text()))
    for i in range(rng.choice((0, 0, 1, 2))):
        entries.append((f"/etc/systemd/system/{frag}.d/{i}.conf", unit_text()))
    if rng.random() < 0.2:
        entries.append((f"/lib/systemd/system/{frag}", unit_text()))
    entries += gen_facts(rng)
    entries.append(("!mode", str(rng.randrange(3)).encode()))
    entries.append(("!unit", name.encode()))
    blob = b"\x1e".join(p.encode("utf-8", "surrogatepass") + b"\x1f" + c for p, c in entries)
    return mutate(rng, blob, max_ops=4) if rng.random() < 0.25 else blob


# -- seeds: QEMU's memory map, /proc text, QEMU's dump header ------------------------------------------

UNIT_DATA = ROOT / "tests" / "unit" / "data"
MTREE_KINDS = ("ram", "rom", "romd", "i/o", "ram/x", "RAM", "")
MTREE_NAMES = ("pc.ram", "pc.bios", "pc.rom", "vga.vram", "ram-node0", "memory-backend-memfd", "a b", "x)")


def gen_flatview(rng: random.Random) -> tuple[str, list[tuple[int, int, str, str, int]]]:
    """``info mtree -f`` text with a ``memory`` flat view of random sections; (text, its sections)."""
    secs = []
    addr = rng.choice((0, 0x1000))
    for _ in range(rng.randint(0, 12)):
        size = rng.choice((0x1000, 0xc3000, 0x100000, 1 << 30, 1 << 32, 1))
        kind = rng.choice(MTREE_KINDS[:4]) if rng.random() < 0.9 else rng.choice(MTREE_KINDS)
        name = rng.choice(MTREE_NAMES)
        offset = rng.choice((0, addr, 0xc3000, (1 << 64) - 1))
        secs.append((addr, min(addr + size - 1, (1 << 64) - 1), kind, name, offset))
        addr += size + rng.choice((0, 0, 0x1000, 1 << 32))
    lines = ["FlatView #0", rng.choice((' AS "memory", root: system', ' AS "memory"', ' AS "memory-x", root: system',
                                        ' AS "I/O", root: io')),
             ' AS "cpu-memory-0", root: system', " Root memory region: system"]
    for start, end, kind, name, offset in secs:
        at = f" @{offset:016x}" if offset or rng.random() < 0.2 else ""
        lines.append(f"  {start:016x}-{end:016x} (prio {rng.choice((0, 1, -1, 4096))}, {kind}): {name}{at}")
    if rng.random() < 0.3:
        lines += ["", "FlatView #1", ' AS "memory", root: system', " Root memory region: system",
                  "  0000000000000000-ffffffffffffffff (prio 0, ram): late"]
    return "\n".join(lines) + "\n", secs


def gen_maps(rng: random.Random, hvas: list[int]) -> str:
    lines = []
    for hva in hvas + [rng.choice((0x55d0c2a00000, 0x7f0000000000))] * rng.randint(0, 3):
        size = rng.choice((1 << 12, 1 << 20, 1 << 30, 1 << 34, 1))
        perms = rng.choice(("rw-s", "rw-p", "r-xp", "---p", "rwxs"))
        inode = rng.choice((0, 6772, 40, (1 << 64) + 5))
        path = rng.choice(("/memfd:memory-backend-memfd (deleted)", "/dev/hugepages/x", "", "[heap]",
                           "/usr/bin/qemu-system-x86_64", "  /with spaces  "))
        lines.append(f"{hva:x}-{hva + size:x} {perms} {rng.choice((0, 0x1000, 3 << 30)):08x} "
                     f"{rng.choice(('00:01', 'fe:00', '103:02'))} {inode} {path}".rstrip())
    rng.shuffle(lines)
    return "\n".join(lines) + "\n"


def gen_status(rng: random.Random) -> str:
    lines = ["Name:\tqemu-system-x86", "VmRSS:\t  123456 kB"]
    for key in ("RssAnon", "RssShmem", "RssFile"):
        if rng.random() < 0.8:
            value = rng.choice(("  1048576 kB", "0 kB", "12 MB", "x kB", "1 2 kB", "", "9" * 40 + " kB",
                                "9" * 5000 + " kB", "\u00b2 kB"))
            lines.append(f"{key}:\t{value}")
    return "\n".join(lines) + "\n"


def qemu_header(segments: list[tuple[int, int]], notes: bytes, rng: random.Random) -> bytes:
    """A memory-only ELF header laid out as QEMU 7.2 writes it: ELF header, section headers (NULL and
    ``.shstrtab``), program headers (PT_NOTE then a PT_LOAD per (paddr, size)), the notes; the memory
    follows at once and the string table after it."""
    shnum = rng.choice((2, 2, 2, 0))
    phnum = 1 + len(segments)
    shoff = 64 if shnum else 0
    phoff = 64 + 64 * shnum
    notes_off = phoff + 56 * phnum
    data_off = notes_off + len(notes)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 4, 62, 1, 0, phoff, shoff, 0,
                       64, 56, phnum, 64, shnum, 1 if shnum else 0)
    end = data_off + sum(size for _, size in segments)
    shdrs = (struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
             + struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, end, 11, 0, 0, 0, 0)) if shnum else b""
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_off, 0, 0, len(notes), len(notes), 0)
    off = data_off
    for paddr, size in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 0, off, paddr, paddr, size, size, 0)
        off += size
    return ehdr + shdrs + phdrs + notes


def header_fields(raw: bytes) -> tuple[Field, ...]:
    """The ELF header, program header, section header and note fields of a dump header."""
    fields = [Field(o, n) for o, n in ((16, 2), (32, 8), (40, 8), (54, 2), (56, 2), (58, 2), (60, 2), (62, 2))]
    if len(raw) >= 64:
        phoff, shoff = struct.unpack_from("<QQ", raw, 32)
        phnum, _shentsize, shnum = struct.unpack_from("<HHH", raw, 56)
        for i in range(min(phnum, 64)):
            base = phoff + 56 * i
            fields += [Field(base + o, n) for o, n in ((0, 4), (8, 8), (24, 8), (32, 8), (40, 8))]
            if base + 56 <= len(raw) and struct.unpack_from("<I", raw, base)[0] == 4:
                off, size = struct.unpack_from("<Q", raw, base + 8)[0], struct.unpack_from("<Q", raw, base + 32)[0]
                fields += note_fields(raw, off, size)
        for i in range(min(shnum, 8)):
            base = shoff + 64 * i
            fields += [Field(base + o, n) for o, n in ((0, 4), (4, 4), (24, 8), (32, 8))]
    return tuple(fields)


def pack_held(raw: bytes, ranges: list[tuple[int, bytes]]) -> bytes:
    """A dump header and the guest memory a held image has: ``QH``, header length, header, then
    (paddr, length, bytes) per range."""
    return b"QH" + struct.pack("<I", len(raw)) + raw + b"".join(struct.pack("<QI", p, len(d)) + d for p, d in ranges)


def unpack_held(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    if len(data) < 6:
        return data, []
    (n,) = struct.unpack_from("<I", data, 2)
    raw = data[6:6 + n]
    pos = 6 + n
    ranges: list[tuple[int, bytes]] = []
    while pos + 12 <= len(data) and len(ranges) < 64:
        paddr, size = struct.unpack_from("<QI", data, pos)
        ranges.append((paddr, data[pos + 12:pos + 12 + size]))
        pos += 12 + size
    return raw, ranges


def build_held_seeds(rng: random.Random, count: int = 8) -> list[tuple[bytes, list[tuple[int, bytes]]]]:
    """QEMU's real 7.2 header (no memory) and built headers of small guests with their memory."""
    seeds: list[tuple[bytes, list[tuple[int, bytes]]]] = [((UNIT_DATA / "qemu72_dump_head.bin").read_bytes(), [])]
    for _ in range(count):
        mem, vmci = rich_memory(rng)
        segs = [(lo * PAGE, b"".join(bytes(mem.pages[p]) for p in range(lo, hi)))
                for lo, hi in _runs(sorted(mem.pages))]
        raw = qemu_header([(p, len(d)) for p, d in segs], dump_notes(rng, vmci), rng)
        seeds.append((raw, segs))
    return seeds


QEMUMEM_KINDS = ("flatview", "gpa2hva", "maps", "status", "resolve", "header", "header", "header")


def gen_qemumem(rng: random.Random, pool: dict[str, Any]) -> bytes:
    """One kind byte, then: ``info mtree -f`` text, a ``gpa2hva`` answer, ``/proc/<pid>/maps`` or
    ``status`` text (and a pagemap slice), the three of a resolution joined by \\x1e, or a held image."""
    kind = rng.randrange(len(QEMUMEM_KINDS))
    what = QEMUMEM_KINDS[kind]
    if what == "flatview":
        text = (rng.choice(pool["mtree"]) if rng.random() < 0.3 else gen_flatview(rng)[0]).encode()
    elif what == "gpa2hva":
        text = rng.choice((f"Host virtual address for {rng.choice((0, 0xfffc0000)):#x} ({rng.choice(MTREE_NAMES)}) "
                           f"is {rng.choice(INTERESTING):#x}\r\n",
                           "No memory is mapped at address 0xf0000000\r\n", "", "Host virtual address for 0x0 () is 0x",
                           "Host virtual address for 0x0 (x) is 0x" + "f" * 5000)).encode()
    elif what == "maps":
        text = gen_maps(rng, [rng.choice((0x7fba87fff000, 0x1000, 0))]).encode()
    elif what == "status":
        table = b"".join(struct.pack("<Q", rng.choice((0, 1 << 63, 1 << 62, 5, (1 << 64) - 1)))
                         for _ in range(rng.choice((0, 1, 7, 64))))
        text = gen_status(rng).encode() + b"\x1e" + table
    elif what == "resolve":
        view, secs = gen_flatview(rng)
        hvas = [rng.choice((0x7fba87fff000, 0x7f2900000000, 0x1000, (1 << 64) - 4096)) for _ in secs]
        answers = "\x1d".join(f"Host virtual address for {s[0]:#x} ({s[3]}) is {h:#x}" for s, h in zip(secs, hvas))
        text = "\x1e".join((view, answers, gen_maps(rng, hvas))).encode()
    else:
        raw, ranges = rng.choice(pool["held"])
        raw = mutate(rng, raw, header_fields(raw), max_ops=rng.choice((1, 2, 4, 8)), resize=rng.random() < 0.1)
        return bytes([kind]) + pack_held(raw, ranges)
    if rng.random() < 0.2:  # a tricky character or a long run in one line
        lines = text.split(b"\n")
        i = rng.randrange(len(lines))
        lines[i] = hostile_text(rng, lines[i].decode("utf-8", "replace")).encode("utf-8", "surrogatepass")
        text = b"\n".join(lines)
    if rng.random() < 0.35:
        text = mutate(rng, text, max_ops=rng.choice((1, 3, 8)))
    return bytes([kind]) + text


def unpack_unit_tree(blob: bytes) -> dict[str, Any]:
    from vmcrash.guest.sources import Link

    files: dict[str, Any] = {}
    for entry in blob.split(b"\x1e")[:64]:
        path, _, content = entry.partition(b"\x1f")
        p = path.decode("utf-8", "replace")
        if not p.startswith("/") or not fits_a_file_system(p):
            continue
        files[p] = Link(content[1:].decode("utf-8", "replace")) if content.startswith(b"@") else content
    return files


def fits_a_file_system(path: str) -> bool:
    """A path a Linux file system can hold (PATH_MAX 4096, NAME_MAX 255 bytes): a mutation that runs
    a file's content into its name makes trees no guest can have (and MemorySource, a stand-in for
    such a tree, is quadratic in the length of its paths)."""
    raw = path.encode("utf-8", "surrogatepass")
    return len(raw) < 4096 and all(len(c) <= 255 for c in raw.split(b"/"))


def unpack_entries(blob: bytes) -> tuple[list[tuple[str, bytes]], dict[str, bytes]]:
    """Tree entries (normalized absolute paths, no ``..``) and the ``!meta`` entries of a blob."""
    entries: list[tuple[str, bytes]] = []
    meta: dict[str, bytes] = {}
    for entry in blob.split(b"\x1e")[:96]:
        path, _, content = entry.partition(b"\x1f")
        p = path.decode("utf-8", "replace")
        if p.startswith("!"):
            meta[p[1:]] = content
            continue
        parts = [c for c in p.split("/") if c not in ("", ".")]
        if p.startswith("/") and parts and ".." not in parts and fits_a_file_system(p):
            entries.append(("/" + "/".join(parts), content))
    return entries, meta


def memory_tree(entries: list[tuple[str, bytes]], meta: dict[str, bytes]) -> dict[str, Any]:
    from vmcrash.guest.sources import File, Link

    files: dict[str, Any] = {}
    for path, content in entries:
        if content == DIR:
            files[path + "/.keep"] = b""
        elif content.startswith(b"@"):
            files[path] = Link(content[1:].decode("utf-8", "replace"))
        elif f"mode:{path}" in meta:
            files[path] = File(content, _octal(meta[f"mode:{path}"]))
        else:
            files[path] = content
    return files


def _octal(text: bytes) -> int:
    try:
        return int(text, 8) & 0o7777
    except ValueError:
        return 0o644


def _in_root(path: str) -> str:
    """``path`` (absolute, in the tree) normalized the way the tree's resolver treats ``..`` at ``/``."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
        else:
            out.append(part)
    return "/" + "/".join(out)


def materialize(root: Path, entries: list[tuple[str, bytes]], meta: dict[str, bytes]) -> None:
    """Write a generated tree under ``root`` (on tmpfs): files and directories first, then symlinks,
    each rewritten relative and kept inside ``root`` (a link never points at the host's files; none is
    made under /proc, /sys, /run or /dev, which the machine probe reads)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    real_root = os.path.realpath(root)
    for path, content in sorted(entries, key=lambda e: e[1].startswith(b"@")):
        host = root / path.lstrip("/")
        try:
            if content.startswith(b"@"):
                if path.split("/")[1] in ("proc", "sys", "run", "dev"):
                    continue
                parent_real = os.path.realpath(host.parent) if host.parent.exists() else None
                if parent_real is None:
                    host.parent.mkdir(parents=True, exist_ok=True)
                    parent_real = os.path.realpath(host.parent)
                if not (parent_real + "/").startswith(real_root + "/") and parent_real != real_root:
                    continue
                rel = os.path.relpath(parent_real, real_root)
                here = "/" if rel == "." else "/" + rel
                target = content[1:].decode("utf-8", "replace")
                if not target or "\0" in target:
                    continue
                goal = _in_root(target if target.startswith("/") else here + "/" + target)
                os.symlink(os.path.relpath(goal, here), host)
            elif content == DIR:
                host.mkdir(parents=True, exist_ok=True)
            else:
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_bytes(content)
                if f"mode:{path}" in meta:
                    host.chmod(_octal(meta[f"mode:{path}"]))
        except (OSError, ValueError):
            continue
    for key, value in meta.items():
        if key.startswith("mtime:"):
            target_path = root / key[6:].lstrip("/")
            try:
                ns = int(value)
                os.utime(target_path, ns=(ns, ns), follow_symlinks=False)
            except (OSError, ValueError, OverflowError):
                pass


# -- the targets: generate one input, run one input ---------------------------------------------------


class Crash(Exception):
    """An assertion of the harness itself about an input (a bound the parser promised)."""


@dataclass
class Context:
    """Per-worker state: seed pools (built once) and a scratch directory on tmpfs."""

    seed: int
    scratch: Path
    pools: dict[str, Any] = field(default_factory=dict)

    def pool(self, target: str) -> Any:
        if target not in self.pools:
            rng = random.Random(f"{self.seed}:pool:{target}")
            if target in DUMP_TARGETS:
                self.pools[target] = build_dump_seeds(target, rng)
            elif target == "printk":
                self.pools[target] = build_printk_seeds(rng)
            elif target == "kallsyms":
                self.pools[target] = build_kallsyms_seeds(rng)
            elif target == "qemumem":
                self.pools[target] = {"mtree": [(UNIT_DATA / n).read_text() for n in
                                                ("mtree_4g_memfd.txt", "mtree_512m_memfd.txt")],
                                      "held": build_held_seeds(rng)}
            elif target == "vmcoreinfo":
                _, vmci = rich_memory(rng)
                self.pools[target] = [(CORPUS / "vmcoreinfo-6.1.txt").read_bytes(), vmci]
            else:
                self.pools[target] = None  # generated from scratch each time
        return self.pools[target]


@dataclass(frozen=True)
class Case:
    """One generated input: bytes, and for dumps the sparse zeros appended when written. ``index``: the
    input's number when replayed (some targets do more with every 4th or 16th input)."""

    data: bytes
    extend: int = 0
    origin: str = ""
    index: int = 1


def generate(ctx: Context, target: str, index: int) -> Case:
    rng = random.Random(f"{ctx.seed}:{target}:{index}")
    if target in DUMP_TARGETS:
        seeds = ctx.pool(target)
        s = rng.choice(seeds)
        if rng.random() < 0.08:
            return Case(s.data, s.extend, s.name)
        data = mutate(rng, s.data, s.fields, max_ops=rng.choice((1, 2, 4, 8, 16)), resize=False)
        if rng.random() < 0.1:
            data = data[:rng.randrange(len(data) + 1)]
        return Case(data, s.extend, s.name)
    if target == "printk":
        blob, fields = rng.choice(ctx.pool(target))
        vmci, _ = unpack_memory(blob)
        if rng.random() < 0.5:
            _, pages = unpack_memory(blob)
            blob = pack_memory(vmci_edit(rng, vmci), pages)
            fields = ()
        return Case(mutate(rng, blob, fields, max_ops=rng.choice((1, 4, 16, 40)), resize=False))
    if target == "kallsyms":
        blob, fields = rng.choice(ctx.pool(target))
        return Case(mutate(rng, blob, fields, max_ops=rng.choice((1, 2, 6, 20)), resize=rng.random() < 0.2))
    if target == "vmcoreinfo":
        text = rng.choice(ctx.pool(target))
        text = vmci_edit(rng, text) if rng.random() < 0.6 else text
        return Case(mutate(rng, text, max_ops=rng.choice((1, 3, 10))) if rng.random() < 0.6 else text)
    if target == "oops":
        return Case(gen_oops(rng))
    if target == "agent":
        return Case(gen_agent(rng))
    if target == "unitfile":
        return Case(gen_unit_text(rng))
    if target == "units":
        return Case(gen_unit_tree(rng))
    if target == "timecfg":
        return Case(gen_timecfg(rng))
    if target == "conditions":
        return Case(gen_conditions(rng))
    if target == "qemumem":
        return Case(gen_qemumem(rng, ctx.pool(target)))
    raise ValueError(f"unknown target {target}")


def write_case(case: Case, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(case.data)
        if case.extend:
            f.truncate(len(case.data) + case.extend)


def run_dump(ctx: Context, case: Case, target: str, index: int) -> None:
    from vmcrash.vmcore import analyze, convert_to_kdump, has_vmcoreinfo, open_dump, rearrange_flattened

    path = ctx.scratch / "dump"
    write_case(case, path)
    try:
        with open_dump(path) as dump:
            r = dump.reader
            _ = dump.notes, dump.vmcoreinfo, dump.cpus, dump.format, r.present_pages()
            for i, (start, _end) in enumerate(r.present_ranges()):
                if i > 8:
                    break
                try:
                    r.read_page(start)
                    r.page_head(start, 64)
                except VmcrashError:
                    pass
    except VmcrashError:
        pass
    try:
        has_vmcoreinfo(path)
    except VmcrashError:
        pass
    try:
        triage = analyze(path, dmesg=True)
        json.dumps(triage.to_dict())
    except VmcrashError:
        pass
    if case.extend == 0 and index % 16 == 0:
        out = ctx.scratch / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        try:
            if target == "flattened":
                rearrange_flattened(path, out / "r.kdump")
            else:
                convert_to_kdump(path, out / "c.kdump", codec="zlib")
        except VmcrashError:
            pass
        finally:
            shutil.rmtree(out, ignore_errors=True)


def run_printk(case: Case) -> None:
    from vmcrash.vmcore import KernelMemory, for_each_record, parse_vmcoreinfo

    vmci, pages = unpack_memory(case.data)
    vi = parse_vmcoreinfo(vmci)
    problems: list[str] = []
    try:
        km = KernelMemory(MemReader(pages), vi)
        count = 0
        for rec in for_each_record(km, vi, problems=problems):
            rec.render()
            _ = rec.caller
            count += 1
            if count > (1 << 22) + 1:
                raise Crash("more records than the largest ring can hold")
    except VmcrashError:
        pass


def run_kallsyms(case: Case) -> None:
    from vmcrash.vmcore._kallsyms import decode_kallsyms

    count, base, names, offsets, table, index = unpack_kallsyms(case.data)
    try:
        ks = decode_kallsyms(names, offsets, count, base, table, index)
    except VmcrashError:
        return
    for addr in (0, base, base + 0x5016, (1 << 64) - 1, KMAP + 0x10):
        ks.lookup(addr)
    for i in range(min(len(ks), 5)):
        ks.symbol(i)
    ks.addresses_of(["panic_cpu", "modules", "__per_cpu_offset", "nr_cpu_ids", ""])


def run_oops(case: Case) -> None:
    from vmcrash.vmcore._oops import find_crash, parse_frame

    lines = case.data.decode("utf-8", "replace").split("\n")
    report = find_crash(lines)
    for f in report.call_trace:
        f.to_dict()
    for line in lines[:50]:
        frame = parse_frame(line)
        if frame is not None:
            str(frame)


def run_vmcoreinfo(case: Case) -> None:
    from vmcrash.vmcore import KernelMemory, for_each_record, parse_vmcoreinfo
    from vmcrash.vmcore._kallsyms import load_kallsyms
    from vmcrash.vmcore._printk import printk_layout
    from vmcrash.vmcore._triage import read_utsname

    vi = parse_vmcoreinfo(case.data)
    for get, name in ((vi.symbol, "prb"), (vi.offset, "printk_info.seq"), (vi.size, "printk_info"),
                      (vi.number, "phys_base")):
        try:
            get(name)
        except VmcrashError:
            pass
    printk_layout(vi)
    mem = MemReader({0x1100 + i: bytes(PAGE) for i in range(4)})
    try:
        km = KernelMemory(mem, vi)
    except VmcrashError:
        return
    for fn in (lambda: list(for_each_record(km, vi, problems=[])), lambda: load_kallsyms(km, vi),
               lambda: read_utsname(km, vi)):
        try:
            fn()
        except VmcrashError:
            pass


class _ReplayAgent:
    """An ``Agent`` whose transport returns one fixed reply (the I/O part replaced, the checks real)."""

    def __init__(self, reply: object) -> None:
        self.name = "fuzz"
        self.timeout_s = 1
        self._reply = reply

    def raw(self, execute: str, arguments: dict[str, Any] | None = None, *, timeout_s: int | None = None) -> object:
        return self._reply


def run_agent(case: Case) -> None:
    from vmcrash.clock import _transport as tr
    from vmcrash.host import agent as ag
    from vmcrash.host import agent_protocol as proto

    op = case.data[0] if case.data else 0
    reply = case.data[1:].decode("utf-8", "replace")
    replay = _ReplayAgent(reply)
    real = ag.Agent.__new__(ag.Agent)
    real.name, real.timeout_s = "fuzz", 1
    real.raw = replay.raw  # type: ignore[method-assign]
    which = op % 11
    try:
        if which == 0:
            proto.decode_reply(reply, command="guest-x", domain="fuzz")
        elif which == 1:
            proto.parse_time_ns(proto.decode_reply(reply, command="guest-get-time"))
        elif which == 2:
            proto.parse_exec_status(proto.decode_reply(reply, command="guest-exec-status"), max_output=1024)
        elif which == 3:
            real.exec("/bin/true", [], capture=True)
        elif which == 4:
            real.exec_status(1)
        elif which == 5:
            real.get_time_ns()
            real.ping()
        elif which == 6:
            tr.parse_get_time_reply(reply, domain="fuzz")
            tr.parse_set_time_reply(reply, domain="fuzz")
        elif which == 7:
            tr.collect_probes(replay, 3, clock_ns=time.time_ns)
            tr.ping(replay, timeout_s=1)
        elif which == 8:
            tr.timed_set_time(replay, 1000)
        elif which == 9:
            err = tr.set_time_refusal(AgentRefused(reply[:4096], domain="fuzz", command="guest-set-time"),
                                      domain="fuzz")
            str(err)
        else:  # what the guest audit run through guest-exec printed (host/guest_exec.py)
            from vmcrash.host.guest_exec import decode_result

            out = case.data[1:]
            if not out.startswith(b"VMCRASH-RESULT "):
                out = b"noise\nVMCRASH-RESULT " + base64.b64encode(zlib.compress(out)) + b"\n"
            decode_result(out, domain="fuzz")
    except VmcrashError:
        pass


#: the tree and machines the ``unitfile`` target evaluates a file's conditions against
UNITFILE_TREE = {"/etc/machine-id": b"0123456789abcdef0123456789abcdef\n", "/etc/hostname": b"fuzzhost\n",
                 "/etc/systemd/system/a.service": b"[Unit]\n", "/lib/systemd/system/b.service": b"",
                 "/etc/empty": b"", "/var/.updated": b"TIMESTAMP_NSEC=1\n", "/usr/bin/true": b"\x7fELF"}


def unitfile_machines() -> tuple[Any, ...]:
    from vmcrash.guest.conditions import OFFLINE, Machine

    live = Machine(live=True, virtualization="kvm", user_namespace=False, kernel_cmdline="ro quiet a=\"b c\" '",
                   capability_bounding=(1 << 41) - 1, hostname="fuzzhost", architecture="x86-64",
                   security=frozenset({"apparmor"}), security_known=frozenset({"apparmor", "selinux"}),
                   ac_power=True, firmware=frozenset({"uefi"}), first_boot=False, cgroup_v2=True,
                   mounts=frozenset({"/", "/usr", "/proc"}), read_only=frozenset({"/usr"}))
    return OFFLINE, live


def run_unitfile(case: Case, index: int) -> None:
    from vmcrash.guest.conditions import unit_conditions
    from vmcrash.guest.sources import MemorySource
    from vmcrash.guest.unitfile import decode_unit_bytes, parse_unit_text
    from vmcrash.guest.units import Unit

    text, _problems = decode_unit_bytes(case.data, "/etc/systemd/system/x@i.service")
    parsed = parse_unit_text(text, "/etc/systemd/system/x@i.service")
    for p in parsed.problems:
        str(p)
    # its Condition*=/Assert*= as the unit x@i.service would have them
    unit = Unit("x@i.service", ("x@i.service",), "loaded", parsed.path, assignments=parsed.assignments)
    source = MemorySource(UNITFILE_TREE)
    try:
        cond = unit_conditions(unit, source, unitfile_machines()[index % 2])
        _ = cond.runs, cond.unknown, cond.describe()
    except VmcrashError:
        pass


def run_conditions(ctx: Context, case: Case) -> None:
    from vmcrash.guest.conditions import OFFLINE, conditions_of, evaluate_conditions, probe_machine, unit_conditions
    from vmcrash.guest.sources import MemorySource, RootSource, UnitSource
    from vmcrash.guest.units import UnitLoader

    entries, meta = unpack_entries(case.data)
    mode = meta.get("mode", b"0")[:1]
    virt = meta.get("virt", b"").decode("utf-8", "replace")
    userns = {b"yes": "yes", b"no": "no"}.get(meta.get("userns", b""))

    def detect_virt(*args: str) -> str | None:
        return userns if args else (virt or None)

    root = ctx.scratch / "root"
    source: UnitSource
    try:
        if mode == b"1":
            materialize(root, entries, meta)
            source = RootSource(root)
            machine = probe_machine(root, detect_virt=detect_virt)
        else:
            files = memory_tree(entries, meta)
            source = MemorySource(files)
            machine = OFFLINE if mode == b"0" else direct_machine(files, meta)
        loader = UnitLoader(source)
        units = [loader.load(n) for n in (meta.get("unit", b"fuzz.service").decode("utf-8", "replace"),
                                          "a.service", "l.service")]
        for unit in units:
            cond = unit_conditions(unit, source, machine)
            _ = cond.runs, cond.skipped, cond.fails, cond.unknown, cond.describe()
            evaluate_conditions(unit, source, machine)
        for cond in conditions_of(units, source, machine):
            cond.describe()
        for p in loader.problems:
            str(p)
    except VmcrashError:
        pass
    finally:
        if mode == b"1":
            shutil.rmtree(root, ignore_errors=True)


def direct_machine(files: dict[str, Any], meta: dict[str, bytes]) -> Any:
    """A running machine whose facts are the generated ones as they are (no probe in between)."""
    from vmcrash.guest.conditions import Machine, _mountinfo

    def text(path: str) -> str:  # as much as probe_machine reads of a fact
        value = files.get(path)
        return value[:1 << 16].decode("utf-8", "replace") if isinstance(value, bytes) else ""

    mounts, read_only = _mountinfo(text("/proc/self/mountinfo"))
    digest = hashlib.sha1(text("/proc/1/status").encode("utf-8", "surrogatepass")).digest()
    virt = meta.get("virt", b"").decode("utf-8", "replace")
    return Machine(live=digest[0] % 4 != 0, virtualization=virt or None,
                   user_namespace=(None, True, False)[digest[1] % 3], kernel_cmdline=text("/proc/cmdline") or None,
                   capability_bounding=int.from_bytes(digest[2:8], "little") if digest[8] % 4 else None,
                   hostname=text("/etc/hostname").strip() or None,
                   architecture=("x86-64", "arm64", None, virt)[digest[9] % 4],
                   security=frozenset(("apparmor", "selinux", virt)[:digest[10] % 4]),
                   security_known=frozenset(("apparmor", "selinux", "ima", "tpm2")[:digest[11] % 5]),
                   ac_power=(None, True, False)[digest[12] % 3],
                   firmware=(None, frozenset(), frozenset({"uefi"}), frozenset({virt}))[digest[13] % 4],
                   first_boot=(None, True, False)[digest[14] % 3], cgroup_v2=(None, True, False)[digest[15] % 3],
                   mounts=mounts if digest[16] % 4 else None, read_only=read_only if digest[17] % 4 else None)


def run_qemumem(ctx: Context, case: Case, index: int) -> None:
    from vmcrash.host import qemu_memory as qm

    kind = QEMUMEM_KINDS[case.data[0] % len(QEMUMEM_KINDS)] if case.data else "flatview"
    body = case.data[1:]
    try:
        if kind == "header":
            run_held(ctx, body, index)
            return
        text = body.decode("utf-8", "replace")
        if kind == "flatview":
            for sec in qm._merge(qm.parse_flatview(text)):
                _ = sec.size_bytes, sec.is_memory
        elif kind == "gpa2hva":
            qm.parse_gpa2hva(text)
        elif kind == "maps":
            for m in qm.parse_maps(text):
                _ = m.shared
        elif kind == "status":
            from vmcrash.capture.hold import present_runs

            status, _, table = body.partition(b"\x1e")
            qm.parse_status_rss(status.decode("utf-8", "replace"))
            present_runs(table[:len(table) // 8 * 8], 0x7F0000000000)  # the kernel gives whole entries
        else:
            view, answers, maps = (text.split("\x1e") + ["", ""])[:3]
            secs = qm.parse_flatview(view)
            hvas = {}
            for sec, answer in zip(secs, answers.split("\x1d")):
                try:
                    hvas[sec.start] = qm.parse_gpa2hva(answer)
                except VmcrashError:
                    pass
            ranges = qm.resolve_ranges(secs, hvas, qm.parse_maps(maps))
            want = sum(sec.size_bytes for sec in qm._merge(secs))
            if sum(r.size_bytes for r in ranges) != want:
                raise Crash(f"resolved ranges cover {sum(r.size_bytes for r in ranges)} of {want} bytes")
    except VmcrashError:
        pass


def run_held(ctx: Context, body: bytes, index: int) -> None:
    """QEMU's dump header -> its parsers, then a held image of it: read, triaged, sometimes written."""
    from vmcrash.capture import hold

    raw, ranges = unpack_held(body)
    try:
        hold.header_extent(raw[:64])
    except VmcrashError:
        pass
    header = hold.parse_dump_header(raw)
    first = hold.data_start(header)
    size = header.file_size_bytes
    held = [hold.HeldRange(p, len(d), data=d) for p, d in ranges]
    # hold_image refuses a header whose PT_LOADs QEMU's memory does not cover; here the gaps are
    # zeros (as untouched RAM is), up to 32 MiB, else there is no image to triage or write
    gaps = [ld for ld in header.loads if ld.file_size and not any(
        r.paddr <= ld.paddr and ld.paddr + ld.file_size <= r.paddr + r.size_bytes for r in held)]
    if sum(ld.file_size for ld in gaps) > 32 << 20:
        return
    held += [hold.HeldRange(ld.paddr, ld.file_size, data=bytes(ld.file_size)) for ld in gaps]
    image = hold.HeldImage("fuzz", header, held)
    src = hold.HeldElfSource(image)
    for off in (0, len(raw) - 100, first, size - 100):
        try:
            src.read_upto(off, 4096)
        except VmcrashError:
            pass
    if index % 4 == 0:
        summary, _error = hold.triage_held(image)
        json.dumps(summary)
    if index % 16 == 0:
        target = ctx.scratch / "held.elf"
        try:
            hold.write_held(image, target)
        finally:
            target.unlink(missing_ok=True)


def run_units(case: Case, index: int) -> None:
    from vmcrash.guest.graph import BootGraph
    from vmcrash.guest.sources import MemorySource
    from vmcrash.guest.units import UnitLoader

    try:
        loader = UnitLoader(MemorySource(unpack_unit_tree(case.data)))
        for name in UNIT_NAMES[:20]:
            unit = loader.load(name)
            _ = unit.default_dependencies, unit.install("WantedBy"), unit.list_values("Service", "ExecStart")
        graph = BootGraph(loader)
        graph.cycles()
        for p in loader.problems:
            str(p)
    except VmcrashError:
        pass
    # the whole audit (conditions, clock units, daemons, roles) and the fix's plan over the same tree
    from vmcrash.guest.audit import audit_graph, load_graph
    from vmcrash.guest.fix import plan_fix, render_plan

    source = MemorySource(unpack_unit_tree(case.data))
    try:
        report = audit_graph(load_graph("/", source), source, machine=unitfile_machines()[index % 2])
        json.dumps(report.to_json())
        report.render_text(verbose=True)
        _ = report.exit_code
    except VmcrashError:
        pass
    if index % 4 == 0:
        try:
            render_plan(plan_fix("/", source=source, all_enabled=True))
        except VmcrashError:
            pass


def run_timecfg(case: Case) -> None:
    from vmcrash.guest import timecfg as tc
    from vmcrash.guest.sources import MemorySource

    src = MemorySource(unpack_unit_tree(case.data))
    try:
        opts = src.read_bytes("/etc/default/chrony", 4096).decode("utf-8", "replace").partition("=")[2]
    except VmcrashError:
        opts = ""
    try:
        path = tc.chrony_conf_path(src, opts.strip("\"'"))
        if path is not None:
            cfg = tc.read_chrony(src, path)
            # what the audit reports of it
            _ = cfg.slew_seconds(), cfg.steps_offset_after_start(), f"{cfg.maxslewrate_ppm:g}"
        ntp = tc.read_ntpd(src, ("/etc/ntp.conf",), "-g")
        _ = ntp.steps(), ntp.exits()
        tc.read_timesyncd(src)
    except VmcrashError:
        pass


def run_case(ctx: Context, target: str, case: Case, index: int) -> None:
    if target in DUMP_TARGETS:
        run_dump(ctx, case, target, index)
    elif target == "printk":
        run_printk(case)
    elif target == "kallsyms":
        run_kallsyms(case)
    elif target == "vmcoreinfo":
        run_vmcoreinfo(case)
    elif target == "oops":
        run_oops(case)
    elif target == "agent":
        run_agent(case)
    elif target == "unitfile":
        run_unitfile(case, index)
    elif target == "units":
        run_units(case, index)
    elif target == "timecfg":
        run_timecfg(case)
    elif target == "conditions":
        run_conditions(ctx, case)
    elif target == "qemumem":
        run_qemumem(ctx, case, index)
    else:
        raise ValueError(target)


# -- crash identity and saving ------------------------------------------------------------------------


def crash_key(exc: BaseException) -> str:
    """Exception type and the innermost frame inside vmcrash (or the harness)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for fr in reversed(frames):
        if "/vmcrash/" in fr.filename or fr.filename.endswith("fuzz.py"):
            where = f"{fr.filename.split('/src/')[-1]}:{fr.lineno}"
            break
    kind = type(exc).__qualname__ if type(exc).__module__ == "builtins" else \
        f"{type(exc).__module__.lstrip('_')}.{type(exc).__qualname__}"
    return f"{kind}@{where}"


def save_case(out: Path, kind: str, target: str, index: int, case: Case, meta: dict[str, Any]) -> Path:
    d = out / kind
    d.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(case.data).hexdigest()[:10]
    path = d / f"{target}-{index}-{digest}.bin"
    path.write_bytes(case.data)
    meta = {"target": target, "index": index, "extend": case.extend, "origin": case.origin, **meta}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


# -- workers and scheduling ---------------------------------------------------------------------------


@dataclass
class Stats:
    """Per-target totals of one run (or of all runs, in ``--report``)."""

    execs: int = 0
    busy_s: float = 0.0
    slowest_s: float = 0.0
    slowest_index: int = -1
    peak_traced_bytes: int = 0
    max_rss_kib: int = 0
    crashes: dict[str, int] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)
    lo: int = -1
    hi: int = -1

    def merge(self, other: Stats) -> None:
        self.execs += other.execs
        self.busy_s += other.busy_s
        if other.slowest_s > self.slowest_s:
            self.slowest_s, self.slowest_index = other.slowest_s, other.slowest_index
        self.peak_traced_bytes = max(self.peak_traced_bytes, other.peak_traced_bytes)
        self.max_rss_kib = max(self.max_rss_kib, other.max_rss_kib)
        for k, v in other.crashes.items():
            self.crashes[k] = self.crashes.get(k, 0) + v
            if k in other.first and (k not in self.first):
                self.first[k] = other.first[k]
        self.lo = other.lo if self.lo < 0 else min(self.lo, other.lo)
        self.hi = max(self.hi, other.hi)


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker_main(conn: Connection, slot: Any, seed: int, out: str, limits: dict[str, float]) -> None:
    """Run assigned index ranges; ``slot`` = [target number, index, start ns] for the watchdog."""
    limit = int(limits["as_mib"]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    scratch = Path(tempfile.mkdtemp(prefix="vmcrash-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    ctx = Context(seed, scratch)
    outp = Path(out)
    _warm_imports()
    names = sorted(WEIGHTS)
    saved: set[str] = set()
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            target, lo, hi = msg
            st = Stats(lo=lo, hi=lo)
            ctx.pool(target)
            last_report = time.monotonic()
            for index in range(lo, hi):
                case = generate(ctx, target, index)
                sample = index % SAMPLE_TRACEMALLOC == 0
                slot[0], slot[1] = names.index(target), index
                if sample:
                    tracemalloc.start()
                slot[4] = int(sample)
                slot[3] = time.process_time_ns()
                slot[2] = time.monotonic_ns()
                err: BaseException | None = None
                try:
                    run_case(ctx, target, case, index)
                except BaseException as exc:  # noqa: B036 - everything but VmcrashError is a finding
                    err = exc
                dt = (time.process_time_ns() - slot[3]) / 1e9  # CPU seconds: the machine is shared
                slot[2] = 0
                peak = 0
                if sample:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    st.peak_traced_bytes = max(st.peak_traced_bytes, peak)
                st.execs += 1
                st.busy_s += dt
                st.hi = index + 1
                if dt > st.slowest_s and not sample:  # tracemalloc makes an input ~5x slower
                    st.slowest_s, st.slowest_index = dt, index
                rss = _maxrss_kib()
                st.max_rss_kib = max(st.max_rss_kib, rss)
                key = None
                if err is not None:
                    key = crash_key(err)
                    detail = "".join(traceback.format_exception(err))
                elif peak > limits["peak_mib"] * (1 << 20):
                    key, detail = "memory:tracemalloc-peak", f"traced peak {peak} bytes"
                elif rss > limits["rss_mib"] * 1024:
                    key, detail = "memory:maxrss", f"worker maxrss {rss} KiB"
                if key is not None:
                    st.crashes[key] = st.crashes.get(key, 0) + 1
                    if key not in st.first:
                        st.first[key] = index
                    if key not in saved:
                        saved.add(key)
                        save_case(outp, "crashes", target, index, case, {"key": key, "detail": detail[-4000:]})
                    if isinstance(err, MemoryError) or key.startswith("memory:"):
                        conn.send(("done", target, st, True))  # memory is spoiled: restart this worker
                        return
                if time.monotonic() - last_report > 2:
                    conn.send(("progress", target, st))
                    last_report = time.monotonic()
            conn.send(("done", target, st, False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cpu_ns(pid: int) -> int:
    """User + system CPU time of a process so far (what ``time.process_time_ns`` says inside it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _warm_imports() -> None:
    """Import what the targets use before the first timed input."""
    import vmcrash.capture.hold
    import vmcrash.clock._transport
    import vmcrash.guest.audit
    import vmcrash.guest.conditions
    import vmcrash.guest.fix
    import vmcrash.guest.graph
    import vmcrash.host.agent
    import vmcrash.host.agent_protocol
    import vmcrash.host.guest_exec
    import vmcrash.host.qemu_memory
    import vmcrash.vmcore  # noqa: F401


@dataclass
class Worker:
    proc: Any
    conn: Connection
    slot: Any
    unit: tuple[str, int, int] | None = None
    progress: Stats | None = None


def campaign(args: argparse.Namespace) -> dict[str, Stats]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in WEIGHTS:
            raise SystemExit(f"unknown target {t!r}; known: {', '.join(sorted(WEIGHTS))}")
    starts = next_starts(out / "runs.jsonl", args.seed) if args.start is None else dict.fromkeys(targets, args.start)
    wsum = sum(WEIGHTS[t] for t in targets)
    units: list[tuple[str, int, int]] = []
    for t in targets:
        n = max(1, args.budget * WEIGHTS[t] // wsum)
        lo = starts.get(t, 0)
        block = BLOCK.get(t, DEFAULT_BLOCK)
        units += [(t, a, min(a + block, lo + n)) for a in range(lo, lo + n, block)]
    # interleave targets so every one makes progress from the start
    units.sort(key=lambda u: (u[1] - starts.get(u[0], 0)) / max(1, BLOCK.get(u[0], DEFAULT_BLOCK)))
    totals = {t: Stats() for t in targets}
    limits = {"as_mib": args.as_mib, "peak_mib": args.max_peak_mib, "rss_mib": args.max_rss_mib}
    mpctx = mp.get_context("fork")
    names = sorted(WEIGHTS)
    gen_ctx = Context(args.seed, Path(tempfile.gettempdir()))

    def spawn() -> Worker:
        parent, child = mpctx.Pipe()
        slot = mpctx.RawArray("q", 5)
        proc = mpctx.Process(target=worker_main, args=(child, slot, args.seed, str(out), limits), daemon=True)
        proc.start()
        child.close()
        return Worker(proc, parent, slot)

    version = _version()  # at the start: the code this run executes
    workers = [spawn() for _ in range(args.jobs)]
    t_start = time.monotonic()
    last_print = 0.0
    timeout_ns = int(args.timeout_s * 1e9)

    def finish_unit(w: Worker, st: Stats) -> None:
        totals[w.unit[0]].merge(st)  # type: ignore[index]
        w.unit, w.progress = None, None

    while units or any(w.unit for w in workers):
        for w in workers:
            if w.unit is None and units:
                w.unit = units.pop(0)
                w.conn.send(w.unit)
        ready = wait([w.conn for w in workers if w.unit], timeout=0.2)
        for w in list(workers):
            if w.unit is None:
                continue
            if w.conn in ready:
                try:
                    msg = w.conn.recv()
                except EOFError:
                    msg = None
                if msg is not None:
                    if msg[0] == "progress":
                        w.progress = msg[2]
                        continue
                    _, target, st, restart = msg
                    unit = w.unit
                    finish_unit(w, st)
                    if st.hi < unit[2]:
                        units.insert(0, (target, st.hi, unit[2]))
                    if restart:
                        w.proc.join(5)
                        workers[workers.index(w)] = spawn()
                    continue
            started, cpu_started = w.slot[2], w.slot[3]
            dead = not w.proc.is_alive()
            # a hang is CPU time of the worker on one input (the machine is shared: wall time is not
            # the parser's), with a wall-clock backstop for an input that blocks
            limit_ns = timeout_ns * (TRACEMALLOC_SLOWDOWN if w.slot[4] else 1)
            hung = started and (time.monotonic_ns() - started > 20 * limit_ns
                                or _cpu_ns(w.proc.pid) - cpu_started > limit_ns)
            if not (dead or hung):
                continue
            target, lo, hi = w.unit
            index = int(w.slot[1]) if names[int(w.slot[0])] == target and w.slot[1] >= lo else lo
            if hung:
                w.proc.kill()
            w.proc.join(5)
            key = f"hang>{args.timeout_s:g}s" if hung else f"worker-died:exit {w.proc.exitcode}"
            st = w.progress or Stats(lo=lo, hi=lo)
            st.execs = index - lo + 1
            st.hi = index + 1
            st.crashes[key] = st.crashes.get(key, 0) + 1
            if key not in totals[target].crashes:
                st.first[key] = index
                save_case(out, "crashes", target, index, generate(gen_ctx, target, index), {"key": key})
            if st.slowest_s < args.timeout_s:
                st.slowest_s, st.slowest_index = float(args.timeout_s), index
            finish_unit(w, st)
            if index + 1 < hi:
                units.insert(0, (target, index + 1, hi))
            workers[workers.index(w)] = spawn()
        now = time.monotonic()
        if now - last_print > 30:
            last_print = now
            done = sum(s.execs for s in totals.values())
            print(f"  [{now - t_start:6.0f} s] {done} executions, crashes: "
                  f"{sum(len(s.crashes) for s in totals.values())}", flush=True)
    for w in workers:
        try:
            w.conn.send(None)
        except OSError:
            pass
        w.proc.join(10)
    wall = time.monotonic() - t_start
    for t, st in totals.items():
        if st.slowest_index >= 0:
            save_case(out, "slowest", t, st.slowest_index, generate(gen_ctx, t, st.slowest_index),
                      {"seconds": st.slowest_s})
    with open(out / "runs.jsonl", "a") as f:
        f.write(json.dumps({"seed": args.seed, "wall_s": wall, "jobs": args.jobs, "when": time.time(),
                            "version": version,
                            "targets": {t: st.__dict__ for t, st in totals.items()}}) + "\n")
    print(f"run: {sum(s.execs for s in totals.values())} executions in {wall:.0f} s wall, {args.jobs} workers")
    return totals


def _version() -> str:
    """The commit the campaign ran (``+dirty`` with uncommitted changes), for the record."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def load_runs(path: Path, seed: int | None = None) -> dict[str, Stats]:
    totals: dict[str, Stats] = {}
    if not path.exists():
        return totals
    for line in path.read_text().splitlines():
        run = json.loads(line)
        if seed is not None and run["seed"] != seed:
            continue
        for t, d in run["targets"].items():
            totals.setdefault(t, Stats()).merge(Stats(**d))
    return totals


def next_starts(path: Path, seed: int) -> dict[str, int]:
    return {t: st.hi for t, st in load_runs(path, seed).items() if st.hi > 0}


def table(totals: dict[str, Stats]) -> str:
    rows = ["| target | executions | exec/s (per CPU s) | peak traced (sampled) | worker maxrss | slowest (CPU) | "
            "crashes (distinct: count) |",
            "|---|---:|---:|---:|---:|---|---|"]
    for t in sorted(totals, key=list(WEIGHTS).index):
        st = totals[t]
        rate = st.execs / st.busy_s if st.busy_s else 0.0
        crashes = "; ".join(f"{k}: {v}" for k, v in sorted(st.crashes.items())) or "none"
        rows.append(f"| {t} | {st.execs} | {rate:.0f} | {st.peak_traced_bytes / (1 << 20):.1f} MiB | "
                    f"{st.max_rss_kib / 1024:.0f} MiB | #{st.slowest_index}: {st.slowest_s * 1000:.0f} ms | "
                    f"{crashes} |")
    total = sum(s.execs for s in totals.values())
    rows.append(f"| **all** | **{total}** | | | | | |")
    return "\n".join(rows)


# -- replay and minimization -------------------------------------------------------------------------------


def load_case(path: Path) -> Case:
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return Case(path.read_bytes(), int(meta.get("extend", 0)), str(meta.get("origin", "")), int(meta.get("index", 1)))


def replay_key(ctx: Context, target: str, case: Case) -> str | None:
    try:
        run_case(ctx, target, case, case.index)
    except BaseException as exc:  # noqa: B036
        return crash_key(exc)
    return None


def minimize(ctx: Context, target: str, case: Case, *, budget_s: float = 120.0) -> Case:
    """Shrink ``case`` while it keeps the same crash key: cut the tail, delete chunks (text) or zero them."""
    key = replay_key(ctx, target, case)
    if key is None:
        raise SystemExit("the input does not crash")
    deadline = time.monotonic() + budget_s
    data = case.data
    can_delete = target in ("agent", "unitfile", "units", "vmcoreinfo", "oops", "timecfg", "conditions", "qemumem")

    def same(d: bytes) -> bool:
        return replay_key(ctx, target, Case(d, case.extend, case.origin, case.index)) == key

    lo, hi = 0, len(data)  # shortest prefix that still crashes
    while lo < hi and time.monotonic() < deadline:
        mid = (lo + hi) // 2
        if same(data[:mid]):
            hi = mid
        else:
            lo = mid + 1
    data = data[:hi]
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        pos = 0
        while pos < len(data) and time.monotonic() < deadline:
            if can_delete:
                cand = data[:pos] + data[pos + chunk:]
            else:
                cand = data[:pos] + bytes(len(data[pos:pos + chunk])) + data[pos + chunk:]
            if cand != data and same(cand):
                data = cand
                if not can_delete:
                    pos += chunk
            else:
                pos += chunk
        chunk //= 2
    print(f"minimized {len(case.data)} -> {len(data)} bytes ({key})")
    return Case(data, case.extend, case.origin, case.index)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--budget", type=int, default=100_000, help="executions in this run, over all targets")
    p.add_argument("--targets", default=",".join(WEIGHTS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--start", type=int, default=None, help="first index (default: continue after earlier runs)")
    p.add_argument("--out", default="/tmp/vmcrash-fuzz")
    p.add_argument("--timeout-s", type=float, default=2.0)
    p.add_argument("--as-mib", type=int, default=4096, help="address-space limit of a worker")
    p.add_argument("--max-rss-mib", type=int, default=768)
    p.add_argument("--max-peak-mib", type=int, default=128)
    p.add_argument("--report", action="store_true", help="print the totals of all runs in --out")
    p.add_argument("--replay", type=Path)
    p.add_argument("--minimize", type=Path)
    p.add_argument("--target")
    args = p.parse_args()
    if args.report:
        print(table(load_runs(Path(args.out) / "runs.jsonl")))
        return 0
    if args.replay or args.minimize:
        if not args.target:
            raise SystemExit("--target is needed")
        ctx = Context(args.seed, Path(tempfile.mkdtemp(prefix="vmcrash-fuzz-")))
        try:
            if args.replay:
                case = load_case(args.replay)
                run_case(ctx, args.target, case, case.index)
                print("no crash")
            else:
                small = minimize(ctx, args.target, load_case(args.minimize))
                dst = args.minimize.with_suffix(".min.bin")
                dst.write_bytes(small.data)
                print(f"written {dst} (extend {small.extend})")
        finally:
            shutil.rmtree(ctx.scratch, ignore_errors=True)
        return 0
    campaign(args)
    print(table(load_runs(Path(args.out) / "runs.jsonl", args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

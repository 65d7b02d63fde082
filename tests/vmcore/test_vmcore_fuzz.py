"""Fuzz pass: mutated real dump heads and hand-laid rings must only ever raise VmcrashError.

Each reader (ELF, kdump, flattened), the triage on top of them, the printk ring-buffer walker and
the kallsyms decoder get hostile input; an example must finish quickly (hypothesis deadline),
allocate little (tracemalloc peak) and fail, if at all, with a VmcrashError subclass.
``VMCRASH_FUZZ_EXAMPLES`` raises the number of examples for a longer local run.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vmcore_builders import MemReader, build_prb

from vmcrash.errors import VmcrashError
from vmcrash.vmcore import KernelMemory, for_each_record, open_dump, parse_vmcoreinfo
from vmcrash.vmcore._kallsyms import decode_kallsyms
from vmcrash.vmcore._scan import recover_vmcoreinfo
from vmcrash.vmcore._triage import analyze_dump

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = int(os.environ.get("VMCRASH_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
PEAK_BYTES = 96 << 20


def _flat_complete(head: bytes) -> bytes:
    """Keep the whole records of a flattened head and close it with the end marker."""
    pos = 4096
    while pos + 16 <= len(head):
        _off, size = struct.unpack_from(">qq", head, pos)
        if pos + 16 + size > len(head):
            break
        pos += 16 + size
    return head[:pos] + struct.pack(">qq", -1, -1)


SEEDS = {
    "elf": (CORPUS / "elf-head.bin").read_bytes(),
    "elf-novmcoreinfo": (CORPUS / "elf-novmcoreinfo-head.bin").read_bytes(),
    "kdump": (CORPUS / "kdump-head.bin").read_bytes(),
    "flattened": _flat_complete((CORPUS / "flattened-head.bin").read_bytes()),
}

mutations = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=24)


def _mutate(seed: bytes, muts: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(seed)
    for pos, value in muts:
        data[pos % len(data)] = value
    return bytes(data[:cut] if cut is not None else data)


def _exercise(path: Path) -> None:
    """Everything a caller may do with an opened dump; only VmcrashError may escape."""
    try:
        with open_dump(path) as dump:
            r = dump.reader
            _ = dump.notes, dump.vmcoreinfo, dump.cpus
            for i, (start, _end) in enumerate(r.present_ranges()):
                if i > 8:
                    break
                try:
                    r.read_page(start)
                except VmcrashError:
                    pass
            analyze_dump(dump, dmesg=True, recover=False)
    except VmcrashError:
        pass


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_readers_and_triage_on_mutated_heads(name: str, tmp_path: Path) -> None:
    seed = SEEDS[name]

    @FUZZ
    @given(muts=mutations, cut=st.one_of(st.none(), st.integers(0, len(seed))),
           extend=st.sampled_from([0, 1 << 20, 600 << 20]))
    def run(muts: list[tuple[int, int]], cut: int | None, extend: int) -> None:
        path = tmp_path / "dump"
        data = _mutate(seed, muts, cut)
        with open(path, "wb") as f:
            f.write(data)
            if extend and name != "flattened":
                f.truncate(len(data) + extend)  # sparse zeros where the head's offsets point
        tracemalloc.start()
        try:
            _exercise(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < PEAK_BYTES

    run()


@FUZZ
@given(muts=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=40),
       count_bits=st.integers(1, 6), size_bits=st.integers(6, 12), nrec=st.integers(0, 80),
       vi_edits=st.lists(st.tuples(st.sampled_from(["OFFSET(prb_desc.state_var)", "SIZE(printk_info)",
                                                    "OFFSET(printk_info.text_len)", "SIZE(prb_desc)",
                                                    "OFFSET(prb_desc_ring.descs)", "OFFSET(printk_info.seq)"]),
                                   st.integers(-(1 << 40), 1 << 40)), max_size=2))
def test_printk_walker_on_corrupt_rings(muts: list[tuple[int, int]], count_bits: int, size_bits: int, nrec: int,
                                        vi_edits: list[tuple[str, int]]) -> None:
    mem = MemReader()
    recs = [(i, i * 1000, i % 8, i, b"record %d " % i * (i % 4 + 1)) for i in range(nrec)]
    vmci = build_prb(mem, recs, count_bits=count_bits, size_bits=size_bits)
    for key, value in vi_edits:
        vmci += f"{key}={value}\n".encode()
    pages = sorted(mem.pages)
    for pos, value in muts:
        page = mem.pages[pages[pos % len(pages)]]
        page[(pos >> 4) % len(page)] = value
    vi = parse_vmcoreinfo(vmci)
    tracemalloc.start()
    try:
        out = list(for_each_record(KernelMemory(mem, vi), vi, problems=[]))
        assert len(out) <= 1 << count_bits
    except VmcrashError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BYTES


@FUZZ
@given(names=st.binary(max_size=600), offsets=st.binary(max_size=200), count=st.integers(-5, 3_000_000),
       table=st.binary(max_size=300), index=st.binary(max_size=600), base=st.integers(0, (1 << 64) - 1),
       lookups=st.lists(st.integers(0, (1 << 64) - 1), max_size=4))
def test_kallsyms_decoder_on_garbage(names: bytes, offsets: bytes, count: int, table: bytes, index: bytes,
                                     base: int, lookups: list[int]) -> None:
    try:
        ks = decode_kallsyms(names, offsets, count, base, table, index.ljust(512, b"\0"))
    except VmcrashError:
        return
    for addr in lookups:
        ks.lookup(addr)
    ks.addresses_of(["panic_cpu", "modules", ""])


@FUZZ
@given(pages=st.dictionaries(st.integers(0, 64), st.binary(min_size=0, max_size=4096), max_size=12),
       plant=st.booleans())
def test_vmcoreinfo_recovery_scan(pages: dict[int, bytes], plant: bool) -> None:
    mem = MemReader({pfn: data.ljust(4096, b"\0") for pfn, data in pages.items()})
    if plant:
        mem.write_fast(70 * 4096, (CORPUS / "vmcoreinfo-6.1.txt").read_bytes())
    found = recover_vmcoreinfo(mem, max_pages=100)
    if plant:
        assert found is not None and found[1] == 70 * 4096

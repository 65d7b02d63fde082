"""Inputs found by the fuzz campaign (``bench/fuzz.py``), minimized and kept in ``fuzz-regressions/``.

Each file once made a reader or the triage fail in a way the fuzzer counts as a crash (an
exception that is not a VmcrashError, or an input that ran past the time bound). Each test runs
the same calls as the campaign's dump targets and checks the specific outcome.
"""

from __future__ import annotations

import time
from pathlib import Path

from vmcrash.errors import VmcrashError
from vmcrash.vmcore import analyze, open_dump
from vmcrash.vmcore._triage import NOT_RECOVERED

INPUTS = Path(__file__).parent / "fuzz-regressions"


def _exercise(path: Path) -> None:
    """What the campaign does with a dump; only VmcrashError may escape."""
    try:
        with open_dump(path) as dump:
            _ = dump.notes, dump.vmcoreinfo, dump.cpus
            for i, (start, _end) in enumerate(dump.reader.present_ranges()):
                if i > 8:
                    break
                try:
                    dump.reader.read_page(start)
                except VmcrashError:
                    pass
    except VmcrashError:
        pass
    try:
        analyze(path, dmesg=True).to_dict()
    except VmcrashError:
        pass


def test_elf_segment_with_a_huge_zero_tail_is_not_scanned(tmp_path: Path) -> None:
    """One PT_LOAD with p_filesz 0 and p_memsz 1 TiB, no VMCOREINFO: the recovery scan walked the
    zero tail page by page (4 Mi pages, about 10 s) although the file stores none of it."""
    path = INPUTS / "elf-zero-tail-1tib.bin"
    t0 = time.process_time()
    triage = analyze(path)
    assert time.process_time() - t0 < 2.0
    assert triage.memory_bytes == 1 << 40  # the tail is still memory (zeros), only not scanned
    assert NOT_RECOVERED in triage.problems
    _exercise(path)

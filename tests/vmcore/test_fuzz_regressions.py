"""Inputs found by the fuzz campaign (``bench/fuzz.py``), minimized and kept in ``fuzz-regressions/``.

Dump readers and triage, and the host side's parsers of what QEMU, /proc and the guest agent
print (targets ``qemumem`` and ``agent``). Each file once made a reader or the triage fail in a
way the fuzzer counts as a crash (an exception that is not a VmcrashError, or an input that ran
past the time bound). Each test runs the same calls as the campaign's targets and checks the
specific outcome.
"""

from __future__ import annotations

import base64
import struct
import time
import zlib
from pathlib import Path

import pytest
from vmcore_builders import PAGE, MemReader, build_elf, build_prb, note, prstatus

from vmcrash.capture.hold import MAX_FILE_BYTES, MAX_TRAILER_BYTES, parse_dump_header
from vmcrash.errors import AgentProtocolError, DumpFormatError, EnvironmentProblem, GuestMemoryError, VmcrashError
from vmcrash.host.guest_exec import decode_result
from vmcrash.host.qemu_memory import parse_flatview, parse_status_rss
from vmcrash.vmcore import KernelMemory, analyze, convert_to_kdump, for_each_record, open_dump, parse_vmcoreinfo
from vmcrash.vmcore._oops import find_crash
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


def test_converting_an_elf_zero_tail_does_not_walk_it(tmp_path: Path) -> None:
    """A 64 GiB zero tail behind one stored page: convert_to_kdump read and compared 2^24 zero pages
    one by one (about a minute; found through the campaign's slowest input, a 4 GiB tail taking
    1.7 s). Now pages the file does not store are excluded without being read; the result still
    has them all, and the stored page."""
    src = tmp_path / "tail.elf"
    src.write_bytes(build_elf([(0, b"\x5a" * PAGE)], note(b"CORE", 1, prstatus({})), memsz_extra=64 << 30))
    t0 = time.process_time()
    res = convert_to_kdump(src, tmp_path / "out.kdump", codec="zlib")
    assert time.process_time() - t0 < 5.0
    pages = (PAGE + (64 << 30)) // PAGE
    assert (res.pages_present, res.pages_written, res.pages_excluded) == (pages, 1, pages - 1)
    with open_dump(tmp_path / "out.kdump") as dump:
        assert list(dump.reader.present_ranges()) == [(0, pages)]
        assert dump.reader.read_page(0) == b"\x5a" * PAGE
        assert dump.reader.read_page(pages - 1) == bytes(PAGE)


def test_converting_a_16_tib_claim_is_refused(tmp_path: Path) -> None:
    """Found by the campaign (elf #5376, a hang): a PT_LOAD's p_memsz inflated to 16 TiB. Beyond
    MAX_CONVERT_PFNS the bitmap alone would take more than 512 MiB of memory: refused."""
    with pytest.raises(DumpFormatError, match="converting more than"):
        convert_to_kdump(INPUTS / "elf-zero-tail-16tib.bin", tmp_path / "out.kdump", codec="zlib")
    assert not (tmp_path / "out.kdump").exists()
    _exercise(INPUTS / "elf-zero-tail-16tib.bin")


def _unpack_memory(data: bytes) -> tuple[bytes, dict[int, bytes]]:
    """The campaign's ``printk`` input: 4 bytes (``PRB1``, or zeroed by the minimizer), u32 n,
    n bytes of VMCOREINFO, then (u32 pfn, 4096-byte page) pairs."""
    (n,) = struct.unpack_from("<I", data, 4)
    vmci, pos, pages = data[8:8 + n], 8 + n, {}
    while pos + 4 < len(data):
        (pfn,) = struct.unpack_from("<I", data, pos)
        pages[pfn] = data[pos + 4:pos + 4 + 4096].ljust(4096, b"\0")
        pos += 4 + 4096
    return vmci, pages


@pytest.mark.parametrize("name", ["ts", "len", "text-len"])
def test_legacy_log_buf_with_a_negative_field_offset(name: str) -> None:
    """A pre-5.10 ``log_buf`` whose VMCOREINFO gives ``OFFSET(printk_log.<field>)`` < 0 made the
    walker unpack at a negative buffer offset (``struct.error``); now the layout is refused."""
    vmci, pages = _unpack_memory((INPUTS / f"printk-legacy-negative-{name}-offset.bin").read_bytes())
    vi = parse_vmcoreinfo(vmci)
    assert min(vi.offsets.values()) < 0
    with pytest.raises(GuestMemoryError, match="implausible SIZE"):
        list(for_each_record(KernelMemory(MemReader(pages), vi), vi, problems=[]))


def test_a_cpu_line_of_4301_digits_in_the_kernel_log() -> None:
    """Found by the campaign (oops #4012, minimized): ``CPU: <4301 digits> PID: 1 Comm: s`` after a
    trigger line made find_crash call int() on it, which raises ValueError past 4300 digits. The
    guest writes its own log, so any guest could make ``vmcrash analyze`` print a traceback."""
    lines = (INPUTS / "oops-cpu-4301-digits.txt").read_text().split("\n")
    assert lines[0] == "WARNING: " and len(lines[1]) > 4300
    report = find_crash(lines)
    assert report.report_start == 0 and report.cpu is None


def test_the_same_line_through_a_whole_dump(tmp_path: Path) -> None:
    """The same log line in the printk ring of a dump: analyze() finishes with the panic found."""
    text = (INPUTS / "oops-cpu-4301-digits.txt").read_bytes().split(b"\n")[1]
    mem = MemReader()
    recs = [(0, 1000, 4, 0, b"WARNING: CPU: 0 PID: 1 at x"), (1, 2000, 4, 0, text),
            (2, 3000, 0, 0, b"Kernel panic - not syncing: Fatal exception")]
    vmci = build_prb(mem, recs, count_bits=3, size_bits=14)
    segments = [(pfn * PAGE, bytes(mem.pages[pfn])) for pfn in sorted(mem.pages)]
    path = tmp_path / "d.elf"
    path.write_bytes(build_elf(segments, note(b"CORE", 1, prstatus({"rip": 1})) + note(b"VMCOREINFO", 0, vmci)))
    triage = analyze(path)
    assert triage.panic_line == "Kernel panic - not syncing: Fatal exception"
    assert triage.log_records == 3 and triage.crashing_cpu == 0  # one vCPU note


# -- QEMU's dump header and /proc text (target ``qemumem``), the guest audit's result (``agent``) ------------


def test_qemu_header_whose_string_table_claims_2_to_the_63_bytes() -> None:
    """A QEMU dump header whose ``.shstrtab`` section claims 2^63 bytes after the memory (qemumem #28,
    minimized from 31771 bytes): section_trailers rebuilt the table with ``bytearray(sh_size)`` and
    raised OverflowError (2^63), MemoryError or spent 18 s zero-filling (some GiB). QEMU's table is
    11 bytes; one over MAX_TRAILER_BYTES is refused with one DumpFormatError."""
    raw = (INPUTS / "qemu-header-shstrtab-2p63-bytes.bin").read_bytes()
    with pytest.raises(DumpFormatError, match="string table is 9223372036854775808 bytes"):
        parse_dump_header(raw)

    def table_at(offset: int, size: int) -> bytes:  # section 1's sh_offset and sh_size (at 128 + 24)
        return raw[:152] + struct.pack("<QQ", offset, size) + raw[168:]

    for size in (MAX_TRAILER_BYTES + 1, 3 << 30):  # MemoryError / a long zero-fill before
        with pytest.raises(DumpFormatError, match="string table"):
            parse_dump_header(table_at(1 << 20, size))
    assert parse_dump_header(table_at(1 << 20, 11)).trailers == ((1 << 20, b".shstrtab\0\0"),)  # sh_name 0


def test_qemu_status_rss_with_a_superscript_digit() -> None:
    """``RssAnon: ² kB`` (qemumem #717, minimized from 634 bytes): ``"²".isdigit()`` is true and
    ``int("²")`` raised ValueError; 5000 digits raised it too (4300-digit limit). A value that is
    not at most 20 ASCII digits counts as a missing line (0)."""
    text = (INPUTS / "qemu-status-rssanon-superscript-two.txt").read_text()
    assert parse_status_rss(text + "RssShmem:\t12 kB\n") == (0, 12 * 1024)
    assert parse_status_rss("RssAnon:\t" + "9" * 5000 + " kB\nRssShmem:\t\u0663 kB\n") == (0, 0)
    assert parse_status_rss("RssAnon:\t1048576 kB\n") == (1 << 30, 0)


def test_guest_audit_result_nested_too_deep() -> None:
    """A guest-exec result whose JSON is nested arrays (agent #116: 100000 of them, minimized to
    989): json.loads raised RecursionError through decode_result. It is one AgentProtocolError
    now, like any other result that is not the expected JSON."""
    out = (INPUTS / "guest-result-nested-arrays.txt").read_bytes()
    assert len(zlib.decompress(base64.b64decode(out.split(b" ", 1)[1]))) == 100000
    with pytest.raises(AgentProtocolError, match="not valid"):
        decode_result(out, domain="fuzz")


def test_qemu_header_with_a_load_at_file_offset_2_to_the_63() -> None:
    """A PT_LOAD at file offset 2^63 (qemumem #3776, minimized from 31803 bytes): the header
    parsed, and write_held's pwrite raised OverflowError (the offset does not fit an off_t). A
    segment or a section that ends beyond MAX_FILE_BYTES (2^63 - 1) is refused when parsed."""
    raw = (INPUTS / "qemu-header-load-at-2p63.bin").read_bytes()
    with pytest.raises(DumpFormatError, match="segment of 4096 bytes at file offset 0x8000000000000000"):
        parse_dump_header(raw)
    load = 192 + 2 * 56  # the third program header: offset 2^63, paddr 0x1200000, 4096 bytes
    fits = raw[:load + 8] + struct.pack("<Q", MAX_FILE_BYTES - 4096) + raw[load + 16:]
    assert parse_dump_header(fits).file_size_bytes == MAX_FILE_BYTES
    note = raw[:load] + struct.pack("<I", 4) + raw[load + 4:]  # the same as a PT_NOTE
    with pytest.raises(DumpFormatError, match="beyond the largest file"):
        parse_dump_header(note)
    table = (INPUTS / "qemu-header-shstrtab-2p63-bytes.bin").read_bytes()
    with pytest.raises(DumpFormatError, match="section 1 at file offset 0x7ffffffffffffffc"):
        parse_dump_header(table[:152] + struct.pack("<QQ", MAX_FILE_BYTES - 3, 11) + table[168:])


def test_qemu_flat_view_section_that_ends_before_it_starts() -> None:
    """A RAM section ``0080000000001000-0000000100000fff`` (qemumem #72570, minimized from 500
    bytes): parse_flatview returned a section of -36028792723996672 bytes, and resolve_ranges
    silently resolved nothing for it (the campaign checks that every merged section is covered).
    QEMU prints an inclusive end that is never before the start: one EnvironmentProblem."""
    text = (INPUTS / "qemu-flatview-end-before-start.txt").read_text()
    with pytest.raises(EnvironmentProblem, match="ends before it starts: '0080000000001000-0000000100000fff"):
        parse_flatview(text)
    good = text.replace("0080000000001000-", "0000000000100000-")
    assert [(s.start, s.size_bytes) for s in parse_flatview(good)] == [(0, 0xA0000), (0x100000, 0xFFF01000)]

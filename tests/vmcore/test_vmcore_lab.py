"""Triage of real dumps of crashed lab guests, checked against their serial consoles.

Ground truth comes from outside vmcrash: the guest's console (every kernel message, printed
with ``printk.time=1 ignore_loglevel``), the guest's configured host name, the lab kernel's
release, the pvpanic module file's own symbol table, and makedumpfile (``-R`` and
``--dump-dmesg``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmcore_builders import CrashedGuest

from vmcrash.errors import DumpFormatError, VmcrashError
from vmcrash.vmcore import analyze, convert_to_kdump, has_vmcoreinfo, rearrange_flattened
from vmcrash.vmcore._oops import parse_frame
from vmcrash.vmcore._triage import NO_VMCOREINFO

pytestmark = pytest.mark.lab
VMCRASH = [sys.executable, "-m", "vmcrash.cli.main"]
FORMATS = ["elf", "flattened", "seekable", "zstd", "zlib-keep-zero"]


@pytest.fixture(scope="module")
def dumps(crashed: dict[str, CrashedGuest], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The first guest's dump in every form: as libvirt wrote it, rearranged, converted by vmcrash."""
    g = crashed["vmcoreinfo"]
    d = tmp_path_factory.mktemp("vmcore-forms")
    out = {"elf": g.elf, "flattened": g.kdump_flat, "seekable": d / "seekable", "zstd": d / "zstd",
           "zlib-keep-zero": d / "zlib0"}
    rearrange_flattened(g.kdump_flat, out["seekable"])
    convert_to_kdump(g.elf, out["zstd"], codec="zstd")
    convert_to_kdump(g.kdump_flat, out["zlib-keep-zero"], codec="zlib", exclude_zero=False)
    yield out
    shutil.rmtree(d, ignore_errors=True)


def first_console_frame(texts: list[str]) -> str:
    start = texts.index("Call Trace:")
    for text in texts[start + 1:]:
        frame = parse_frame(text)
        if frame is not None:
            return str(frame)
    raise AssertionError("no frame on the console")


@pytest.mark.parametrize("form", FORMATS)
def test_dmesg_equals_console(crashed: dict[str, CrashedGuest], dumps: dict[str, Path], form: str) -> None:
    g = crashed["vmcoreinfo"]
    t = analyze(dumps[form], dmesg=True)
    assert t.dmesg is not None
    console = g.kernel_lines()
    assert len(console) > 100
    assert list(t.dmesg) == console
    assert t.problems == ()


@pytest.mark.parametrize("form", FORMATS)
def test_panic_trace_identity(crashed: dict[str, CrashedGuest], dumps: dict[str, Path], form: str) -> None:
    g = crashed["vmcoreinfo"]
    texts = g.kernel_texts()
    t = analyze(dumps[form])
    panic = next(x for x in reversed(texts) if x.startswith("Kernel panic - not syncing: "))
    assert t.panic_line == panic == "Kernel panic - not syncing: sysrq triggered crash"
    assert str(t.call_trace[0]) == first_console_frame(texts)
    assert "sysrq: Trigger a crash" in t.oops_lines
    assert t.hostname == g.hostname
    assert t.kernel_release == g.kernel_release
    cpu_line = next(x for x in texts[texts.index(panic):] if x.startswith("CPU: "))
    assert t.crashing_cpu == int(cpu_line.split()[1])
    assert t.vmcoreinfo_present and t.cpu_count == 1
    assert t.uptime_s is not None and 0 < t.uptime_s < 600
    assert t.memory_bytes >= 500 << 20


def test_rip_is_named_with_the_module_own_symbol_size(crashed: dict[str, CrashedGuest],
                                                      dumps: dict[str, Path]) -> None:
    """The guest stops inside pvpanic's panic notifier; the size must match the .ko's symbol table."""
    t = analyze(dumps["elf"])
    assert t.rip_symbol is not None
    m = re.fullmatch(r"(\w+)\+0x([0-9a-f]+)/0x([0-9a-f]+) \[(\w+)\]", t.rip_symbol)
    assert m, t.rip_symbol
    func, off, size, module = m.group(1), int(m.group(2), 16), int(m.group(3), 16), m.group(4)
    assert module == "pvpanic"
    ko = next(Path(f"/lib/modules/{crashed['vmcoreinfo'].kernel_release}").rglob("pvpanic.ko*"))
    symtab = subprocess.run(["readelf", "-sW", str(ko)], capture_output=True, text=True, check=True).stdout
    sizes = {cols[7]: int(cols[2]) for cols in (line.split() for line in symtab.splitlines())
             if len(cols) >= 8 and cols[3] == "FUNC"}
    assert sizes[func] == size and off < size


@pytest.mark.parametrize("form", ["elf", "flattened"])
def test_guest_without_vmcoreinfo(crashed: dict[str, CrashedGuest], form: str) -> None:
    g = crashed["plain"]
    path = g.elf if form == "elf" else g.kdump_flat
    assert not has_vmcoreinfo(path)
    bare = analyze(path, recover=False)
    assert not bare.vmcoreinfo_present and bare.problems[0] == NO_VMCOREINFO
    assert bare.log_records == 0 and bare.panic_line is None
    assert bare.kernel_release == g.kernel_release  # from the image's banner, through CR3
    assert bare.cpu_count == 2 and bare.crashing_cpu is None
    assert any(p.startswith("crashing CPU: not determined") for p in bare.problems)
    # The guest kernel's own VMCOREINFO page is still in its memory.
    full = analyze(path, dmesg=True)
    assert not full.vmcoreinfo_present and full.problems[0] == NO_VMCOREINFO
    assert "recovered the guest kernel's own VMCOREINFO" in full.problems[1]
    assert list(full.dmesg or ()) == g.kernel_lines()
    assert full.hostname == g.hostname
    assert full.panic_line == "Kernel panic - not syncing: sysrq triggered crash"
    # Two vCPUs: the panicking one is found (panic_cpu) and its notes matched by GS base; it is
    # the one stopped in pvpanic's notifier.
    texts = g.kernel_texts()
    panic_at = max(i for i, x in enumerate(texts) if x.startswith("Kernel panic - not syncing: "))
    cpu_line = next(x for x in texts[panic_at:] if x.startswith("CPU: "))
    assert full.cpu_count == 2 and full.crashing_cpu == int(cpu_line.split()[1])
    assert full.rip_symbol is not None and full.rip_symbol.endswith("[pvpanic]")


def test_has_vmcoreinfo(crashed: dict[str, CrashedGuest], dumps: dict[str, Path]) -> None:
    for form in FORMATS:
        assert has_vmcoreinfo(dumps[form])


def _cut_copy(src: Path, dst: Path, size: int) -> Path:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        left, off = size, 0
        while left:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), left, off, off)
            assert n > 0
            left -= n
            off += n
    return dst


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMCRASH, *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("form", ["elf", "flattened", "seekable"])
def test_truncated_dumps_fail_cleanly(dumps: dict[str, Path], tmp_path: Path, form: str) -> None:
    src = dumps[form]
    full = src.stat().st_size
    for cut in (100, 5000, full // 2, full - 5000):
        bad = _cut_copy(src, tmp_path / f"cut{cut}", cut)
        with pytest.raises(DumpFormatError, match="truncated|cut short|end marker"):
            analyze(bad)
        r = _cli("analyze", str(bad))
        assert r.returncode == 2, r.stderr
        assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
        assert "Traceback" not in r.stderr
        bad.unlink()


@pytest.mark.parametrize("form", ["flattened", "seekable"])
def test_corrupted_dumps_never_crash(dumps: dict[str, Path], tmp_path: Path, form: str) -> None:
    """Byte flips in headers, bitmaps, descriptors and page data: a triage or one clean error."""
    import random

    rng = random.Random(7)
    data = dumps[form].read_bytes()
    for trial in range(12):
        bad = bytearray(data)
        region = rng.choice([(0, 8192), (0, 300_000), (0, len(data))])
        for _ in range(rng.choice([1, 8, 64])):
            bad[rng.randrange(*region)] ^= 1 << rng.randrange(8)
        path = tmp_path / f"bad{trial}"
        path.write_bytes(bytes(bad))
        try:
            analyze(path, dmesg=True)
        except VmcrashError:
            pass
        r = _cli("analyze", str(path))
        assert r.returncode in (0, 2, 3), r.stderr
        assert "Traceback" not in r.stderr + r.stdout
        path.unlink()


def test_cli_text_and_json(crashed: dict[str, CrashedGuest], dumps: dict[str, Path]) -> None:
    g = crashed["vmcoreinfo"]
    r = _cli("analyze", str(dumps["flattened"]))
    assert r.returncode == 0, r.stderr
    assert "Kernel panic - not syncing: sysrq triggered crash" in r.stdout
    assert g.hostname in r.stdout and "pvpanic" in r.stdout
    r = _cli("analyze", "--json", "--tail", "3", str(dumps["elf"]))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema_version"] == 1 and doc["format"] == "elf" and doc["hostname"] == g.hostname
    assert doc["dmesg"] == g.kernel_lines()[-3:]
    assert doc["call_trace"][0]["text"] == first_console_frame(g.kernel_texts())
    assert doc["registers"]["rip"].startswith("0xffffffff")


def test_rearranged_file_equals_makedumpfile_R(crashed: dict[str, CrashedGuest], dumps: dict[str, Path],
                                               tmp_path: Path) -> None:
    out = tmp_path / "mdf-R"
    with open(crashed["vmcoreinfo"].kdump_flat, "rb") as stdin:
        subprocess.run(["makedumpfile", "-R", str(out)], stdin=stdin, check=True, capture_output=True, timeout=120)
    assert out.read_bytes() == dumps["seekable"].read_bytes()


def test_makedumpfile_reads_the_converted_dump(crashed: dict[str, CrashedGuest], dumps: dict[str, Path],
                                               tmp_path: Path) -> None:
    """makedumpfile 1.7.2 cannot translate addresses in QEMU's own kdump (QEMU 7.2 writes a wrong
    phys_base into the sub-header); our zlib output carries VMCOREINFO's phys_base and keeps zero
    pages readable, and makedumpfile's own --dump-dmesg then prints the console's kernel log."""
    out = tmp_path / "dmesg.txt"
    r = subprocess.run(["makedumpfile", "--dump-dmesg", str(dumps["zlib-keep-zero"]), str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.read_text(errors="replace").splitlines() == crashed["vmcoreinfo"].kernel_lines()

"""``vmcrash analyze``: the human summary (pure rendering) and one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vmcore_builders import PAGE, build_elf, note, prstatus

from vmcrash.cli.analyze import render_text
from vmcrash.vmcore import Frame, Triage

VMCRASH = [sys.executable, "-m", "vmcrash.cli.main"]


def triage(**kw: object) -> Triage:
    base: dict[str, object] = {
        "path": "/d/x.elf", "format": "elf", "file_size_bytes": 537137547, "memory_bytes": 512 << 20,
        "vmcoreinfo_present": True, "kernel_release": "6.1.0-56-amd64", "kernel_version": "#1 SMP",
        "hostname": "web1", "panic_line": "Kernel panic - not syncing: sysrq triggered crash",
        "panic_timestamp_s": 3.093244,
        "oops_lines": ("sysrq: Trigger a crash", "Kernel panic - not syncing: sysrq triggered crash"),
        "call_trace": (Frame("dump_stack_lvl", 0x44, 0x5C, None, True), Frame("_printk", 0x68, 0x83, None, False),
                       Frame("foo", 1, 2, "mod", True)),
        "crashing_cpu": 0, "cpu_count": 1, "registers": {"rip": 0xFFFFFFFFC0371230, "rsp": 0x10, "cr3": 0x1000},
        "rip_symbol": "pvpanic_panic_notify+0x60/0x85 [pvpanic]", "uptime_s": 3.093244, "log_records": 390}
    base.update(kw)
    return Triage(**base)  # type: ignore[arg-type]


def test_summary_lines() -> None:
    text = render_text(triage())
    lines = text.splitlines()
    assert lines[0].startswith("dump      /d/x.elf (elf, 512.3 MiB on disk, 512.0 MiB of guest RAM, 1 vCPU)")
    assert "host      web1" in lines
    assert "panic     Kernel panic - not syncing: sysrq triggered crash   (uptime 3.093 s)" in lines
    assert "cpu       0   RIP pvpanic_panic_notify+0x60/0x85 [pvpanic] (0xffffffffc0371230)" in lines
    assert "trace     dump_stack_lvl+0x44/0x5c" in lines and "          foo+0x1/0x2 [mod]" in lines
    assert "          (+1 unreliable or further frames; --json lists all)" in lines
    assert "regs      RIP ffffffffc0371230  RSP 0000000000000010" in lines
    assert not any(line.startswith("problems") for line in lines)


def test_summary_when_little_is_known() -> None:
    t = triage(vmcoreinfo_present=False, kernel_release=None, kernel_version=None, hostname=None, panic_line=None,
               oops_lines=(), call_trace=(), crashing_cpu=None, registers={}, rip_symbol=None, uptime_s=None,
               problems=("no VMCOREINFO in the dump: ...",))
    text = render_text(t, log_lines=[])
    assert "kernel    unknown   [no VMCOREINFO in the dump]" in text
    assert "panic     no panic line found" in text
    assert "problems  - no VMCOREINFO in the dump: ..." in text


def test_json_document_shape() -> None:
    doc = triage().to_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["registers"]["rip"] == "0xffffffffc0371230"
    assert doc["call_trace"][1] == {"function": "_printk", "offset": 0x68, "size": 0x83, "module": None,
                                    "reliable": False, "text": "? _printk+0x68/0x83"}
    assert set(doc) >= {"format", "kernel_release", "hostname", "panic_line", "oops_lines", "call_trace",
                        "crashing_cpu", "registers", "rip_symbol", "uptime_s", "vmcoreinfo_present", "problems"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMCRASH, "analyze", *args], capture_output=True, text=True, timeout=60, check=False)


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello, not a dump\n")
    for path, code, msg in ((junk, 2, "not a dump"), (tmp_path / "missing", 3, "no such file"),
                            (tmp_path, 3, "directory")):
        r = run(str(path))
        assert r.returncode == code, r.stderr
        assert r.stdout == "" and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
        assert msg in r.stderr


def test_minimal_dump_without_vmcoreinfo(tmp_path: Path) -> None:
    path = tmp_path / "tiny.elf"
    path.write_bytes(build_elf([(0, bytes(16 * PAGE))], note(b"CORE", 1, prstatus({"rip": 0xFFFFFFFF81000000}))))
    r = run("--json", str(path))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["vmcoreinfo_present"] is False and doc["problems"][0].startswith("no VMCOREINFO")
    assert doc["registers"]["rip"] == "0xffffffff81000000" and doc["crashing_cpu"] == 0

"""``vmcrash analyze DUMP``: crash triage from a dump file alone, for people (10 seconds) or machines (JSON).

Exit codes: 0 the dump was analysed (what could not be determined is listed under
"problems"), 2 not a dump / corrupt or truncated file, 3 unreadable file or missing codec.
"""

from __future__ import annotations

import json

import click

from vmcrash.vmcore import Triage
from vmcrash.vmcore import analyze as analyze_dump_file

__all__ = ["analyze", "render_text"]

_MiB = 1 << 20
_REG_ROWS = (("rip", "rsp", "rbp", "eflags"), ("rax", "rbx", "rcx", "rdx"), ("rsi", "rdi", "r8", "r9"),
             ("r10", "r11", "r12", "r13"), ("r14", "r15", "cr2", "cr3"))


def _size(n: int) -> str:
    return f"{n / _MiB:.1f} MiB" if n < 10 << 30 else f"{n / (1 << 30):.1f} GiB"


def render_text(t: Triage, *, max_frames: int = 16, log_lines: list[str] | None = None) -> str:
    """The human summary (pure): one fact per line, the report and trace indented below."""
    out: list[str] = []

    def row(label: str, value: str) -> None:
        out.append(f"{label:<9} {value}")

    cpus = f"{t.cpu_count} vCPU" + ("s" if t.cpu_count != 1 else "")
    row("dump", f"{t.path} ({t.format}, {_size(t.file_size_bytes)} on disk, {_size(t.memory_bytes)} of "
                f"guest RAM, {cpus})")
    kernel = " ".join(x for x in (t.kernel_release, t.kernel_version) if x) or "unknown"
    row("kernel", kernel + ("" if t.vmcoreinfo_present else "   [no VMCOREINFO in the dump]"))
    row("host", t.hostname or "unknown")
    uptime = f"   (uptime {t.uptime_s:.3f} s)" if t.uptime_s is not None else ""
    row("panic", (t.panic_line or "no panic line found") + uptime)
    if t.crashing_cpu is not None:
        rip = t.registers.get("rip")
        where = f"   RIP {t.rip_symbol or 'unknown'}" + (f" ({rip:#x})" if rip is not None else "")
        row("cpu", f"{t.crashing_cpu}{where}")
    for i, line in enumerate(t.oops_lines):
        row("report" if i == 0 else "", line)
    shown = [f for f in t.call_trace if f.reliable][:max_frames]
    hidden = len(t.call_trace) - len(shown)
    for i, frame in enumerate(shown):
        row("trace" if i == 0 else "", str(frame))
    if hidden > 0:
        row("", f"(+{hidden} unreliable or further frames; --json lists all)")
    if t.registers:
        for i, names in enumerate(_REG_ROWS):
            cells = [f"{n.upper()} {t.registers[n]:016x}" for n in names if n in t.registers]
            if cells:
                row("regs" if i == 0 else "", "  ".join(cells))
    for i, problem in enumerate(t.problems):
        row("problems" if i == 0 else "", f"- {problem}")
    if log_lines is not None:
        out.append("")
        out.extend(log_lines)
    return "\n".join(out)


@click.command("analyze")
@click.argument("dump", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document (docs/analyze-json.md).")
@click.option("--dmesg", is_flag=True, help="Also print the whole kernel log, as the console showed it.")
@click.option("--tail", "tail", type=click.IntRange(min=0), default=None, metavar="N",
              help="Print only the last N lines of the kernel log (implies --dmesg).")
@click.option("--no-recover", is_flag=True,
              help="Without a VMCOREINFO note, do not scan guest memory for the kernel's own copy.")
def analyze(dump: str, as_json: bool, dmesg: bool, tail: int | None, no_recover: bool) -> int:
    """Triage DUMP (ELF, kdump or flattened kdump) without debuginfo: kernel, host, panic, trace, RIP."""
    want_log = dmesg or tail is not None
    triage = analyze_dump_file(dump, dmesg=want_log, recover=not no_recover)
    log_lines = list(triage.dmesg) if triage.dmesg is not None else None
    if log_lines is not None and tail is not None:
        log_lines = log_lines[-tail:] if tail else []
    if as_json:
        doc = triage.to_dict()
        doc["dmesg"] = log_lines
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_text(triage, log_lines=log_lines))
    return 0

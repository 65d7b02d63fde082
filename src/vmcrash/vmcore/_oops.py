"""Reading a crash out of kernel log lines (pure): the panic line, the oops report, the call trace.

Works on the text the kernel printed, so it applies equally to a dump's log and to a serial
console capture. Patterns follow what Linux 4.x-6.x print (``panic()``, ``die()``/``__die()``,
``show_trace_log_lvl()``, ``__warn()``, sysrq ``c``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PANIC_MARK", "CrashReport", "Frame", "find_crash", "parse_frame"]

PANIC_MARK = "Kernel panic - not syncing: "
_TRIGGERS = re.compile(
    r"^(BUG: |Oops: |Oops\b|general protection fault|kernel BUG at |WARNING: |Unable to handle kernel"
    r"|divide error: |invalid opcode: |stack segment: |double fault: |sysrq: Trigger a crash"
    r"|watchdog: BUG: soft lockup|Watchdog detected hard LOCKUP|INFO: task .* blocked for more than"
    r"|INFO: rcu_.* detected stalls|rcu: INFO: rcu_.* detected stalls|Out of memory and no killable"
    r"|NMI: |Uhhuh\. NMI received|traps: |Kernel panic - not syncing)"
)
# " func+0x16/0x20 [mod]", " ? func+0x..", " [<ffffffff81000000>] func+0x..", "RIP: 0010:func+0x.."
_FRAME = re.compile(
    r"^\s*(?:\[<[0-9a-f]+>\]\s*)?(?P<unrel>\?\s+)?(?P<func>[A-Za-z0-9_.$]+)\+0x(?P<off>[0-9a-f]+)"
    r"/0x(?P<size>[0-9a-f]+)(?:\s+\[(?P<mod>[A-Za-z0-9_\-]+)(?:\]|\s))?"
)
_MARKERS = re.compile(r"^\s*</?(TASK|IRQ|NMI|SOFTIRQ|#[A-Z]+|EOE|EOI)>\s*$")
_REGS = re.compile(
    r"^\s*(RIP: |Code: |RSP: |RAX: |RDX: |RBP: |R10: |R13: |FS: |CS: |CR2: |DR0: |DR3: |DR6: |PKRU: "
    r"|ORIG_RAX|EFLAGS)"
)
# at most 9 ASCII digits: int() refuses strings of more than 4300 digits (ValueError)
_CPU_LINE = re.compile(r"^CPU: ([0-9]{1,9}) PID: (-?[0-9]+) Comm: ")


@dataclass(frozen=True)
class Frame:
    """One call-trace line. ``reliable`` is false for the kernel's ``?`` (guessed) frames."""

    function: str
    offset: int
    size: int
    module: str | None
    reliable: bool

    def __str__(self) -> str:
        mod = f" [{self.module}]" if self.module else ""
        return f"{'' if self.reliable else '? '}{self.function}+{self.offset:#x}/{self.size:#x}{mod}"

    def to_dict(self) -> dict[str, object]:
        return {"function": self.function, "offset": self.offset, "size": self.size,
                "module": self.module, "reliable": self.reliable, "text": str(self)}


@dataclass(frozen=True)
class CrashReport:
    """What the log says about the crash. Indices refer to the ``lines`` given to :func:`find_crash`.

    :ivar panic_index: the last ``Kernel panic - not syncing`` line, or ``None``.
    :ivar report_start: first line of the oops/BUG/sysrq report that led to it, or ``None``.
    :ivar oops_indices: report lines other than call-trace frames and register dumps.
    :ivar call_trace: frames of the first call trace of the report.
    :ivar cpu: the CPU the report names (``CPU: N PID: ...``), or ``None``.
    """

    panic_index: int | None
    report_start: int | None
    oops_indices: tuple[int, ...]
    call_trace: tuple[Frame, ...]
    cpu: int | None


def parse_frame(line: str) -> Frame | None:
    """A call-trace frame from one log line's text, or ``None`` if it is not one."""
    m = _FRAME.match(line)
    if m is None:
        return None
    return Frame(function=m.group("func"), offset=int(m.group("off"), 16), size=int(m.group("size"), 16),
                 module=m.group("mod"), reliable=m.group("unrel") is None)


def find_crash(lines: Sequence[str], *, window: int = 400) -> CrashReport:
    """Locate the panic and the report that led to it in log line texts (no timestamps).

    The report starts at the earliest trigger line (``BUG:``, ``Oops:``, ``WARNING:``, sysrq
    crash, ...) of the cluster that ends at the panic line: triggers at most 80 lines apart,
    looking back at most ``window`` lines. Without a panic line, the last trigger is used.
    """
    panic = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith(PANIC_MARK):  # not "---[ end Kernel panic ..."
            panic = i
            break
    anchor = panic if panic is not None else len(lines) - 1
    lo = max(0, anchor - window)
    triggers = [i for i in range(lo, anchor + 1) if _TRIGGERS.match(lines[i].lstrip())]
    if panic is None and not triggers:
        return CrashReport(None, None, (), (), None)
    start = triggers[-1] if triggers else anchor
    for i in reversed(triggers[:-1]):
        if start - i > 80:
            break
        start = i
    # The report runs to the panic line and the CPU/Hardware lines panic() prints after it,
    # then its call trace; without a panic, to the end of the first call trace after the trigger.
    end = len(lines)
    call_trace: list[Frame] = []
    oops: list[int] = []
    cpu = None
    in_trace = False
    trace_done = False
    for i in range(start, min(end, start + window)):
        text = lines[i]
        stripped = text.strip()
        if panic is not None and i > panic and not in_trace and not stripped.startswith(
                ("CPU:", "Hardware name:", "Call Trace:")) and not trace_done:
            break
        if stripped.startswith("Call Trace:"):
            in_trace = not trace_done
            continue
        if in_trace:
            frame = parse_frame(text)
            if frame is not None:
                call_trace.append(frame)
                continue
            if _MARKERS.match(text) or _REGS.match(text):
                if stripped == "</TASK>" or stripped.startswith("</TASK"):
                    in_trace, trace_done = False, True
                continue
            in_trace, trace_done = False, True
        elif trace_done and panic is not None and i > panic:
            break
        m = _CPU_LINE.match(stripped)
        if m and cpu is None:
            cpu = int(m.group(1))
        if _REGS.match(text) and not stripped.startswith("RIP: "):
            continue
        if _FRAME.match(text) and not stripped.startswith("RIP: ") and not _TRIGGERS.match(stripped):
            continue
        oops.append(i)
        if panic is None and trace_done:
            break
    return CrashReport(panic_index=panic, report_start=start, oops_indices=tuple(oops),
                       call_trace=tuple(call_trace), cpu=cpu)

"""Crash signatures (pure): one line that is the same for the same bug, whatever guest it hit.

A signature is ``<reason> | <frame> < <frame> < ...``: the panic reason, then the innermost
meaningful frames of the call trace. Everything that differs between two hits of one bug is
stripped:

- addresses, PIDs, CPU numbers and other hex runs in the reason (``ADDR``, ``N``);
- frame offsets and sizes (``+0x16/0x20``), and compiler clone suffixes (``.cold``, ``.isra.0``,
  ``.constprop.0``, ``.part.0``, ``.llvm.123``), which change with the kernel build;
- the kernel's guessed ``?`` frames (stack garbage, they differ from run to run);
- the reporting machinery every panic passes through (``dump_stack_lvl``, ``panic``, ``__warn``,
  the page-fault and trap handlers, the syscall entry) — it names how the kernel reported, not what
  went wrong;
- module load noise: only the module *name* of a frame is kept (``[crashme]``), never where it was
  loaded, and the ``Modules linked in:`` list is never read.

For an oops, the kernel-mode ``RIP: 0010:func+0x15/0x1000 [mod]`` line of the report names the
faulting function (often printed only as a ``?`` frame in the trace): it becomes the first frame.

When the panic message is generic (``Fatal exception``: the oops itself is the bug), the reason is
the report's first line instead (``BUG: kernel NULL pointer dereference, address: ADDR``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._oops import PANIC_MARK, Frame, parse_frame

__all__ = ["MAX_SIGNATURE_CHARS", "SIGNATURE_FRAMES", "crash_signature", "signature_from_triage"]

#: Frames kept in a signature (innermost first, after the noise is removed).
SIGNATURE_FRAMES = 4
#: A signature never exceeds this many characters (the reason is cut first).
MAX_SIGNATURE_CHARS = 300
_MAX_REASON_CHARS = 160

# Panic messages that only say "an oops happened": the oops report's first line says which.
_GENERIC_REASONS = frozenset({"Fatal exception", "Fatal exception in interrupt", "Oops - BUG",
                              "Fatal hardware error!", "Fatal Machine check"})

# How the kernel reports, not what failed (Linux 4.x-6.x names).
_NOISE_FRAMES = frozenset({
    "dump_stack", "dump_stack_lvl", "show_stack", "show_trace_log_lvl", "panic", "vpanic", "nmi_panic",
    "__warn", "warn_slowpath_fmt", "warn_slowpath_common", "warn_slowpath_null", "report_bug",
    "handle_bug", "exc_invalid_op", "asm_exc_invalid_op", "do_invalid_op", "invalid_op",
    "oops_end", "die", "__die", "__die_body", "die_addr", "do_trap", "do_error_trap",
    "page_fault_oops", "kernelmode_fixup_or_oops", "no_context", "__bad_area_nosemaphore",
    "bad_area_nosemaphore", "bad_area", "do_user_addr_fault", "do_kern_addr_fault", "__do_page_fault",
    "do_page_fault", "exc_page_fault", "asm_exc_page_fault", "page_fault", "async_page_fault",
    "exc_general_protection", "asm_exc_general_protection", "general_protection",
    "do_general_protection", "exc_divide_error", "asm_exc_divide_error",
    "entry_SYSCALL_64_after_hwframe", "entry_SYSCALL_64", "do_syscall_64", "do_fast_syscall_32",
    "entry_SYSENTER_compat_after_hwframe", "ret_from_fork", "ret_from_fork_asm",
    "_printk", "printk", "vprintk", "vprintk_emit", "vprintk_default",
})
_CLONE_SUFFIX = re.compile(r"(\.(cold|isra|constprop|part|llvm|lto_priv)(\.\d+)?)+$")
_HEX_ADDR = re.compile(r"\b(0x)?[0-9a-fA-F]{8,}\b")
_OFFSET = re.compile(r"\+0x[0-9a-f]+/0x[0-9a-f]+")
_NUMBERED = re.compile(r"\b(CPU|PID|pid|cpu|TGID|tgid|UID|uid)([:=]\s*)-?\d+")
_BRACKET_NUM = re.compile(r"\[#\d+\]")
_SPACES = re.compile(r"\s+")
_KERNEL_RIP = re.compile(r"^\s*RIP: 0010:(?P<where>\S.*)$")


def _normalize_text(text: str) -> str:
    """One log line without the parts that differ between hits: addresses, offsets, PIDs, CPUs."""
    text = text.strip()
    if text.startswith(PANIC_MARK):
        text = text[len(PANIC_MARK):]
    text = _OFFSET.sub("", text)
    text = _HEX_ADDR.sub("ADDR", text)
    text = _NUMBERED.sub(lambda m: f"{m.group(1)}{m.group(2)}N", text)
    text = _BRACKET_NUM.sub("[#N]", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:_MAX_REASON_CHARS]


def _frame_name(function: str, module: str | None) -> str:
    name = _CLONE_SUFFIX.sub("", function)
    return f"{name} [{module}]" if module else name


def crash_signature(panic_line: str | None, oops_lines: Sequence[str], frames: Sequence[Frame],
                    *, max_frames: int = SIGNATURE_FRAMES) -> str | None:
    """The signature of one crash, or ``None`` when there is nothing to sign (no panic, no report).

    :param panic_line: the ``Kernel panic - not syncing: ...`` text (with or without the prefix).
    :param oops_lines: the report that led to the panic, first line first.
    :param frames: its call trace, innermost first.
    """
    reason = _normalize_text(panic_line) if panic_line else ""
    first_report_line = next((line for line in oops_lines if line.strip() and PANIC_MARK not in line), None)
    if (not reason or reason in _GENERIC_REASONS) and first_report_line is not None:
        head = _normalize_text(first_report_line)
        reason = f"{reason}: {head}" if reason else head
    names: list[str] = []
    rip = next((m.group("where") for m in map(_KERNEL_RIP.match, oops_lines) if m), None)
    rip_frame = parse_frame(rip) if rip else None
    for frame in ([rip_frame] if rip_frame else []) + [f for f in frames if f is not rip_frame]:
        if not frame.reliable:
            continue
        name = _frame_name(frame.function, frame.module)
        if _CLONE_SUFFIX.sub("", frame.function) in _NOISE_FRAMES or name in names:
            continue
        names.append(name)
        if len(names) >= max_frames:
            break
    if not reason and not names:
        return None
    sig = f"{reason or 'no panic line'} | {' < '.join(names) if names else 'no call trace'}"
    return sig[:MAX_SIGNATURE_CHARS]


def _frame_of(doc: Any) -> Frame | None:
    if not isinstance(doc, Mapping):
        return None
    function, module = doc.get("function"), doc.get("module")
    if not isinstance(function, str) or not function or (module is not None and not isinstance(module, str)):
        return None
    offset, size = doc.get("offset"), doc.get("size")
    return Frame(function=function, offset=offset if isinstance(offset, int) else 0,
                 size=size if isinstance(size, int) else 0, module=module, reliable=doc.get("reliable") is not False)


def signature_from_triage(doc: Mapping[str, Any]) -> str | None:
    """:func:`crash_signature` of a triage document (``Triage.to_dict()``, as the catalogue stores it).

    Malformed fields count as absent; returns ``None`` when nothing is left to sign.
    """
    panic = doc.get("panic_line")
    oops = doc.get("oops_lines")
    trace = doc.get("call_trace")
    lines = [x for x in oops if isinstance(x, str)] if isinstance(oops, list) else []
    frames = [f for f in (_frame_of(x) for x in trace) if f is not None] if isinstance(trace, list) else []
    return crash_signature(panic if isinstance(panic, str) else None, lines, frames)

"""``vmcrash show``: one crash in full — event, dump, freeze, recovery, clock, triage, event log."""

from __future__ import annotations

from typing import Any

import click

from vmcrash.cli._common import config_of, echo_json, fmt_bytes, fmt_ns
from vmcrash.errors import UsageError

__all__ = ["show"]


def _triage_lines(t: dict[str, Any]) -> list[str]:
    lines = []
    for key, label in (("kernel_release", "kernel"), ("hostname", "hostname"), ("panic_line", "panic"),
                       ("rip_symbol", "RIP"), ("crashing_cpu", "CPU"), ("uptime_s", "uptime s")):
        if t.get(key) not in (None, ""):
            lines.append(f"  {label:<12} {t[key]}")
    for line in (t.get("oops_lines") or [])[:5]:
        lines.append(f"  {'oops':<12} {line}")
    frames = t.get("call_trace") or []
    for i, fr in enumerate(frames[:8]):
        text = fr if isinstance(fr, str) else fr.get("text") or fr.get("symbol") or str(fr)
        lines.append(f"  {'trace' if i == 0 else '':<12} {text}")
    for p in t.get("problems") or []:
        lines.append(f"  {'note':<12} {p}")
    return lines


@click.command("show")
@click.argument("crash_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, crash_id: int, as_json: bool) -> None:
    """Show everything recorded about crash CRASH_ID."""
    from vmcrash.store.reader import open_reader

    reader = open_reader(config_of(ctx))
    if reader.note:
        click.echo(f"warning: {reader.note}", err=True)
    cat = reader.catalog
    row = cat.get(crash_id)
    if row is None:
        raise UsageError(f"no crash #{crash_id} in the {'fleet ' if reader.shared else ''}catalogue")
    events = cat.events(crash_id)
    syncs = cat.clock_syncs(crash_id=crash_id)
    if as_json:
        echo_json({**row.to_dict(), "events": events, "clock_syncs": syncs})
        return
    out = [f"crash #{row.id}: {row.domain} ({row.uuid})"
           + (f" on {row.host}" if row.host else "")
           + (f", #{row.origin_id} there" if row.origin_id is not None else ""),
           f"  {'panic':<12} {fmt_ns(row.panic_ns)} UTC, seen via {row.source}",
           f"  {'state':<12} {row.state}" + (f" — {row.error}" if row.error else "")]
    cap = row.capture or {}
    choice = (cap.get("extra") or {}).get("choice") or cap.get("choice")
    if isinstance(choice, dict):
        held = f", {fmt_bytes(cap.get('held_bytes'))} held" if cap.get("held_bytes") else ""
        out.append(f"  {'capture':<12} {choice.get('mode')} ({choice.get('requested')}): {choice.get('reason')}{held}")
    if row.dump_path:
        out.append(f"  {'dump':<12} {row.dump_path}")
        out.append(f"  {'':<12} {row.dump_format}, {fmt_bytes(row.dump_size_bytes)}"
                   + (f", {fmt_bytes(cap.get('written_bytes'))} written" if cap.get("written_bytes") else "")
                   + (f", {cap.get('zero_pages_skipped')} zero pages skipped" if cap.get("zero_pages_skipped")
                      else "")
                   + (f", {cap.get('seconds'):.2f} s ({cap.get('mode')})" if cap.get("seconds") else "")
                   + (f", staged in {cap['staged_in']}" if cap.get("staged_in") else ""))
        out.append(f"  {'sha256':<12} {row.dump_sha256 or '-'}   VMCOREINFO: "
                   f"{'yes' if row.vmcoreinfo else 'no' if row.vmcoreinfo is False else '?'}")
        if row.compact_path or row.compact_state:
            comp = row.compact or {}
            out.append(f"  {'compacted':<12} {row.compact_state or '-'} {row.compact_path or ''}"
                       + (f" ({fmt_bytes(comp.get('output_bytes'))}, ratio {comp.get('ratio')})"
                          if comp.get("output_bytes") else ""))
    elif row.skip_reason:
        out.append(f"  {'dump':<12} skipped: {row.skip_reason}")
    if row.recovery_action:
        out.append(f"  {'recovery':<12} {row.recovery_action} -> {row.recovery_result}"
                   + (f", guest frozen {row.freeze_s:.2f} s" if row.freeze_s is not None else ""))
    if row.clock:
        c = row.clock
        if "before_ms" in c and c.get("before_ms") is not None:
            out.append(f"  {'clock':<12} {c['before_ms']:+.1f} ms -> {c['after_ms']:+.1f} ms"
                       + (" (corrected)" if c.get("synced") else " (measured)")
                       + (f"; {c['error']}" if c.get("error") else ""))
        else:
            out.append(f"  {'clock':<12} {c.get('error')}")
    if row.triage:
        out.append("triage:")
        out.extend(_triage_lines(row.triage))
    for note in (cat.outbox(crash_id=crash_id) if hasattr(cat, "outbox") else []):
        out.append(f"  {'notify':<12} {note.target}: {note.state}, {note.attempts} attempt(s)"
                   + (f", last error: {note.last_error}" if note.last_error and note.state != "delivered" else ""))
    out.append("log:")
    for ev in events:
        out.append(f"  {fmt_ns(ev['at_ns'])}  {ev['kind']:<14} {ev['message']}")
    click.echo("\n".join(out))

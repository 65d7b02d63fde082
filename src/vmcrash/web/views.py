"""What each dashboard page shows, as plain data built from catalogue rows (pure; no HTTP, no HTML).

The JSON API returns these same documents, so a page and its API call never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vmcrash.store.catalog import CrashRow
from vmcrash.store.signatures import SignatureGroup, signature_id

from .charts import Point, Series

__all__ = ["crash_detail", "crash_summary", "clock_series", "dump_files", "freeze_series", "iso", "overview"]

#: Guest text is bounded before it is shown: lines per block and characters per line.
MAX_LINES = 400
MAX_LINE_CHARS = 2000


def iso(ns: int | None) -> str | None:
    """Host wall-clock ns as ``YYYY-mm-ddTHH:MM:SSZ``; ``None`` for none."""
    if not ns:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def _lines(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(x)[:MAX_LINE_CHARS] for x in value[-MAX_LINES:]]


def _triage(row: CrashRow) -> Mapping[str, Any]:
    return row.triage if isinstance(row.triage, dict) else {}


def crash_summary(row: CrashRow) -> dict[str, Any]:
    """One crash as a list entry (``/api/crashes``, the overview's table)."""
    t = _triage(row)
    panic = t.get("panic_line")
    return {"id": row.id, "host": row.host, "domain": row.domain, "uuid": row.uuid, "state": row.state,
            "source": row.source, "panic_ns": row.panic_ns, "panic_time": iso(row.panic_ns),
            "panic_line": str(panic)[:MAX_LINE_CHARS] if panic else None,
            "signature": row.signature, "signature_id": signature_id(row.signature) if row.signature else None,
            "freeze_s": row.freeze_s, "recovery_action": row.recovery_action,
            "recovery_result": row.recovery_result, "dump_size_bytes": row.dump_size_bytes, "error": row.error}


def dump_files(row: CrashRow) -> list[dict[str, Any]]:
    """The files of a crash: the dump as written, and its compacted form when there is one."""
    out: list[dict[str, Any]] = []
    if row.dump_path:
        p = Path(row.dump_path)
        out.append({"kind": "dump", "name": p.name, "path": row.dump_path, "format": row.dump_format,
                    "size_bytes": row.dump_size_bytes, "sha256": row.dump_sha256, "present": p.exists(),
                    "vmcoreinfo": row.vmcoreinfo})
    comp = row.compact if isinstance(row.compact, dict) else {}
    if row.compact_path or row.compact_state:
        cp = Path(row.compact_path) if row.compact_path else None
        out.append({"kind": "compacted", "name": cp.name if cp else None, "path": row.compact_path,
                    "format": "kdump" if cp else None, "state": row.compact_state,
                    "codec": comp.get("codec"), "size_bytes": comp.get("output_bytes") or comp.get("dst_size_bytes"),
                    "ratio": comp.get("ratio"), "sha256": comp.get("sha256"),
                    "present": bool(cp and cp.exists()), "error": comp.get("error")})
    return out


def crash_detail(row: CrashRow, events: Sequence[Mapping[str, Any]], syncs: Sequence[Mapping[str, Any]],
                 same_signature: int) -> dict[str, Any]:
    """Everything the crash page shows (``/api/crashes/{id}``)."""
    t = _triage(row)
    clock = row.clock if isinstance(row.clock, dict) else {}
    raw_trace, raw_regs = t.get("call_trace"), t.get("registers")
    trace: list[Any] = raw_trace if isinstance(raw_trace, list) else []
    regs: dict[Any, Any] = raw_regs if isinstance(raw_regs, dict) else {}
    return {
        **crash_summary(row),
        "detected_time": iso(row.detected_ns),
        "running_again_time": iso(row.running_again_ns),
        "skip_reason": row.skip_reason,
        "kernel_release": t.get("kernel_release"),
        "hostname": t.get("hostname"),
        "oops_lines": _lines(t.get("oops_lines")),
        "call_trace": [str(f.get("text") if isinstance(f, dict) else f)[:MAX_LINE_CHARS] for f in trace[:MAX_LINES]],
        "crashing_cpu": t.get("crashing_cpu"),
        "registers": {str(k)[:32]: str(v)[:32] for k, v in list(regs.items())[:64]},
        "rip_symbol": t.get("rip_symbol"),
        "uptime_s": t.get("uptime_s"),
        "dmesg_tail": _lines(t.get("dmesg_tail")),
        "problems": _lines(t.get("problems")),
        "clock": {"before_ms": clock.get("before_ms"), "after_ms": clock.get("after_ms"),
                  "synced": clock.get("synced"), "error": clock.get("error")} if clock else None,
        "dump_files": dump_files(row),
        "same_signature_crashes": same_signature,
        "events": [{"at_time": iso(e.get("at_ns")), "kind": e.get("kind"), "message": e.get("message")}
                   for e in events[:MAX_LINES]],
        "clock_syncs": [clock_entry(s) for s in syncs],
    }


def clock_entry(s: Mapping[str, Any]) -> dict[str, Any]:
    """One clock check/correction (``/api/clock``)."""
    return {"id": s.get("id"), "host": s.get("host", ""), "domain": s.get("domain"), "uuid": s.get("uuid"),
            "at_ns": s.get("at_ns"), "at_time": iso(s.get("at_ns")), "reason": s.get("reason"),
            "crash_id": s.get("crash_id"), "ok": bool(s.get("ok")), "before_ms": s.get("before_ms"),
            "after_ms": s.get("after_ms"), "error": s.get("error")}


def overview(domain_counts: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]],
             groups: Sequence[SignatureGroup]) -> dict[str, Any]:
    """The overview's figures: hosts and domains with their last crash, totals."""
    hosts: dict[str, dict[str, Any]] = {}
    for d in domain_counts:
        h = hosts.setdefault(d["host"], {"host": d["host"], "crashes": 0, "domains": []})
        h["crashes"] += d["crashes"]
        h["domains"].append({"domain": d["domain"], "crashes": d["crashes"], "last_id": d["last_id"],
                             "last_panic_time": iso(d["last_panic_ns"])})
    total = sum(int(d["crashes"]) for d in domain_counts)
    last = max(domain_counts, key=lambda d: d["last_panic_ns"], default=None)
    return {"crashes": total, "hosts": list(hosts.values()), "host_count": len(hosts),
            "domain_count": len(domain_counts), "signature_count": len(groups),
            "last_crash": {"id": last["last_id"], "domain": last["domain"], "host": last["host"],
                           "panic_time": iso(last["last_panic_ns"])} if last else None,
            "shown_in_timeline": len(points)}


def freeze_series(points: Iterable[Mapping[str, Any]]) -> list[Series]:
    """Freeze (panic → guest running again) over time, one mark per crash, linked to its page."""
    pts = sorted(points, key=lambda p: p["panic_ns"])
    marks = tuple(Point(x_ns=p["panic_ns"], y=float(p["freeze_s"] or 0.0),
                        label=f"#{p['id']} {p['domain']}: "
                              + (f"frozen {p['freeze_s']:.2f} s" if p["freeze_s"] is not None else "no freeze figure"),
                        href=f"/crashes/{int(p['id'])}") for p in pts)
    return [Series("crashes", marks)]


def clock_series(syncs: Iterable[Mapping[str, Any]]) -> list[Series]:
    """Offset per guest over time (ms): a dot before each check/correction, a ring for what it left."""
    by_domain: dict[str, list[Point]] = {}
    for s in sorted(syncs, key=lambda s: s["at_ns"]):
        if s.get("before_ms") is None:
            continue
        after = s.get("after_ms")
        label = (f"{s['domain']} ({s['reason']}): {s['before_ms']:+.1f} ms"
                 + (f" -> {after:+.1f} ms" if after is not None else ""))
        pts = by_domain.setdefault(str(s["domain"]), [])
        pts.append(Point(int(s["at_ns"]), float(s["before_ms"]), label))
        if after is not None:
            pts.append(Point(int(s["at_ns"]), float(after), label, solid=False))
    return [Series(name, tuple(p), line=True) for name, p in sorted(by_domain.items())]

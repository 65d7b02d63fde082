"""Benchmark: how fast the dashboard's pages load with 10,000 crashes in the catalogue (goal: crash page < 200 ms).

Fills a fresh SQLite catalogue through :class:`~vmcrash.store.catalog.Catalog` with ``--crashes``
crashes (default 10,000) on 20 hosts × 50 domains, each carrying one of the real triage documents
of ``tests/web/triage/`` (with its dmesg tail and signature), a dozen event-log lines and a clock
correction — the shape the daemon writes. Then serves it with ``vmcrash web``'s app under uvicorn
on 127.0.0.1 and times full HTTP GETs (request, rendering, whole body; one kept-alive connection, as a
browser keeps one) of random crash pages, the overview, the signatures page, the clock page and the
API, with httpx from this process.

The baseline, in the same process: the same requests against a catalogue of 10 crashes. Ratios
show how the page scales with the catalogue.

    python bench/web.py [--crashes 10000] [--requests 200]

Exit status 0 when it ran; the verdict on the 200 ms goal is printed (p95 of the crash page).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from vmcrash.store.catalog import Catalog
from vmcrash.vmcore._signature import signature_from_triage
from vmcrash.web import WebSettings, create_app

TRIAGE = Path(__file__).parents[1] / "tests" / "web" / "triage"
GOAL_MS = 200.0


def fill(path: Path, crashes: int) -> None:
    docs = []
    for f in sorted(TRIAGE.glob("*.json")):
        doc = json.loads(f.read_text())
        doc["signature"] = signature_from_triage(doc)
        doc["dmesg_tail"] = [f"[    8.{i:06d}] {line}" for i, line in enumerate(doc["oops_lines"] * 15)][:60]
        docs.append(doc)
    cats = {h: Catalog(path, host=f"host{h:02d}") for h in range(20)}
    rng = random.Random(1)
    t0 = time.time_ns() - crashes * 60 * 10**9
    for i in range(crashes):
        cat = cats[i % 20]
        domain = f"guest-{i % 20:02d}-{(i // 20) % 50:02d}"
        cid = cat.new_crash(domain=domain, uuid=f"uuid-{domain}", domain_id=i, source="event",
                            panic_ns=t0 + i * 60 * 10**9)
        for kind in ("staging", "dumped", "recovered", "triage", "compaction", "clock", "done"):
            cat.log(cid, kind, f"{kind} of crash {cid}")
        freeze = 2 + rng.random() * 4
        cat.update(cid, triage=docs[i % len(docs)], state="done", dump_path=f"/nonexistent/{domain}-{i}.elf",
                   dump_size_bytes=537137547, dump_format="elf", dump_sha256="ab" * 32, freeze_s=freeze,
                   recovery_action="restart", recovery_result="running", compact_state="done",
                   compact_path=f"/nonexistent/{domain}-{i}.kdump", compact={"codec": "zstd", "output_bytes": 2 << 24,
                                                                            "ratio": 0.045},
                   clock={"before_ms": freeze * 1000, "after_ms": 0.3, "synced": True})
        cat.record_clock_sync(domain=domain, uuid=f"uuid-{domain}", reason="crash", ok=True,
                              before_ms=freeze * 1000, after_ms=0.3, crash_id=cid)
    for cat in cats.values():
        cat.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(catalog: Path) -> tuple[str, uvicorn.Server, threading.Thread]:
    app = create_app(WebSettings(open_catalog=lambda: Catalog(catalog), dump_dir=catalog.parent, token=None))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server, thread


_CLIENT = httpx.Client(timeout=30)  # one client, kept-alive connections, as a browser does


def timed(url: str, n: int) -> list[float]:
    """Milliseconds of ``n`` full GETs (request sent, page rendered, whole body received)."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = _CLIENT.get(url)
        r.raise_for_status()
        _ = r.content
        out.append((time.perf_counter() - t) * 1000)
    return out


def run(crashes: int, requests: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog.sqlite"
        t = time.perf_counter()
        fill(path, crashes)
        print(f"  filled {crashes} crashes in {time.perf_counter() - t:.1f} s "
              f"({path.stat().st_size / 1e6:.1f} MB)", flush=True)
        base, server, thread = serve(path)
        rng = random.Random(2)
        results: dict[str, dict[str, float]] = {}
        try:
            timed(f"{base}/crashes/1", 3)  # warm up: templates compiled, catalogue opened
            crash_ms: list[float] = []
            for cid in (rng.randint(1, crashes) for _ in range(requests)):
                crash_ms += timed(f"{base}/crashes/{cid}", 1)
            results["crash page"] = summary(crash_ms)
            results["api crash"] = summary(timed(f"{base}/api/crashes/{crashes // 2}", requests // 4))
            results["overview"] = summary(timed(f"{base}/", 10))
            results["signatures"] = summary(timed(f"{base}/signatures", 10))
            results["clock"] = summary(timed(f"{base}/clock", 10))
        finally:
            server.should_exit = True
            thread.join(10)
        return results


def summary(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"median_ms": statistics.median(s), "p95_ms": s[max(0, int(len(s) * 0.95) - 1)], "max_ms": s[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crashes", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    print("baseline: 10 crashes")
    small = run(10, args.requests)
    print(f"catalogue: {args.crashes} crashes")
    big = run(args.crashes, args.requests)
    print(f"\n{'request':<12} {'10 crashes':>22} {f'{args.crashes} crashes':>24} {'ratio':>7}")
    for key in big:
        b, s = big[key], small[key]
        print(f"{key:<12} {s['median_ms']:>8.1f} ms (p95 {s['p95_ms']:>5.1f}) {b['median_ms']:>9.1f} ms "
              f"(p95 {b['p95_ms']:>6.1f}) {b['median_ms'] / s['median_ms']:>6.2f}x")
    p95 = big["crash page"]["p95_ms"]
    verdict = "PASS" if p95 < GOAL_MS else "FAIL"
    print(f"\n{verdict}: crash page p95 {p95:.1f} ms with {args.crashes} crashes (goal < {GOAL_MS:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

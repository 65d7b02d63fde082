"""Webhook notifications against real local HTTP servers: ok, 500, slow, down; HMAC; outbox across restarts."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from pathlib import Path

from httpsink import Sink
from pgcluster import wait_for

from vmcrash.config import NotifyTarget, parse_config
from vmcrash.notify.webhook import Notifier, crash_document, deliver, next_delay_s
from vmcrash.store.catalog import Catalog


def _finished_crash(cat: Catalog, domain: str = "web-1") -> int:
    cid = cat.new_crash(domain=domain, uuid="6a1f0000-0000-4000-8000-000000000001", domain_id=3, source="event",
                        panic_ns=1_800_000_000_000_000_000)
    cat.update(cid, state="done", dump_path=f"/var/lib/vmcrash/dumps/{domain}.elf", dump_size_bytes=4096, freeze_s=2.25,
               recovery_action="restart", recovery_result="running",
               clock={"before_ms": -3000.5, "after_ms": 0.7, "synced": True},
               triage={"panic_line": "Kernel panic - not syncing: sysrq triggered crash"})
    return cid


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_document_and_signature(tmp_path: Path) -> None:
    sink = Sink()
    try:
        cat = Catalog(tmp_path / "c.sqlite", host="hv-7")
        cid = _finished_crash(cat)
        body = json.dumps(crash_document(cat.get(cid)), sort_keys=True).encode()  # type: ignore[arg-type]
        result = deliver(NotifyTarget(url=sink.url, secret="s3cret"), body)
        assert result.ok and result.status == 200
        req = sink.requests[0]
        expected = "sha256=" + hmac.new(b"s3cret", req["body"], hashlib.sha256).hexdigest()
        assert req["headers"]["x-vmcrash-signature"] == expected
        doc = json.loads(req["body"])
        assert doc["host"] == "hv-7" and doc["domain"] == "web-1" and doc["uuid"].startswith("6a1f")
        assert doc["panic_line"] == "Kernel panic - not syncing: sysrq triggered crash"
        assert doc["freeze_s"] == 2.25 and doc["recovery"] == {"action": "restart", "result": "running"}
        assert doc["dump"]["path"].endswith("web-1.elf")
        assert doc["clock"]["before_ms"] == -3000.5 and doc["clock"]["after_ms"] == 0.7
        unsigned = deliver(NotifyTarget(url=sink.url), body)
        assert unsigned.ok and "x-vmcrash-signature" not in sink.requests[1]["headers"]
    finally:
        sink.close()


def test_slow_and_down_receivers_are_bounded_by_the_timeout() -> None:
    slow = Sink("slow", delay_s=5)
    try:
        t0 = time.monotonic()
        r = deliver(NotifyTarget(url=slow.url, timeout_s=0.5), b"{}")
        assert not r.ok and time.monotonic() - t0 < 2.0 and "timed out" in (r.error or "")
    finally:
        slow.close()
    t0 = time.monotonic()
    r = deliver(NotifyTarget(url=f"http://127.0.0.1:{_closed_port()}/x", timeout_s=0.5), b"{}")
    assert not r.ok and r.status is None and "ConnectionRefused" in (r.error or "")
    assert time.monotonic() - t0 < 2.0


def test_backoff_doubles_to_its_cap() -> None:
    t = NotifyTarget(url="http://x/", backoff_s=1, max_backoff_s=10)
    assert [next_delay_s(t, n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_500_is_retried_with_backoff_until_it_answers(tmp_path: Path) -> None:
    sink = Sink("error")
    cat = Catalog(tmp_path / "c.sqlite", host="hv-1")
    target = NotifyTarget(url=sink.url, timeout_s=1, backoff_s=0.2, max_backoff_s=0.4, max_attempts=50)
    n = Notifier(cat, (target,), poll_s=0.05)
    n.start()
    try:
        cid = _finished_crash(cat)
        t0 = time.monotonic()
        n.crash_finished(cid)
        assert time.monotonic() - t0 < 0.1  # queueing only: the handler never waits for the receiver
        wait_for(lambda: len(sink.requests) >= 3, 10, "three attempts")
        gaps = [b["at"] - a["at"] for a, b in zip(sink.requests, sink.requests[1:])]
        assert all(g >= 0.15 for g in gaps), gaps
        entry = cat.outbox(crash_id=cid)[0]
        assert entry.state == "pending" and entry.attempts >= 3 and "500" in (entry.last_error or "")
        sink.mode = "ok"
        wait_for(lambda: cat.outbox(crash_id=cid)[0].state == "delivered", 10, "delivered after recovery")
        assert sink.docs()[-1]["crash_id"] == cid
    finally:
        n.stop()
        sink.close()


def test_undelivered_survive_a_restart(tmp_path: Path) -> None:
    port = _closed_port()
    target = NotifyTarget(url=f"http://127.0.0.1:{port}/hook", timeout_s=0.5, backoff_s=0.1, max_backoff_s=0.2)
    cat = Catalog(tmp_path / "c.sqlite", host="hv-1")
    first = Notifier(cat, (target,), poll_s=0.05)
    first.start()
    cid = _finished_crash(cat)
    first.crash_finished(cid)
    wait_for(lambda: cat.outbox(crash_id=cid)[0].attempts >= 2, 10, "failed attempts")
    first.stop()
    cat.close()
    # the daemon is gone; a crash that finished while it was being killed is caught up at start too
    cat = Catalog(tmp_path / "c.sqlite", host="hv-1")
    missed = _finished_crash(cat, "web-2")
    sink = Sink(port=port)
    second = Notifier(cat, (target,), poll_s=0.05)
    second.start()
    try:
        wait_for(lambda: len(sink.docs()) >= 2, 10, "both delivered after restart")
        assert sorted(d["crash_id"] for d in sink.docs()) == [cid, missed]
        assert {e.state for e in cat.outbox()} == {"delivered"}
    finally:
        second.stop()
        sink.close()


def test_4xx_gives_up_and_max_attempts_is_honoured(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite", host="hv-1")
    sink = Sink("error")
    target = NotifyTarget(url=sink.url, timeout_s=1, backoff_s=0.05, max_backoff_s=0.05, max_attempts=3)
    n = Notifier(cat, (target,), poll_s=0.02)
    n.start()
    try:
        cid = _finished_crash(cat)
        n.crash_finished(cid)
        wait_for(lambda: cat.outbox(crash_id=cid)[0].state == "gave-up", 10, "given up")
        time.sleep(0.3)
        assert len(sink.requests) == 3
        sink.mode = "reject"  # 400: this document will never be accepted, no retries
        other = _finished_crash(cat, "web-9")
        n.crash_finished(other)
        wait_for(lambda: cat.outbox(crash_id=other)[0].state == "gave-up", 10, "given up at once")
        time.sleep(0.3)
        assert len(sink.requests) == 4 and cat.outbox(crash_id=other)[0].attempts == 1
    finally:
        n.stop()
        sink.close()


def test_notify_config_is_validated() -> None:
    cfg = parse_config({"notify": [{"url": "https://user:pw@hooks.example/x?t=1", "secret": "k", "timeout_s": 2}]})
    assert cfg.notify[0].name == "https://hooks.example/x"  # no credentials in the catalogue
    for bad, msg in (({"url": "ftp://x"}, "url must be"), ({"url": "http://x", "timeout_s": 0}, "between"),
                     ({"url": "http://x", "bogus": 1}, "unknown key")):
        try:
            parse_config({"notify": [bad]})
        except Exception as exc:  # noqa: BLE001
            assert msg in str(exc), exc
        else:
            raise AssertionError(f"{bad} accepted")

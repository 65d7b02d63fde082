"""A real ``vmcrash watch`` with a fleet catalogue and webhooks, while a real lab guest panics.

PostgreSQL is down during the panic: capture and recovery go on, rows wait in the spool and are
replayed exactly once when it is back. Webhook receivers that are down, slow or answer 500 do not
hold anything up; the good one gets the crash document.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import time
import urllib.request

import pytest
from httpsink import Sink
from labdaemon import Daemon, done
from pgcluster import PgCluster, wait_for

pytestmark = pytest.mark.lab

# A loaded 2-core host makes TCG so slow that the guest kernel's IO-APIC timer check fails
# ("IO-APIC + timer doesn't work!" panic at boot); the check proves nothing about vmcrash.
BOOT_UNDER_LOAD = "no_timer_check"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fleet_daemon(daemon, pg: PgCluster, host: str, extra: str, watch: list[str]) -> Daemon:  # type: ignore[no-untyped-def]
    d: Daemon = daemon(f'host = "{host}"\n' + extra, watch=watch)
    text = d.config.read_text()
    d.config.write_text(text.replace(f'catalog = "{d.catalog_path}"\n',
                                     f'catalog = "{pg.url}"\ncatalog_spool = "{d.catalog_path}"\n'))
    return d


def test_panic_during_database_outage_with_bad_receivers(hv, lab_guest, daemon, pg) -> None:  # type: ignore[no-untyped-def]
    good, failing, slow = Sink(), Sink("error"), Sink("slow", delay_s=60)
    down = free_port()
    port = free_port()
    # the slow receiver's timeout (20 s) outlasts the handling of both crashes: its first request is
    # still held when the rows are final, so a second one would mean someone waited and retried early
    targets = "".join(
        f'[[notify]]\nurl = "{url}"\ntimeout_s = {timeout_s}\nbackoff_s = 0.5\nmax_backoff_s = 2\n' + extra
        for url, timeout_s, extra in ((f"http://127.0.0.1:{down}/x", 2, ""), (slow.url, 20, ""),
                                      (failing.url, 2, ""), (good.url, 2, 'secret = "lab-secret"\n')))
    g, g2 = (lab_guest(memory_mib=384, extra_cmdline=BOOT_UNDER_LOAD) for _ in range(2))
    d = fleet_daemon(daemon, pg, "lab-host-a", f'metrics_listen = "127.0.0.1:{port}"\n', [g.name])
    d.config.write_text(d.config.read_text() + targets)
    d2 = fleet_daemon(daemon, pg, "lab-host-b", "", [g2.name])  # a second host on the same database
    try:
        g.start()
        g2.start()
        d.start()
        d2.start()
        g.wait_ready(240)
        g2.wait_ready(240)
        pg.stop()
        try:
            g.crash()
            g2.crash()
            row = d.wait_row(g.name, done, 240)[0]
            row2 = d2.wait_row(g2.name, done, 240)[0]
            assert row2.state == "done" and row2.host == "lab-host-b"
            assert row.state == "done" and row.recovery_result == "running", (row.state, row.error)
            assert row.dump_path and row.host == "lab-host-a"
            assert subprocess.run(["virsh", "-c", "qemu:///system", "domstate", g.name], capture_output=True,
                                  text=True).stdout.strip() == "running"
            # the slow receiver is still holding its first request: nothing waited for it
            assert len(slow.requests) <= 1
            wait_for(lambda: len(good.requests) >= 1, 60, "the good receiver notified")
            wait_for(lambda: len(failing.requests) >= 2, 60, "the failing receiver retried")
            # the database is still down: the rows wait in the spool
            spooled = d.catalog().spool_depth()
            assert spooled > 0
            assert "fleet catalogue unavailable" in d.log_text()
        finally:
            pg.start()
        req = good.requests[0]
        assert req["headers"]["x-vmcrash-signature"] == "sha256=" + hmac.new(
            b"lab-secret", req["body"], hashlib.sha256).hexdigest()
        doc = json.loads(req["body"])
        uuid = subprocess.run(["virsh", "-c", "qemu:///system", "domuuid", g.name], capture_output=True,
                              text=True).stdout.strip()
        assert doc["domain"] == g.name and doc["uuid"] == uuid and doc["host"] == "lab-host-a"
        assert doc["panic_line"] and doc["panic_line"] in g.serial_text()  # the console saw that line
        assert doc["dump"]["path"] == row.dump_path and doc["freeze_s"] == row.freeze_s
        assert doc["recovery"] == {"action": "restart", "result": "running"}
        # replayed once the database is back: exactly one row, the same facts, all its events
        wait_for(lambda: d.catalog().spool_depth() == 0 and d2.catalog().spool_depth() == 0, 60,
                 "both spools replayed")
        rows = pg.psql(f"SELECT origin_id, state, dump_path, recovery_result FROM crashes "
                       f"WHERE host = 'lab-host-a' AND domain = '{g.name}'")
        assert rows == [[str(row.id), "done", row.dump_path, "running"]]
        local_events = len(d.catalog().events(row.id))
        assert pg.psql(f"SELECT COUNT(*) FROM events e JOIN crashes c ON c.id = e.crash_id WHERE "
                       f"c.host = 'lab-host-a' AND c.origin_id = {row.id}") == [[str(local_events)]]
        listed = json.loads(d.cli("list", "--json", check=True).stdout)
        assert [(r["domain"], r["origin_id"]) for r in listed] == [(g.name, row.id)]
        everyone = json.loads(d.cli("list", "--all-hosts", "--json", check=True).stdout)
        assert {(r["host"], r["domain"]) for r in everyone} >= {("lab-host-a", g.name), ("lab-host-b", g2.name)}
        other = next(r for r in everyone if r["domain"] == g2.name)
        assert pg.psql(f"SELECT COUNT(*) FROM crashes WHERE domain = '{g2.name}'") == [["1"]]
        shown = d.cli("show", str(other["id"]), check=True).stdout  # host a shows host b's crash
        assert g2.name in shown and "on lab-host-b" in shown and row2.dump_path in shown
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert (f'vmcrash_crashes_total{{domain="{g.name}",host="lab-host-a",outcome="dumped"}} 1.0' in metrics)
        assert 'vmcrash_fleet_catalog_up{host="lab-host-a"} 1.0' in metrics
        lint = subprocess.run(["promtool", "check", "metrics"], input=metrics.encode(), capture_output=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr  # Prometheus' own parser and linter
        t0 = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - t0 < 30
        assert d2.stop() == 0  # a hung receiver does not hold up the shutdown either
    finally:
        for s in (good, failing, slow):
            s.close()

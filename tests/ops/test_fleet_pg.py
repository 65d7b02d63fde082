"""The fleet catalogue against a real PostgreSQL 15: migrations, replication, concurrent hosts, outage."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pgcluster import PgCluster, wait_for

from vmcrash.errors import StorageError
from vmcrash.store.catalog import MIGRATIONS, Catalog
from vmcrash.store.pg import PgCatalog
from vmcrash.store.replicate import ReplicaState, Replicator


def _crash(cat: Catalog, domain: str, n: int) -> int:
    cid = cat.new_crash(domain=domain, uuid=f"uuid-{domain}", domain_id=n, source="event",
                        panic_ns=1_700_000_000 * 10**9 + n)
    cat.update(cid, state="dumping", dump_temp_path=f"/d/{domain}.partial")
    cat.update(cid, state="done", dump_path=f"/d/{domain}-{n}.elf", dump_size_bytes=1234 + n, freeze_s=1.5,
               clock={"before_ms": -5000.0, "after_ms": 1.0, "synced": True},
               triage={"panic_line": "Kernel panic - not syncing: sysrq", "signature": "sig-a"})
    cat.record_clock_sync(domain=domain, uuid=f"uuid-{domain}", reason="after-crash", ok=True, before_ms=-5000.0,
                          after_ms=1.0, crash_id=cid)
    return cid


def test_migrations_match_sqlite(pg: PgCluster) -> None:
    fleet = PgCatalog(pg.url)
    assert fleet.schema_version() == len(MIGRATIONS)
    assert PgCatalog(pg.url).migrate() == len(MIGRATIONS)  # a second host: nothing to do
    assert pg.psql("SELECT MAX(version) FROM schema_version") == [[str(len(MIGRATIONS))]]
    # nanosecond times need 64 bits: the translated schema has them
    assert pg.psql("SELECT data_type FROM information_schema.columns WHERE table_name = 'crashes' "
                   "AND column_name = 'panic_ns'") == [["bigint"]]
    fleet.close()


def test_replication_upserts_and_unmarks(pg: PgCluster, tmp_path: Path) -> None:
    local = Catalog(tmp_path / "spool.sqlite", host="alpha")
    cid = _crash(local, "web-1", 1)
    rep = Replicator(local, pg.url)
    assert rep.push_once() > 0 and local.spool_depth() == 0
    local.update(cid, recovery_action="restart", recovery_result="running")
    rep.push_once()
    rep.push_once()  # nothing to do, nothing doubled
    rows = pg.psql("SELECT host, origin_id, domain, state, recovery_result, dump_size FROM crashes "
                   "WHERE host = 'alpha'")
    assert rows == [["alpha", str(cid), "web-1", "done", "running", "1235"]]
    fleet = PgCatalog(pg.url)
    row = fleet.crashes(host="alpha")[0]
    assert row.triage and row.triage["signature"] == "sig-a" and row.clock == {
        "before_ms": -5000.0, "after_ms": 1.0, "synced": True}
    assert [e["kind"] for e in fleet.events(row.id)] == ["detected"]
    assert fleet.clock_syncs(crash_id=row.id)[0]["after_ms"] == 1.0
    with sqlite3.connect(local.path) as db:  # an operator deleting a row by hand
        db.execute("DELETE FROM crashes WHERE id = ?", (cid,))
    rep.push_once()
    assert pg.psql("SELECT COUNT(*) FROM crashes WHERE host = 'alpha'") == [["0"]]


def test_several_hosts_at_once_lose_nothing(pg: PgCluster, tmp_path: Path) -> None:
    hosts, per_host = [f"node{i}" for i in range(4)], 40
    errors: list[BaseException] = []

    def one_host(host: str) -> None:
        try:
            local = Catalog(tmp_path / f"{host}.sqlite", host=host)
            rep = Replicator(local, pg.url, interval_s=0.05)
            rep.start()
            for n in range(per_host):
                _crash(local, f"{host}-vm{n % 3}", n)
                rep.wake()
            wait_for(lambda: local.spool_depth() == 0, 60, f"{host}'s spool drained")
            rep.stop()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_host, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    counts = dict((h, int(c)) for h, c in pg.psql(
        "SELECT host, COUNT(*) FROM crashes WHERE host LIKE 'node%' GROUP BY host"))
    assert counts == {h: per_host for h in hosts}
    # each crash has exactly its events (detected) and its clock check, attached to the right crash
    assert pg.psql("SELECT COUNT(*) FROM events e JOIN crashes c ON e.crash_id = c.id "
                   "WHERE c.host LIKE 'node%' AND e.host = c.host") == [[str(len(hosts) * per_host)]]
    assert pg.psql("SELECT COUNT(DISTINCT (host, origin_id)) FROM clock_syncs WHERE host LIKE 'node%' "
                   "AND crash_id IS NOT NULL") == [[str(len(hosts) * per_host)]]


def test_outage_spools_then_replays_exactly_once(pg: PgCluster, tmp_path: Path) -> None:
    local = Catalog(tmp_path / "spool.sqlite", host="outage")
    rep = Replicator(local, pg.url, interval_s=0.05, max_backoff_s=0.5)
    rep.start()
    _crash(local, "db-1", 1)
    wait_for(lambda: local.spool_depth() == 0, 30, "first crash replicated")
    pg.stop()
    try:
        for n in range(2, 12):
            _crash(local, "db-1", n)  # the local writes never wait for the dead server
        wait_for(lambda: rep.state is ReplicaState.OFFLINE, 30, "replicator offline")
        assert local.spool_depth() > 0
        with pytest.raises(StorageError, match="cannot reach the fleet catalogue"):
            PgCatalog(pg.url, connect_timeout_s=2)
    finally:
        pg.start()
    wait_for(lambda: local.spool_depth() == 0, 60, "spool replayed")
    rep.stop()
    assert pg.psql("SELECT COUNT(*), COUNT(DISTINCT origin_id) FROM crashes WHERE host = 'outage'") == [["11", "11"]]
    assert pg.psql("SELECT COUNT(*) FROM events WHERE host = 'outage'") == [["11"]]


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrash.cli.main", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def test_list_and_show_across_hosts(pg: PgCluster, tmp_path: Path) -> None:
    ids = {}
    for host in ("east", "west"):
        local = Catalog(tmp_path / f"{host}.sqlite", host=host)
        ids[host] = _crash(local, f"{host}-db", 7)
        Replicator(local, pg.url).push_once()
    cfg = tmp_path / "vmcrash.toml"
    cfg.write_text(f'catalog = "{pg.url}"\ncatalog_spool = "{tmp_path / "east.sqlite"}"\nhost = "east"\n')
    mine = json.loads(_cli(cfg, "list", "--json").stdout)
    assert {(r["host"], r["domain"]) for r in mine} == {("east", "east-db")}
    west = json.loads(_cli(cfg, "list", "--host", "west", "--json").stdout)
    assert [(r["host"], r["origin_id"]) for r in west] == [("west", ids["west"])]
    everyone = _cli(cfg, "list", "--all-hosts", "--limit", "100000")
    assert everyone.returncode == 0 and "HOST" in everyone.stdout
    assert "east-db" in everyone.stdout and "west-db" in everyone.stdout
    fleet_id = pg.psql("SELECT id FROM crashes WHERE host = 'west'")[0][0]
    shown = _cli(cfg, "show", fleet_id)
    assert shown.returncode == 0, shown.stderr
    assert "west-db" in shown.stdout and "on west" in shown.stdout and "Kernel panic - not syncing" in shown.stdout
    clocks = json.loads(_cli(cfg, "list", "--clock", "--all-hosts", "--limit", "100000", "--json").stdout)
    assert {"east", "west"} <= {c["host"] for c in clocks}
    assert {c["host"] for c in json.loads(_cli(cfg, "list", "--clock", "--json").stdout)} == {"east"}
    both = _cli(cfg, "list", "--host", "x", "--all-hosts")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    pg.stop()
    try:
        local_only = _cli(cfg, "list", "--json")
        assert local_only.returncode == 0
        assert "showing this host's local copy" in local_only.stderr
        assert [r["domain"] for r in json.loads(local_only.stdout)] == ["east-db"]
    finally:
        pg.start()


def test_spool_outlives_a_daemon_restart_during_the_outage(pg: PgCluster, tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    local = Catalog(path, host="restarted")
    rep = Replicator(local, pg.url, interval_s=0.05, max_backoff_s=0.5)
    pg.stop()
    try:
        rep.start()
        ids = [_crash(local, "app-1", n) for n in range(5)]
        wait_for(lambda: rep.state is ReplicaState.OFFLINE, 30, "replicator offline")
        rep.stop()  # the daemon goes away with everything still spooled
        local.close()
    finally:
        pg.start()
    local = Catalog(path, host="restarted")
    assert local.spool_depth() > 0
    again = Replicator(local, pg.url)
    again.push_once()
    again.push_once()
    assert local.spool_depth() == 0
    assert pg.psql("SELECT origin_id FROM crashes WHERE host = 'restarted' ORDER BY origin_id") == [
        [str(i)] for i in ids]

"""End to end: a real lab guest panics under a real ``vmcrash watch``; a real Prometheus scrapes it
with the shipped rules and sends to a real Alertmanager, which posts to a receiver in this test."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from httpsink import Sink
from labdaemon import Daemon
from pgcluster import wait_for

pytestmark = pytest.mark.lab

# A loaded 2-core host makes TCG so slow that the guest kernel's IO-APIC timer check fails
# ("IO-APIC + timer doesn't work!" panic at boot); the check proves nothing about vmcrash.
BOOT_UNDER_LOAD = "no_timer_check"

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus" / "vmcrash-rules.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exe(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed"
    return path


def _get_json(url: str) -> dict:  # type: ignore[type-arg]
    return json.loads(urllib.request.urlopen(url, timeout=5).read())  # type: ignore[no-any-return]


def test_panic_reaches_alertmanager_receiver(hv, lab_guest, daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    receiver = Sink()
    metrics_port, prom_port, am_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    g = lab_guest(memory_mib=384, extra_cmdline=BOOT_UNDER_LOAD)
    d: Daemon = daemon(f'host = "lab-host-e2e"\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
                       "[clock]\nsweep_interval_s = 2\nagent_wait_s = 60\n", watch=[g.name])
    try:
        (tmp_path / "am.yml").write_text(
            "route:\n  receiver: test\n  group_by: [alertname, host, domain]\n  group_wait: 1s\n"
            "  group_interval: 1s\n  repeat_interval: 1h\n"
            f"receivers:\n  - name: test\n    webhook_configs:\n      - url: {receiver.url}\n"
            "        send_resolved: false\n")
        shutil.copy(RULES, tmp_path / "vmcrash-rules.yml")
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {tmp_path / 'vmcrash-rules.yml'}\n"
            f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n"
            f"scrape_configs:\n  - job_name: vmcrash\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n")
        am_log, prom_log = open(tmp_path / "am.log", "wb"), open(tmp_path / "prom.log", "wb")
        procs.append(subprocess.Popen(
            [_exe("prometheus-alertmanager"), f"--config.file={tmp_path / 'am.yml'}",
             f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="], stdout=am_log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [_exe("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=prom_log, stderr=subprocess.STDOUT))
        g.start()
        d.start()
        g.wait_ready(240)

        def scraped() -> bool:
            try:
                targets = _get_json(f"http://127.0.0.1:{prom_port}/api/v1/targets")["data"]["activeTargets"]
            except OSError:
                return False
            return any(t["health"] == "up" for t in targets)

        wait_for(scraped, 60, "Prometheus scraping vmcrash")
        wait_for(lambda: _get_json(f"http://127.0.0.1:{prom_port}/api/v1/rules")["data"]["groups"] != [], 30,
                 "rules loaded")
        assert receiver.requests == []  # nothing panicked yet, nothing alerted

        def swept() -> list[dict]:  # type: ignore[type-arg]
            q = urllib.parse.quote(f'vmcrash_sweep_clock_offset_seconds{{domain="{g.name}"}}')
            return _get_json(f"http://127.0.0.1:{prom_port}/api/v1/query?query={q}")["data"]["result"]  # type: ignore[no-any-return]

        wait_for(lambda: bool(swept()), 60, "a sweep's clock offset in Prometheus")
        def offset_agrees() -> bool:
            # ground truth from libvirt's own agent call (whole seconds); a sweep may have just corrected
            # the clock, so compare until a fresh sweep has measured the current offset
            out = subprocess.run(["virsh", "-c", "qemu:///system", "domtime", g.name], capture_output=True,
                                 text=True, timeout=30).stdout
            virsh_offset_s = int(out.split(":")[1]) - time.time()
            return abs(float(swept()[0]["value"][1]) - virsh_offset_s) < 2.5

        wait_for(offset_agrees, 30, "the sweep's offset to match virsh domtime")
        t_panic = time.monotonic()
        g.crash()
        g.wait_serial("Kernel panic - not syncing", 60)
        t_console = time.monotonic()

        def alerted() -> bool:
            return any(a["labels"].get("alertname") == "VmcrashGuestPanicked"
                       for doc in receiver.docs() for a in doc["alerts"])

        wait_for(alerted, 90, "the panic alert at the receiver")
        t_alert = next(r["at"] for r in receiver.requests if b"VmcrashGuestPanicked" in r["body"])
        alert = next(a for doc in receiver.docs() for a in doc["alerts"]
                     if a["labels"]["alertname"] == "VmcrashGuestPanicked")
        assert alert["labels"]["domain"] == g.name and alert["labels"]["host"] == "lab-host-e2e"
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["job"] == "vmcrash"
        assert alert["status"] == "firing" and g.name in alert["annotations"]["summary"]
        timing = {"panic_to_alert_s": round(t_alert - t_panic, 2), "console_to_alert_s": round(t_alert - t_console, 2)}
        (tmp_path / "timing.json").write_text(json.dumps(timing))
        print(f"panic -> alert: {timing}")
        assert t_alert - t_panic < 60
        assert d.stop() == 0

        # the daemon is gone: Prometheus sees it and the daemon-down rule starts (it fires after its 2 min)
        def down_pending() -> bool:
            alerts = _get_json(f"http://127.0.0.1:{prom_port}/api/v1/alerts")["data"]["alerts"]
            return any(a["labels"]["alertname"] == "VmcrashDaemonDown" and a["state"] == "pending" for a in alerts)

        wait_for(down_pending, 30, "VmcrashDaemonDown pending")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        receiver.close()

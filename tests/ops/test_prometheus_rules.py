"""The shipped alert rules (promtool check/test rules) and the catalogue metrics (checked by promtool)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vmcrash.metrics.collector import MAX_DOMAINS, MAX_LABEL_CHARS, CatalogCollector, HealthProbe, label_value
from vmcrash.store.catalog import Catalog

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"


def _promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("promtool")
    assert exe, "promtool is not installed (Debian package prometheus)"
    return subprocess.run([exe, *args], cwd=RULES, input=stdin, capture_output=True, timeout=60)


def test_rules_are_valid() -> None:
    res = _promtool("check", "rules", "vmcrash-rules.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert b"SUCCESS: 8 rules found" in res.stdout


def test_rules_unit_tests_pass() -> None:
    res = _promtool("test", "rules", "vmcrash-rules.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_example_scrape_config_is_valid(tmp_path: Path) -> None:
    shutil.copy(RULES / "vmcrash-rules.yml", tmp_path)
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text((RULES / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{tmp_path}/"))
    res = _promtool("check", "config", str(cfg))
    assert res.returncode == 0, res.stdout + res.stderr


def _scrape(cat: Catalog, probe: HealthProbe | None = None) -> bytes:
    reg = CollectorRegistry()
    reg.register(CatalogCollector(cat, host="hv\n1", crash_loop_max_panics=3, crash_loop_window_s=600,
                                  probe=(lambda: probe) if probe else None))
    return generate_latest(reg)


def test_metrics_from_the_catalogue(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite", host="hv1")
    now = time.time_ns()
    for i in range(4):  # a crash loop: 4 panics within the window
        cid = cat.new_crash(domain="loop-vm", uuid="u1", domain_id=i, source="event", panic_ns=now - i * 10**9)
        cat.update(cid, state="done", freeze_s=1.5 + i, skip_reason="crash loop: 3 panics" if i == 3 else None,
                   dump_path=None if i == 3 else f"/d/{i}.elf", dump_size_bytes=1000, dump_started_ns=0,
                   dump_ended_ns=2 * 10**9)
    cid = cat.new_crash(domain="web", uuid="u2", domain_id=1, source="event", panic_ns=now)
    cat.update(cid, state="dumping")
    cat.record_clock_sync(domain="web", uuid="u2", reason="sweep", ok=True, before_ms=-2500.0, after_ms=3.0)
    text = _scrape(cat, HealthProbe(spool_rows=7, fleet_up=False, notify_pending=2, notify_gave_up=1))
    res = _promtool("check", "metrics", stdin=text)
    assert res.returncode == 0, res.stdout + res.stderr + text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"host": "hv?1", **labels}.items())))]

    assert get("vmcrash_crashes_total", domain="loop-vm", outcome="dumped") == 3
    assert get("vmcrash_crashes_total", domain="loop-vm", outcome="skipped") == 1
    assert get("vmcrash_crashes_total", domain="web", outcome="in-progress") == 1
    assert get("vmcrash_crash_loop", domain="loop-vm") == 1 and get("vmcrash_crash_loop", domain="web") == 0
    assert get("vmcrash_dumps_skipped_total", reason="crash-loop") == 1
    assert get("vmcrash_dumps_skipped_total", reason="no-space") == 0
    assert get("vmcrash_freeze_seconds_catalog_count") == 4
    assert get("vmcrash_freeze_seconds_catalog_bucket", le="2.0") == 1
    assert get("vmcrash_freeze_seconds_catalog_sum") == 1.5 + 2.5 + 3.5 + 4.5
    assert get("vmcrash_dump_size_bytes_total") == 4000
    assert get("vmcrash_dump_duration_seconds_total") == 8.0
    assert get("vmcrash_dumps_in_flight") == 1
    assert get("vmcrash_guest_clock_offset_seconds", domain="web", when="before") == -2.5
    assert get("vmcrash_last_sweep_correction_timestamp_seconds") > 0
    assert abs(get("vmcrash_last_panic_timestamp_seconds", domain="web") - now / 1e9) < 1
    assert get("vmcrash_spool_rows") == 7 and get("vmcrash_fleet_catalog_up") == 0
    assert get("vmcrash_notify_pending") == 2 and get("vmcrash_catalog_up") == 1


def test_hostile_domain_names_cannot_blow_up_the_scrape(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite", host="hv1")
    nasty = ['quote"back\\slash', "new\nline", "x" * 5000, "tab\tbell\x07", "ünï😀"]
    names = nasty + [f"vm-{i}" for i in range(MAX_DOMAINS * 3)]
    for i, name in enumerate(names):
        cat.new_crash(domain=name, uuid=f"u{i}", domain_id=i, source="event", panic_ns=10**18 + i)
    text = _scrape(cat)
    assert _promtool("check", "metrics", stdin=text).returncode == 0  # Prometheus' own parser accepts it
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    domains = {s.labels["domain"] for s in fams["vmcrash_crashes"].samples}
    assert len(domains) == MAX_DOMAINS + 1 and "_other" in domains
    assert all(len(d) <= MAX_LABEL_CHARS and d.isprintable() for d in domains)
    other = sum(s.value for s in fams["vmcrash_crashes"].samples if s.labels["domain"] == "_other")
    assert other == len(names) - MAX_DOMAINS  # nothing dropped: the oldest are summed, not lost
    assert len(text) < 400_000
    assert label_value('quote"back\\slash') == 'quote"back\\slash'  # escaping is the exposition's job
    assert label_value("new\nline") == "new?line"


def test_live_and_catalogue_metrics_together_pass_promtool(tmp_path: Path) -> None:
    from vmcrash.capture.metrics import MAX_SWEEP_DOMAINS, Metrics

    m = Metrics()
    m.registry.register(CatalogCollector(Catalog(tmp_path / "c.sqlite", host="hv1"), host="hv1",
                                         crash_loop_max_panics=3, crash_loop_window_s=600))
    for i in range(MAX_SWEEP_DOMAINS + 50):  # hostile and many names: bounded, capped
        m.sweep_measured(f"vm\n{i}" + "x" * 300, 0.25)
        m.clock_residual_ms.labels(domain=f"vm-{i}").set(1500.0)
    text = generate_latest(m.registry)
    res = _promtool("check", "metrics", stdin=text)
    assert res.returncode == 0, res.stdout + res.stderr
    fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert len(fams["vmcrash_sweep_clock_offset_seconds"].samples) == MAX_SWEEP_DOMAINS
    assert len(fams["vmcrash_clock_residual_seconds"].samples) == MAX_SWEEP_DOMAINS
    assert fams["vmcrash_clock_residual_seconds"].samples[0].value == 1.5  # fed ms, exposed in seconds
    m.sweep_forget({"vm\n0" + "x" * 300})
    assert len(list(m.sweep_offset.collect())[0].samples) == 1

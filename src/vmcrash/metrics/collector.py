"""Metrics worth alerting on, derived from the catalogue at every scrape (so they survive restarts).

A prometheus-client custom collector beside the daemon's few live gauges
(:mod:`vmcrash.capture.metrics`). Every crash metric carries ``host`` (the catalogue's host name)
and most ``domain``. Domain names come from guests' owners and may be hostile: label values are
bounded (:func:`label_value`: printable, at most 64 characters) and the number of domains per
scrape is capped (:data:`MAX_DOMAINS`, the most recently crashed first; the rest are summed under
``domain="_other"``), so no guest can blow up the series count. The exposition format's own
escaping (backslash, quote, newline) is prometheus-client's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from vmcrash.errors import StorageError
from vmcrash.store.catalog import Catalog
from vmcrash.store.stats import SKIP_CATEGORIES, CatalogStats, catalog_stats

__all__ = ["CatalogCollector", "HealthProbe", "label_value", "MAX_DOMAINS", "FREEZE_BUCKETS_S"]

log = logging.getLogger(__name__)

MAX_DOMAINS = 200
MAX_LABEL_CHARS = 64
OTHER = "_other"
FREEZE_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
OUTCOMES = ("dumped", "skipped", "handled", "failed", "in-progress")


def label_value(text: str) -> str:
    """A bounded, printable label value (pure): control characters → ``?``, at most 64 characters."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:MAX_LABEL_CHARS * 4])
    return clean[:MAX_LABEL_CHARS] if len(clean) <= MAX_LABEL_CHARS else clean[:MAX_LABEL_CHARS - 1] + "…"


@dataclass(frozen=True)
class HealthProbe:
    """Live facts the catalogue cannot know: spool depth and fleet catalogue state, notifications."""

    spool_rows: int | None = None
    fleet_up: bool | None = None
    notify_pending: int | None = None
    notify_gave_up: int | None = None


class CatalogCollector(Collector):
    """Collect from ``catalog`` (this host's rows) at every scrape; never raises into the scrape.

    ``probe`` returns the live health facts (None: no fleet catalogue, no notifications).
    """

    def __init__(self, catalog: Catalog, *, host: str, crash_loop_max_panics: int, crash_loop_window_s: float,
                 probe: Callable[[], HealthProbe] | None = None) -> None:
        self.catalog = catalog
        self.host = label_value(host)
        self.loop_max = crash_loop_max_panics
        self.loop_window_ns = int(crash_loop_window_s * 1e9)
        self.probe = probe

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only (names are checked by the unit tests)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vmcrash_catalog_up", "1 when the local catalogue could be read at this scrape",
                               labels=["host"])
        try:
            stats = catalog_stats(self.catalog, host=None, loop_window_ns=self.loop_window_ns, now_ns=time.time_ns())
        except StorageError as exc:
            log.warning("metrics: catalogue unreadable: %s", exc)
            up.add_metric([self.host], 0)
            yield up
            yield from self._health()
            return
        up.add_metric([self.host], 1)
        yield up
        yield from self._crash_metrics(stats)
        yield from self._health()

    def _crash_metrics(self, s: CatalogStats) -> Iterator[Metric]:
        h = self.host
        crashes = CounterMetricFamily("vmcrash_crashes", "Guest panics recorded, by domain and outcome",
                                      labels=["host", "domain", "outcome"])
        last = GaugeMetricFamily("vmcrash_last_panic_timestamp_seconds", "When the domain last panicked",
                                 labels=["host", "domain"])
        loop = GaugeMetricFamily("vmcrash_crash_loop", "1 while the domain is in a crash loop (dumps stop)",
                                 labels=["host", "domain"])
        recent = GaugeMetricFamily("vmcrash_recent_panics", "Panics within the crash-loop window",
                                   labels=["host", "domain"])
        ranked = sorted(s.domains, key=lambda d: d.last_panic_ns, reverse=True)
        other: dict[str, int] = {}
        for d in ranked[MAX_DOMAINS:]:
            for k, v in d.outcomes.items():
                other[k] = other.get(k, 0) + v
        seen: dict[str, int] = {}
        for d in ranked[:MAX_DOMAINS]:
            name = label_value(d.domain)
            if name in seen or name == OTHER:  # two names equal once bounded: keep them apart
                seen[name] = seen.get(name, 0) + 1
                name = label_value(f"{name[:MAX_LABEL_CHARS - 8]}~{seen[name]}")
            seen.setdefault(name, 0)
            for outcome in OUTCOMES:
                crashes.add_metric([h, name, outcome], d.outcomes.get(outcome, 0))
            last.add_metric([h, name], d.last_panic_ns / 1e9)
            loop.add_metric([h, name], 1 if d.recent_panics >= self.loop_max else 0)
            recent.add_metric([h, name], d.recent_panics)
        if other:
            for outcome in OUTCOMES:
                crashes.add_metric([h, OTHER, outcome], other.get(outcome, 0))
        yield from (crashes, last, loop, recent)
        skipped = CounterMetricFamily("vmcrash_dumps_skipped", "Dumps not taken, by reason",
                                      labels=["host", "reason"])
        for reason in SKIP_CATEGORIES:
            skipped.add_metric([h, reason], s.skipped.get(reason, 0))
        yield skipped
        buckets, acc = [], 0
        ordered = sorted(s.freezes_s)
        i = 0
        for le in FREEZE_BUCKETS_S:
            while i < len(ordered) and ordered[i] <= le:
                i += 1
            acc = i
            buckets.append((_le(le), acc))
        buckets.append(("+Inf", len(ordered)))
        freeze = HistogramMetricFamily("vmcrash_freeze_seconds_catalog", "Panic to guest running again "
                                       "(every recorded crash)", labels=["host"])
        freeze.add_metric([h], buckets, sum_value=sum(ordered))
        yield freeze
        dump_b = CounterMetricFamily("vmcrash_dump_size_bytes", "Size of every dump recorded", labels=["host"])
        dump_b.add_metric([h], s.dump_bytes)
        dump_s = CounterMetricFamily("vmcrash_dump_duration_seconds", "Time spent writing every dump recorded",
                                     labels=["host"])
        dump_s.add_metric([h], s.dump_seconds)
        inflight = GaugeMetricFamily("vmcrash_dumps_in_flight", "Dumps being written now", labels=["host"])
        inflight.add_metric([h], s.dumps_in_flight)
        held = GaugeMetricFamily("vmcrash_images_held", "Crashed guests preserved for inspection (policy "
                                 "preserve)", labels=["host"])
        held.add_metric([h], s.images_held)
        yield from (dump_b, dump_s, inflight, held)
        offset = GaugeMetricFamily("vmcrash_guest_clock_offset_seconds", "Guest clock minus host clock at the "
                                   "latest check (when=before|after the correction)", labels=["host", "domain", "when"])
        checked = GaugeMetricFamily("vmcrash_guest_clock_checked_timestamp_seconds", "Latest clock check",
                                    labels=["host", "domain", "reason"])
        clock_items = sorted(s.clock.items(), key=lambda kv: kv[1][0], reverse=True)[:MAX_DOMAINS]
        for domain, (at_ns, reason, before, after) in clock_items:
            name = label_value(domain)
            if before is not None:
                offset.add_metric([h, name, "before"], before / 1e3)
            if after is not None:
                offset.add_metric([h, name, "after"], after / 1e3)
            checked.add_metric([h, name, label_value(reason)], at_ns / 1e9)
        yield from (offset, checked)
        if s.last_sweep_ns is not None:
            sweep = GaugeMetricFamily("vmcrash_last_sweep_correction_timestamp_seconds",
                                      "Latest clock correction made by a sweep", labels=["host"])
            sweep.add_metric([h], s.last_sweep_ns / 1e9)
            yield sweep
        schema = GaugeMetricFamily("vmcrash_catalog_schema_version", "Migrations applied", labels=["host"])
        schema.add_metric([h], s.schema_version)
        yield schema

    def _health(self) -> Iterator[Metric]:
        if self.probe is None:
            return
        try:
            p = self.probe()
        except Exception as exc:  # a probe must not break the scrape
            log.warning("metrics: health probe failed: %s", exc)
            return
        h = self.host
        if p.spool_rows is not None:
            g = GaugeMetricFamily("vmcrash_spool_rows", "Catalogue rows waiting for the fleet catalogue",
                                  labels=["host"])
            g.add_metric([h], p.spool_rows)
            yield g
        if p.fleet_up is not None:
            g = GaugeMetricFamily("vmcrash_fleet_catalog_up", "1 while the fleet catalogue is reachable",
                                  labels=["host"])
            g.add_metric([h], 1 if p.fleet_up else 0)
            yield g
        if p.notify_pending is not None:
            g = GaugeMetricFamily("vmcrash_notify_pending", "Crash notifications not yet delivered", labels=["host"])
            g.add_metric([h], p.notify_pending)
            yield g
        if p.notify_gave_up is not None:
            c = CounterMetricFamily("vmcrash_notify_gave_up", "Crash notifications given up", labels=["host"])
            c.add_metric([h], p.notify_gave_up)
            yield c


def _le(bound: float) -> str:
    return repr(float(bound))

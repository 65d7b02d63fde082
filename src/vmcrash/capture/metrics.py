"""Prometheus metrics of the daemon (optional): panics, dumps, freezes, clock corrections.

Enabled by ``metrics_listen = "127.0.0.1:9464"`` in the config; served by prometheus-client's
own HTTP server thread. All metric objects live in a private registry so tests and several
daemons in one process do not collide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from vmcrash.config import split_host_port
from vmcrash.errors import ConfigError

__all__ = ["Metrics", "parse_listen", "bounded_label", "MAX_SWEEP_DOMAINS"]

#: at most this many domains get a sweep offset series
MAX_SWEEP_DOMAINS = 200


def bounded_label(text: str, max_chars: int = 64) -> str:
    """A label value from a domain name (hostile input): printable, at most ``max_chars``."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:max_chars * 4])
    return clean if len(clean) <= max_chars else clean[:max_chars - 1] + "…"

log = logging.getLogger(__name__)


def parse_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` → (host, port). :raises ConfigError:"""
    hp = split_host_port(value)
    if hp is None:
        raise ConfigError(f"expected host:port, got {value!r}", key="metrics_listen")
    return hp[0] or "127.0.0.1", hp[1]


class _BoundedChild:
    def __init__(self, child: Any) -> None:
        self._child = child

    def set(self, value_ms: float) -> None:
        if self._child is not None:
            self._child.set(value_ms / 1e3)


class _MillisecondGauge:
    """A per-domain gauge in seconds that callers feed milliseconds (``.labels(domain=…).set(ms)``).

    Domain names are bounded (:func:`bounded_label`) and at most :data:`MAX_SWEEP_DOMAINS` series
    exist; values for further domains are dropped.
    """

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._names: set[str] = set()

    def labels(self, *, domain: str) -> _BoundedChild:
        name = bounded_label(domain)
        if name not in self._names and len(self._names) >= MAX_SWEEP_DOMAINS:
            return _BoundedChild(None)
        self._names.add(name)
        return _BoundedChild(self.gauge.labels(domain=name))


@dataclass
class Metrics:
    """The daemon's metrics. :meth:`serve` starts the HTTP endpoint."""

    registry: CollectorRegistry

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.panics = Counter("vmcrash_panics", "Guest panics seen", ["source"], registry=r)
        self.dumps = Counter("vmcrash_dumps", "Dump outcomes", ["result"], registry=r)
        self.dump_seconds = Histogram("vmcrash_dump_seconds", "Time to write a dump", registry=r,
                                      buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
        self.freeze_seconds = Histogram("vmcrash_freeze_seconds", "Panic to guest running again",
                                        registry=r, buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
        self.dump_bytes = Counter("vmcrash_dump_written_bytes", "Bytes written for dumps", registry=r)
        self.zero_pages = Counter("vmcrash_zero_pages_skipped", "Zero pages left as holes", registry=r)
        self.clock_syncs = Counter("vmcrash_clock_syncs", "Clock corrections", ["reason", "ok"], registry=r)
        self.clock_residual_ms = _MillisecondGauge(Gauge(
            "vmcrash_clock_residual_seconds", "Guest clock error after the last correction", ["domain"], registry=r))
        self.connected = Gauge("vmcrash_libvirt_connected", "1 while connected to libvirt", registry=r)
        self.sweep_offset = Gauge("vmcrash_sweep_clock_offset_seconds", "Guest clock minus host clock, measured "
                                  "by the latest sweep (before any correction)", ["domain"], registry=r)
        self.last_sweep = Gauge("vmcrash_last_sweep_timestamp_seconds", "When the latest clock sweep ended",
                                registry=r)
        self._sweep_domains: set[str] = set()

    def sweep_measured(self, domain: str, offset_s: float) -> None:
        """One guest's offset from a sweep; label values bounded, at most MAX_SWEEP_DOMAINS series."""
        name = bounded_label(domain)
        if name not in self._sweep_domains and len(self._sweep_domains) >= MAX_SWEEP_DOMAINS:
            return
        self._sweep_domains.add(name)
        self.sweep_offset.labels(domain=name).set(offset_s)

    def sweep_forget(self, keep: set[str]) -> None:
        """Drop the series of guests the last sweep no longer saw (deleted, stopped, unwatched)."""
        for name in self._sweep_domains - {bounded_label(k) for k in keep}:
            self.sweep_offset.remove(name)
            self._sweep_domains.discard(name)

    def serve(self, listen: str) -> None:
        host, port = parse_listen(listen)
        start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)

"""Aggregate views of a host's catalogue for metrics: counts by domain and outcome, freezes, dumps,
clock offsets, crash loops. Pure SQL over :meth:`Catalog.read`; results are frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from vmcrash.store.catalog import FINAL_STATES, Catalog
from vmcrash.store.states import CrashState

#: the final states as an SQL list (constants of this module, never input)
_FINAL_SQL = ", ".join(f"'{s}'" for s in FINAL_STATES)

__all__ = ["CatalogStats", "DomainStats", "catalog_stats", "skip_category", "SKIP_CATEGORIES"]

#: the bounded set of reasons a dump is skipped for (metric label values)
SKIP_CATEGORIES = ("crash-loop", "policy", "no-space", "not-panicked", "other")


def skip_category(reason: str) -> str:
    """The category of a free-text skip reason (pure; always one of :data:`SKIP_CATEGORIES`)."""
    r = reason.lower()
    if r.startswith("crash loop"):
        return "crash-loop"
    if "disabled by policy" in r:
        return "policy"
    if "space" in r or "free" in r or "full" in r:
        return "no-space"
    if r.startswith("domain is"):
        return "not-panicked"
    return "other"


@dataclass(frozen=True)
class DomainStats:
    """One domain's crashes on this host."""

    domain: str
    outcomes: dict[str, int]
    last_panic_ns: int
    recent_panics: int


@dataclass(frozen=True)
class CatalogStats:
    domains: tuple[DomainStats, ...]
    skipped: dict[str, int]
    freezes_s: tuple[float, ...]
    dump_bytes: int
    dump_seconds: float
    dumps_in_flight: int
    images_held: int
    #: domain → (at_ns, reason, before_ms, after_ms) of its latest clock check
    clock: dict[str, tuple[int, str, float | None, float | None]]
    last_sweep_ns: int | None
    schema_version: int


def _outcome(state: str, dump_path: str | None, skip: str | None) -> str:
    if state not in FINAL_STATES:
        return "in-progress"
    if state in (CrashState.FAILED, CrashState.LOST):
        return "failed"
    if state == CrashState.SKIPPED:
        return "skipped"
    return "dumped" if dump_path else ("skipped" if skip else "handled")


def catalog_stats(cat: Catalog, *, host: str | None, loop_window_ns: int, now_ns: int) -> CatalogStats:
    """Everything the metrics need, in a few queries. ``host=None``: every host's rows.

    :raises StorageError: the catalogue cannot be read.
    """
    where, args = ("WHERE host = ?", (host,)) if host is not None else ("", ())
    by_domain: dict[str, dict[str, int]] = {}
    last: dict[str, int] = {}
    recent: dict[str, int] = {}
    skipped = dict.fromkeys(SKIP_CATEGORIES, 0)
    for r in cat.read(f"SELECT domain, state, dump_path IS NOT NULL AS dumped, skip_reason, source, "
                      f"COUNT(*) AS n, MAX(panic_ns) AS last_ns, SUM(CASE WHEN panic_ns >= ? AND source != "
                      f"'manual' THEN 1 ELSE 0 END) AS recent FROM crashes {where} "
                      f"GROUP BY domain, state, dumped, skip_reason, source",
                      (now_ns - loop_window_ns, *args)):
        d = str(r["domain"])
        outcome = _outcome(r["state"], "x" if r["dumped"] else None, r["skip_reason"])
        by_domain.setdefault(d, {})
        by_domain[d][outcome] = by_domain[d].get(outcome, 0) + int(r["n"])
        last[d] = max(last.get(d, 0), int(r["last_ns"] or 0))
        recent[d] = recent.get(d, 0) + int(r["recent"] or 0)
        if r["skip_reason"]:
            skipped[skip_category(str(r["skip_reason"]))] += int(r["n"])
    freezes = tuple(float(r["freeze_s"]) for r in cat.read(
        f"SELECT freeze_s FROM crashes {where} {'AND' if where else 'WHERE'} freeze_s IS NOT NULL", args))
    agg = cat.read(f"SELECT COALESCE(SUM(dump_size), 0) AS b, COALESCE(SUM((dump_ended_ns - dump_started_ns) / 1e9), 0)"
                   f" AS s, SUM(CASE WHEN state = '{CrashState.CAPTURING.value}' THEN 1 ELSE 0 END) AS inflight, "
                   f"SUM(CASE WHEN recovery_action = 'preserve' AND state IN ({_FINAL_SQL}) THEN 1 ELSE 0 END) AS held "
                   f"FROM crashes {where}", args)[0]
    clock: dict[str, tuple[int, str, float | None, float | None]] = {}
    for r in cat.read(f"SELECT c.domain, c.at_ns, c.reason, c.before_ms, c.after_ms FROM clock_syncs c JOIN "
                      f"(SELECT domain, MAX(id) AS id FROM clock_syncs {where} GROUP BY domain) m ON c.id = m.id",
                      args):
        clock[str(r["domain"])] = (int(r["at_ns"]), str(r["reason"]), r["before_ms"], r["after_ms"])
    sweep = cat.read(f"SELECT MAX(at_ns) AS t FROM clock_syncs {where} {'AND' if where else 'WHERE'} "
                     f"reason = 'sweep'", args)[0]["t"]
    domains = tuple(DomainStats(d, o, last[d], recent[d]) for d, o in by_domain.items())
    return CatalogStats(domains, skipped, freezes, int(agg["b"] or 0), float(agg["s"] or 0.0),
                        int(agg["inflight"] or 0), int(agg["held"] or 0), clock,
                        int(sweep) if sweep else None, cat.schema_version())

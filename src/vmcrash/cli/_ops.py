"""The daemon's ops companions, started by ``vmcrash watch``: fleet replication, webhooks, metrics.

Each reads or writes only the catalogue (``store/``); none imports ``capture/``. The verb hands
them the :class:`Watcher`'s catalogue and its crash-finished hook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmcrash.config import Config
from vmcrash.store.catalog import Catalog

__all__ = ["Companions", "start_companions"]

log = logging.getLogger("vmcrash.ops")


@dataclass
class Companions:
    replicator: Any = None
    notifier: Any = None

    def stop(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
        if self.replicator is not None:
            self.replicator.stop()


def start_companions(cfg: Config, catalog: Catalog, registry: Any) -> Companions:
    """Start what the config asks for; they observe the catalogue's state changes (a crash that
    ends wakes the replicator and queues its notifications)."""
    comp = Companions()

    def on_final(fn: Callable[[int], None]) -> None:
        catalog.observe(lambda change: fn(change.crash_id) if change.final else None)

    if cfg.fleet_url:
        from vmcrash.store.replicate import Replicator

        comp.replicator = Replicator(catalog, cfg.fleet_url, host=cfg.host_name)
        comp.replicator.start()
        on_final(lambda _cid: comp.replicator.wake())
    else:
        catalog.disable_spool()  # replicated once, not any more: stop marking rows nobody will push
    if cfg.notify:
        from vmcrash.notify.webhook import Notifier

        comp.notifier = Notifier(catalog, cfg.notify)
        comp.notifier.start()
        on_final(comp.notifier.crash_finished)
    if registry is not None:
        from vmcrash.metrics.collector import CatalogCollector, HealthProbe

        def probe() -> HealthProbe:
            rep, notif = comp.replicator, comp.notifier
            st = rep.status() if rep is not None else None
            gave_up = sum(1 for e in catalog.outbox() if e.state == "gave-up") if notif is not None else None
            return HealthProbe(spool_rows=st.spool_rows if st else None,
                               fleet_up=(st.last_error is None) if st else None,
                               notify_pending=notif.pending() if notif is not None else None,
                               notify_gave_up=gave_up)

        registry.register(CatalogCollector(catalog, host=cfg.host_name,
                                           crash_loop_max_panics=cfg.crash_loop.max_panics,
                                           crash_loop_window_s=cfg.crash_loop.window_minutes * 60, probe=probe))
    return comp

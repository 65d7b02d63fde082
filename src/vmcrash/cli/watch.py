"""``vmcrash watch``: run the crash-capture daemon in the foreground (systemd runs it as a service)."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import click

from vmcrash.cli._common import config_of

__all__ = ["watch"]


@click.command("watch")
@click.pass_context
def watch(ctx: click.Context) -> int:
    """Watch libvirt for guest panics and handle each one: dump, recover, fix the clock, triage, record.

    Stops cleanly on SIGTERM/SIGINT: a running dump is aborted (or finished, per shutdown_dump)
    and the guest recovered before exit.
    """
    from vmcrash.capture.watch import Watcher
    from vmcrash.cli._ops import start_companions
    from vmcrash.host import aio
    from vmcrash.store.catalog import Catalog

    cfg = config_of(ctx)
    if ctx.find_root().obj.get("verbose", 0) == 0:
        logging.getLogger("vmcrash").setLevel(logging.INFO)
    aio.event_loop()
    watcher = Watcher(cfg, catalog=Catalog(cfg.catalog_path, host=cfg.host_name))

    def chain_finished(fn: Any) -> None:
        before = watcher.handler.on_finished

        def both(crash_id: int) -> None:
            if before is not None:
                before(crash_id)
            try:
                fn(crash_id)
            except Exception:  # a companion must never break crash handling
                logging.getLogger("vmcrash.ops").exception("crash #%d: companion hook failed", crash_id)

        watcher.handler.on_finished = both

    companions = start_companions(cfg, watcher.catalog,
                                  watcher.metrics.registry if watcher.metrics is not None else None, chain_finished)

    def on_signal(signum: int, frame: Any) -> None:
        logging.getLogger("vmcrash").warning("signal %d: stopping", signum)
        watcher.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger("vmcrash").warning("vmcrash watch: %s, dumps in %s, catalogue %s%s",
                                         cfg.libvirt_uri, cfg.dump_dir, cfg.catalog_path,
                                         " (replicated to the fleet catalogue)" if cfg.fleet_url else "")
    fut = aio.submit(watcher.run())
    try:
        while True:
            try:
                fut.result(timeout=1.0)
                break
            except TimeoutError:
                continue
    finally:
        companions.stop()
    sys.stdout.flush()
    return 0

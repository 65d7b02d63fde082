"""``vmcrash watch``: run the crash-capture daemon in the foreground (systemd runs it as a service)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

import click

from vmcrash.cli._common import config_of

__all__ = ["watch"]


@click.command("watch")
@click.option("--standby", is_flag=True,
              help="If another daemon watches this hypervisor, wait and take over when it dies.")
@click.pass_context
def watch(ctx: click.Context, standby: bool) -> int:
    """Watch libvirt for guest panics and handle each one: dump, recover, fix the clock, triage, record.

    One daemon per hypervisor: a second one refuses to start (exit 3) unless --standby, which
    waits for the first to end and then takes over (reconciling what happened in the gap).
    Stops cleanly on SIGTERM/SIGINT: a running dump is aborted (or finished, per shutdown_dump)
    and the guest recovered before exit.
    """
    from vmcrash.capture.daemon_lock import CrashLocks, HypervisorLock, resolve_hypervisor_key
    from vmcrash.capture.watch import Watcher
    from vmcrash.cli._ops import start_companions
    from vmcrash.host import aio
    from vmcrash.store.catalog import Catalog

    cfg = config_of(ctx)
    log = logging.getLogger("vmcrash")
    if ctx.find_root().obj.get("verbose", 0) == 0:
        log.setLevel(logging.INFO)
    stopping = threading.Event()
    watcher: Watcher | None = None

    def on_signal(signum: int, frame: Any) -> None:
        log.warning("signal %d: stopping", signum)
        stopping.set()
        if watcher is not None:
            watcher.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    config_name = str(cfg.path) if cfg.path else "(defaults)"
    key = resolve_hypervisor_key(cfg.libvirt_uri)
    hv_lock = HypervisorLock(cfg.run_dir, key, config=config_name)
    if standby:
        holder = hv_lock.holder()
        if holder is not None:
            log.warning("standby: %s is watched by %s; waiting to take over", key, holder.describe())
        waited_from = time.monotonic()
        if not hv_lock.wait(stopping):
            log.warning("standby: stopped before taking over")
            return 0
        if holder is not None:
            log.warning("standby: took over %s after %.3f s", key, time.monotonic() - waited_from)
    else:
        hv_lock.acquire()
    aio.event_loop()
    w = Watcher(cfg, catalog=Catalog(cfg.catalog_path, host=cfg.host_name),
                crash_locks=CrashLocks(cfg.run_dir, key, config=config_name))
    watcher = w
    if stopping.is_set():
        w.request_stop()

    companions = start_companions(cfg, w.catalog, w.metrics.registry if w.metrics is not None else None)
    log.warning("vmcrash watch: %s (%s), dumps in %s, catalogue %s%s", cfg.libvirt_uri, key, cfg.dump_dir,
                cfg.catalog_path, " (replicated to the fleet catalogue)" if cfg.fleet_url else "")
    fut = aio.submit(w.run())
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
    hv_lock.release()
    return 0

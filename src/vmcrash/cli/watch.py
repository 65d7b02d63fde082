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
    from vmcrash.host import aio

    cfg = config_of(ctx)
    if ctx.find_root().obj.get("verbose", 0) == 0:
        logging.getLogger("vmcrash").setLevel(logging.INFO)
    aio.event_loop()
    watcher = Watcher(cfg)

    def on_signal(signum: int, frame: Any) -> None:
        logging.getLogger("vmcrash").warning("signal %d: stopping", signum)
        watcher.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger("vmcrash").warning("vmcrash watch: %s, dumps in %s, catalogue %s",
                                         cfg.libvirt_uri, cfg.dump_dir, cfg.catalog_path)
    fut = aio.submit(watcher.run())
    while True:
        try:
            fut.result(timeout=1.0)
            break
        except TimeoutError:
            continue
    sys.stdout.flush()
    return 0

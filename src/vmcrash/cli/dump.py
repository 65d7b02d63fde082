"""``vmcrash dump DOMAIN``: dump a running guest's memory now, with a progress bar, into the catalogue."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from vmcrash.capture.daemon_lock import Holder
from vmcrash.cli._common import config_of, echo_json, fmt_bytes, stderr_console
from vmcrash.config import DUMP_FORMATS, load_config
from vmcrash.errors import EXIT_FINDINGS, EXIT_OK, OwnedElsewhere, UsageError, VmcrashError
from vmcrash.store.catalog import UNFINISHED_STATES, Catalog

__all__ = ["dump", "daemon_watches", "refuse_if_owned"]

#: capture modes a manual dump can use (``hold`` only for a panicked guest: it needs a fresh QEMU, and
#: a running guest is resumed in the same one)
MANUAL_CAPTURE_MODES = ("auto", "hold", "copy", "stream", "direct")
#: a crash row of another host updated more recently than this is taken as being handled there
FOREIGN_ROW_FRESH_S = 600.0


def daemon_watches(daemon: Holder | None, name: str) -> bool:
    """Whether the daemon holding the hypervisor handles ``name``'s panics, judged by its own config.

    An unreadable or broken config counts as "watches": refusing is the safe side.
    """
    if daemon is None:
        return False
    if not daemon.config or not daemon.config.startswith("/"):
        return True
    try:
        return load_config(daemon.config).watches(name)
    except VmcrashError:
        return True


def refuse_if_owned(name: str, uuid: str, panicked: bool, daemon: Holder | None, catalog: Any, *,
                    watched: bool = True, this_host: str | None = None) -> None:
    """Refuse a manual dump of a crash that a daemon owns (here, or on another host of a shared catalogue).

    A panicked guest that a running daemon watches is the daemon's even before it took the crash's
    lock; a crash row of another host that is unfinished and fresh is that host's.

    :raises OwnedElsewhere: naming the owner.
    """
    if panicked and watched and daemon is not None and daemon.pid != os.getpid():
        raise OwnedElsewhere(f"{name} has panicked and {daemon.describe()} watches this hypervisor: "
                             "the daemon handles this crash (see 'vmcrash list')", pid=daemon.pid,
                             config=daemon.config)
    row = catalog.latest_for(uuid)
    here = this_host if this_host is not None else catalog.host
    if row is not None and row.state in UNFINISHED_STATES and row.host and row.host != here \
            and time.time_ns() - row.updated_ns < FOREIGN_ROW_FRESH_S * 1e9:
        raise OwnedElsewhere(f"{name}: crash #{row.id} is being handled by host {row.host} "
                             f"(state {row.state}); not dumping")


@click.command("dump")
@click.argument("domain")
@click.option("--format", "fmt", type=click.Choice(DUMP_FORMATS), default=None,
              help="Dump format (default: the domain's policy).")
@click.option("--capture", type=click.Choice(MANUAL_CAPTURE_MODES), default=None,
              help="How the memory is taken (default: the domain's policy; auto copies the guest's memory "
                   "while it is paused and writes the dump after resuming it, when the host has the memory; "
                   "hold: a panicked guest's shared RAM is kept and the guest restarted at once).")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue entry as JSON when done.")
@click.option("--no-progress", is_flag=True, help="No progress bar (default when stderr is not a terminal).")
@click.option("--compact/--no-compact", default=True, show_default=True,
              help="Compact to seekable kdump right after (low priority), as the daemon would.")
@click.pass_context
def dump(ctx: click.Context, domain: str, fmt: str | None, capture: str | None, as_json: bool,
         no_progress: bool, compact: bool) -> int:
    """Dump DOMAIN's memory now (memory-only), under the same file rules and catalogue as crashes.

    A running guest is paused while its memory is taken: with capture ``copy`` (what ``auto`` picks
    when the host has the memory) only while its present pages are copied, then it runs again and
    the dump is written from the copy; with ``stream``/``direct`` while QEMU writes the whole dump.
    vmcrash resumes it and corrects its clock.

    A guest left panicked (no daemon handled it) is handled as the daemon would: the capture mode
    and recovery of its policy, so ``auto`` holds the crashed RAM of a memfd-backed guest and
    restarts it in a fresh QEMU at once (``--capture hold`` is refused for a running guest).
    """
    from dataclasses import replace

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from vmcrash.capture.daemon_lock import CrashLocks, HypervisorLock, resolve_hypervisor_key
    from vmcrash.capture.dumping import DumpProgress
    from vmcrash.capture.pipeline import CrashHandler, PanicReport
    from vmcrash.host.connection import Hypervisor

    cfg = config_of(ctx)
    if fmt is not None:
        cfg = replace(cfg, domains=cfg.domains + ((domain, (("format", fmt),)),))
    if capture is not None:
        cfg = replace(cfg, domains=cfg.domains + ((domain, (("capture", capture),)),))
    hv = Hypervisor(cfg.libvirt_uri)
    dom = hv.lookup(domain)
    info = hv.info(dom)
    if capture == "hold" and not info.panicked:
        raise UsageError(f"{info.name} is {info.state}, not panicked: --capture hold replaces the guest's QEMU "
                         "process, so it is only for a panicked guest (use copy, stream or direct)")
    show_bar = not no_progress and not as_json and sys.stderr.isatty()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[zero]}"),
                        transient=False, disable=not show_bar, console=stderr_console())
    task = progress.add_task(f"dump {info.name}", total=info.memory_bytes, zero="")

    def on_progress(name: str, p: DumpProgress) -> None:
        zero = f"{p.zero_pages * 4096 / 2**20:.0f} MiB zero pages skipped" if p.zero_pages else ""
        progress.update(task, completed=p.processed_bytes, total=p.total_bytes or info.memory_bytes, zero=zero)

    catalog = Catalog(cfg.catalog_path, host=cfg.host_name)
    key = resolve_hypervisor_key(cfg.libvirt_uri)
    config_name = str(cfg.path) if cfg.path else "(defaults)"
    holder = HypervisorLock(cfg.run_dir, key).holder()
    refuse_if_owned(info.name, info.uuid, info.panicked, holder, catalog,
                    watched=daemon_watches(holder, info.name))
    if cfg.fleet_url:  # a shared catalogue: is another host handling this domain's crash right now?
        from vmcrash.store.reader import open_reader

        shared = open_reader(cfg)
        if shared.shared:
            try:
                refuse_if_owned(info.name, info.uuid, False, None, shared.catalog, this_host=cfg.host_name)
            finally:
                shared.catalog.close()
    handler = CrashHandler(cfg, lambda: hv, catalog, progress=on_progress)
    with CrashLocks(cfg.run_dir, key, config=config_name).hold(info.uuid, role="dump", domain=info.name), \
            progress:
        crash_id = handler.handle(PanicReport(info.name, info.uuid, time.time_ns(), "manual"))
    if compact and not as_json and show_bar:
        click.echo("compacting in the background priority class ...", err=True)
    if compact:
        handler.compact(crash_id)
    row = catalog.get(crash_id)
    assert row is not None
    if as_json:
        echo_json(row.to_dict())
    else:
        if row.dump_path:
            cap = row.capture or {}
            click.echo(f"crash #{row.id}: {row.dump_path}")
            click.echo(f"  {fmt_bytes(row.dump_size_bytes)} ({fmt_bytes(cap.get('written_bytes'))} written) in "
                       f"{cap.get('seconds', 0):.2f} s; guest paused {row.freeze_s or 0:.2f} s, now "
                       f"{row.recovery_result}")
            choice = cap.get("choice") or (cap.get("extra") or {}).get("choice") or {}
            if choice:
                click.echo(f"  capture {choice.get('mode')}: {choice.get('reason')}")
        else:
            click.echo(f"crash #{row.id}: no dump: {row.skip_reason or row.error}")
        if row.compact_path and row.compact:
            click.echo(f"  compacted: {row.compact_path} ({fmt_bytes(row.compact.get('output_bytes'))}, "
                       f"{row.compact.get('codec')}, {row.compact.get('seconds')} s)")
        if row.clock and row.clock.get("before_ms") is not None:
            click.echo(f"  clock {row.clock['before_ms']:+.1f} ms -> {row.clock['after_ms']:+.1f} ms")
    hv.close()
    return EXIT_OK if row.dump_path and row.state == "done" else EXIT_FINDINGS

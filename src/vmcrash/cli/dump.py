"""``vmcrash dump DOMAIN``: dump a running guest's memory now, with a progress bar, into the catalogue."""

from __future__ import annotations

import sys
import time

import click

from vmcrash.cli._common import config_of, echo_json, fmt_bytes
from vmcrash.config import DUMP_FORMATS
from vmcrash.errors import EXIT_FINDINGS, EXIT_OK

__all__ = ["dump"]


@click.command("dump")
@click.argument("domain")
@click.option("--format", "fmt", type=click.Choice(DUMP_FORMATS), default=None,
              help="Dump format (default: the domain's policy).")
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue entry as JSON when done.")
@click.option("--no-progress", is_flag=True, help="No progress bar (default when stderr is not a terminal).")
@click.option("--compact/--no-compact", default=True, show_default=True,
              help="Compact to seekable kdump right after (low priority), as the daemon would.")
@click.pass_context
def dump(ctx: click.Context, domain: str, fmt: str | None, as_json: bool, no_progress: bool,
         compact: bool) -> int:
    """Dump DOMAIN's memory now (memory-only), under the same file rules and catalogue as crashes.

    QEMU pauses the guest while it dumps; vmcrash resumes it after and corrects its clock.
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

    from vmcrash.capture.dumping import DumpProgress
    from vmcrash.capture.pipeline import CrashHandler, PanicReport
    from vmcrash.host.connection import Hypervisor
    from vmcrash.store.catalog import Catalog

    cfg = config_of(ctx)
    if fmt is not None:
        cfg = replace(cfg, domains=cfg.domains + ((domain, (("format", fmt),)),))
    hv = Hypervisor(cfg.libvirt_uri)
    dom = hv.lookup(domain)
    info = hv.info(dom)
    show_bar = not no_progress and not as_json and sys.stderr.isatty()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[zero]}"),
                        transient=False, disable=not show_bar)
    task = progress.add_task(f"dump {info.name}", total=info.memory_bytes, zero="")

    def on_progress(name: str, p: DumpProgress) -> None:
        zero = f"{p.zero_pages * 4096 / 2**20:.0f} MiB zero pages skipped" if p.zero_pages else ""
        progress.update(task, completed=p.processed_bytes, total=p.total_bytes or info.memory_bytes, zero=zero)

    catalog = Catalog(cfg.catalog_path)
    handler = CrashHandler(cfg, lambda: hv, catalog, progress=on_progress)
    with progress:
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
            click.echo(f"  {fmt_bytes(row.dump_size)} ({fmt_bytes(cap.get('written_bytes'))} written) in "
                       f"{cap.get('seconds', 0):.2f} s; guest paused {row.freeze_s or 0:.2f} s, now "
                       f"{row.recovery_result}")
        else:
            click.echo(f"crash #{row.id}: no dump: {row.skip_reason or row.error}")
        if row.compact_path and row.compact:
            click.echo(f"  compacted: {row.compact_path} ({fmt_bytes(row.compact.get('output_bytes'))}, "
                       f"{row.compact.get('codec')}, {row.compact.get('seconds')} s)")
        if row.clock and row.clock.get("before_ms") is not None:
            click.echo(f"  clock {row.clock['before_ms']:+.1f} ms -> {row.clock['after_ms']:+.1f} ms")
    hv.close()
    return EXIT_OK if row.dump_path and row.state == "done" else EXIT_FINDINGS

"""``vmcrash list``: the recorded crashes, newest first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from vmcrash.cli._common import config_of, echo_json, fmt_bytes, fmt_ns

if TYPE_CHECKING:
    from vmcrash.store.catalog import Catalog

__all__ = ["list_crashes"]


def _cause(sync: dict[str, object]) -> str:
    """What caused a clock correction: the libvirt event (``started/restored``), the crash, or ``-``."""
    result = sync.get("result")
    event = result.get("event") if isinstance(result, dict) else None
    if isinstance(event, str) and event:
        return event
    if sync.get("crash_id") is not None:
        return f"crash #{sync['crash_id']}"
    return "-"


@click.command("list")
@click.option("--domain", "-d", default=None, help="Only this domain (name or UUID).")
@click.option("--limit", "-n", type=click.IntRange(1, 100000), default=50, show_default=True)
@click.option("--clock", "clock", is_flag=True,
              help="List clock checks and corrections (after crashes, resumes, sweeps) instead.")
@click.option("--by-signature", "by_signature", is_flag=True,
              help="Group crashes by crash signature (the same bug on many guests is one line).")
@click.option("--json", "as_json", is_flag=True, help="JSON list of crash objects.")
@click.option("--host", "host", default=None,
              help="Only this host's rows (default with a fleet catalogue: this host).")
@click.option("--all-hosts", "all_hosts", is_flag=True, help="Every host's rows (fleet catalogue).")
@click.pass_context
def list_crashes(ctx: click.Context, domain: str | None, limit: int, clock: bool, as_json: bool,
                 by_signature: bool, host: str | None, all_hosts: bool) -> None:
    """List recorded crashes (id, time, domain, state, dump, freeze, recovery)."""
    from vmcrash.errors import UsageError
    from vmcrash.store.reader import open_reader

    if host is not None and all_hosts:
        raise UsageError("--host and --all-hosts exclude each other")
    cfg = config_of(ctx)
    reader = open_reader(cfg)
    if reader.note:
        click.echo(f"warning: {reader.note}", err=True)
    catalog = reader.catalog
    # A shared catalogue lists this host unless asked otherwise; a local file holds one host anyway.
    only = None if all_hosts else host if host is not None else cfg.host_name if reader.shared else None
    if by_signature:
        _print_signatures(catalog, limit, as_json)
        return
    if clock:
        syncs = catalog.clock_syncs(domain=domain, limit=limit, host=only)
        if as_json:
            echo_json(syncs)
            return
        if not syncs:
            click.echo("no clock corrections recorded")
            return
        click.echo(f"{'WHEN (UTC)':<19}  {'DOMAIN':<28} {'REASON':<12} {'CAUSE':<24} {'BEFORE ms':>11} "
                   f"{'AFTER ms':>9}  OK")
        for s in syncs:
            before = f"{s['before_ms']:+.1f}" if s["before_ms"] is not None else "-"
            after = f"{s['after_ms']:+.1f}" if s["after_ms"] is not None else "-"
            click.echo(f"{fmt_ns(s['at_ns']):<19}  {s['domain'][:28]:<28} {s['reason'][:12]:<12} "
                       f"{_cause(s):<24} {before:>11} {after:>9}  "
                       f"{'yes' if s['ok'] else 'no: ' + str(s.get('error') or 'target not reached')}")
        return
    rows = catalog.crashes(domain=domain, limit=limit, host=only)
    if as_json:
        echo_json([r.to_dict() for r in rows])
        return
    if not rows:
        click.echo("no crashes recorded" + (f" for {domain}" if domain else "")
                   + (f" on {only}" if only is not None else ""))
        return
    hosts = {r.host for r in rows}
    if len(hosts) > 1 or all_hosts or host is not None:
        _list_with_hosts(rows)
        return
    click.echo(f"{'ID':>4}  {'PANIC (UTC)':<19}  {'DOMAIN':<28} {'STATE':<9} {'DUMP':>10} {'FREEZE':>8}  RECOVERY")
    for r in rows:
        dump = fmt_bytes(r.dump_size_bytes) if r.dump_path else ("skipped" if r.skip_reason else "-")
        freeze = f"{r.freeze_s:.2f}s" if r.freeze_s is not None else "-"
        rec = f"{r.recovery_action or '-'}->{r.recovery_result or '-'}"
        click.echo(f"{r.id:>4}  {fmt_ns(r.panic_ns):<19}  {r.domain[:28]:<28} {r.state:<9} {dump:>10} "
                   f"{freeze:>8}  {rec}")


def _print_signatures(catalog: Catalog, limit: int, as_json: bool) -> None:
    """``list --by-signature``: the grouping of the web dashboard's signatures page."""
    from vmcrash.store.signatures import group_signatures

    groups = group_signatures(catalog.signature_counts())[:limit]
    if as_json:
        echo_json([g.to_dict() for g in groups])
        return
    if not groups:
        click.echo("no crash signatures recorded")
        return
    click.echo(f"{'CRASHES':>7} {'HOSTS':>5} {'DOMAINS':>7}  {'FIRST (UTC)':<19}  {'LAST (UTC)':<19}  SIGNATURE")
    for g in groups:
        click.echo(f"{g.crashes:>7} {g.hosts:>5} {g.domains:>7}  {fmt_ns(g.first_ns):<19}  {fmt_ns(g.last_ns):<19}  "
                   f"{g.signature}")


def _list_with_hosts(rows: list[Any]) -> None:
    click.echo(f"{'ID':>5}  {'HOST':<16} {'PANIC (UTC)':<19}  {'DOMAIN':<28} {'STATE':<9} {'DUMP':>10} "
               f"{'FREEZE':>8}  RECOVERY")
    for r in rows:
        dump = fmt_bytes(r.dump_size_bytes) if r.dump_path else ("skipped" if r.skip_reason else "-")
        freeze = f"{r.freeze_s:.2f}s" if r.freeze_s is not None else "-"
        rec = f"{r.recovery_action or '-'}->{r.recovery_result or '-'}"
        click.echo(f"{r.id:>5}  {(r.host or '-')[:16]:<16} {fmt_ns(r.panic_ns):<19}  {r.domain[:28]:<28} "
                   f"{r.state:<9} {dump:>10} {freeze:>8}  {rec}")

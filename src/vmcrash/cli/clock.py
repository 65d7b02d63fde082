"""``vmcrash clock check|sync DOMAIN...``: measure and correct guest clocks over the guest agent.

Exit codes: 0 every domain measured (check) / within target (sync); 1 a sync did not reach its
target; 2 bad data from a guest agent or bad arguments; 3 environment (no agent, agent refused,
libvirt unreachable). With several domains the highest applies; each failing domain gets one
``error:`` line on stderr, and with ``--json`` an ``error`` object in its entry as well.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from vmcrash.clock import DEFAULT_MAX_ATTEMPTS, DEFAULT_PROBES, OffsetEstimate, SyncResult, measure, sync
from vmcrash.errors import EXIT_FINDINGS, EXIT_OK, VmcrashError
from vmcrash.host.connection import DEFAULT_URI

__all__ = ["DomainOutcome", "clock", "exit_code_of", "format_duration", "format_offset", "outcome_dict"]


@dataclass(frozen=True)
class DomainOutcome:
    """What happened to one domain: a result, or the error that stopped it."""

    domain: str
    result: OffsetEstimate | SyncResult | None = None
    error: VmcrashError | None = None


def format_offset(offset_ns: int) -> str:
    """A signed offset for people: ``+0.312 ms``, ``-15.002 s``."""
    if abs(offset_ns) >= 1_000_000_000:
        return f"{offset_ns / 1e9:+.3f} s"
    return f"{offset_ns / 1e6:+.3f} ms"


def format_duration(duration_ns: int) -> str:
    """An unsigned duration for people: ``0.52 ms``, ``1.204 s``."""
    if abs(duration_ns) >= 1_000_000_000:
        return f"{duration_ns / 1e9:.3f} s"
    return f"{duration_ns / 1e6:.2f} ms"


def exit_code_of(outcomes: Sequence[DomainOutcome]) -> int:
    """The verb's exit code: the highest error code, else 1 if a sync missed its target, else 0."""
    code = EXIT_OK
    for outcome in outcomes:
        if outcome.error is not None:
            code = max(code, outcome.error.exit_code)
        elif isinstance(outcome.result, SyncResult) and not outcome.result.ok:
            code = max(code, EXIT_FINDINGS)
    return code


def outcome_dict(outcome: DomainOutcome) -> dict[str, Any]:
    """The ``--json`` object of one domain."""
    doc: dict[str, Any] = {"domain": outcome.domain}
    if outcome.error is not None:
        doc["ok"] = False
        doc["error"] = {"type": type(outcome.error).__name__, "message": str(outcome.error),
                        "exit_code": outcome.error.exit_code}
    elif isinstance(outcome.result, SyncResult):
        doc.update(outcome.result.to_dict())
    elif isinstance(outcome.result, OffsetEstimate):
        doc["ok"] = True
        doc.update(outcome.result.to_dict())
    return doc


def _quiet_libvirt() -> None:
    """Stop libvirt printing its own copy of every error on stderr (we print one line ourselves)."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _run_each(uri: str, domains: Sequence[str], action: Callable[[Any], OffsetEstimate | SyncResult]
              ) -> list[DomainOutcome]:
    """Open ``uri`` once and apply ``action`` to each domain's agent; errors are kept per domain.

    :raises LibvirtUnavailable: libvirt cannot be reached at all (nothing to report per domain).
    """
    from vmcrash.host.agent import Agent
    from vmcrash.host.connection import Hypervisor

    _quiet_libvirt()
    outcomes = []
    with Hypervisor(uri) as hv:
        for name in domains:
            try:
                outcomes.append(DomainOutcome(name, result=action(Agent(hv.lookup(name)))))
            except VmcrashError as exc:
                outcomes.append(DomainOutcome(name, error=exc))
    return outcomes


def _report(outcomes: Sequence[DomainOutcome], as_json: bool, table: Callable[[Sequence[DomainOutcome]], None]
            ) -> None:
    for outcome in outcomes:
        if outcome.error is not None:
            click.echo(f"error: {outcome.error}", err=True)
    if as_json:
        click.echo(json.dumps([outcome_dict(o) for o in outcomes], indent=2))
    elif any(o.error is None for o in outcomes):
        table([o for o in outcomes if o.error is None])


def _console() -> Any:
    from rich.console import Console

    # Piped output keeps whole domain names instead of wrapping them to an assumed 80 columns.
    width = None if sys.stdout.isatty() else 250
    return Console(file=sys.stdout, highlight=False, width=width)


def _check_table(outcomes: Sequence[DomainOutcome]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("DOMAIN", "OFFSET", "± RTT/2", "SPREAD", "PROBES"):
        table.add_column(col, justify="left" if col == "DOMAIN" else "right", no_wrap=True)
    for o in outcomes:
        est = o.result
        assert isinstance(est, OffsetEstimate)
        table.add_row(o.domain, format_offset(est.offset_ns), format_duration(est.rtt_ns // 2),
                      format_duration(est.spread_ns), str(est.probes_used))
    _console().print(table)


def _sync_table(outcomes: Sequence[DomainOutcome]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("DOMAIN", "BEFORE", "AFTER", "± RTT/2", "SETS", "RESULT"):
        table.add_column(col, justify="left" if col in ("DOMAIN", "RESULT") else "right", no_wrap=True)
    for o in outcomes:
        res = o.result
        assert isinstance(res, SyncResult)
        verdict = f"{'ok' if res.ok else 'MISSED'} (target {format_duration(res.target_ns)})"
        table.add_row(o.domain, format_offset(res.before.offset_ns), format_offset(res.after.offset_ns),
                      format_duration(res.after.rtt_ns // 2), str(res.attempts), verdict)
    _console().print(table)


_connect = click.option("-c", "--connect", "uri", default=None, metavar="URI",
                        help=f"libvirt connection URI (default: the config's libvirt_uri, else {DEFAULT_URI}).")


def _uri(ctx: click.Context, uri: str | None) -> str:
    """``-c`` wins; else the configuration's ``libvirt_uri``."""
    if uri:
        return uri
    from vmcrash.cli._common import config_of

    return config_of(ctx).libvirt_uri
_as_json = click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per domain.")
_probes = click.option("--probes", type=click.IntRange(1, 1000), default=DEFAULT_PROBES, show_default=True,
                       help="guest-get-time probes per measurement (the faster half is used).")


@click.group("clock")
def clock() -> None:
    """Measure and correct guest clocks over the guest agent (NTP-style)."""


@clock.command("check")
@click.argument("domains", nargs=-1, required=True, metavar="DOMAIN...")
@_connect
@_probes
@_as_json
@click.pass_context
def check(ctx: click.Context, domains: tuple[str, ...], uri: str | None, probes: int, as_json: bool) -> None:
    """Measure each DOMAIN's clock offset (guest - host); change nothing.

    Exit 0 when every domain was measured.
    """
    outcomes = _run_each(_uri(ctx, uri), domains, lambda agent: measure(agent, probes=probes))
    _report(outcomes, as_json, _check_table)
    ctx.exit(exit_code_of(outcomes))


@clock.command("sync")
@click.argument("domains", nargs=-1, required=True, metavar="DOMAIN...")
@_connect
@click.option("--target-ms", type=click.FloatRange(0.001, 60_000), default=5.0, show_default=True,
              help="Tolerance: stop once |offset| is at most this.")
@click.option("--attempts", type=click.IntRange(1, 100), default=DEFAULT_MAX_ATTEMPTS, show_default=True,
              help="At most this many guest-set-time calls per domain.")
@_probes
@_as_json
@click.pass_context
def sync_cmd(ctx: click.Context, domains: tuple[str, ...], uri: str | None, target_ms: float, attempts: int,
             probes: int, as_json: bool) -> None:
    """Set each DOMAIN's clock to the host's, compensated for the agent's delay, then verify.

    Exit 0 when every domain ended within --target-ms, 1 when one did not.
    """
    target_ns = max(1, round(target_ms * 1e6))
    outcomes = _run_each(_uri(ctx, uri), domains,
                         lambda agent: sync(agent, target_ns=target_ns, max_attempts=attempts, probes=probes))
    _report(outcomes, as_json, _sync_table)
    ctx.exit(exit_code_of(outcomes))

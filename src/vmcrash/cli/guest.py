"""``vmcrash guest audit|fix``: a thin click front end over :mod:`vmcrash.guest.cli` (no libvirt, no rich).

Both front ends call the same :func:`~vmcrash.guest.cli.run_audit` / :func:`~vmcrash.guest.cli.run_fix`,
so ``vmcrash guest ...`` and ``python3 -m vmcrash.guest ...`` print the same and exit the same.
"""

from __future__ import annotations

import click

from vmcrash.guest.cli import run_audit, run_fix

__all__ = ["guest"]


@click.group("guest")
def guest() -> None:
    """In-guest clock-ordering audit and fix (stdlib only; runs inside guests and on images)."""


@guest.command("audit")
@click.option("--root", default="/", show_default=True, help="Audit the system installed under this directory.")
@click.option("--domain", default=None, metavar="NAME",
              help="Audit this running guest from the host, through its guest agent (guest-exec of the "
                   "guest's python3; nothing is installed in the guest).")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=float,
              help="With --domain: seconds the guest audit may take.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--unit", "units", multiple=True, metavar="UNIT", help="Audit only this service (repeatable).")
@click.option("-v", "--verbose", is_flag=True, help="Every edge chain.")
@click.pass_context
def audit(ctx: click.Context, root: str, domain: str | None, timeout_s: float, as_json: bool,
          units: tuple[str, ...], verbose: bool) -> None:
    """Report services that can start before time-sync.target.

    Exit codes: 0 nothing found, 1 findings, 2 could not audit, 3 (--domain) the guest or its agent
    could not be reached.
    """
    if domain is None:
        ctx.exit(run_audit(root, units, as_json=as_json, verbose=verbose))
    if root != "/":
        raise click.UsageError("--domain audits the running guest's own root; --root does not apply")
    ctx.exit(_audit_domain(ctx, domain, units, as_json=as_json, verbose=verbose, timeout_s=timeout_s))


def _audit_domain(ctx: click.Context, domain: str, units: tuple[str, ...], *, as_json: bool, verbose: bool,
                  timeout_s: float) -> int:
    from vmcrash.cli._common import config_of
    from vmcrash.errors import VmcrashError
    from vmcrash.host.agent import Agent
    from vmcrash.host.connection import Hypervisor
    from vmcrash.host.guest_exec import run_guest_cli

    args = ["audit", *(["--json"] if as_json else []), *(["-v"] if verbose else [])]
    for u in units:
        args += ["--unit", u]
    try:
        hv = Hypervisor(config_of(ctx).libvirt_uri)
        try:
            run = run_guest_cli(Agent(hv.lookup(domain), timeout_s=10), args, timeout_s=timeout_s)
        finally:
            hv.close()
    except VmcrashError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    click.echo(run.out, nl=False)
    if run.err:
        click.echo(run.err, err=True, nl=False)
    return run.exit_code


@guest.command("fix")
@click.option("--root", default="/", show_default=True, help="Fix the system installed under this directory.")
@click.option("--unit", "units", multiple=True, metavar="UNIT",
              help="Order this service after time-sync.target (repeatable; ssh only this way).")
@click.option("--all-enabled", is_flag=True,
              help="Every application service of the boot that can start before time-sync.target "
                   "(never console, login, network, time or ssh services).")
@click.option("--wait-timeout", "wait_timeout_s", type=int, default=None, metavar="SECONDS",
              help="How long the boot waits for the clock at most (default 90).")
@click.option("--strict", is_flag=True, help="The chosen services also require a synchronized clock "
                                              "(they stay down without one).")
@click.option("--dry-run", is_flag=True, help="Print the diff, write nothing.")
@click.option("--undo", is_flag=True, help="Remove exactly what earlier fixes wrote.")
@click.pass_context
def fix(ctx: click.Context, root: str, units: tuple[str, ...], all_enabled: bool, wait_timeout_s: int | None,
        strict: bool, dry_run: bool, undo: bool) -> None:
    """Order services after time-sync.target and make something hold it, for a bounded time, until the clock is right.

    Exit codes: 0 done and the audit of the result passes, 1 it still has findings, 2 refused or
    bad input, 3 a write failed.
    """
    ctx.exit(run_fix(root, units, all_enabled=all_enabled, dry_run=dry_run, undo=undo,
                     wait_timeout_s=wait_timeout_s, strict=strict))

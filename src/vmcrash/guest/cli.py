"""The guest-side command line, stdlib only: ``python3 -m vmcrash.guest audit|fix``.

:func:`run_audit` and :func:`run_fix` are the implementation; both this argparse front end and
``vmcrash guest`` (click, ``vmcrash/cli/guest.py``) call them, so the two give the same output and
exit codes. Audit: 0 nothing found, 1 findings, 2 could not audit. Fix: 0 done (or nothing to do)
and the audit of the result passes, 1 the audit of the result still has findings, 2 refused or
bad input, 3 a write failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from vmcrash.errors import EXIT_USAGE, VmcrashError

__all__ = ["build_parser", "main", "run_audit", "run_fix"]

log = logging.getLogger(__name__)


def _err(message: str, stream: TextIO | None = None) -> None:
    print(f"error: {message}", file=stream or sys.stderr)


def run_audit(root: str = "/", units: Sequence[str] = (), *, as_json: bool = False, verbose: bool = False,
              out: TextIO | None = None) -> int:
    """Audit ``root`` and print the report; return 0 (nothing found), 1 (findings) or 2 (could not audit)."""
    from vmcrash.guest.audit import audit

    out = out or sys.stdout
    try:
        report = audit(root, units)
    except VmcrashError as exc:
        log.debug("audit failed", exc_info=True)
        _err(f"could not audit: {exc}")
        return EXIT_USAGE
    if as_json:
        json.dump(report.to_json(), out, indent=1)
        out.write("\n")
    else:
        out.write(report.render_text(verbose=verbose))
    for p in report.problems:
        print(f"warning: {p}", file=sys.stderr)
    return report.exit_code


def run_fix(root: str = "/", units: Sequence[str] = (), *, all_enabled: bool = False, dry_run: bool = False,
            undo: bool = False, wait_timeout_s: int | None = None, strict: bool = False,
            out: TextIO | None = None) -> int:
    """Plan and apply (or ``dry_run``: print the diff; ``undo``: revert) the fix; return the exit code.

    After writing, the audit runs again on the result (for the fixed services): exit 1 when it
    still has findings, with each one printed.
    """
    from vmcrash.guest.audit import audit
    from vmcrash.guest.fix import DEFAULT_WAIT_TIMEOUT_S, apply_fix, plan_fix, render_plan, undo_fix

    out = out or sys.stdout
    try:
        if undo:
            if units or all_enabled or strict or wait_timeout_s is not None:
                _err("--undo takes no --unit/--all-enabled/--strict/--wait-timeout: it removes everything "
                     "the manifest records")
                return EXIT_USAGE
            result = undo_fix(root, dry_run=dry_run)
            verb = "would " if dry_run else ""
            for p in result.removed:
                out.write(f"{verb}remove {p}\n")
            for p in result.restored:
                out.write(f"{verb}restore {p}\n")
            for w in result.warnings:
                print(f"warning: {w}", file=sys.stderr)
            return 0
        plan = plan_fix(root, units, all_enabled=all_enabled, strict=strict,
                        wait_timeout_s=DEFAULT_WAIT_TIMEOUT_S if wait_timeout_s is None else wait_timeout_s)
        if dry_run:
            out.write(render_plan(plan))
            out.writelines(line + "\n" for line in plan.summary())
            return 0
        result = apply_fix(plan)
        for p in result.written:
            out.write(f"wrote {p}\n")
        if not result.written:
            out.write("nothing to change\n")
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        out.writelines(line + "\n" for line in plan.summary())
        again = audit(root, plan.services)
        if again.exit_code != 0:
            out.write(f"audit after the fix still finds {len(again.findings) + len(again.problems)} problem(s):\n")
            out.writelines(f"  [{f.code}] {f.message}\n" for f in again.findings)
            out.writelines(f"  {p}\n" for p in again.problems)
            return 1
        out.write("audit after the fix: no findings\n")
        return 0
    except VmcrashError as exc:
        log.debug("fix failed", exc_info=True)
        _err(str(exc))
        return exc.exit_code


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python3 -m vmcrash.guest``."""
    parser = argparse.ArgumentParser(
        prog="python3 -m vmcrash.guest",
        description="Check (audit) and make sure (fix) that services start only after the clock is stepped.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail (every edge chain)")
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("audit", help="report services that can start before time-sync.target",
                       description="Exit codes: 0 nothing found, 1 findings, 2 could not audit.")
    a.add_argument("--root", default="/", help="audit the system installed under this directory (an image)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument("--unit", action="extend", nargs="+", default=[], metavar="UNIT",
                   help="audit only these services")
    a.add_argument("-v", "--verbose", action="store_true", dest="sub_verbose", help="every edge chain")
    f = sub.add_parser("fix", help="order services after time-sync.target and make it wait for the clock",
                       description="Exit codes: 0 done and the audit of the result passes, 1 it still has "
                                   "findings, 2 refused or bad input, 3 a write failed.")
    f.add_argument("--root", default="/", help="fix the system installed under this directory (an image)")
    f.add_argument("--unit", action="extend", nargs="+", default=[], metavar="UNIT",
                   help="services to order after time-sync.target (ssh only this way)")
    f.add_argument("--all-enabled", action="store_true",
                   help="every application service of the boot transaction that can start before "
                        "time-sync.target (never console, login, network, time or ssh services)")
    f.add_argument("--wait-timeout", type=int, default=None, metavar="SECONDS",
                   help="how long the boot waits for the clock at most (default 90)")
    f.add_argument("--strict", action="store_true",
                   help="the chosen services also require a synchronized clock: they stay down without one")
    f.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    f.add_argument("--undo", action="store_true", help="remove exactly what earlier fixes wrote")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the guest command line; return the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "audit":
        return run_audit(args.root, args.unit, as_json=args.json, verbose=args.verbose or args.sub_verbose)
    return run_fix(args.root, args.unit, all_enabled=args.all_enabled, dry_run=args.dry_run, undo=args.undo,
                   wait_timeout_s=args.wait_timeout, strict=args.strict)

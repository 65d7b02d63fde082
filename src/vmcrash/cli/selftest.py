"""``vmcrash selftest``: crash a throwaway guest here and show each step with its timing."""

from __future__ import annotations

import json

import click

from vmcrash.cli._common import fill_mib_option
from vmcrash.errors import EXIT_FINDINGS, EXIT_OK

__all__ = ["selftest"]


@click.command("selftest")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines.")
@click.option("--memory", "memory_mib", type=click.IntRange(256, 65536), default=512, show_default=True,
              help="Guest memory in MiB.")
@click.option("--vcpus", type=click.IntRange(1, 64), default=1, show_default=True)
@fill_mib_option("MiB of random data the guest writes to RAM before the crash.")
@click.option("--panic-model", type=click.Choice(["isa", "pci"]), default="isa", show_default=True)
@click.option("-c", "--connect", "uri", default="qemu:///system", show_default=True, help="libvirt URI.")
@click.pass_context
def selftest(ctx: click.Context, as_json: bool, memory_mib: int, vcpus: int, fill_mib: int,
             panic_model: str, uri: str) -> int:
    """Boot a throwaway guest, crash it, and check that every step of the handling works.

    Prints each step with its duration and a final PASS/FAIL line. Exit code 0 only on PASS.
    """
    from vmcrash.lab.selftest import SelftestOptions, StepResult, run_selftest

    options = SelftestOptions(memory_mib=memory_mib, vcpus=vcpus, fill_mib=fill_mib,
                              panic_model=panic_model, uri=uri)

    def show(res: StepResult) -> None:
        if as_json:
            return
        mark = {"ok": "ok  ", "fail": "FAIL", "not-run": "--  "}[res.status]
        click.echo(f"  {res.name:<17} {mark} {res.duration_s:7.2f} s  {res.detail}")

    if not as_json:
        click.echo(f"vmcrash selftest: {memory_mib} MiB guest, panic device {panic_model}")
    report = run_selftest(options, on_step=show)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        verdict = "PASS" if report.passed else "FAIL"
        ok = sum(1 for s in report.steps if s.status == "ok")
        click.echo(f"{verdict}: {ok}/{len(report.steps)} steps ok in {report.duration_s:.1f} s")
    return EXIT_OK if report.passed else EXIT_FINDINGS

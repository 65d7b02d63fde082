"""Entry point of the ``vmcrash`` command: the verb table, error-to-exit-code mapping, logging.

Verbs are imported lazily so that ``vmcrash guest ...`` runs inside a guest that has neither
libvirt-python nor rich installed.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from vmcrash.errors import EXIT_ENVIRONMENT, EXIT_USAGE, VmcrashError

__all__ = ["main", "cli"]

log = logging.getLogger("vmcrash")

#: verb -> (module, attribute, one-line help). Keep sorted by the data flow, not alphabetically.
VERBS: dict[str, tuple[str, str, str]] = {
    "watch": ("vmcrash.cli.watch", "watch", "Run the crash-capture daemon on libvirt events."),
    "dump": ("vmcrash.cli.dump", "dump", "Dump a running domain's memory now, with progress."),
    "doctor": ("vmcrash.cli.doctor", "doctor", "Check (and --fix) domains for crash readiness."),
    "clock": ("vmcrash.cli.clock", "clock", "Measure and correct guest clocks over the guest agent."),
    "list": ("vmcrash.cli.listing", "list_crashes", "List recorded crashes from the catalogue."),
    "show": ("vmcrash.cli.show", "show", "Show one recorded crash in full."),
    "analyze": ("vmcrash.cli.analyze", "analyze", "Triage a dump file without debuginfo."),
    "selftest": ("vmcrash.cli.selftest", "selftest", "Crash a throwaway guest and check every step."),
    "web": ("vmcrash.cli.web", "web", "Serve the read-only web dashboard on the catalogue."),
    "lab": ("vmcrash.cli.lab", "lab", "Build and run throwaway crash guests."),
    "guest": ("vmcrash.cli.guest", "guest", "In-guest clock-ordering audit and fix (no libvirt needed)."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = VERBS.get(cmd_name)
        if spec is None:
            return None
        module_name, attr, help_text = spec
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            # A verb whose optional dependencies are missing still shows in --help and explains itself.
            missing = exc.name or str(exc)

            @click.command(cmd_name, help=help_text, context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args: tuple[str, ...]) -> None:
                raise VmcrashErrorExit(
                    f"'vmcrash {cmd_name}' needs {missing}: install the host extra "
                    "(pip install 'vmcrash[host]')",
                    EXIT_ENVIRONMENT,
                )

            return unavailable
        command: click.Command = getattr(module, attr)
        accept_global_options(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, spec[2]) for name, spec in VERBS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _set_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["config_path"] = value


def _set_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["verbose"] = root.obj.get("verbose", 0) + value
        logging.getLogger().setLevel(max(logging.WARNING - 10 * root.obj["verbose"], logging.DEBUG))


def accept_global_options(command: click.Command) -> None:
    """Let ``--config FILE`` and ``-v`` also follow the verb (``vmcrash watch --config FILE``).

    Added to every command of the verb, sub-commands included, unless it has an option of that
    name of its own (``vmcrash guest audit -v`` keeps its meaning: every edge chain). Idempotent.
    """
    names = {opt for p in command.params for opt in getattr(p, "opts", [])}
    if "--config" not in names:
        command.params.append(click.Option(["--config", "global_config"], type=click.Path(dir_okay=False),
                                           default=None, expose_value=False, callback=_set_config,
                                           is_eager=True, help="Config file (as before the verb)."))
    if "-v" not in names and "--verbose" not in names:
        command.params.append(click.Option(["-v", "--verbose", "global_verbose"], count=True, expose_value=False,
                                           callback=_set_verbose, help="More logging (as before the verb)."))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_global_options(sub)


class VmcrashErrorExit(Exception):
    """Internal: carry a message and exit code out of a verb without a VmcrashError."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="VMCRASH_CONFIG",
    help="Config file (default /etc/vmcrash/vmcrash.toml; env VMCRASH_CONFIG).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug and tracebacks).")
@click.version_option(package_name="vmcrash")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """vmcrash: guest kernel panics on KVM/libvirt, handled end to end.

    Exit codes: 0 ok, 1 findings, 2 usage or bad input, 3 environment.
    """
    from vmcrash.cli._common import log_handler

    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), handlers=[log_handler()])
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["verbose"] = verbose


def main(argv: list[str] | None = None) -> Any:
    """Run the CLI; print one ``error:`` line per failure and return its exit code."""
    try:
        rc = cli.main(args=argv, prog_name="vmcrash", standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except VmcrashError as exc:
        log.debug("traceback", exc_info=True)
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except VmcrashErrorExit as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        # `vmcrash list | head`: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()

"""Helpers shared by the verbs: the configuration from the group's --config, JSON output, durations,
and the ``--fill-mib`` option of the lab verbs (with its older spelling ``--fill-mb``)."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from vmcrash.config import Config, load_config

__all__ = ["config_of", "echo_json", "fmt_ns", "fmt_bytes", "stderr_console", "log_handler", "fill_mib_option"]

_console: Any = None


def stderr_console() -> Any:
    """The one rich ``Console`` on stderr that live progress bars and log lines share, or ``None``
    without rich (the guest side runs with click alone)."""
    global _console
    if _console is None:
        try:
            from rich.console import Console
        except ImportError:
            return None
        _console = Console(stderr=True)
    return _console


def log_handler() -> logging.Handler:
    """Log lines for a terminal go through :func:`stderr_console`, so they print above a live progress
    bar instead of cutting it; anything else (journal, files, pipes) gets plain unwrapped lines."""
    console = stderr_console() if sys.stderr.isatty() else None
    if console is not None:
        from rich.logging import RichHandler

        return RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False,
                           log_time_format="%H:%M:%S")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def config_of(ctx: click.Context) -> Config:
    """The configuration named by ``vmcrash --config`` / ``$VMCRASH_CONFIG`` / the default file."""
    root = ctx.find_root()
    path = (root.obj or {}).get("config_path") if root.obj else None
    return load_config(path)


def fill_mib_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--fill-mib N`` option (MiB of random data a lab guest writes to RAM; 0-65536, default 0)
    passed as ``fill_mib``, and its older spelling ``--fill-mb``, hidden, with the same meaning.

    Giving both is a usage error (exit 2).
    """
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(*args: Any, fill_mb: int | None, **kwargs: Any) -> Any:
            if fill_mb is not None:
                if click.get_current_context().get_parameter_source("fill_mib") is ParameterSource.COMMANDLINE:
                    raise click.UsageError("--fill-mb is the older spelling of --fill-mib: give one of them")
                kwargs["fill_mib"] = fill_mb
            return f(*args, **kwargs)

        command = click.option("--fill-mb", type=click.IntRange(0, 65536), default=None, hidden=True)(command)
        return click.option("--fill-mib", type=click.IntRange(0, 65536), default=0, show_default=True,
                            help=help_text)(command)

    return decorate


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


def fmt_ns(ns: int | None) -> str:
    """Host wall-clock nanoseconds as ``YYYY-mm-dd HH:MM:SS`` UTC; ``-`` for none."""
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)

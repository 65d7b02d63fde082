"""Helpers shared by the verbs: the configuration from the group's --config, JSON output, durations."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import click

from vmcrash.config import Config, load_config

__all__ = ["config_of", "echo_json", "fmt_ns", "fmt_bytes", "stderr_console", "log_handler"]

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

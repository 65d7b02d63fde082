"""``vmcrash web``: serve the read-only dashboard on the catalogue (uvicorn)."""

from __future__ import annotations

import socket

import click

from vmcrash.cli._common import config_of
from vmcrash.config import Config, split_host_port
from vmcrash.errors import ConfigError, EnvironmentProblem

__all__ = ["allowed_hosts", "parse_listen", "web"]


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9465`` for IPv6) -> (host, port). :raises ConfigError: malformed."""
    hp = split_host_port(listen)
    if hp is None or not hp[0]:
        raise ConfigError(f"expected host:port, got {listen!r}", key="--listen")
    return hp


def allowed_hosts(listen_host: str) -> tuple[str, ...]:
    """``Host`` headers to answer: on a loopback address only local names (no DNS rebinding), else all."""
    if listen_host in ("localhost", "::1") or listen_host.startswith("127."):
        return ("localhost", "127.0.0.1", listen_host)
    return ("*",)


@click.command("web")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Address to serve on (default: [web] listen, 127.0.0.1:9465).")
@click.pass_context
def web(ctx: click.Context, listen: str | None) -> None:
    """Serve the dashboard: overview, crashes, signatures, clocks, and a JSON API (read-only).

    Downloading a dump needs the token in [web] token_file; everything else is read-only.
    """
    try:
        import uvicorn

        from vmcrash.web import WebSettings, create_app, load_token
    except ImportError as exc:
        raise EnvironmentProblem(f"'vmcrash web' needs {exc.name}: install the web extra "
                                 "(pip install 'vmcrash[web]')") from exc
    from vmcrash.store.reader import open_reader

    cfg = config_of(ctx)
    host, port = parse_listen(listen or cfg.web.listen)
    token = load_token(cfg.web.token_file) if cfg.web.token_file else None
    # Open once now, so a bad catalogue fails here with one line, not at the first request; a fleet
    # catalogue (PostgreSQL) shows every host, and this host's local copy while it is unreachable.
    first = open_reader(cfg)
    if first.note:
        click.echo(f"warning: {first.note}", err=True)
    first.catalog.close()
    app = create_app(WebSettings(open_catalog=lambda: open_reader(cfg).catalog, dump_dir=cfg.dump_dir,
                                 token=token, allowed_hosts=allowed_hosts(host)))
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        reason = str(exc.strerror or exc).split(" (while")[0]
        raise EnvironmentProblem(f"cannot listen on {host}:{port}: {reason}") from exc
    click.echo(f"vmcrash web: http://{host}:{port}/ (catalogue {redact(cfg)}; dump downloads "
               f"{'need the token' if token else 'disabled'})", err=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            server_header=False, proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])


def redact(cfg: Config) -> str:
    """The catalogue's name for a log line: the fleet URL without its password, or the SQLite path."""
    if cfg.fleet_url:
        from vmcrash.store.pg import redact_url

        return redact_url(cfg.fleet_url)
    return str(cfg.catalog_path)

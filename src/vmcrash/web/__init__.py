"""``vmcrash web``: a read-only dashboard and JSON API on the catalogue (Starlette + Jinja2, served by uvicorn).

Public surface::

    create_app(settings: WebSettings) -> Starlette
    WebSettings(open_catalog, dump_dir, token)    # how to reach the catalogue; the download token
    load_token(path) -> bytes                     # the [web] token_file, checked (0600, not empty)

Everything is read from the catalogue through :class:`~vmcrash.store.catalog.Catalog`; nothing is
written. Guest text (kernel log, panic line, domain names) is escaped by the templates and the
chart builder; pages carry no script at all, and the CSP says so.
"""

from __future__ import annotations

from .app import WebSettings, create_app
from .security import load_token

__all__ = ["WebSettings", "create_app", "load_token"]

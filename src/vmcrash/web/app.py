"""The ASGI application: pages, JSON API, static files and the token-guarded dump download.

Handlers are plain (synchronous) functions that Starlette runs in its thread pool; each reads
the catalogue through one shared :class:`~vmcrash.store.catalog.Catalog` (thread-safe) and
renders a view from :mod:`vmcrash.web.views`. Nothing here writes to the catalogue.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from vmcrash.decimal_text import ascii_int
from vmcrash.errors import VmcrashError
from vmcrash.store.catalog import Catalog
from vmcrash.store.signatures import SignatureGroup, group_signatures

from . import views
from .charts import chart_svg
from .security import SecurityHeaders, token_matches

__all__ = ["WebSettings", "create_app"]

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_MAX_FORM_BYTES = 8192
_MAX_LIMIT = 10_000


@dataclass(frozen=True)
class WebSettings:
    """What the app needs: a way to open the catalogue, where dumps may be served from, the token.

    :ivar open_catalog: called once, at the first request; its catalogue is shared by all requests.
    :ivar dump_dir: only files inside it are ever served (the catalogue's paths are checked).
    :ivar token: the download token; ``None`` refuses every download.
    :ivar allowed_hosts: ``Host`` header names answered (others get 400); ``("*",)`` answers all.
        A dashboard on localhost answers only ``localhost``/``127.0.0.1``, so that a web page
        elsewhere cannot read it through DNS rebinding.
    """

    open_catalog: Callable[[], Catalog]
    dump_dir: Path
    token: bytes | None = None
    allowed_hosts: tuple[str, ...] = ("*",)


def _fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _fmt_ms(v: Any) -> str:
    return f"{v:+.1f} ms" if isinstance(v, (int, float)) else "-"


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["bytes"] = _fmt_bytes
    env.filters["ms"] = _fmt_ms
    env.filters["time"] = lambda ns: (views.iso(ns) or "-").replace("T", " ").rstrip("Z")
    return Jinja2Templates(env=env)


class _Handlers:
    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.templates = _templates()
        self._catalog: Catalog | None = None
        self._dump_dir = Path(os.path.realpath(settings.dump_dir))

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = self.settings.open_catalog()
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    # -- helpers ---------------------------------------------------------------------------

    def _page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        return self.templates.TemplateResponse(request, name, {"page": name.removesuffix(".html"), **context},
                                               status_code=status_code)

    @staticmethod
    def _limit(request: Request, default: int) -> int:
        raw = request.query_params.get("limit", "")
        if not raw:
            return default
        limit = ascii_int(raw, 9)
        if limit is None or not 1 <= limit <= _MAX_LIMIT:
            raise HTTPException(400, f"limit must be 1..{_MAX_LIMIT}")
        return limit

    def _row(self, request: Request) -> Any:
        row = self.catalog.get(int(request.path_params["crash_id"]))
        if row is None:
            raise HTTPException(404, f"no crash #{request.path_params['crash_id']} in the catalogue")
        return row

    def _groups(self) -> list[SignatureGroup]:
        return group_signatures(self.catalog.signature_counts())

    def _detail(self, request: Request) -> dict[str, Any]:
        row = self._row(request)
        same = 0
        if row.signature:
            same = self.catalog.signature_count(row.signature)
        return views.crash_detail(row, self.catalog.events(row.id), self.catalog.clock_syncs(crash_id=row.id),
                                  same)

    def _recent(self, request: Request, default: int) -> list[dict[str, Any]]:
        limit = self._limit(request, default)
        domain = request.query_params.get("domain") or None
        sig = request.query_params.get("signature") or None
        if sig:
            rows = self.catalog.crashes_with_signature(self._signature_of(sig), limit=limit)
        else:
            rows = self.catalog.crashes(domain=domain, limit=limit)
        return [views.crash_summary(r) for r in rows]

    def _signature_of(self, sig_id: str) -> str:
        for g in self._groups():
            if g.id == sig_id or g.signature == sig_id:
                return g.signature
        raise HTTPException(404, "no such signature in the catalogue")

    # -- pages -----------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        counts = self.catalog.domain_counts()
        points = self.catalog.crash_points(limit=2000)
        groups = self._groups()
        return self._page(request, "overview.html", ov=views.overview(counts, points, groups),
                          recent=self._recent(request, 50),
                          chart=chart_svg(views.freeze_series(points), title="Freeze per crash over time",
                                          y_unit="freeze (s)"))

    def crash(self, request: Request) -> Response:
        d = self._detail(request)
        return self._page(request, "crash.html", c=d, downloads=self.settings.token is not None)

    def signatures(self, request: Request) -> Response:
        return self._page(request, "signatures.html", groups=self._groups())

    def signature(self, request: Request) -> Response:
        sig = self._signature_of(request.path_params["sig_id"])
        group = next(g for g in self._groups() if g.signature == sig)
        rows = [views.crash_summary(r) for r in self.catalog.crashes_with_signature(sig, limit=500)]
        return self._page(request, "signature.html", g=group, crashes=rows)

    def clock(self, request: Request) -> Response:
        syncs = self.catalog.clock_syncs(limit=self._limit(request, 2000))
        entries = [views.clock_entry(s) for s in syncs]
        return self._page(request, "clock.html", syncs=entries, table_rows=300,
                          chart=chart_svg(views.clock_series(entries), title="Guest clock offset (guest - host): "
                                          "before each check or correction (dot), after it (ring)",
                                          y_unit="offset (ms)", zero_line=True))

    # -- API -------------------------------------------------------------------------------

    def api_crashes(self, request: Request) -> Response:
        return JSONResponse(self._recent(request, 100))

    def api_crash(self, request: Request) -> Response:
        return JSONResponse(self._detail(request))

    def api_signatures(self, request: Request) -> Response:
        return JSONResponse([g.to_dict() for g in self._groups()])

    def api_clock(self, request: Request) -> Response:
        syncs = self.catalog.clock_syncs(domain=request.query_params.get("domain") or None,
                                         limit=self._limit(request, 1000))
        return JSONResponse([views.clock_entry(s) for s in syncs])

    # -- the one guarded thing: dumps --------------------------------------------------------

    async def download(self, request: Request) -> Response:
        """``POST /crashes/{id}/download`` with form fields ``token`` and ``file`` (dump|compacted), or
        ``GET`` with ``Authorization: Bearer <token>`` and ``?file=``."""
        offered: str | None = None
        which = request.query_params.get("file", "dump")
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            offered = auth[7:]
        if request.method == "POST":
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > _MAX_FORM_BYTES:
                    raise HTTPException(413, "form too large")
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
            offered = (form.get("token") or [offered or ""])[0]
            which = (form.get("file") or [which])[0]
        if self.settings.token is None:
            raise HTTPException(403, "dump downloads are disabled: no [web] token_file is configured")
        if not offered:
            raise HTTPException(401, "downloading a dump needs the token")
        if not token_matches(self.settings.token, offered):
            log.warning("dump download refused: wrong token (crash #%s)", request.path_params["crash_id"])
            raise HTTPException(403, "wrong token")
        row = self._row(request)
        path = {"dump": row.dump_path, "compacted": row.compact_path}.get(which)
        if which not in ("dump", "compacted"):
            raise HTTPException(400, "file must be dump or compacted")
        if not path:
            raise HTTPException(404, f"crash #{row.id} has no {which} file")
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(self._dump_dir) or not real.is_file():
            raise HTTPException(404, f"the {which} file of crash #{row.id} is not in the dump directory (any more)")
        log.warning("dump download: crash #%d %s (%s)", row.id, real.name, request.client)
        return FileResponse(real, filename=real.name, media_type="application/octet-stream",
                            headers={"cache-control": "no-store"})

    # -- errors ------------------------------------------------------------------------------

    async def http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        if isinstance(exc, VmcrashError):
            status, detail = 503, str(exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": detail}, status_code=status)
        return self._page(request, "error.html", status_code=status, status=status, message=detail)


def create_app(settings: WebSettings) -> Starlette:
    """The dashboard as an ASGI app (serve it with uvicorn)."""
    h = _Handlers(settings)
    routes = [
        Route("/", h.overview),
        Route("/crashes/{crash_id:int}", h.crash),
        Route("/crashes/{crash_id:int}/download", h.download, methods=["GET", "POST"]),
        Route("/signatures", h.signatures),
        Route("/signatures/{sig_id}", h.signature),
        Route("/clock", h.clock),
        Route("/api/crashes", h.api_crashes),
        Route("/api/crashes/{crash_id:int}", h.api_crash),
        Route("/api/signatures", h.api_signatures),
        Route("/api/clock", h.api_clock),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            h.close()

    app = Starlette(routes=routes, exception_handlers={HTTPException: h.http_error, VmcrashError: h.http_error},
                    lifespan=lifespan)
    if settings.allowed_hosts != ("*",):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    app.add_middleware(SecurityHeaders)
    return app


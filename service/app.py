"""The REST API (``/v1``): datasets, kernel jobs, solves; ``/healthz`` and ``/readyz``.

Every request but the health checks carries ``Authorization: Bearer <key>``; every dataset
and job belongs to the key that made it and is invisible (404) to others. Errors are RFC 9457
problem details (``application/problem+json``: ``{"type", "title", "status", "detail":
"<field>: <reason>", "field"}``) with a 4xx status; see README "REST API".

:func:`create_app` builds the app: its state (settings, database, runner), middleware,
error handlers and lifespan, and the routers of :mod:`service.routes`; the routes' inputs
come from :mod:`service.deps`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import ntkcompute
from ntkcompute.spec import is_union_tag
from workers.store import CorruptChunk

from . import uploads
from .bodies import BodyLimits
from .config import Settings
from .db import Database
from .errors import PRIVATE, PROBLEM, ApiError, problem
from .keys import ensure_keys
from .routes import api_router
from .routes.common import damaged
from .routes.health import StoreProbe
from .runner import Runner

log = logging.getLogger("ntkcompute.service")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; the lifespan joins the Dask cluster and resumes unfinished jobs."""
    settings = settings or Settings.from_env()
    if "://" not in settings.store:
        Path(settings.store).mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(settings.db)
    if settings.api_keys:
        ensure_keys(db, settings.api_keys)
    runner = Runner(settings, db)

    # /docs and /redoc from assets in the package (fastapi-offline): no CDN
    app = FastAPIOffline(title="ntkcompute", version=ntkcompute.__version__,
                         lifespan=lifespan, description="Exact NTK / NNGP / CNTK Gram "
                         "matrices on a Dask cluster, stored in Zarr, and kernel regression on "
                         "them. Errors are RFC 9457 problem details with a `field`.")
    app.state.settings, app.state.db, app.state.runner = settings, db, runner
    app.state.store_probe = StoreProbe()
    app.add_middleware(BodyLimits, upload_bytes=settings.max_upload_bytes,
                       json_bytes=settings.max_json_bytes, timeout=settings.body_timeout)
    PRIVATE.update(settings.private_paths())
    for exc, handler in _HANDLERS:
        app.add_exception_handler(exc, handler)
    app.include_router(api_router)
    # the web page: static files in the package; every number on it comes from the API
    app.mount("/ui", _Page(directory=Path(__file__).parent / "web", html=True), name="ui")
    app.add_api_route("/", lambda: RedirectResponse("/ui/"), include_in_schema=False)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class _Page(StaticFiles):
    """The web page's files, with headers that keep it to its own origin: no script, style,
    frame or connection from anywhere else, and no framing by another site."""

    HEADERS: ClassVar[dict[str, str]] = {
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers.update(self.HEADERS)
        return response


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with every error answer as it is sent: ``application/problem+json``
    of :class:`~service.schemas.Error`. The validation 422 FastAPI adds to every route with
    parameters is kept only where the route declares one (a ``str`` path parameter cannot
    fail validation): every error a route declares is a :func:`~service.routes.common.problems`
    entry."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    for ops in schema["paths"].values():
        for op in ops.values():
            for code, answer in list(op["responses"].items()):
                content = answer.get("content", {})
                if int(code) < 400:
                    continue
                if PROBLEM in content:
                    answer["content"] = {PROBLEM: content[PROBLEM]}
                elif "HTTPValidationError" in json.dumps(content):
                    del op["responses"][code]  # FastAPI's own 422: the route declares none
    comps = schema.get("components", {}).get("schemas", {})
    text = json.dumps(schema["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in text:
            comps.pop(unused, None)
    app.openapi_schema = schema
    return schema


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Clear stale staged uploads and start the runner (join the cluster, resume unfinished
    jobs); stop it on shutdown (they stay queued for the next start)."""
    runner: Runner = app.state.runner
    uploads.clean_stale(app.state.settings.staging_dir())
    await run_in_threadpool(runner.start)
    yield
    await run_in_threadpool(runner.stop)


# errors: every one an RFC 9457 problem (service.errors) --------------------------------
async def _api_error(r: Request, e: ApiError) -> JSONResponse:
    headers = dict(e.headers or {})
    if e.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return problem(e.status, e.detail, e.field, r.url.path, headers=headers or None)


async def _corrupt(r: Request, e: CorruptChunk) -> JSONResponse:
    log.error("damaged store chunk: %s", e)
    a = damaged(e)
    return problem(409, a.detail, a.field, r.url.path)


async def _invalid(r: Request, e: RequestValidationError) -> JSONResponse:
    errs = e.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    where = _loc(first.get("loc", ()))
    return problem(422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")),
                   where or None, r.url.path,
                   errors=[{"field": _loc(x.get("loc", ())), "message": x.get("msg")}
                           for x in errs])


async def _http(r: Request, e: StarletteHTTPException) -> JSONResponse:
    # FastAPI's one 400 is a body it could not parse (e.g. JSON nested past the parser)
    field = "body" if e.status_code == 400 else None
    detail = f"body: {e.detail}" if field else str(e.detail)
    return problem(e.status_code, detail, field, r.url.path,
                   headers=getattr(e, "headers", None))


async def _unexpected(r: Request, e: Exception) -> JSONResponse:
    if isinstance(e, ClientDisconnect):  # the client left (or BodyLimits refused it)
        return problem(400, "client disconnected", None, r.url.path)
    log.exception("unhandled error")
    return problem(500, f"internal error: {type(e).__name__}", None, r.url.path)


_HANDLERS: tuple[tuple[type[Exception], Any], ...] = (
    (ApiError, _api_error), (CorruptChunk, _corrupt), (RequestValidationError, _invalid),
    (StarletteHTTPException, _http), (Exception, _unexpected))


def _loc(loc: Any) -> str:
    """("body", "arch", "layers", 0, "conv", "W_std") -> "arch.layers[0].W_std"; the tag
    pydantic adds after a layer's place (an index, or a repeat's ``layer``) is dropped."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for k, p in enumerate(parts):
        if isinstance(p, int):
            out += f"[{p}]"
        elif is_union_tag(parts, k):
            continue
        else:
            out += f".{p}" if out else str(p)
    return out

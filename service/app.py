"""The REST API (``/v1``): datasets, kernel jobs, solves; ``/healthz`` and ``/readyz``.

Every request but the health checks carries ``Authorization: Bearer <key>``; every dataset
and job belongs to the key that made it and is invisible (404) to others. Errors are JSON
``{"detail": "<field>: <reason>", "field": ...}`` with a 4xx status; see README "REST API".

:func:`create_app` builds the app: its state (settings, database, runner), middleware,
error handlers and lifespan, and the routers of :mod:`service.routes`; the routes' inputs
come from :mod:`service.deps`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
from .errors import PRIVATE, ApiError, redact
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

    app = FastAPI(title="ntkcompute", version=ntkcompute.__version__, lifespan=lifespan,
                  description="Exact NTK / NNGP / CNTK Gram matrices on a Dask cluster, "
                  "stored in Zarr, and kernel regression on them.")
    app.state.settings, app.state.db, app.state.runner = settings, db, runner
    app.state.store_probe = StoreProbe()
    app.add_middleware(BodyLimits, upload_bytes=settings.max_upload_bytes,
                       json_bytes=settings.max_json_bytes, timeout=settings.body_timeout)
    PRIVATE.update(settings.private_paths())
    for exc, handler in _HANDLERS:
        app.add_exception_handler(exc, handler)
    app.include_router(api_router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Clear stale staged uploads and start the runner (join the cluster, resume unfinished
    jobs); stop it on shutdown (they stay queued for the next start)."""
    runner: Runner = app.state.runner
    uploads.clean_stale(app.state.settings.staging_dir())
    await run_in_threadpool(runner.start)
    yield
    await run_in_threadpool(runner.stop)


# errors: every one a JSON {"detail", "field"} body -------------------------------------
async def _api_error(_r: Request, e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse({"detail": redact(e.detail), "field": e.field}, e.status,
                        headers=headers)


async def _corrupt(_r: Request, e: CorruptChunk) -> JSONResponse:
    log.error("damaged store chunk: %s", e)
    a = damaged(e)
    return JSONResponse({"detail": redact(a.detail), "field": a.field}, 409)


async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
    errs = e.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    where = _loc(first.get("loc", ()))
    return JSONResponse({"detail": f"{where}: {first.get('msg')}" if where else
                         str(first.get("msg")), "field": where or None,
                         "errors": [{"field": _loc(x.get("loc", ())), "message": x.get("msg")}
                                    for x in errs]}, 422)


async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
    # FastAPI's one 400 is a body it could not parse (e.g. JSON nested past the parser)
    field = "body" if e.status_code == 400 else None
    detail = f"body: {e.detail}" if field else str(e.detail)
    return JSONResponse({"detail": detail, "field": field}, e.status_code,
                        headers=getattr(e, "headers", None))


async def _unexpected(_r: Request, e: Exception) -> JSONResponse:
    if isinstance(e, ClientDisconnect):  # the client left (or BodyLimits refused it)
        return JSONResponse({"detail": "client disconnected", "field": None}, 400)
    log.exception("unhandled error")
    return JSONResponse({"detail": f"internal error: {type(e).__name__}", "field": None},
                        500)


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

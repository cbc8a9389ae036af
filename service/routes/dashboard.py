"""``/dashboard``: the Dask dashboard of the service's embedded cluster, behind the API's keys.

The embedded scheduler serves its Bokeh dashboard on loopback under ``/dashboard``; this
router forwards every page (HTTP) and every plot's updates (WebSocket) there unchanged. A
request carries a key as ``Authorization: Bearer <key>`` or, from a browser, as the
``ntk_key`` cookie the web page sets at sign-in (``SameSite=Strict``, path ``/dashboard``);
a WebSocket must also come from the service's own origin. Any valid key sees the whole
cluster: task names and timings of every key's jobs, no data. Not in the OpenAPI document
(it is the dashboard's, not the API's).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated
from urllib.parse import unquote

import httpx
import websockets
from fastapi import APIRouter, Depends, Request, Response, WebSocket
from starlette.concurrency import run_in_threadpool

from ..deps import DB, RunnerDep
from ..errors import ApiError
from ..keys import check
from ..runner import DASHBOARD_PREFIX

router = APIRouter(prefix=DASHBOARD_PREFIX, include_in_schema=False)
#: The cookie a browser sends its key in (set by the web page).
COOKIE = "ntk_key"
#: Response headers the dashboard's answers keep (hop-by-hop and length ones are redone).
_KEEP = ("content-type", "cache-control", "etag", "last-modified", "location")


def _token(headers: dict[str, str], cookies: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    cookie = cookies.get(COOKIE)
    return unquote(cookie) if cookie else None


def dashboard_key(request: Request, db: DB) -> str:
    """The id of the request's key (header or cookie); 401 without a valid one."""
    token = _token(dict(request.headers), request.cookies)
    kid = check(db, token)[0] if token else None
    if kid is None:
        raise ApiError(401, "Authorization", "the dashboard needs an API key: sign in on "
                       "/ui/ or send Authorization: Bearer <key>")
    return kid


def _upstream(runner: RunnerDep) -> str:
    if runner.dashboard_upstream is None:
        raise ApiError(404, None, "this service does not proxy its cluster's dashboard "
                       "(an external scheduler): open dashboard_url of /readyz")
    return runner.dashboard_upstream


@router.get("/{path:path}")
async def dashboard_page(path: str, request: Request,
                         _key: Annotated[str, Depends(dashboard_key)],
                         upstream: Annotated[str, Depends(_upstream)]) -> Response:
    """A page, script, style or JSON of the dashboard, as the scheduler answers it."""
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.get(f"{upstream}{DASHBOARD_PREFIX}/{path}",
                        params=list(request.query_params.multi_items()))
    return Response(r.content, r.status_code,
                    headers={k: v for k, v in r.headers.items() if k.lower() in _KEEP})


@router.websocket("/{path:path}")
async def dashboard_socket(ws: WebSocket, path: str, db: DB, runner: RunnerDep) -> None:
    """A plot's live updates: both directions forwarded until either side closes."""
    token = _token(dict(ws.headers), ws.cookies)
    origin, host = ws.headers.get("origin"), ws.headers.get("host")
    same_origin = origin is None or origin.split("://", 1)[-1] == host
    valid = bool(token) and (await run_in_threadpool(check, db, token))[0] is not None
    if not valid or not same_origin or runner.dashboard_upstream is None:
        await ws.close(code=1008)  # policy violation: no key, another origin, no dashboard
        return
    url = runner.dashboard_upstream.replace("http", "ws", 1) + f"{DASHBOARD_PREFIX}/{path}"
    if ws.url.query:
        url += f"?{ws.url.query}"
    protocols = ws.scope.get("subprotocols") or None
    try:
        up = await websockets.connect(url, subprotocols=protocols, max_size=None)
    except (OSError, websockets.exceptions.WebSocketException):
        await ws.close(code=1011)  # the dashboard refused or is gone
        return
    async with up:
        await ws.accept(subprotocol=up.subprotocol)

        async def to_upstream() -> None:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                await up.send(msg["bytes"] if msg.get("bytes") is not None else msg["text"])

        async def to_client() -> None:
            async for data in up:
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                else:
                    await ws.send_text(data)

        tasks = [asyncio.create_task(to_upstream()), asyncio.create_task(to_client())]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        with contextlib.suppress(Exception):
            await ws.close()

"""Every request body is bounded before a route reads it: a size cap per route (413) and a
stall timeout between chunks (408).

A pure ASGI middleware around ``receive``: a declared ``Content-Length`` past the cap is
refused before the app runs; a body that grows past it, or stops arriving for
``timeout`` seconds (a body shorter than its ``Content-Length`` would otherwise hold a
worker thread for ever), is refused the moment it happens. On a refusal the middleware
answers itself and tells the app that the client left, so the route's own answer, if any,
is dropped and no route ever holds more than the cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import PROBLEM, problem_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DISCONNECT: Message = {"type": "http.disconnect"}
#: The methods whose routes read a body; the others (GET, DELETE, ...) never read one, so a
#: body sent with them costs nothing and is not refused (their OpenAPI has no 408 or 413).
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
#: How much of a body refused by its Content-Length is read and dropped after the 413, and
#: for how long at most, so that the client reads the answer (see :func:`_drain`).
DRAIN_BYTES, DRAIN_SECONDS = 64 << 20, 5.0


class BodyLimits:
    """``upload_bytes`` for ``POST`` to ``upload_paths``, ``json_bytes`` for every other
    body; ``timeout`` seconds at most between two chunks of a body."""

    def __init__(self, app: ASGIApp, *, upload_bytes: int, json_bytes: int, timeout: float,
                 upload_paths: tuple[str, ...] = ("/v1/datasets",)) -> None:
        self.app = app
        self.upload_bytes, self.json_bytes, self.timeout = upload_bytes, json_bytes, timeout
        self.upload_paths = upload_paths

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "POST" and scope["path"].rstrip("/") in self.upload_paths:
            return self.upload_bytes, "NTK_MAX_UPLOAD_BYTES"
        return self.json_bytes, "NTK_MAX_JSON_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        limit, setting = self._limit(scope)
        too_large = f"the body exceeds the limit of {limit} bytes ({setting})"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await _answer(send, 413, too_large)
            await _drain(receive, min(int(length), DRAIN_BYTES), DRAIN_SECONDS)
            return
        seen, finished, refused, started = 0, False, False, False

        async def refuse(status: int, reason: str) -> Message:
            nonlocal refused
            if not refused and not started:
                await _answer(send, status, reason)
            refused = True
            return _DISCONNECT

        async def guarded_receive() -> Message:
            nonlocal seen, finished
            if refused:
                return _DISCONNECT
            if finished:  # the body is in: what follows is a wait for the disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                return await refuse(408, f"no body data for {self.timeout:g} s "
                                    "(NTK_BODY_TIMEOUT): send the whole body")
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    return await refuse(413, too_large)
                finished = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the route answering a body we refused: already answered
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)


async def _drain(receive: Receive, most: int, seconds: float) -> None:
    """Read and drop up to ``most`` bytes of a refused body for at most ``seconds``: a client
    still sending when the connection closes would get a reset instead of the answer (the
    lingering close of RFC 9112 §9.6); past the bounds the connection closes anyway."""
    loop = asyncio.get_running_loop()
    deadline, seen = loop.time() + seconds, 0
    while seen < most:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _answer(send: Send, status: int, reason: str) -> None:
    body = problem_bytes(status, f"body: {reason}", "body")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

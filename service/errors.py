"""The service's one error, an HTTP status plus the field at fault and a reason, and how every
error is answered: RFC 9457 problem details (``application/problem+json``) that keep our
``field``.

A problem body is ``{"type", "title", "status", "detail", "field"}`` (plus ``instance``, the
path asked, and ``errors`` for a request that fails several validations): ``detail`` is
``"<field>: <reason>"`` and ``field`` the request field at fault (None when no one field
is); ``type`` is ``about:blank`` (the status says what kind of problem it is, RFC 9457
§4.2.1) and ``title`` the status's phrase.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from ntkcompute.errors import InputError

PROBLEM = "application/problem+json"
#: Server locations never shown to a client: root -> what is shown instead (set by the app).
PRIVATE: dict[str, str] = {}
#: Any other absolute filesystem path of two or more parts (the API's own /v1/... excepted).
_PATH = re.compile(r"file://\S+|(?<![\w.~/:>-])/(?!v1/)(?:[\w.@+~-]+/)+[\w.@+~-]*")


def redact(text: str) -> str:
    """``text`` without server paths: the store, staging and database locations become
    ``<store>`` etc., and any other absolute path ``<path>``."""
    for root in sorted(PRIVATE, key=len, reverse=True):
        text = text.replace(root, PRIVATE[root])
    return _PATH.sub("<path>", text)


def problem_body(status: int, detail: str, field: str | None = None,
                 instance: str | None = None, **extra: Any) -> dict[str, Any]:
    """The RFC 9457 body of an error answer (``detail`` already redacted)."""
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase,
                            "status": status, "detail": detail, "field": field}
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return body


def problem(status: int, detail: str, field: str | None = None, instance: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An ``application/problem+json`` answer."""
    return JSONResponse(problem_body(status, redact(detail), field, instance, **extra),
                        status, headers=headers, media_type=PROBLEM)


def problem_bytes(status: int, detail: str, field: str | None = None) -> bytes:
    """:func:`problem_body` as the bytes of a body (for the ASGI middleware)."""
    return json.dumps(problem_body(status, detail, field)).encode()


class ApiError(Exception):
    """Answered as a problem with ``status``, ``field`` and ``detail`` ``"<field>:
    <reason>"``; ``headers`` go with it (``Retry-After`` on a 429)."""

    def __init__(self, status: int, field: str | None, reason: str,
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.field, self.reason = status, field, reason
        self.headers = headers
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    @classmethod
    def from_input(cls, e: InputError, rename: dict[str, str] | None = None) -> ApiError:
        """A 422 from an ``InputError``, its field put in request terms: a layer's field
        under ``arch`` (``arch.layers[2].W_std``), others through ``rename``."""
        where = f"arch.{e.location}" if e.layer is not None else \
            (rename or {}).get(e.field, e.field)
        return cls(422, where, e.reason)


def not_found(kind: str, id_: str) -> ApiError:
    return ApiError(404, None, f"no {kind} {id_!r}")

"""The service's one error: an HTTP status plus the field at fault and a reason."""

from __future__ import annotations

import re

from ntkcompute.errors import InputError

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


class ApiError(Exception):
    """Answered as ``{"detail": "<field>: <reason>", "field": "<field>"}`` with ``status``."""

    def __init__(self, status: int, field: str | None, reason: str) -> None:
        self.status, self.field, self.reason = status, field, reason
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

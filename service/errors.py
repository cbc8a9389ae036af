"""The service's one error: an HTTP status plus the field at fault and a reason."""

from __future__ import annotations

from ntkcompute.errors import InputError


class ApiError(Exception):
    """Answered as ``{"detail": "<field>: <reason>", "field": "<field>"}`` with ``status``."""

    def __init__(self, status: int, field: str | None, reason: str) -> None:
        self.status, self.field, self.reason = status, field, reason
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    @classmethod
    def from_input(cls, e: InputError, prefix: str = "", rename: dict | None = None
                   ) -> ApiError:
        """A 422 from an ``InputError``, its field put in request terms (``arch.layers[2].W_std``,
        ``train`` for x1, ...)."""
        where = (rename or {}).get(e.location, e.location)
        return cls(422, f"{prefix}{where}", e.reason)


def not_found(kind: str, id_: str) -> ApiError:
    return ApiError(404, None, f"no {kind} {id_!r}")

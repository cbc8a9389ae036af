"""The one error type users see for a bad architecture or bad data."""

from __future__ import annotations


class InputError(ValueError):
    """An architecture spec or input array that cannot be used.

    Attributes:
        field: the offending field, e.g. ``"window_shape"``, ``"type"``, ``"x2"``.
        layer: index of the offending layer in ``arch.layers``, or the path of a nested one
            (``"layers[2].branches[1][0]"``); ``None`` for data errors.
        reason: the human-readable explanation without the location prefix.
    """

    def __init__(self, reason: str, *, field: str, layer: int | str | None = None) -> None:
        self.reason = reason
        self.field = field
        self.layer = layer
        super().__init__(f"{self.location}: {reason}")

    @property
    def location(self) -> str:
        if self.layer is None:
            return self.field
        where = self.layer if isinstance(self.layer, str) else f"layers[{self.layer}]"
        return f"{where}.{self.field}"

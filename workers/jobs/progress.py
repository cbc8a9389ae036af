"""A kernel job's progress over its parts (train, test): tiles done, ETA, and the lifecycle
event it is ready for."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ntkcompute.lifecycle import Status, eta_seconds

from ..gram import GramJob


@dataclass(frozen=True)
class Progress:
    """``tiles_done`` over every part (reused ones included); ``eta_seconds`` at this run's
    rate (0 once succeeded, None before the first tile or after a failure); ``event``:
    ``"fail"`` once a part failed (``error`` names each part's error), ``"succeed"`` once
    every part has, else None."""

    tiles_done: int
    eta_seconds: float | None
    event: str | None = None
    error: str | None = None


def progress(parts: dict[str, GramJob], t0: float) -> Progress:
    """The progress of a job whose parts started at ``t0`` (epoch seconds)."""
    done = sum(p.tiles_done for p in parts.values())
    computed = sum(p.tiles_computed for p in parts.values())
    total = sum(p.tiles_total for p in parts.values())
    statuses = [p.status for p in parts.values()]
    if Status.FAILED in statuses:
        errors = "; ".join(f"{n}: {p.error}" for n, p in parts.items() if p.error)
        return Progress(done, None, "fail", errors)
    if all(s == Status.SUCCEEDED for s in statuses):
        return Progress(done, 0.0, "succeed")
    return Progress(done, eta_seconds(time.time() - t0, computed, total - done))

"""``verify_job``: check every chunk of a stored Gram or features job, on the workers.

One task per tile row reads that row's chunks back through their CRC-32C checksums: the
kernel (or feature) arrays, the ``done`` markers, the row's input chunk and its self
statistics. A chunk that is missing, unreadable or fails its checksum is reported by array
and chunk (for kernels, the tile ``(i, j)``); tiles not marked done are listed apart, since
they are only damage in a job that claims to have finished. ``compute_gram(..., verify=True)``
and ``compute_features(..., verify=True)`` recompute exactly what the report names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from distributed import Client

from ntkcompute.lifecycle import Status

from . import tasks
from .cluster import get_client, shutdown
from .store import job_meta, open_group


@dataclass(frozen=True)
class Damage:
    """What a resume must redo: tiles (``(i, j)``, both orientations for a symmetric job;
    ``(i,)`` row tiles for features), self-statistic row chunks ``(which, k)``, and input
    row chunks to rewrite from the source, per input name."""

    tiles: frozenset[tuple[int, ...]] = frozenset()
    self_chunks: frozenset[tuple[str, int]] = frozenset()
    inputs: dict[str, frozenset[int]] = field(default_factory=dict)


@dataclass
class VerifyReport:
    """``bad``: one entry per damaged chunk, ``{"array", "chunk", "tile", "problem"}``;
    ``pending``: tiles not marked done; ``checked``: chunks read."""

    url: str
    method: str
    status: str  # the job's status as its metadata records it
    tiles_total: int
    checked: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)
    pending: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No damaged chunk, and no missing marker in a job that says it finished."""
        return not self.bad and not (self.status == Status.SUCCEEDED and self.pending)

    def damage(self) -> Damage:
        tiles: set[tuple[int, ...]] = set()
        self_chunks: set[tuple[str, int]] = set()
        inputs: dict[str, set[int]] = {}
        for b in self.bad:
            arr, k = b["array"], b["chunk"][0]
            if arr in ("x1", "x2"):
                inputs.setdefault(arr, set()).add(k)
            elif arr.startswith("self/"):
                self_chunks.add((arr.split("/")[1], k))
            else:
                t = tuple(b["tile"])
                tiles.update({t, t[::-1]})
        return Damage(frozenset(tiles), frozenset(self_chunks),
                      {k: frozenset(v) for k, v in inputs.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "method": self.method, "status": self.status,
                "tiles_total": self.tiles_total, "chunks_checked": self.checked,
                "bad": self.bad, "pending": self.pending, "seconds": round(self.seconds, 3)}


def verify_job(store: str, *, client: Client | None = None, scheduler: str | None = None,
               options: dict | None = None) -> VerifyReport:
    """Check every chunk of the job stored at ``store``; one Dask task per tile row.

    Raises:
        FileNotFoundError / KeyError: nothing stored at ``store``.
    """
    t0 = time.perf_counter()
    meta = job_meta(open_group(store, mode="r", options=options))
    if "tile" not in meta:
        raise KeyError(f"no ntkcompute job metadata in {store}")
    tile = meta["tile"]
    rows = -(-meta["n1"] // tile)
    if meta.get("method") != "features" and not meta["symmetric"]:
        rows = max(rows, -(-meta["n2"] // tile))
    report = VerifyReport(store, meta.get("method", "exact"), meta.get("status", "unknown"),
                          meta.get("tiles_total", 0))
    cl, cluster = get_client(client, scheduler)
    try:
        futs = [cl.submit(tasks.verify_task, store, i, options=options, pure=False,
                          key=f"verify-{i}-{abs(hash((store, t0))):x}") for i in range(rows)]
        for part in cl.gather(futs):
            report.checked += part["checked"]
            report.bad += part["bad"]
            report.pending += part["pending"]
    finally:
        shutdown(cl, cluster)
    report.bad.sort(key=lambda b: (b["tile"], b["array"]))
    report.pending.sort()
    report.seconds = time.perf_counter() - t0
    return report

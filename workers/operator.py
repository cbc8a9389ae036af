"""``K @ V`` over a kernel stored in Zarr, with one call per worker per CG iteration.

Each worker holds a Dask actor that owns a contiguous block of kernel rows (aligned with the
Zarr chunks). It keeps its rows in memory when they fit its share of the worker's memory
limit, and otherwise streams them from the store chunk row by chunk row on every product
(out of core). Products are accumulated in float64 whatever the stored dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from distributed import Client

from .store import open_group, read


class RowBlock:
    """Actor: rows ``start:stop`` of the kernel array ``name`` in the group at ``url``."""

    def __init__(self, url: str, name: str, start: int, stop: int, cache_bytes: int,
                 options: dict | None = None) -> None:
        self.arr = open_group(url, mode="r", options=options)[name]
        self.start, self.stop = start, stop
        nbytes = (stop - start) * self.arr.shape[1] * self.arr.dtype.itemsize
        self.cached = read(self.arr, slice(start, stop)) if nbytes <= cache_bytes else None
        self.step = self.arr.chunks[0]

    def info(self) -> dict[str, Any]:
        return {"rows": (self.start, self.stop), "cached": self.cached is not None}

    def _row_chunks(self):
        if self.cached is not None:
            yield 0, self.cached
            return
        for r in range(self.start, self.stop, self.step):
            yield r - self.start, read(self.arr, slice(r, min(r + self.step, self.stop)))

    def matvec(self, V: np.ndarray) -> np.ndarray:
        """Rows of ``K @ V`` (float64), V of shape (n, k)."""
        out = np.empty((self.stop - self.start, V.shape[1]))
        for off, rows in self._row_chunks():
            out[off:off + len(rows)] = rows.astype(np.float64, copy=False) @ V
        return out

    def diagonal(self) -> np.ndarray:
        """``K[i, i]`` for this block's rows."""
        out = np.empty(self.stop - self.start)
        for off, rows in self._row_chunks():
            idx = np.arange(len(rows))
            out[off:off + len(rows)] = rows[idx, self.start + off + idx]
        return out

    def columns(self, cols: list[int]) -> np.ndarray:
        """``K[rows, cols]`` (float64)."""
        if self.cached is not None:
            return self.cached[:, cols].astype(np.float64)
        rows = slice(self.start, self.stop)
        return np.stack([np.asarray(read(self.arr, (rows, slice(c, c + 1)))[:, 0],
                                    dtype=np.float64) for c in cols], axis=1)


class DistributedKernel:
    """The stored kernel ``group[name]`` (n x n) as an operator spread over the workers."""

    def __init__(self, client: Client, url: str, name: str = "ntk", *,
                 memory_fraction: float = 0.5, options: dict | None = None) -> None:
        arr = open_group(url, mode="r", options=options)[name]
        self.n, self.shape, self.dtype = arr.shape[0], arr.shape, arr.dtype
        workers = sorted(client.scheduler_info()["workers"].items())
        step = arr.chunks[0]
        chunks = -(-self.n // step)
        per = -(-chunks // len(workers))
        self.actors, self.bounds = [], []
        for w, (addr, info) in enumerate(workers):
            start, stop = w * per * step, min((w + 1) * per * step, self.n)
            if start >= stop:
                break
            limit = info.get("memory_limit") or 0
            cache = int(memory_fraction * limit) if limit else 1 << 62
            fut = client.submit(RowBlock, url, name, start, stop, cache, options,
                                actor=True, workers=[addr], pure=False)
            self.actors.append(fut.result())
            self.bounds.append((start, stop))

    def info(self) -> list[dict[str, Any]]:
        return [a.info().result() for a in self.actors]

    def matvec(self, V: np.ndarray) -> np.ndarray:
        """``K @ V`` for V (n,) or (n, k): one actor call per worker."""
        V2 = np.asarray(V, dtype=np.float64)
        V2 = V2[:, None] if V2.ndim == 1 else V2
        parts = [a.matvec(V2) for a in self.actors]
        out = np.concatenate([p.result() for p in parts])
        return out[:, 0] if np.ndim(V) == 1 else out

    def diagonal(self) -> np.ndarray:
        return np.concatenate([a.diagonal().result() for a in self.actors])

    def column(self, j: int) -> np.ndarray:
        return np.concatenate([a.columns([j]).result()[:, 0] for a in self.actors])

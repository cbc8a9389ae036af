"""``K @ V`` over a kernel stored in Zarr, with one call per worker per CG iteration.

Each worker holds a Dask actor that owns a contiguous block of kernel rows (aligned with the
Zarr chunks). It keeps its rows in memory when they fit its share of the worker's memory
limit, and otherwise streams them from the store chunk row by chunk row on every product
(out of core). Products are accumulated in float64 whatever the stored dtype
(``precision="double"``), or done in float32 (``"single"``: the stored float32 rows as they
are, a float32 copy of float64 rows made once), which moves half the bytes; CG's mixed
precision asks for both in one call (:meth:`DistributedKernel.pair`).
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
        self.cached32 = None
        self.step = self.arr.chunks[0]

    def info(self) -> dict[str, Any]:
        return {"rows": (self.start, self.stop), "cached": self.cached is not None}

    def _row_chunks(self):
        if self.cached is not None:
            yield 0, self.cached
            return
        for r in range(self.start, self.stop, self.step):
            yield r - self.start, read(self.arr, slice(r, min(r + self.step, self.stop)))

    #: Rows converted to float64 at a time when a float32 block is multiplied in double
    #: precision (bounds the temporary copy).
    CONVERT_ROWS = 1024

    def _single_rows(self):
        if self.cached is not None:
            if self.cached.dtype != np.float32 and self.cached32 is None:
                self.cached32 = self.cached.astype(np.float32)
            yield 0, self.cached if self.cached.dtype == np.float32 else self.cached32
            return
        for off, rows in self._row_chunks():
            yield off, rows.astype(np.float32, copy=False)

    def matvec(self, V: np.ndarray, precision: str = "double") -> np.ndarray:
        """Rows of ``K @ V`` (float64), V of shape (n, k); ``precision="single"``: the
        product in float32 (rounding ~1e-7 relative), returned as float64."""
        out = np.empty((self.stop - self.start, V.shape[1]))
        if precision == "single":
            V32 = np.asarray(V, dtype=np.float32)
            for off, rows in self._single_rows():
                out[off:off + len(rows)] = rows @ V32
            return out
        V = np.asarray(V, dtype=np.float64)
        for off, rows in self._row_chunks():
            if rows.dtype == np.float64:
                out[off:off + len(rows)] = rows @ V
                continue
            for a in range(0, len(rows), self.CONVERT_ROWS):
                part = rows[a:a + self.CONVERT_ROWS]
                out[off + a:off + a + len(part)] = part.astype(np.float64) @ V
        return out

    def pair(self, fast: np.ndarray, exact: np.ndarray, precision: str = "single"
             ) -> tuple[np.ndarray, np.ndarray]:
        """``(K fast, K exact)`` rows: the first at ``precision``, the second in double."""
        return self.matvec(fast, precision), self.matvec(exact, "double")

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

    def matvec(self, V: np.ndarray, precision: str = "double") -> np.ndarray:
        """``K @ V`` for V (n,) or (n, k): one actor call per worker, all in parallel;
        ``precision="single"`` multiplies in float32 (and sends V as float32)."""
        dt = np.float32 if precision == "single" else np.float64
        V2 = np.asarray(V, dtype=dt)
        V2 = V2[:, None] if V2.ndim == 1 else V2
        parts = [a.matvec(V2, precision) for a in self.actors]
        out = np.concatenate([p.result() for p in parts])
        return out[:, 0] if np.ndim(V) == 1 else out

    def matvec_single(self, V: np.ndarray) -> np.ndarray:
        return self.matvec(V, "single")

    def pair(self, fast: np.ndarray, exact: np.ndarray, precision: str = "single"
             ) -> tuple[np.ndarray, np.ndarray]:
        """``(K fast, K exact)``, the first at ``precision``, the second in float64: one
        round trip (CG's true-residual iterations)."""
        dt = np.float32 if precision == "single" else np.float64
        f = np.asarray(fast, dtype=dt)
        e = np.asarray(exact, dtype=np.float64)
        parts = [a.pair(f, e, precision) for a in self.actors]
        got = [p.result() for p in parts]
        return (np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]))

    def diagonal(self) -> np.ndarray:
        parts = [a.diagonal() for a in self.actors]
        return np.concatenate([p.result() for p in parts])

    def column(self, j: int) -> np.ndarray:
        parts = [a.columns([j]) for a in self.actors]
        return np.concatenate([p.result()[:, 0] for p in parts])

"""``K @ V`` over a kernel stored in Zarr, with one call per worker per CG iteration.

Each worker holds a Dask actor that owns a set of the array's chunks (tiles). It keeps
them in memory when they fit its share of the worker's memory limit, and otherwise streams
them from the store on every product (out of core). A symmetric Gram (a job without
``x2``) is held by its upper triangle only: a tile ``K[R, C]`` above the diagonal gives both
``K[R, C] V[C]`` and ``K[C, R] V[R] = K[R, C]ᵀ V[R]``, so each of its chunks is read once
and held once (for a grid of T×T tiles, ``(T+1)/2T`` of the bytes: 62% at 4×4), while the
products' arithmetic stays that of the full matrix. Other kernels are held by whole chunk
rows. Tiles are spread so every actor does about the same arithmetic.

Each tile's product is one compiled pass over it (:mod:`ntkcompute.products`: 1.1-1.6x
OpenBLAS's ``gemm`` with ~10 columns; an off-diagonal tile gives its own and its mirror's
share in the same pass). Products are accumulated in float64 whatever the
stored dtype (``precision="double"``), or done in float32 (``"single"``: the stored float32
tiles as they are, a float32 copy of float64 tiles), which moves half the bytes; CG's mixed
precision asks for both in one call (:meth:`DistributedKernel.pair`), which uses each tile
for both while it is in cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from distributed import Client

from ntkcompute.products import compiled, matmul, matmul_sym, warm_up

from .store import job_meta, kernel_array, open_group, read

Tile = tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 of the kernel


class TileBlock:
    """Actor: the tiles ``tiles`` of the kernel array ``name`` in the group at ``url``.

    ``symmetric``: the array is a symmetric Gram and ``tiles`` lie on or above the diagonal;
    each off-diagonal tile then stands for its mirror too. ``single``: hold (or stream) a
    float32 copy of float64 tiles as well, for float32 products. ``depth``, ``variant``,
    ``b_std``:
    that member of a family job's kernel. Every product returns ``(lo, block)``: this actor's
    contribution to rows ``lo:lo + len(block)`` of the result.
    """

    def __init__(self, url: str, name: str, tiles: list[Tile], symmetric: bool,
                 cache_bytes: int, options: dict | None = None, single: bool = False,
                 depth: int | None = None, variant: int | None = None,
                 b_std: float | None = None) -> None:
        self.arr = kernel_array(open_group(url, mode="r", options=options), name, depth,
                                variant, b_std)
        self.tiles, self.symmetric = [tuple(t) for t in tiles], symmetric
        rows = [(r0, r1) for r0, r1, _, _ in self.tiles]
        if symmetric:
            rows += [(c0, c1) for _, _, c0, c1 in self.tiles]
        self.lo = min(r[0] for r in rows)
        self.hi = max(r[1] for r in rows)
        item = self.arr.dtype.itemsize
        copy32 = single and self.arr.dtype != np.float32
        nbytes = sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in self.tiles) * (
            item + (4 if copy32 else 0))
        self.cached: list[np.ndarray] | None = None
        self.cached32: list[np.ndarray] | None = None
        if nbytes <= cache_bytes:
            self.cached = [read(self.arr, (slice(r0, r1), slice(c0, c1)))
                           for r0, r1, c0, c1 in self.tiles]
            if copy32:
                self._float32_tiles()
        warm_up(self.arr.dtype, np.float64)
        if single:
            warm_up(np.float32)

    def info(self) -> dict[str, Any]:
        return {"rows": (self.lo, self.hi), "tiles": len(self.tiles),
                "symmetric": self.symmetric, "cached": self.cached is not None}

    #: Rows converted at a time when a tile's dtype differs from V's and the product is
    #: not compiled (a wide V: BLAS; bounds the temporary copy).
    CONVERT_ROWS = 1024

    def _float32_tiles(self) -> list[np.ndarray]:
        """The cached tiles as float32 (the stored ones, or a copy made once)."""
        if self.cached32 is None:
            self.cached32 = [t if t.dtype == np.float32 else t.astype(np.float32)
                             for t in self.cached]
        return self.cached32

    def _blocks(self, precision: str) -> Iterator[tuple[Tile, np.ndarray]]:
        """``(tile, values)``: float32 values for ``"single"``, the stored dtype otherwise."""
        for i, (r0, r1, c0, c1) in enumerate(self.tiles):
            if self.cached is not None:
                t = self._float32_tiles()[i] if precision == "single" else self.cached[i]
            else:
                t = read(self.arr, (slice(r0, r1), slice(c0, c1)))
                if precision == "single":
                    t = t.astype(np.float32, copy=False)
            yield (r0, r1, c0, c1), t

    def _accumulate(self, out: np.ndarray, tile: Tile, t: np.ndarray, V: np.ndarray) -> None:
        """``out += K_tile V`` (and its mirror's share), ``out`` indexed from ``self.lo``."""
        r0, r1, c0, c1 = tile
        mirror = self.symmetric and (r0, r1) != (c0, c1)
        if t.dtype == V.dtype or compiled(t, V):  # (a float32 tile with float64 V too)
            if mirror:  # both halves in one pass over the tile
                rows, cols = matmul_sym(t, V[c0:c1], V[r0:r1])
                out[c0 - self.lo:c1 - self.lo] += cols
            else:
                rows = matmul(t, V[c0:c1])
            out[r0 - self.lo:r1 - self.lo] += rows
            return
        for a in range(0, r1 - r0, self.CONVERT_ROWS):
            part = t[a:a + self.CONVERT_ROWS].astype(V.dtype)
            b = a + len(part)
            out[r0 + a - self.lo:r0 + b - self.lo] += part @ V[c0:c1]
            if mirror:
                out[c0 - self.lo:c1 - self.lo] += part.T @ V[r0 + a:r0 + b]

    def matvec(self, V: np.ndarray, precision: str = "double") -> tuple[int, np.ndarray]:
        """This actor's share of ``K @ V`` (float64), V of shape (n, k);
        ``precision="single"``: the products in float32 (rounding ~1e-7 relative)."""
        V = np.asarray(V, dtype=np.float32 if precision == "single" else np.float64)
        out = np.zeros((self.hi - self.lo, V.shape[1]))
        for tile, t in self._blocks(precision):
            self._accumulate(out, tile, t, V)
        return self.lo, out

    def pair(self, fast: np.ndarray, exact: np.ndarray, precision: str = "single"
             ) -> tuple[int, np.ndarray, np.ndarray]:
        """``(lo, K fast, K exact)`` shares: the first at ``precision``, the second in
        double, each tile used for both in turn."""
        if self.cached is None or precision == "double":  # two products; streamed tiles
            lo, a = self.matvec(fast, precision)  # are read once for each
            return lo, a, self.matvec(exact, "double")[1]
        fast = np.asarray(fast, dtype=np.float32)
        exact = np.asarray(exact, dtype=np.float64)
        a = np.zeros((self.hi - self.lo, fast.shape[1]))
        b = np.zeros((self.hi - self.lo, exact.shape[1]))
        for (tile, t32), (_, t) in zip(self._blocks("single"), self._blocks("double"),
                                       strict=True):
            self._accumulate(a, tile, t32, fast)
            self._accumulate(b, tile, t, exact)
        return self.lo, a, b

    def diagonal(self) -> tuple[int, np.ndarray]:
        """``K[i, i]`` for the diagonal entries inside this actor's tiles."""
        out = np.zeros(self.hi - self.lo)
        for (r0, r1, c0, c1), t in self._blocks("double"):
            a, b = max(r0, c0), min(r1, c1)
            if a < b:
                idx = np.arange(a, b)
                out[idx - self.lo] = t[idx - r0, idx - c0]
        return self.lo, out

    def columns(self, cols: list[int]) -> tuple[int, np.ndarray]:
        """This actor's share of ``K[:, cols]`` (float64)."""
        cols = np.asarray(cols, dtype=int)
        out = np.zeros((self.hi - self.lo, len(cols)))
        for i, (r0, r1, c0, c1) in enumerate(self.tiles):
            inside = np.flatnonzero((cols >= c0) & (cols < c1))
            if inside.size:
                out[r0 - self.lo:r1 - self.lo, inside] = self._part(
                    i, slice(r0, r1), cols[inside])
            if self.symmetric and (r0, r1) != (c0, c1):  # K[C, j] = K[j, C]ᵀ
                inside = np.flatnonzero((cols >= r0) & (cols < r1))
                if inside.size:
                    out[c0 - self.lo:c1 - self.lo, inside] = self._part(
                        i, cols[inside], slice(c0, c1), rows_given=True)
        return self.lo, out

    def _part(self, i: int, rows: Any, cols: Any, rows_given: bool = False) -> np.ndarray:
        """Tile ``i``'s entries at global ``rows`` x ``cols`` (one side an index array),
        as (len(other side), len(index array)) float64."""
        r0, _, c0, _ = self.tiles[i]
        if self.cached is not None:
            t = self.cached[i]
            sub = (t[np.asarray(rows) - r0, :].T if rows_given
                   else t[:, np.asarray(cols) - c0])
            return sub.astype(np.float64)
        idx = rows if rows_given else cols
        parts = [read(self.arr, (slice(int(j), int(j) + 1), cols) if rows_given
                      else (rows, slice(int(j), int(j) + 1))).reshape(-1) for j in idx]
        return np.stack(parts, axis=1).astype(np.float64)


def _split(tiles: list[Tile], weights: list[float], parts: int) -> list[list[Tile]]:
    """``tiles`` in order, cut into at most ``parts`` runs of about equal total weight."""
    total, out, run, acc = sum(weights), [], [], 0.0
    for t, w in zip(tiles, weights, strict=True):
        run.append(t)
        acc += w
        if acc >= total * (len(out) + 1) / parts - 1e-9 and len(out) < parts - 1:
            out.append(run)
            run = []
    if run:
        out.append(run)
    return out


class DistributedKernel:
    """The stored kernel ``group[name]`` (n x n) as an operator spread over the workers.

    ``symmetric``: hold only the upper triangle of tiles (default: when the group is a
    symmetric Gram job with square chunks). ``precision="single"``: the actors build their
    float32 copy of float64 tiles while loading (otherwise on the first float32 product).
    ``depth``, ``variant``, ``b_std``: that member of a family job
    (:func:`workers.store.kernel_array`).
    """

    def __init__(self, client: Client, url: str, name: str = "ntk", *,
                 memory_fraction: float = 0.5, options: dict | None = None,
                 symmetric: bool | None = None, precision: str = "double",
                 depth: int | None = None, variant: int | None = None,
                 b_std: float | None = None) -> None:
        g = open_group(url, mode="r", options=options)
        arr = kernel_array(g, name, depth, variant, b_std)
        self.n, self.shape, self.dtype = arr.shape[0], arr.shape, arr.dtype
        s0, s1 = arr.chunks
        if symmetric is None:
            symmetric = bool(job_meta(g).get("symmetric")) and s0 == s1 \
                and arr.shape[0] == arr.shape[1]
        self.symmetric = symmetric
        T0, T1 = -(-arr.shape[0] // s0), -(-arr.shape[1] // s1)

        def tile(r: int, c: int) -> Tile:
            return (r * s0, min((r + 1) * s0, arr.shape[0]),
                    c * s1, min((c + 1) * s1, arr.shape[1]))

        workers = sorted(client.scheduler_info()["workers"].items())
        if symmetric:  # upper triangle; an off-diagonal tile does twice the arithmetic, in
            # 1.5x the time of a diagonal one (products.matmul_sym: one pass for both halves)
            tiles = [tile(r, c) for r in range(T0) for c in range(r, T1)]
            weights = [(1.5 if t[0] != t[2] else 1.0) * (t[1] - t[0]) * (t[3] - t[2])
                       for t in tiles]
            runs = _split(tiles, weights, len(workers))
        else:  # whole chunk rows, so each actor's share is its own rows
            per = -(-T0 // len(workers))
            runs = [[tile(r, c) for r in range(w * per, min((w + 1) * per, T0))
                     for c in range(T1)] for w in range(len(workers))]
            runs = [r for r in runs if r]
        futures = []
        for (addr, info), run in zip(workers, runs, strict=False):
            limit = info.get("memory_limit") or 0
            cache = int(memory_fraction * limit) if limit else 1 << 62
            futures.append(client.submit(TileBlock, url, name, run, symmetric, cache, options,
                                         precision == "single", depth, variant, b_std,
                                         actor=True,
                                         workers=[addr], pure=False))
        self.actors = [f.result() for f in futures]  # every worker loads at once

    def info(self) -> list[dict[str, Any]]:
        return [a.info().result() for a in self.actors]

    def _sum(self, shares: list[tuple], width: int | None, index: int = 1) -> np.ndarray:
        out = np.zeros((self.n,) if width is None else (self.n, width))
        for s in shares:
            block = s[index]
            out[s[0]:s[0] + len(block)] += block
        return out

    def matvec(self, V: np.ndarray, precision: str = "double") -> np.ndarray:
        """``K @ V`` for V (n,) or (n, k): one actor call per worker, all in parallel;
        ``precision="single"`` multiplies in float32 (and sends V as float32)."""
        dt = np.float32 if precision == "single" else np.float64
        V2 = np.asarray(V, dtype=dt)
        V2 = V2[:, None] if V2.ndim == 1 else V2
        calls = [a.matvec(V2, precision) for a in self.actors]
        out = self._sum([c.result() for c in calls], V2.shape[1])
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
        calls = [a.pair(f, e, precision) for a in self.actors]
        got = [c.result() for c in calls]
        return self._sum(got, f.shape[1], 1), self._sum(got, e.shape[1], 2)

    def diagonal(self) -> np.ndarray:
        calls = [a.diagonal() for a in self.actors]
        return self._sum([c.result() for c in calls], None)

    def column(self, j: int) -> np.ndarray:
        calls = [a.columns([j]) for a in self.actors]
        return self._sum([c.result() for c in calls], 1)[:, 0]

"""Task functions the Dask workers run. They live in the installed package (the scheduler
unpickles them by reference) and are idempotent: a rerun after a killed worker rewrites the
same whole chunks with the same values, then the same marker.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import numpy as np

from ntkcompute import backend
from ntkcompute.errors import InputError
from ntkcompute.infinite import SelfCov, block_budget, gram, self_pass
from ntkcompute.plan import Plan, make_plan
from ntkcompute.spec import parse_arch
from ntkcompute.validate import as_input

from .store import job_meta, open_group


def _device() -> Any:
    """CuPy on this worker's own GPU when there is one (dask-cuda pins one device per worker
    through CUDA_VISIBLE_DEVICES), else NumPy. ``NTKCOMPUTE_DEVICE=cpu`` forces NumPy."""
    if os.environ.get("NTKCOMPUTE_DEVICE", "auto") != "cpu" and backend.cupy_available():
        import cupy

        return cupy
    backend.tune_allocator()
    return np


def _plan(meta: dict) -> Plan:
    return make_plan(parse_arch(meta["spec"]), tuple(meta["x_shape"]))


def _rows(meta: dict, which: str, i: int) -> slice:
    n = meta["n1"] if which == "x1" else meta["n2"]
    t = meta["tile"]
    return slice(i * t, min((i + 1) * t, n))


def _load_rows(g, meta: dict, which: str, i: int, xp: Any) -> Any:
    rows = _rows(meta, which, i)
    x = np.asarray(g[which][rows])
    try:
        x = as_input(x, which, np.dtype(meta["dtype"]))
    except InputError as e:
        raise InputError(f"rows {rows.start}:{rows.stop}: {e.reason}", field=which) from None
    return xp.asarray(x)


def self_task(url: str, which: str, i: int, options: dict | None = None) -> dict:
    """Self-covariances of row chunk ``i`` of ``which`` ("x1" or "x2"), written to
    ``self/<which>/`` and marked done."""
    t0 = time.perf_counter()
    g = open_group(url, mode="r+", options=options)
    meta = job_meta(g)
    xp = _device()
    plan = _plan(meta)
    x = _load_rows(g, meta, which, i, xp)
    sc = self_pass(plan, x, want_ntk="ntk" in meta["get"],
                   memory=block_budget(xp, meta["memory"], 1))
    rows = _rows(meta, which, i)
    sg = g[f"self/{which}"]
    for j, v in enumerate(sc.variances):
        sg[f"var{j}"][rows] = backend.to_numpy(v)
    sg["diag_nngp"][rows] = backend.to_numpy(sc.nngp)
    if sc.ntk is not None:
        sg["diag_ntk"][rows] = backend.to_numpy(sc.ntk)
    sg["done"][i] = 1  # after the chunks above are written
    return {"seconds": time.perf_counter() - t0}


def _load_self(g, meta: dict, which: str, i: int, xp: Any, plan: Plan) -> SelfCov:
    rows = _rows(meta, which, i)
    sg = g[f"self/{which}"]
    variances = tuple(xp.asarray(sg[f"var{j}"][rows]) for j in range(len(plan.self_indices)))
    ntk = xp.asarray(sg["diag_ntk"][rows]) if "ntk" in meta["get"] else None
    return SelfCov(variances, xp.asarray(sg["diag_nngp"][rows]), ntk)


def tile_task(url: str, i: int, j: int, *deps: Any, options: dict | None = None) -> dict:
    """Gram tile (i, j): rows of x1 chunk i against rows of x2 chunk j (x1 for a symmetric
    job, whose mirror tile (j, i) it writes too), then its marker. ``deps`` are the self
    tasks it needs (Dask waits for them)."""
    t0 = time.perf_counter()
    g = open_group(url, mode="r+", options=options)
    meta = job_meta(g)
    xp = _device()
    plan = _plan(meta)
    sym = meta["symmetric"]
    other = "x1" if sym else "x2"
    xa = _load_rows(g, meta, "x1", i, xp)
    xb = xa if sym and i == j else _load_rows(g, meta, other, j, xp)
    sa = _load_self(g, meta, "x1", i, xp, plan)
    sb = sa if sym and i == j else _load_self(g, meta, other, j, xp, plan)
    out = gram(plan, xa, xb, sa, sb, symmetric=sym and i == j, get=tuple(meta["get"]),
               block=meta["block"], threads=meta["threads"])
    r, c = _rows(meta, "x1", i), _rows(meta, other, j)
    for name, val in out.items():
        val = backend.to_numpy(val)
        if not np.isfinite(val).all():  # overflow: never store inf/NaN as a kernel
            bad = int((~np.isfinite(val)).sum())
            raise FloatingPointError(
                f"{name} tile rows {r.start}:{r.stop} x cols {c.start}:{c.stop}: {bad} "
                f"non-finite entries ({meta['dtype']} overflow; use float64 or smaller "
                "W_std / b_std / activation scales)")
        g[name][r, c] = val
        if sym and i != j:
            g[name][c, r] = val.T
    g["done"][i, j] = 1  # after the tile's chunks are written
    if sym and i != j:
        g["done"][j, i] = 1
    return {"seconds": time.perf_counter() - t0, "pairs": (r.stop - r.start) * (c.stop - c.start)}


@functools.lru_cache(maxsize=8)
def _feature_map(spec_json: str, shape: tuple[int, ...], m: int, seed: int) -> Any:
    from ntkcompute.features import feature_map

    return feature_map(spec_json, shape, m, seed)


def feature_task(url: str, i: int, options: dict | None = None) -> dict:
    """Random features of row tile ``i`` of a features job, written, then marked done."""
    t0 = time.perf_counter()
    g = open_group(url, mode="r+", options=options)
    meta = job_meta(g)
    xp = _device()
    fm = _feature_map(json.dumps(meta["spec"]), tuple(meta["x_shape"][1:]), meta["m"],
                      meta["seed"])
    x = _load_rows(g, meta, "x1", i, xp)
    out = fm(x, tuple(meta["get"]), meta["dtype"])
    rows = _rows(meta, "x1", i)
    for name, val in out.items():
        g[name][rows] = backend.to_numpy(val)
    g["done"][i] = 1  # after the rows above are written
    return {"seconds": time.perf_counter() - t0}


def _feature_rows(url: str, name: str, i: int, options: dict | None) -> tuple[Any, slice]:
    """Row tile ``i`` of a features job's ``name`` array (float64), and its row slice."""
    g = open_group(url, mode="r", options=options)
    rows = _rows(job_meta(g), "x1", i)
    return np.asarray(g[name][rows], dtype=np.float64), rows


def normal_part(url: str, name: str, i: int, y: Any, options: dict | None = None) -> tuple:
    """``(Z_iᵀ Z_i, Z_iᵀ Y_i)`` of row tile ``i`` of a features job, in float64."""
    z, rows = _feature_rows(url, name, i, options)
    return z.T @ z, z.T @ np.asarray(y[rows], dtype=np.float64)


def normal_rhs(url: str, name: str, i: int, y: Any, options: dict | None = None) -> Any:
    """``Z_iᵀ Y_i`` of row tile ``i``."""
    z, rows = _feature_rows(url, name, i, options)
    return z.T @ np.asarray(y[rows], dtype=np.float64)


def normal_matvec(url: str, name: str, i: int, v: Any, options: dict | None = None) -> Any:
    """``Z_iᵀ (Z_i V)`` of row tile ``i``: one tile's share of ``(ZᵀZ) V``, never forming
    ZᵀZ."""
    z, _ = _feature_rows(url, name, i, options)
    return z.T @ (z @ v)


def add(a: Any, b: Any) -> Any:
    """Sum of two partial results: arrays, or tuples of arrays element by element."""
    if isinstance(a, tuple):
        return tuple(p + q for p, q in zip(a, b, strict=True))
    return a + b

"""Task functions the Dask workers run. They live in the installed package (the scheduler
unpickles them by reference) and are idempotent: a rerun after a killed worker rewrites the
same whole chunks with the same values, then the same marker.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from distributed import WorkerPlugin, get_worker

from ntkcompute import backend
from ntkcompute.errors import InputError
from ntkcompute.families import (
    FamilyPlan,
    family_gram,
    family_self_pass,
    make_family,
    make_family_plan,
)
from ntkcompute.infinite import SelfCov, block_budget, gram, self_pass
from ntkcompute.plan import Plan, make_plan
from ntkcompute.preprocess import flip
from ntkcompute.spec import parse_arch
from ntkcompute.validate import as_input

from .store import check_chunk, job_meta, member_axes, open_group, read


def _pick_device() -> Any:
    """CuPy on this worker's own GPU when there is one (dask-cuda pins one device per worker
    through CUDA_VISIBLE_DEVICES), else NumPy. ``NTKCOMPUTE_DEVICE=cpu`` forces NumPy."""
    if os.environ.get("NTKCOMPUTE_DEVICE", "auto") != "cpu" and backend.cupy_available():
        import cupy

        return cupy
    backend.tune_allocator()
    return np


class Planner(WorkerPlugin):
    """Per worker process: the array module, picked once at setup, and each job's plan and
    feature map, made once from the spec in the store's metadata (not once per tile).

    Installed on every worker by :func:`install` (the scheduler gives it to workers that
    join later too); a task that runs off a worker uses a process-wide instance."""

    name = "ntkcompute-planner"
    idempotent = True  # registering again keeps the workers' instances (and their plans)
    KEEP = 16  # plans kept: jobs whose tiles interleave on one worker

    def __init__(self) -> None:
        self.xp: Any = None
        self._plans: OrderedDict[tuple, Any] = OrderedDict()
        self.made = 0  # plans and feature maps made (not found kept)

    def setup(self, worker: Any = None) -> None:
        self.xp = _pick_device()

    def device(self) -> Any:
        if self.xp is None:
            self.setup()
        return self.xp

    def _cached(self, key: tuple, make: Any) -> Any:
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        value = self._plans[key] = make()
        self.made += 1
        while len(self._plans) > self.KEEP:
            self._plans.popitem(last=False)
        return value

    def plan(self, meta: dict) -> Plan | FamilyPlan:
        """The layer plan of a Gram job's spec on its input shape (a family job's: the
        family pass of its ``depths``, ``variants`` and ``b_stds``)."""
        spec = json.dumps(meta["spec"], sort_keys=True)
        shape, depths = tuple(meta["x_shape"]), meta.get("depths")
        variants, b_stds = meta.get("variants"), meta.get("b_stds")
        if depths is None:
            return self._cached(("plan", spec, shape),
                                lambda: make_plan(parse_arch(meta["spec"]), shape))
        key = ("family", spec, shape, tuple(depths), None if variants is None
               else tuple(variants), None if b_stds is None else tuple(b_stds))
        return self._cached(key, lambda: make_family_plan(
            make_family(meta["spec"], depths, variants, b_stds), shape))

    def feature_map(self, meta: dict) -> Any:
        """The feature map of a features job (drawn from its seed, so the same everywhere)."""
        from ntkcompute.features import feature_map

        spec = json.dumps(meta["spec"], sort_keys=True)
        shape, m, seed = tuple(meta["x_shape"][1:]), meta["m"], meta["seed"]
        return self._cached(("features", spec, shape, m, seed),
                            lambda: feature_map(meta["spec"], shape, m, seed))


_LOCAL = Planner()


def planner() -> Planner:
    """This worker's :class:`Planner` (or the process-wide one off a worker)."""
    try:
        return get_worker().plugins.get(Planner.name, _LOCAL)
    except ValueError:  # not running on a worker
        return _LOCAL


def install(client: Any) -> None:
    """Make sure every worker of ``client``'s cluster has a :class:`Planner` (one RPC; a
    worker that already has one keeps it, and its plans)."""
    client.register_plugin(Planner())


def _rows(meta: dict, which: str, i: int) -> slice:
    n = meta["n1"] if which == "x1" else meta["n2"]
    t = meta["tile"]
    return slice(i * t, min((i + 1) * t, n))


def _load_rows(g, meta: dict, which: str, i: int, xp: Any) -> Any:
    rows = _rows(meta, which, i)
    x = read(g[which], rows)
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
    ctx = planner()
    xp, plan = ctx.device(), ctx.plan(meta)
    x = _load_rows(g, meta, which, i, xp)
    sc = _self_pass(plan, x, meta, xp)
    rows = _rows(meta, which, i)
    sg = g[f"self/{which}"]
    stats = {f"var{j}": v for j, v in enumerate(sc.variances)}
    diag = {"nngp": sc.nngp, "ntk": sc.ntk}
    if _flips(meta):  # the flip-symmetrised kernel's diagonal: (K(x, x) + K(x, flip x)) / 2
        cross = _pairs_block(plan, x, flip(x), sc, _self_pass(plan, flip(x), meta, xp), meta)
        diag = {k: None if v is None else (v + xp.moveaxis(xp.diagonal(
            cross[k], axis1=-2, axis2=-1), -1, 0)) / 2 for k, v in diag.items()}
    stats.update({f"diag_{k}": v for k, v in diag.items() if v is not None})
    for name, v in stats.items():
        v = backend.to_numpy(v)
        _check_finite(v, f"self statistic {name} of {which} rows {rows.start}:{rows.stop}",
                      meta)
        sg[name][rows] = v
    sg["done"][i] = 1  # after the chunks above are written
    return {"seconds": time.perf_counter() - t0}


def _flips(meta: dict) -> bool:
    return bool((meta.get("preprocess") or {}).get("flip"))


def _self_pass(plan: Plan | FamilyPlan, x: Any, meta: dict, xp: Any) -> SelfCov:
    run = family_self_pass if isinstance(plan, FamilyPlan) else self_pass
    return run(plan, x, want_ntk="ntk" in meta["get"], memory=block_budget(xp, meta["memory"], 1))


def _pairs_block(plan: Plan | FamilyPlan, xa: Any, xb: Any, sa: SelfCov, sb: SelfCov,
                 meta: dict, symmetric: bool = False) -> dict[str, Any]:
    """The kernel block of rows ``xa`` x ``xb`` given their self statistics."""
    run = family_gram if isinstance(plan, FamilyPlan) else gram
    return run(plan, xa, xb, sa, sb, symmetric=symmetric, get=tuple(meta["get"]),
               block=meta["block"], threads=meta["threads"])


def _load_self(g, meta: dict, which: str, i: int, xp: Any, plan: Plan | FamilyPlan
               ) -> SelfCov:
    rows = _rows(meta, which, i)
    sg = g[f"self/{which}"]
    variances = tuple(xp.asarray(read(sg[f"var{j}"], rows))
                      for j in range(len(plan.self_layers)))
    ntk = xp.asarray(read(sg["diag_ntk"], rows)) if "ntk" in meta["get"] else None
    return SelfCov(variances, xp.asarray(read(sg["diag_nngp"], rows)), ntk)


def _check_finite(val: np.ndarray, what: str, meta: dict) -> None:
    """Never store inf/NaN as a result (a NaN also marks a missing chunk, see store.read)."""
    if not np.isfinite(val).all():
        bad = int((~np.isfinite(val)).sum())
        raise FloatingPointError(
            f"{what}: {bad} non-finite entries ({meta['dtype']} overflow, or non-finite "
            "inputs; use float64 or smaller W_std / b_std / activation scales)")


def tile_task(url: str, i: int, j: int, *deps: Any, options: dict | None = None) -> dict:
    """Gram tile (i, j): rows of x1 chunk i against rows of x2 chunk j (x1 for a symmetric
    job, whose mirror tile (j, i) it writes too), then its marker. ``deps`` are the self
    tasks it needs (Dask waits for them)."""
    t0 = time.perf_counter()
    g = open_group(url, mode="r+", options=options)
    meta = job_meta(g)
    ctx = planner()
    xp, plan = ctx.device(), ctx.plan(meta)
    sym = meta["symmetric"]
    other = "x1" if sym else "x2"
    xa = _load_rows(g, meta, "x1", i, xp)
    xb = xa if sym and i == j else _load_rows(g, meta, other, j, xp)
    sa = _load_self(g, meta, "x1", i, xp, plan)
    sb = sa if sym and i == j else _load_self(g, meta, other, j, xp, plan)
    out = _pairs_block(plan, xa, xb, sa, sb, meta, symmetric=sym and i == j)
    if _flips(meta):  # (K + C) / 2 with C = K(x, flip x'), symmetrised as (C + Cᵀ) / 2
        cross = _pairs_block(plan, xa, flip(xb), sa, _self_pass(plan, flip(xb), meta, xp),
                             meta)
        if sym and i == j:
            cross = {k: (v + xp.swapaxes(v, -1, -2)) / 2 for k, v in cross.items()}
        elif sym:  # the mirror tile's C_ji = K(x_j, flip x_i), transposed
            back = _pairs_block(plan, xb, flip(xa), sb, _self_pass(plan, flip(xa), meta, xp),
                                meta)
            cross = {k: (v + xp.swapaxes(back[k], -1, -2)) / 2 for k, v in cross.items()}
        out = {k: (v + cross[k]) / 2 for k, v in out.items()}
    r, c = _rows(meta, "x1", i), _rows(meta, other, j)
    for name, val in out.items():  # (n1, n2), or a family's (D, [V,] n1, n2): every member
        val = backend.to_numpy(val)
        _check_finite(val, f"{name} tile rows {r.start}:{r.stop} x cols {c.start}:{c.stop}",
                      meta)
        g[name][..., r, c] = val
        if sym and i != j:
            g[name][..., c, r] = np.swapaxes(val, -1, -2)
    g["done"][i, j] = 1  # after the tile's chunks are written
    if sym and i != j:
        g["done"][j, i] = 1
    return {"seconds": time.perf_counter() - t0, "pairs": (r.stop - r.start) * (c.stop - c.start)}


def feature_task(url: str, i: int, options: dict | None = None) -> dict:
    """Random features of row tile ``i`` of a features job, written, then marked done."""
    t0 = time.perf_counter()
    g = open_group(url, mode="r+", options=options)
    meta = job_meta(g)
    ctx = planner()
    xp, fm = ctx.device(), ctx.feature_map(meta)
    x = _load_rows(g, meta, "x1", i, xp)
    out = fm(x, tuple(meta["get"]), meta["dtype"])
    rows = _rows(meta, "x1", i)
    for name, val in out.items():
        val = backend.to_numpy(val)
        _check_finite(val, f"{name} features of rows {rows.start}:{rows.stop}", meta)
        g[name][rows] = val
    g["done"][i] = 1  # after the rows above are written
    return {"seconds": time.perf_counter() - t0}


def _feature_rows(url: str, name: str, i: int, options: dict | None) -> tuple[Any, slice]:
    """Row tile ``i`` of a features job's ``name`` array (float64), and its row slice."""
    g = open_group(url, mode="r", options=options)
    rows = _rows(job_meta(g), "x1", i)
    return np.asarray(read(g[name], rows), dtype=np.float64), rows


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


def verify_task(url: str, i: int, options: dict | None = None) -> dict:
    """Check tile row ``i`` of a stored job (see :mod:`workers.verify`): its input and
    self-statistic row chunks, its ``done`` markers, and the kernel (or feature) chunks of
    every tile marked done. Returns ``{"checked", "bad", "pending"}``."""
    g = open_group(url, mode="r", options=options)
    meta = job_meta(g)
    features = meta.get("method") == "features"
    sym = not features and meta["symmetric"]
    t1 = -(-meta["n1"] // meta["tile"])
    t2 = 1 if features else -(-meta["n2"] // meta["tile"])
    bad: list[dict] = []
    pending: list[list[int]] = []
    checked = 0

    def check(arr_path: str, coords: tuple[int, ...], tile: tuple[int, ...],
              missing_ok: bool = False) -> bool:
        nonlocal checked
        checked += 1
        problem = check_chunk(g[arr_path], coords, missing_ok)
        if problem:
            bad.append({"array": arr_path, "chunk": list(coords), "tile": list(tile),
                        "problem": problem})
        return problem is None

    inputs = [("x1", t1)] + ([] if sym or features else [("x2", t2)])
    for which, t in inputs:  # row chunk i of each input, and its self statistics
        if i >= t:
            continue
        check(which, (i,) + (0,) * (g[which].ndim - 1), (i,))
        if features:
            continue
        sg = f"self/{which}"
        if not read(g[f"{sg}/done"], slice(i, i + 1), missing_ok=True)[0]:
            continue  # not computed yet
        names = [n for n in g[sg].array_keys() if n != "done"]
        if "ntk" not in meta["get"]:
            names.remove("diag_ntk")
        for name in sorted(names):
            check(f"{sg}/{name}", (i,) + (0,) * (g[f"{sg}/{name}"].ndim - 1), (i,))
    if i >= t1:
        return {"checked": checked, "bad": bad, "pending": pending}
    done = g["done"]
    for j in range(i if sym else 0, t2):
        tile = (i,) if features else (i, j)
        mirrors = [tile] + ([(j, i)] if sym and i != j else [])
        marked = True
        for m in mirrors:
            marked &= check("done", m, tile, missing_ok=True) and bool(done[m])
        if not marked:
            pending.append(list(tile))
            continue
        for name in meta["get"]:
            members = [()] if features else \
                list(itertools.product(*map(range, member_axes(meta, name)[0])))
            for m in mirrors:
                for d in members:  # a family job: each member's chunk of the tile
                    check(name, (*d, *m) if not features else (i, 0), tile)
    return {"checked": checked, "bad": bad, "pending": pending}


def known_keys(keys: list[str], dask_worker: Any = None) -> list[str]:
    """Of ``keys``, those this worker still holds in any state: a cancelled task that was
    already executing stays until it ends (run through ``Client.run``)."""
    tasks = dask_worker.state.tasks
    return [k for k in keys if k in tasks]


def scheduler_keys(keys: list[str], dask_scheduler: Any = None) -> list[str]:
    """Of ``keys``, those the scheduler still knows (run through ``Client.run_on_scheduler``)."""
    tasks = dask_scheduler.tasks
    return [k for k in keys if k in tasks]


def add(a: Any, b: Any) -> Any:
    """Sum of two partial results: arrays, or tuples of arrays element by element."""
    if isinstance(a, tuple):
        return tuple(p + q for p, q in zip(a, b, strict=True))
    return a + b

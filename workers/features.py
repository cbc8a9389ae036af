"""``compute_features``: NTK/NNGP random features (:mod:`ntkcompute.features`) as a Dask job
over row tiles, stored in Zarr ``(n, D)``, resumable like a Gram job.

The feature map is drawn from the seed inside each task, so every row's features are the
same whichever tile (or machine) computes them; rows whose input chunk is unchanged and
marked done are not recomputed on a rerun.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from distributed import Client

from ntkcompute.errors import InputError
from ntkcompute.features import ESTIMATOR_VERSION, FeatureMap, feature_map
from ntkcompute.lifecycle import Status
from ntkcompute.validate import check_get, check_shape, resolve_dtype

from . import tasks
from .cluster import get_client, shutdown
from .gram import (
    GramJob,
    _as_array,
    _marker,
    _store_input,
    begin_job,
    changed_chunks,
    read_marks,
)
from .store import create_array, job_meta, open_group, read, set_meta
from .store import storage_options as resolve_options

#: Rows per task by default: ~64 MiB of features per tile, and no more than ~2·10¹¹
#: floating-point operations (seconds of one core; conv nets cost far more per row).
TILE_BYTES = 64 << 20
TILE_FLOPS = 2 * 10**11


def plan_features(arch: Any, x: Any, *, m: int, seed: int = 0,
                  get: tuple[str, ...] | str = ("ntk", "nngp"), dtype: Any = None,
                  tile: int | None = None) -> tuple[FeatureMap, np.dtype, int]:
    """Check a features job without running it: ``(feature map, dtype, tile rows)``.

    ``x`` needs only ``shape`` and ``dtype``. Raises :class:`InputError` naming the field.
    """
    check_shape(x.shape, "x")
    get = check_get(get)
    dt = resolve_dtype(dtype, x)
    fm = feature_map(arch, tuple(int(s) for s in x.shape[1:]), m, seed)
    n = int(x.shape[0])
    width = sum(fm.dims[k] for k in get)
    if tile is None:
        tile = max(1, min(n, TILE_BYTES // (width * dt.itemsize),
                          TILE_FLOPS // max(1, fm.row_flops)))
    elif isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0:
        raise InputError(f"must be a positive integer, got {tile!r}", field="tile")
    return fm, dt, min(tile, n)


def compute_features(arch: Any, x: Any, *, store: str, m: int, seed: int = 0,
                     get: tuple[str, ...] | str = ("ntk", "nngp"), dtype: Any = None,
                     tile: int | None = None, client: Client | None = None,
                     scheduler: str | None = None, storage_options: dict | None = None,
                     checksums: bool = True, verify: bool = False) -> GramJob:
    """Start (or resume) the random-feature job of ``arch`` on x (n, d) or (n, *spatial, C)
    into ``store``.

    Writes ``ntk`` (n, D) and/or ``nngp`` (n, D') feature arrays (``FeatureMap.dims``; an
    FC net's are 2m+1 and m+1) chunked by ``tile`` rows, with a ``done`` marker per row
    tile. Returns a :class:`workers.GramJob` (progress, wait, arrays, to_numpy).
    ``checksums`` and ``verify`` as for :func:`workers.compute_gram`.

    Raises:
        InputError: an architecture the features do not cover, bad shapes, or a store
            holding a different job.
    """
    a = _as_array(x, "x")
    fm, dt, tile = plan_features(arch, a, m=m, seed=seed, get=get, dtype=dtype, tile=tile)
    get = check_get(get)
    n = int(a.shape[0])
    opts = resolve_options(storage_options)
    identity = {"method": "features", "spec": fm.arch.model_dump(mode="json"), "m": m,
                "seed": seed, "dtype": dt.str, "get": list(get), "x_shape": list(a.shape),
                "n1": n, "tile": tile, "dims": fm.dims, "exact_norms": fm.exact_norms,
                "estimator": ESTIMATOR_VERSION}
    g, old, cl, cluster, damage = begin_job(store, identity, opts, client, scheduler, verify)
    try:
        sums = _store_input(g, "x1", a, dt, tile, checksum=checksums,
                            force=damage.inputs.get("x1", frozenset()))
        t = len(sums)
        changed = changed_chunks(old, "x1", sums)
        for k in get:
            if k not in g:
                create_array(g, k, (n, fm.dims[k]), (tile, fm.dims[k]), dt,
                             checksum=checksums, computed=True)
        done = _marker(g, "done", (t,), checksums)
        marks = read_marks(done)
        for i in np.nonzero(marks)[0]:
            if changed[i] or (i,) in damage.tiles:
                marks[i], done[i] = False, 0
        set_meta(g, **identity, x1_chunks=sums, status=Status.RUNNING, error=None,
                 started=time.time(), tiles_total=t, checksums=checksums)
    except BaseException:
        shutdown(cl, cluster)
        raise
    token = f"{abs(hash((store, time.time()))):x}"
    futures = [cl.submit(tasks.feature_task, store, i, options=opts,
                         key=f"tile-features-{i}-{token}", pure=False)
               for i in range(t) if not marks[i]]
    return GramJob(store, g, cl, cluster, futures, t, int(marks.sum()))


#: Largest D × D normal matrix (bytes) ``method="auto"`` forms; past it, CG over Z.
NORMAL_BYTES = 1 << 30


def _tree_sum(cl: Client, parts: list, add: Any) -> Any:
    while len(parts) > 1:
        parts = [cl.submit(add, parts[j], parts[j + 1], pure=False)
                 if j + 1 < len(parts) else parts[j] for j in range(0, len(parts), 2)]
    return parts[0].result()


def mean_square_norm(z: Any) -> float:
    """mean_i ‖Φ(x_i)‖² of a stored (n, D) features array, streamed by row chunks: the
    mean diagonal of the kernel the features approximate."""
    step = z.chunks[0]
    total = sum(float(np.sum(np.asarray(read(z, slice(r, r + step)), dtype=np.float64) ** 2))
                for r in range(0, z.shape[0], step))
    return total / z.shape[0]


def solve_features(job: str, labels: Any, lam: float | list[float], *, name: str = "ntk",
                   test: str | None = None, test_labels: Any = None,
                   method: str = "auto", tol: float = 1e-8, maxiter: int = 1000,
                   client: Client | None = None, scheduler: str | None = None,
                   options: dict | None = None, relative: bool = False) -> Any:
    """Ridge regression on stored features: ``(ZᵀZ + λI) w = ZᵀY``.

    λ is absolute unless ``relative`` (then a multiple of mean(diag K) = mean ‖Φ(x)‖², the
    convention of every solver: :func:`ntkcompute.regression.absolute_lambdas`).

    ``method="normal"``: ``ZᵀZ`` (D × D) and ``ZᵀY`` are accumulated tile by tile on the
    workers and summed in a tree, one pass over Z; the system is solved by Cholesky (one λ)
    or one eigendecomposition (a λ sweep). ``method="cg"``: conjugate gradients whose every
    product ``ZᵀZ V = Σ_i Z_iᵀ(Z_i V)`` is one pass over Z on the workers, so no D × D matrix
    exists (for large m). ``"auto"`` picks normal while ZᵀZ fits in ``NORMAL_BYTES``.
    With ``test`` (a features job of the test rows, same map), predictions ``Z_test w``
    and metrics as :func:`workers.solve`.

    Returns:
        a :class:`workers.SolveResult` with ``coefficients`` w (D, c), or (L, D, c).
    """
    from ntkcompute.cg import cg
    from ntkcompute.regression import Eigen, absolute_lambdas, solve_direct

    from .solve import SolveResult, _metrics, check_finite_result, targets_from

    t0 = time.perf_counter()
    g = open_group(job, mode="r", options=options)
    meta = job_meta(g)
    if meta.get("method") != "features" or meta.get("status") != Status.SUCCEEDED:
        raise InputError(f"{job} is not a finished features job", field="job")
    if name not in g:
        raise InputError(f"no '{name}' features in {job}", field="name")
    n, tile = meta["n1"], meta["tile"]
    Y, classes = targets_from(labels, n)
    lams = absolute_lambdas(lam, False)  # a bad λ fails before any work
    dim = g[name].shape[1]
    if method == "auto":
        method = "normal" if dim * dim * 8 <= NORMAL_BYTES else "cg"
    if method not in ("normal", "cg"):
        raise InputError(f"must be 'auto', 'normal' or 'cg', got {method!r}", field="method")
    tiles = range(-(-n // tile))
    iterations, converged = 0, True
    cl, cluster = get_client(client, scheduler)
    try:
        yf = cl.scatter(Y, hash=False)
        if method == "normal":
            A, B = _tree_sum(cl, [cl.submit(tasks.normal_part, job, name, i, yf,
                                            options=options, pure=False) for i in tiles],
                             tasks.add)
            lams = absolute_lambdas(lam, relative, float(np.trace(A)) / n)
        else:
            lams = absolute_lambdas(lam, relative, mean_square_norm(g[name]))
            B = _tree_sum(cl, [cl.submit(tasks.normal_rhs, job, name, i, yf,
                                         options=options, pure=False) for i in tiles],
                          tasks.add)

            def matvec(v: np.ndarray) -> np.ndarray:
                # hash=False: CG can pass equal vectors twice, and a content-hashed key
                # released by the previous product cancels this one ("lost dependencies")
                vf = cl.scatter(v, broadcast=True, hash=False)
                return _tree_sum(cl, [cl.submit(tasks.normal_matvec, job, name, i, vf,
                                                options=options, pure=False) for i in tiles],
                                 tasks.add)

            coefs, x0 = [], None
            for v in lams:  # warm start along the λ list
                r = cg(matvec, B, v, tol=tol, maxiter=maxiter, x0=x0)
                coefs.append(r.x)
                x0 = r.x
                iterations += r.iterations
                converged = converged and r.converged
    finally:
        shutdown(cl, cluster)
    if method == "cg":
        coef = coefs[0] if len(lams) == 1 else np.stack(coefs)
    elif len(lams) == 1:
        coef = solve_direct(A, B, lams[0])
    else:
        coef = np.stack(Eigen.of(A).sweep(B, lams))
    res = SolveResult(coef, lams, f"features-{method}", iterations, converged)
    if test is not None:
        zt = open_group(test, mode="r", options=options)[name]
        coefs = coef if coef.ndim == 3 else coef[None]
        zt = np.asarray(read(zt), dtype=np.float64)
        preds = np.stack([zt @ c for c in coefs])
        res.predictions = preds if coef.ndim == 3 else preds[0]
        res.metrics = _metrics(preds[-1], test_labels, classes)
        if len(preds) > 1:
            res.metrics["per_lambda"] = [_metrics(p, test_labels, classes) for p in preds]
    res.seconds = time.perf_counter() - t0
    return check_finite_result(res)

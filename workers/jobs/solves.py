"""A solve's arrays in the store: written once from the solver's results, read back by rows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ntkcompute.errors import InputError

from ..solve import SolveResult
from ..store import CorruptChunk, open_group, read, read_dataset, write_array
from .errors import JobConflict, Missing
from .kinds import span


def labels_of(given: list | None, dataset_url: str | None, field: str,
              required: bool = True) -> np.ndarray | None:
    """The labels a solve request gave, else its dataset's stored y (None if neither and
    not ``required``)."""
    if given is not None:
        return np.asarray(given)
    y = read_dataset(dataset_url)[1] if dataset_url is not None else None
    if y is None:
        if required:
            raise InputError("not given, and the train dataset has no y", field=field)
        return None
    return np.asarray(read(y))


def save(url: str, results: list[SolveResult]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write coefficients (L, n, c) and predictions (L, m, c) under ``url``; return the
    solve's metrics (one entry per λ, the best by accuracy or MSE, the definiteness report)
    and the first result's analyses."""
    g = open_group(url, mode="w")
    coefs = np.concatenate([r.coefficients if r.coefficients.ndim == 3
                            else r.coefficients[None] for r in results])
    write_array(g, "coefficients", coefs, 1, computed=True)
    if results[0].predictions is not None:
        preds = np.concatenate([r.predictions if r.predictions.ndim == 3
                                else r.predictions[None] for r in results])
        write_array(g, "predictions", preds, 1, computed=True)
    if results[0].variances is not None:
        var = np.concatenate([r.variances if r.variances.ndim == 2 else r.variances[None]
                              for r in results])
        write_array(g, "variances", var, 1, computed=True)
    per = []
    for r in results:
        sweep = r.metrics.get("per_lambda")
        for k, lam in enumerate(r.lams):
            m = sweep[k] if sweep else dict(r.metrics)
            per.append({"lambda": lam, "solver": r.solver, "iterations": r.iterations,
                        "converged": r.converged, "seconds": r.seconds, **m})
    metrics: dict[str, Any] = {"per_lambda": per}
    if "definiteness" in results[0].analyses:  # eigenvalues clamped or negative
        metrics["definiteness"] = results[0].analyses["definiteness"]
    scored = [m for m in per if "accuracy" in m] or [m for m in per if "mse" in m]
    if scored:
        key = "accuracy" if "accuracy" in scored[0] else "mse"
        pick = max if key == "accuracy" else min
        metrics["best"] = pick(scored, key=lambda m: m[key])
    return metrics, results[0].analyses


def read_array(url: str, name: str, lam: int | None, rows: str | None, max_bytes: int
               ) -> np.ndarray:
    """``coefficients``, ``predictions`` or ``variances`` of a finished solve: every λ
    ``(L, rows, c)`` (variances ``(L, rows)``), or λ number ``lam`` ``(rows, c)``;
    :class:`InputError` past ``max_bytes``."""
    g = open_group(url, mode="r")
    if name not in g:
        raise Missing(name, "this solve was not asked for variances (analyses.variance)"
                      if name == "variances" else
                      "this solve has no test set, so no predictions")
    arr = g[name]
    if lam is not None and lam >= arr.shape[0]:
        raise InputError(f"must be < {arr.shape[0]} (the λ count)", field="lambda_index")
    lams = slice(0, arr.shape[0]) if lam is None else slice(lam, lam + 1)
    r = span(rows, arr.shape[1], "rows")
    nbytes = (lams.stop - lams.start) * (r.stop - r.start) * math.prod(arr.shape[2:]) * 8
    if nbytes > max_bytes:
        raise InputError(f"{nbytes} bytes exceed the limit of {max_bytes}; ask for one λ "
                         "(lambda_index) or fewer rows at a time",
                         field="lambda_index" if lam is None else "rows")
    try:
        a = read(arr, (lams, r))
    except CorruptChunk as e:
        raise JobConflict("solve_id", f"{name} chunk {list(e.chunk)} is damaged: "
                          f"{e.problem}; run the solve again") from None
    return a if lam is None else a[0]

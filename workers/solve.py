"""Kernel regression on a kernel stored by :func:`workers.compute_gram`, where it lies.

``solver="cg"`` runs :func:`ntkcompute.cg.cg` with the product ``K @ V`` done by one actor per
worker over its tiles of the Zarr array (:class:`workers.operator.DistributedKernel`: the
upper triangle of a symmetric Gram), so the matrix is never gathered in one process.
``solver="direct"`` loads it and uses Cholesky (one λ) or one eigendecomposition (a λ
sweep): the reference, for kernels that fit.
Coefficients, predictions and metrics are written beside the kernel, under ``solves/<name>``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed import Client

from ntkcompute.cg import (
    NYSTROM_TARGET,
    Jacobi,
    Nystrom,
    cg,
    pivoted_cholesky,
    randomized_nystrom,
)
from ntkcompute.errors import InputError
from ntkcompute.predict import Ensemble
from ntkcompute.regression import (
    Eigen,
    absolute_lambdas,
    gd_predictions,
    generalization_bound,
    learning_curves,
    mean_diagonal,
    min_eigenvalue,
    one_hot,
    solve_direct,
)
from ntkcompute.selection import DEFAULT_LAMBDAS, Selection, select

from .cluster import get_client, shutdown
from .operator import DistributedKernel
from .store import (
    Member,
    consolidate,
    create_array,
    diagonal_of,
    job_meta,
    kernel_array,
    open_group,
    read,
    set_meta,
)


@dataclass
class SolveResult:
    coefficients: np.ndarray  # (n, c), or (len(lams), n, c) for a direct λ sweep
    lams: list[float]
    solver: str
    iterations: int = 0
    converged: bool = True
    residuals: list[float] = field(default_factory=list)
    seconds: float = 0.0
    predictions: np.ndarray | None = None  # (m, c) (or per λ) on the cross kernel
    variances: np.ndarray | None = None    # (m,) (or (L, m) per λ): predictive variances
    metrics: dict[str, Any] = field(default_factory=dict)
    analyses: dict[str, Any] = field(default_factory=dict)


#: Largest |target| a solve accepts: residual norms and squared errors square it, and past
#: ~1e154 those overflow float64 (the solve would "converge" to NaN).
LABEL_BOUND = 1e100


def targets_from(labels: np.ndarray, n: int) -> tuple[np.ndarray, int | None]:
    """Integer class labels -> one-hot 0.9 / -0.1 (Arora et al.); float targets as given."""
    y = np.asarray(labels)
    if y.shape[0] != n:
        raise InputError(f"has {y.shape[0]} rows, the kernel has {n}", field="labels")
    if y.ndim == 1 and y.dtype.kind in "iu":
        if y.min() < 0:
            raise InputError("class labels must be >= 0", field="labels")
        classes = int(y.max()) + 1
        return one_hot(y, classes), classes
    t = y.astype(np.float64)
    if not np.isfinite(t).all():
        raise InputError("contains NaN or infinite values", field="labels")
    if t.size and np.abs(t).max() > LABEL_BOUND:
        raise InputError(f"targets must be within ±{LABEL_BOUND:g}; rescale them",
                         field="labels")
    return (t[:, None] if t.ndim == 1 else t), None


def check_finite_result(res: SolveResult) -> SolveResult:
    """Raise ``FloatingPointError`` unless every coefficient and prediction is finite: a
    diverged or overflowed solve fails, it is never reported with NaN numbers."""
    for name in ("coefficients", "predictions"):
        a = getattr(res, name)
        if a is not None and not np.isfinite(a).all():
            raise FloatingPointError(
                f"{name}: {int((~np.isfinite(a)).sum())} non-finite values (the system "
                "overflowed or diverged; check the labels' scale and λ)")
    return res


def check_cross(train: Any, cross: str, name: str, n: int,
                test_labels: np.ndarray | None, options: dict | None,
                depth: int | None = None, variant: int | None = None,
                b_std: float | None = None) -> None:
    """Refuse, before any work, a cross kernel that cannot predict for this train kernel.

    It must hold ``name`` as an ``(m, n)`` array, test rows x train rows (``n`` the train
    kernel's rows): a job made as ``compute_gram(arch, x_test, x_train)``, ``ntk gram --x1
    test --x2 train`` (for member ``depth``, ``variant``, ``b_std`` of a family job: a
    family with that member).
    One made the other way round, train x test ``(n, m)``, is named as such, also when
    ``m == n`` and the stores' input checksums show its first inputs are the train
    kernel's. ``test_labels`` must have ``m`` rows. Every refusal is an
    :class:`InputError` on ``cross`` (or ``test_labels``).
    """
    redo = ("make it with the test rows first, compute_gram(arch, x_test, x_train) "
            "(ntk gram --x1 test --x2 train)")
    try:
        cgroup = open_group(cross, mode="r", options=options)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise InputError(f"no kernel job at {cross} ({type(e).__name__}: {e})",
                         field="cross") from None
    if name not in cgroup:
        raise InputError(f"no '{name}' array in {cross}", field="cross")
    try:
        shape = tuple(kernel_array(cgroup, name, depth, variant, b_std).shape)
    except InputError as e:
        raise InputError(f"{cross}: {e.reason}", field="cross") from None
    if len(shape) != 2:
        raise InputError(f"{cross} holds a {len(shape)}-d '{name}', not a kernel",
                         field="cross")
    if shape[1] != n:
        why = (f"it is train x test ({shape[0]} x {shape[1]}); " if shape[0] == n else "")
        raise InputError(f"the cross kernel must be test x train, (m, {n}) with {n} the train "
                         f"kernel's rows, got {shape}: {why}{redo}", field="cross")
    tm, cm = job_meta(train), job_meta(cgroup)
    same = (tm.get("tile") == cm.get("tile") and tm.get("dtype") == cm.get("dtype")
            and tm.get("x1_chunks"))
    if same and cm.get("x2_chunks") and cm.get("x1_chunks") == tm["x1_chunks"] \
            and cm["x2_chunks"] != tm["x1_chunks"]:
        raise InputError(f"the cross kernel {cross} is train x test (its first inputs are the "
                         f"train kernel's rows); {redo}", field="cross")
    if test_labels is not None and np.shape(test_labels)[:1] != (shape[0],):
        raise InputError(f"has {np.shape(test_labels)[0] if np.ndim(test_labels) else 0} "
                         f"rows, the cross kernel has {shape[0]} test rows",
                         field="test_labels")


def _predict(cross_url: str, name: str, coef: np.ndarray, options: dict | None,
             depth: int | None = None, variant: int | None = None,
             b_std: float | None = None) -> np.ndarray:
    """``K_cross @ coef`` streamed over the cross kernel's row chunks."""
    arr = kernel_array(open_group(cross_url, mode="r", options=options), name, depth, variant,
                       b_std)
    out = np.empty((arr.shape[0], coef.shape[-1]))
    step = arr.chunks[0]
    for r in range(0, arr.shape[0], step):
        out[r:r + step] = np.asarray(read(arr, slice(r, r + step)), dtype=np.float64) @ coef
    return out


def _metrics(pred: np.ndarray, test_labels: np.ndarray | None, classes: int | None) -> dict:
    if test_labels is None:
        return {}
    yt = np.asarray(test_labels)
    if classes is not None and yt.ndim == 1:
        return {"accuracy": float(np.mean(pred.argmax(1) == yt)),
                "mse": float(np.mean((pred - one_hot(yt, pred.shape[1])) ** 2))}
    yt = yt[:, None] if yt.ndim == 1 else yt
    return {"mse": float(np.mean((pred - yt) ** 2))}


def _add_variances(res: SolveResult, g: Any, K: np.ndarray, name: str, Y: np.ndarray,
                   lams: list[float], times: list[float] | None, lr: float, cross: str,
                   options: dict | None, depth: int | None, variant: int | None,
                   b_std: float | None) -> None:
    """Predictive variances of the test outputs into ``res`` (see :func:`solve`)."""
    gc = open_group(cross, mode="r", options=options)
    if "nngp" not in g or "nngp" not in gc:
        raise InputError("predictive variances need the NNGP stored in the train and the "
                         "cross job (compute them with get including 'nngp')",
                         field="variance")
    if "self/x1/diag_nngp" not in gc:
        raise InputError(f"{cross} stores no NNGP diagonal of its test rows",
                         field="variance")
    nngp = K if name == "nngp" else np.asarray(
        read(kernel_array(g, "nngp", depth, b_std=b_std)), dtype=np.float64)
    k_td = {kind: np.asarray(read(kernel_array(gc, kind, depth, variant, b_std)),
                             dtype=np.float64) for kind in {"nngp", name}}
    k_tt = np.asarray(diagonal_of(gc, "nngp", depth, b_std=b_std), dtype=np.float64)
    ntk = K if name == "ntk" else None
    var = np.stack([Ensemble(nngp, ntk, Y, diag_reg=lam, diag_reg_absolute_scale=True)
                    .predict(None, k_td, k_tt, get=name, compute_cov=True)[name].covariance
                    for lam in lams])
    res.variances = var[0] if len(lams) == 1 else var
    res.analyses["variance"] = {"kind": name, "mean": [float(v.mean()) for v in var]}
    if times:
        gd = Ensemble(nngp, ntk, Y, learning_rate=lr).predict(
            times, k_td, k_tt, get=name, compute_cov=True)[name].covariance
        for entry, v in zip(res.analyses["gd"], gd, strict=True):
            entry["variance"] = float(v.mean())


def _coverage(pred: np.ndarray, var: np.ndarray, test_labels: np.ndarray) -> float:
    """Fraction of real test targets within two predictive standard deviations."""
    yt = np.asarray(test_labels, dtype=np.float64)
    yt = yt[:, None] if yt.ndim == 1 else yt
    sd = np.sqrt(np.maximum(var, 0.0))[:, None]
    return float(np.mean(np.abs(yt - pred) <= 2 * sd))


class _Stack:
    """Members ``index`` (a list of kept indices per member axis: bias grid, depths,
    variants) of a family job's stored kernel as :func:`ntkcompute.select` reads them:
    ``stack[i]`` / ``stack[i, j]`` ... read through its checksums when it is scored."""

    def __init__(self, arr: Any, *index: list[int]) -> None:
        self.arr, self.index = arr, index
        self.shape = (*map(len, index), *arr.shape[len(index):])

    def __getitem__(self, key: int | tuple[int, ...]) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return read(Member(self.arr, tuple(ix[k] for ix, k in zip(self.index, key,
                                                                  strict=True))))


def _among(values: Sequence | None, stored: list, what: str) -> list:
    keep = list(stored) if values is None else list(values)
    for v in keep:
        if v not in stored:
            raise InputError(f"must be among the job's {what} {stored}, got {v}", field=what)
    return keep


def select_member(kernel: str, labels: np.ndarray, *, kinds: Sequence[str] = ("ntk",),
                  depths: Sequence[int] | None = None,
                  lambdas: Sequence[float] = DEFAULT_LAMBDAS, relative: bool = True,
                  criterion: str | None = None, options: dict | None = None,
                  times: Sequence[float] | None = None, lr: float = 1.0,
                  variants: Sequence[int] | None = None,
                  b_stds: Sequence[float] | None = None) -> Selection:
    """The best (depth, kernel, λ) of kernel ridge regression on the stored train kernel at
    ``kernel`` (a job URL) by closed-form leave-one-out or GCV (:func:`ntkcompute.select`:
    ``criterion`` "accuracy" for class labels by default, "loo", "gcv"), one member in
    memory at a time, each read through its checksums.

    ``kinds``: the stored kernels to score ("ntk", "nngp"); ``depths``: the members of a
    family job to score (default every member; refused for one network); ``variants``: of
    a family job with variants, the NTK variants to score, ``b_stds``: of one with a bias
    grid, its values to score (default every one; refused without); ``lambdas``: the grid,
    relative to each member's mean diagonal when ``relative``; ``times``, ``lr``: select
    gradient-flow time instead of λ (as :func:`ntkcompute.select`). Rows of the table name
    ``depth`` (None for one network), ``variant`` (a family with variants: None for the
    NNGP), ``b_std`` (a bias grid) and ``kernel``.
    """
    g = open_group(kernel, mode="r", options=options)
    for k in kinds:
        if k not in g:
            raise InputError(f"no '{k}' array in {kernel}", field="kinds")
    meta = job_meta(g)
    family = meta.get("depths")
    n = g[kinds[0]].shape[-1] if kinds else 0
    y = np.asarray(labels)
    if y.shape[:1] != (n,):
        raise InputError(f"has {y.shape[0] if y.ndim else 0} rows, the kernel has {n}",
                         field="labels")
    for what, asked in (("variants", variants), ("b_stds", b_stds)):
        if meta.get(what) is None and asked:
            raise InputError(f"this job has no {what}", field=what)
    if family is None:
        if depths:
            raise InputError("this job is one network, not a family of depths",
                             field="depths")
        members: dict[str, Any] = {k: (lambda k=k: read(g[k])) for k in kinds}
        return select(members, y, lambdas=lambdas, relative=relative, criterion=criterion,
                      times=times, lr=lr)
    stacks: dict[str, Any] = {}
    index: dict[str, list[int]] = {}  # axis -> the stored indices kept
    for what, asked in (("b_stds", b_stds), ("depths", depths), ("variants", variants)):
        stored = meta.get(what)
        if stored is not None:
            stacks[what] = _among(asked, stored, what)
            index[what] = [stored.index(v) for v in stacks[what]]
    for k in kinds:
        axes = [a for a in ("b_stds", "depths", "variants") if a in index
                and (a != "variants" or k == "ntk")]
        stacks[k] = _Stack(g[k], *(index[a] for a in axes))
    return select(stacks, y, lambdas=lambdas, relative=relative, criterion=criterion,
                  times=times, lr=lr)


def _members(meta: dict, kinds: Sequence[str], depths: Sequence[int] | None,
             variants: Sequence[int] | None, b_stds: Sequence[float] | None
             ) -> list[dict[str, Any]]:
    """The (kernel, b_std, depth, variant) members of a stored job to score, in the order
    :func:`select_member` scores them (each axis refused where the job has none, or for a
    value it lacks)."""
    import itertools

    for what, asked in (("variants", variants), ("b_stds", b_stds), ("depths", depths)):
        if meta.get(what) is None and asked:
            raise InputError(f"this job has no {what}", field=what)
    axes = []
    for what, key, asked in (("b_stds", "b_std", b_stds), ("depths", "depth", depths),
                             ("variants", "variant", variants)):
        if meta.get(what) is not None:
            axes.append((key, _among(asked, meta[what], what)))
    out = []
    for kind in kinds:
        mine = [(k, v) for k, v in axes if k != "variant" or kind == "ntk"]
        for values in itertools.product(*(v for _, v in mine)):
            desc = dict(zip((k for k, _ in mine), values, strict=True))
            name = " ".join([kind, *(f"{k.replace('_', ' ')} {v:g}" for k, v in desc.items())])
            out.append({"name": name, **desc, "kernel": kind})
    return out


def _validation_split(y: np.ndarray, classes: int | None, fraction: float, seed: int
                      ) -> np.ndarray:
    """A boolean mask of the held-out rows: ``fraction`` of each class (of all rows for real
    targets), at least one, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    groups = [np.flatnonzero(y == c) for c in range(classes)] if classes else [
        np.arange(len(y))]
    for rows in groups:
        k = round(fraction * len(rows))
        if len(rows) > 1 and k:
            mask[rng.choice(rows, size=min(k, len(rows) - 1), replace=False)] = True
    if not mask.any() or mask.all():
        raise InputError(f"a validation fraction of {fraction} leaves no rows on one side",
                         field="validation")
    return mask


def select_by_validation(kernel: str, labels: np.ndarray, *, kinds: Sequence[str] = ("ntk",),
                         depths: Sequence[int] | None = None,
                         variants: Sequence[int] | None = None,
                         b_stds: Sequence[float] | None = None,
                         lambdas: Sequence[float] = DEFAULT_LAMBDAS, relative: bool = True,
                         validation: float = 0.2, seed: int = 0, tol: float = 1e-6,
                         maxiter: int = 1000, client: Client | None = None,
                         scheduler: str | None = None, options: dict | None = None
                         ) -> Selection:
    """The best member and λ of kernel ridge regression on the stored train kernel at
    ``kernel`` by the score on a held-out validation split, each fit by distributed CG: for
    n past what a closed-form selection (:func:`select_member`, an n x n
    eigendecomposition in memory) holds.

    ``validation`` of the rows (of each class, for class labels; drawn with ``seed``) are
    held out; for each member (``kinds`` x the job's ``b_stds``, ``depths``, ``variants``,
    or those given) the kernel is loaded once into the workers' memory, ``(K_tt + λI) α =
    Y_t`` is solved for every λ of the grid in one block-CG loop (Jacobi preconditioner;
    the train-block product is the stored kernel's product with the held-out rows zeroed,
    so nothing is copied), and the held-out rows are predicted with one more product. The
    rows of the table name the member (as :func:`select_member`), ``lam``,
    ``lam_absolute``, ``accuracy`` (class labels) and ``mse`` on the held-out rows,
    ``iterations`` and ``converged``; the best is the highest accuracy (ties: lowest mse),
    or the lowest mse for real targets. Criterion ``"validation"``.
    """
    if isinstance(validation, bool) or not isinstance(validation, (int, float)) \
            or not 0 < validation <= 0.5:
        raise InputError(f"must be a fraction in (0, 0.5], got {validation!r}",
                         field="validation")
    g = open_group(kernel, mode="r", options=options)
    for k in kinds:
        if k not in g:
            raise InputError(f"no '{k}' array in {kernel}", field="kinds")
    members = _members(job_meta(g), kinds, depths, variants, b_stds)
    n = g[kinds[0]].shape[-1]
    Y, classes = targets_from(labels, n)
    y = np.asarray(labels)
    held = _validation_split(y, classes, float(validation), seed)
    keep = ~held
    grid = [float(v) for v in lambdas]
    if not grid or not all(np.isfinite(v) and v > 0 for v in grid):
        raise InputError("must be a non-empty list of finite values > 0", field="lambdas")
    table: list[dict[str, Any]] = []
    cl, cluster = get_client(client, scheduler)
    try:
        for i, desc in enumerate(members):
            op = DistributedKernel(cl, kernel, desc["kernel"], options=options,
                                   depth=desc.get("depth"), variant=desc.get("variant"),
                                   b_std=desc.get("b_std"))

            def train_block(V: np.ndarray, op: DistributedKernel = op) -> np.ndarray:
                full = np.zeros((n, V.shape[1]))
                full[keep] = V
                return op.matvec(full)[keep]

            diag = op.diagonal()[keep]
            lams = absolute_lambdas(grid, relative, float(np.mean(diag)))
            c = Y.shape[1]
            r = cg(train_block, Y[keep], lams if len(lams) > 1 else lams[0], tol=tol,
                   maxiter=maxiter, precond=Jacobi(diag, np.repeat(lams, c)))
            X = r.x if len(lams) > 1 else r.x[None]  # (L, n_kept, c)
            W = np.zeros((n, len(lams) * c))
            W[keep] = X.transpose(1, 0, 2).reshape(int(keep.sum()), -1)
            pred = op.matvec(W)[held].reshape(int(held.sum()), len(lams), c)
            del op  # the next member's tiles take the workers' memory
            for j, lam in enumerate(grid):
                p = pred[:, j]
                row = {"member": i, **desc, "lam": lam, "lam_absolute": lams[j],
                       "mse": float(np.mean((p - Y[held]) ** 2)),
                       "iterations": int(r.iterations),
                       "converged": bool(np.all(r.converged))}
                if classes:
                    row["accuracy"] = float(np.mean(p.argmax(1) == y[held]))
                table.append(row)
    finally:
        shutdown(cl, cluster)

    def rank(row: dict[str, Any]) -> tuple[float, float]:
        mse = row["mse"] if np.isfinite(row["mse"]) else np.inf
        return (-row["accuracy"], mse) if classes else (mse, 0.0)

    return Selection(min(table, key=rank), table, "validation")


def solve(kernel: str, labels: np.ndarray, lam: float | list[float], *, solver: str = "cg",
          name: str = "ntk", tol: float = 1e-8, maxiter: int = 1000,
          preconditioner: str | None = "nystrom", rank: int = 100,
          x0: np.ndarray | None = None, cross: str | None = None,
          test_labels: np.ndarray | None = None, client: Client | None = None,
          scheduler: str | None = None, save: str | None = "default",
          options: dict | None = None, times: list[float] | None = None, lr: float = 1.0,
          bound: bool = False, spectrum_k: int = 0, relative: bool = False,
          min_eig: bool = False, max_rank: int | None = None,
          target: float = NYSTROM_TARGET, precision: str = "double",
          seed: int = 0, variance: bool = False, depth: int | None = None,
          flow_time: float | None = None, variant: int | None = None,
          b_std: float | None = None) -> SolveResult:
    """Fit ``(K + λI) α = Y`` on the stored train kernel at ``kernel`` (a job URL).

    Args:
        labels: (n,) integer classes (one-hot 0.9/-0.1 targets) or (n,)/(n, c) real targets.
        lam: ridge λ, or a list of λ for a direct sweep; absolute unless ``relative``.
        relative: λ values are multiples of mean(diag K) (the convention of every solver
            entry point: :func:`ntkcompute.regression.absolute_lambdas`).
        solver: "cg" (distributed, out of core) or "direct" (in memory, float64).
        name: which stored kernel, "ntk" or "nngp".
        tol, maxiter, preconditioner, rank, x0: for CG. ``preconditioner``: "nystrom"
            (pivoted Cholesky of exactly ``rank`` columns, fetched one by one), "randomized"
            (Frangella-Tropp-Udell randomized Nyström: ``rank`` Gaussian columns sketched in
            one block product, doubled up to ``max_rank`` (default ``min(n, 2000)``) while
            the estimated preconditioned condition number exceeds ``target`` and the next
            doubling costs less than the CG iterations it could save, timed on this
            cluster; ``seed`` draws the test matrix), "jacobi" or None.
        lam: with CG, a list of λ is solved in one loop (block CG over λ and classes: one
            product per iteration for all of them); coefficients are then (L, n, c).
        precision: "double" (float64 products) or "mixed" (the iterations' products in
            float32, half the bytes; a float64 true residual every 10 iterations in the
            same round trip, and convergence only on such a residual: with 50 the float32
            error builds up and CG stalls near 1e-7 on a CNTK at λ = 1e-3·mean diag).
        cross, test_labels: a cross-kernel job URL (test x train, ``(m, n)``) to predict on,
            and labels to score against (accuracy for classes, MSE always); a cross kernel
            of another shape, or one made train x test, is refused before the solve
            (:func:`check_cross`).
        save: name under ``solves/`` in the kernel's group to write results to (None: don't).
        times, lr: gradient-flow times at which to report the network's test outputs and
            metrics, ``f_t = K_* K⁻¹ (I - e^{-η K t}) Y`` (direct solver, needs ``cross``).
        bound: report Arora et al.'s ``sqrt(2 yᵀ K⁻¹ y / n)`` (from the solved coefficients
            with CG; exact, λ-free, with the direct solver).
        spectrum_k: report the top-k eigenvalues of K (eigh in memory, or Lanczos over the
            distributed operator with CG) and per-direction learning curves at ``times``.
        min_eig: report λmin(K) (exact with the direct solver, a Lanczos estimate over the
            distributed operator with CG) under ``analyses["min_eigenvalue"]``.
        variance: the predictive variance of every test output (direct solver, needs
            ``cross``): with ``name="nngp"`` the NNGP posterior's, with ``"ntk"`` that of
            the infinite ensemble of networks trained by gradient flow
            (:class:`ntkcompute.predict.Ensemble`), at t = ∞ with each λ as the ridge
            (``variances``, (m,) or (L, m)) and at each of ``times`` (λ-free, as the
            ``gd`` outputs; ``analyses["gd"][i]["variance"]``). Needs the NNGP stored in
            both jobs (the ensemble's spread is the NNGP at initialisation) and the test
            rows' NNGP diagonal, which every cross job stores.
        depth: the member of a family job (``compute_gram(..., depths=...)``) to solve on,
            and to predict with from the cross job, a family too; required for a family,
            refused for one network (:class:`InputError`, field ``depth``).
        variant: with ``depth``, the variant (fixed bottom blocks) of a family job with
            variants (``compute_gram(..., variants=...)``); required for its NTK, ignored for
            its NNGP (the same for every variant), refused without variants (field
            ``variant``).
        b_std: with ``depth``, the value of a family job's bias grid (``compute_gram(...,
            b_stds=...)``); required for one, refused without (field ``b_std``).
        flow_time: instead of ridge, the network trained by gradient flow for this time
            (absolute, learning rate ``lr``; Lee et al. 2019): coefficients
            ``K⁻¹ (I - e^{-ηKt}) Y`` (direct solver; ``lam`` must be 0), reported as
            ``analyses["flow_time"]``.

    Every direct solve that decomposes K also reports in ``analyses["definiteness"]`` how
    many eigenvalues were rounding noise (clamped to 0) or negative. A system ``K + λI``
    that is not positive definite raises :class:`ntkcompute.errors.NotPositiveDefinite`.
    """
    t0 = time.perf_counter()
    g = open_group(kernel, mode="r+", options=options)
    if name not in g:
        raise InputError(f"no '{name}' array in {kernel}", field="name")
    arr = kernel_array(g, name, depth, variant, b_std)
    n = arr.shape[0]
    Y, classes = targets_from(labels, n)
    absolute_lambdas(lam, False)  # a bad λ fails before any read
    if cross is not None:  # a cross kernel of the wrong shape fails before the solve
        check_cross(g, cross, name, n, test_labels, options, depth, variant, b_std)
    if variance and cross is None:
        raise InputError("predictive variances need a cross kernel (test x train)",
                         field="variance")
    if flow_time is not None:
        if solver != "direct" or variance:
            raise InputError("a gradient-flow solve needs solver 'direct' (and no variance)",
                             field="flow_time")
        if isinstance(flow_time, bool) or not isinstance(flow_time, (int, float)) \
                or not np.isfinite(flow_time) or flow_time < 0:
            raise InputError(f"must be a finite time >= 0, got {flow_time!r}",
                             field="flow_time")
        if np.ndim(lam) != 0 or lam != 0:
            raise InputError("a gradient-flow solve has no ridge: λ must be 0",
                             field="lambdas")
    if solver == "direct":
        K = np.asarray(read(arr), dtype=np.float64)
        lams = absolute_lambdas(lam, relative, mean_diagonal(K))
        eig = Eigen.of(K) if (len(lams) > 1 or times or bound or spectrum_k or min_eig
                              or flow_time is not None) else None
        if flow_time is not None:
            coef = eig.gd_coefficients(Y, float(flow_time), lr)
        elif len(lams) == 1 and eig is None:
            coef = solve_direct(K, Y, lams[0])
        else:
            coef = np.stack(eig.sweep(Y, lams))
            coef = coef[0] if len(lams) == 1 else coef
        res = SolveResult(coef, lams, solver)
        if flow_time is not None:
            res.analyses["flow_time"] = {"t": float(flow_time), "lr": lr}
        if eig is not None:
            res.analyses["definiteness"] = eig.report()
        if min_eig:
            d = res.analyses["definiteness"]
            res.analyses["min_eigenvalue"] = {"value": d["min_eigenvalue"], "exact": True,
                                              "relative": d["min_eigenvalue_relative"]}
        if bound:
            res.analyses["bound"] = generalization_bound(eig, Y)
        if spectrum_k:
            s, U = eig.s[::-1][:spectrum_k], eig.U[:, ::-1][:, :spectrum_k]
            res.analyses["eigenvalues"] = s.tolist()
            if times:
                res.analyses["learning_curves"] = learning_curves(s, U, Y, times, lr).tolist()
                res.analyses["times"] = list(times)
        if times and cross is not None:
            kc = np.asarray(read(kernel_array(open_group(cross, mode="r", options=options),
                                              name, depth, variant, b_std)),
                            dtype=np.float64)
            res.analyses["gd"] = [
                {"t": t, **_metrics(f, test_labels, classes)}
                for t, f in zip(times, gd_predictions(eig, kc, Y, times, lr), strict=True)]
        if variance:
            _add_variances(res, g, K, name, Y, lams, times, lr, cross, options, depth,
                           variant, b_std)
    elif solver == "cg":
        if variance:
            raise InputError("predictive variances need solver 'direct'", field="variance")
        if preconditioner not in ("jacobi", "nystrom", "randomized", None):
            raise InputError(f"unknown preconditioner {preconditioner!r}",
                             field="preconditioner")
        if precision not in ("double", "mixed"):
            raise InputError(f"must be 'double' or 'mixed', got {precision!r}",
                             field="precision")
        cl, cluster = get_client(client, scheduler)
        try:
            timings: dict[str, float] = {}
            t = time.perf_counter()
            op = DistributedKernel(cl, kernel, name, options=options,
                                   precision="single" if precision == "mixed" else "double",
                                   depth=depth, variant=variant, b_std=b_std)
            diag = op.diagonal()
            timings["load"] = time.perf_counter() - t
            scale = float(np.mean(diag, dtype=np.float64))
            lams = absolute_lambdas(lam, relative, scale)
            lam_col = np.repeat(lams, Y.shape[1])  # block CG: λ-major columns
            fast = op.matvec_single if precision == "mixed" else None
            pair = op.pair if precision == "mixed" else None
            pre = None
            t_pre = time.perf_counter()
            if preconditioner == "jacobi":
                pre = Jacobi(diag, lam_col)
            elif preconditioner == "nystrom":
                L, _ = pivoted_cholesky(diag, op.column, rank, lam=min(lams))
                pre = Nystrom(L, lam_col) if min(lams) > 0 else None
            elif preconditioner == "randomized" and min(lams) > 0:
                t = time.perf_counter()  # one CG iteration's product, to price the sketch
                (fast or op.matvec)(
                    np.random.default_rng(seed + 1).standard_normal((n, len(lam_col))))
                per_iteration = time.perf_counter() - t
                # the sketch only shapes the preconditioner: float32 products whenever they
                # cost no extra memory (mixed precision, or a float32 kernel: its stored
                # tiles are float32 already): a wide block then goes to sgemm, not to rows
                # widened for dgemm
                single = precision == "mixed" or op.dtype == np.float32
                pre = randomized_nystrom(op.matvec_single if single else op.matvec, n,
                                         lam_col, rank=rank, max_rank=max_rank,
                                         target=target, tol=tol,
                                         iteration_seconds=per_iteration, seed=seed,
                                         scale=scale, single=single)
            t_pre = timings["preconditioner"] = time.perf_counter() - t_pre
            t = time.perf_counter()
            r = cg(op.matvec, Y, lams if len(lams) > 1 else lams[0], tol=tol,
                   maxiter=maxiter, precond=pre, x0=x0, scale=scale, fast_matvec=fast,
                   pair_matvec=pair, true_residual_every=10 if fast else 50)
            timings["iterations"] = time.perf_counter() - t
            analyses: dict[str, Any] = {"seconds": timings}
            if pre is not None and hasattr(pre, "history"):
                analyses["preconditioner"] = {"rank": pre.rank, "condition": pre.condition,
                                              "history": pre.history, "seconds": t_pre}
            if bound:  # yᵀ (K + λI)⁻¹ y from the solution: the bound at this λ
                xb = r.x if r.x.ndim == Y.ndim else r.x[0]
                analyses["bound"] = float(np.sqrt(2.0 * np.sum(Y * xb) / n))
            if spectrum_k:
                from scipy.sparse.linalg import LinearOperator, eigsh

                lin = LinearOperator((n, n), matvec=op.matvec, dtype=np.float64)
                s, _ = eigsh(lin, k=spectrum_k, which="LA")
                analyses["eigenvalues"] = sorted(s.tolist(), reverse=True)
            if min_eig:
                analyses["min_eigenvalue"] = min_eigenvalue(op.matvec, n, scale=scale)
        finally:
            shutdown(cl, cluster)
        res = SolveResult(r.x, lams, solver, r.iterations, r.converged, r.residuals,
                          analyses=analyses)
    else:
        raise InputError(f"must be 'cg' or 'direct', got {solver!r}", field="solver")
    if cross is not None:
        coefs = res.coefficients if res.coefficients.ndim == 3 else res.coefficients[None]
        preds = np.stack([_predict(cross, name, c, options, depth, variant, b_std)
                          for c in coefs])
        res.predictions = preds if res.coefficients.ndim == 3 else preds[0]
        res.metrics = _metrics(preds[0] if len(preds) == 1 else preds[-1], test_labels,
                               classes)
        if len(preds) > 1:
            res.metrics["per_lambda"] = [_metrics(p, test_labels, classes) for p in preds]
        if res.variances is not None:
            var = res.variances if res.variances.ndim == 2 else res.variances[None]
            per = res.metrics.get("per_lambda") or [res.metrics]
            for m, v, p in zip(per, var, preds, strict=True):
                m["mean_variance"] = float(v.mean())
                if test_labels is not None and classes is None:
                    m["coverage_2sd"] = _coverage(p, v, test_labels)
            res.metrics.update({k: per[-1][k] for k in ("mean_variance", "coverage_2sd")
                                if k in per[-1]})
    res.seconds = time.perf_counter() - t0
    check_finite_result(res)
    if save:
        sg = g.require_group(f"solves/{save}")
        for key, val in (("coefficients", res.coefficients), ("predictions", res.predictions),
                         ("variances", res.variances)):
            if val is not None:
                a = create_array(sg, key, val.shape, val.shape, "float64", computed=True,
                                 overwrite=True)
                a[...] = val
        set_meta(sg, solver=solver, lams=lams, iterations=res.iterations,
                 converged=res.converged, metrics=res.metrics, seconds=res.seconds,
                 kernel=name, cross=cross, analyses=res.analyses, depth=depth,
                 variant=variant, b_std=b_std)
        consolidate(g)  # readers of the consolidated metadata see the new solve
    return res

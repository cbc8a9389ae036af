"""Model selection in closed form: leave-one-out and GCV of kernel ridge regression from one
eigendecomposition per kernel, over λ and over the members of a kernel family.

With ``K = U diag(s) Uᵀ`` (:class:`ntkcompute.regression.Eigen`) and the hat matrix
``H = K (K + λI)⁻¹ = U diag(s/(s+λ)) Uᵀ``:

- leave-one-out (``"loo"``): ``e_i = (y_i - ŷ_i) / (1 - H_ii)`` is exactly the residual at
  point i of the fit on the other n - 1 points (same K, same λ); the criterion is
  ``mean(e²)`` over points and outputs, and for labels the leave-one-out accuracy is that of
  ``argmax(y_i - e_i)`` (``"accuracy"``);
- generalized cross-validation (``"gcv"``): ``n ‖(I - H) y‖² / tr(I - H)²``, averaged over
  the outputs (Golub, Heath, Wahba 1979).

Each costs O(n²) per λ after the O(n³) ``eigh``. :func:`select` scores every member of a
family (``ntkcompute.kernel_family``: each depth, NTK and NNGP) at every λ of a grid and
returns the best with the whole table; the scikit-learn estimators use the same scores.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError, NotPositiveDefinite
from .regression import Eigen, absolute_lambdas, one_hot

__all__ = ["CRITERIA", "DEFAULT_LAMBDAS", "Selection", "gcv_scores", "loo_residuals",
           "select", "selection_scores"]

#: The default λ grid: relative λ (multiples of mean(diag K)) from 1e-6 to 10.
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(float(v) for v in np.logspace(-6, 1, 15))
#: What :func:`select` may rank by: ``"accuracy"`` (leave-one-out accuracy, labels only,
#: ties broken by ``"loo"``), ``"loo"`` (mean squared leave-one-out residual), ``"gcv"``.
CRITERIA = ("accuracy", "loo", "gcv")
#: Most candidates (members x λ) one call may score.
MAX_CANDIDATES = 100_000
#: The default C grid of ``method="svm"``.
DEFAULT_C: tuple[float, ...] = tuple(float(v) for v in np.logspace(-2, 4, 7))


def _shrink(eig: Eigen, lam: float) -> np.ndarray:
    """Eigenvalues ``λ / (s + λ)`` of ``I - H``; (n,). Refuses a λ with ``K + λI`` not
    positive definite (:class:`NotPositiveDefinite`)."""
    eig._check(lam, "leave-one-out / GCV")
    return lam / (eig.s + lam)


def _as_columns(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return y[:, None] if y.ndim == 1 else y


def loo_residuals(eig: Eigen, y: np.ndarray, lam: float) -> np.ndarray:
    """Leave-one-out residuals of kernel ridge regression with absolute ridge ``lam``.

    ``e_i = (y_i - ŷ_i) / (1 - H_ii)`` with ``H = U diag(s/(s+λ)) Uᵀ``: the residual at
    point i of the fit on the other n - 1 points (same K, same λ). ``1 - H_ii`` is summed as
    ``Σ_j U_ij² λ/(s_j+λ)`` (no cancellation). Shapes: y (n,) or (n, c) -> the same.
    """
    g = _shrink(eig, lam)
    y2 = _as_columns(y)
    resid = eig.U @ ((eig.U.T @ y2) * g[:, None])  # (I - H) y
    e = resid / ((eig.U ** 2) @ g)[:, None]
    return e[:, 0] if np.ndim(y) == 1 else e


def gcv_scores(eig: Eigen, y: np.ndarray, lam: float) -> np.ndarray:
    """Generalized cross-validation ``n ‖(I - H) y_c‖² / tr(I - H)²`` of each output column
    c of y (n,) or (n, c), absolute ridge ``lam``; (c,)."""
    g = _shrink(eig, lam)
    proj = eig.U.T @ _as_columns(y)
    n = len(eig.s)
    return n * np.sum((proj * g[:, None]) ** 2, axis=0) / np.sum(g) ** 2


def selection_scores(eig: Eigen, y: np.ndarray, lams: Sequence[float], criterion: str,
                     labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The criterion at each absolute λ of ``lams``, from one decomposition; lower is better.

    ``criterion``: ``"loo"`` (mean squared leave-one-out residual over points and outputs)
    or ``"gcv"`` (GCV averaged over outputs). A λ with ``K + λI`` not positive definite
    scores ``inf``. With ``labels`` (n,) int and ``"loo"``, also the leave-one-out accuracy
    of ``argmax`` over the outputs (y (n, c) are then class codes).

    Returns ``{"criterion": (len(lams),)}`` and, with labels, ``"loo_accuracy"``.
    """
    loo = criterion == "loo"
    scores = _scores(eig, y, _ridge_factors(eig, lams), (criterion,), labels if loo else None)
    out = {"criterion": scores[criterion]}
    if labels is not None and loo:
        out["loo_accuracy"] = scores["loo_accuracy"]
    return out


def _ridge_factors(eig: Eigen, lams: Sequence[float]) -> list[np.ndarray | None]:
    """The eigenvalues of ``I - H`` of ridge at each absolute λ (None where ``K + λI`` is
    not positive definite)."""
    out: list[np.ndarray | None] = []
    for lam in lams:
        try:
            out.append(_shrink(eig, lam))
        except NotPositiveDefinite:
            out.append(None)
    return out


def _flow_factors(eig: Eigen, times: Sequence[float], lr: float) -> list[np.ndarray]:
    """The eigenvalues ``exp(-η s t)`` of ``I - H_t`` of gradient flow on the squared loss
    for time t (Lee et al. 2019: the train outputs are ``(I - e^{-ηKt}) y``); directions of
    K's null space (s <= 0 after rounding) are never learned (factor 1)."""
    s = np.maximum(eig.s, 0.0)
    return [np.exp(-lr * t * s) for t in times]


def _scores(eig: Eigen, y: np.ndarray, factors: Sequence[np.ndarray | None],
            criteria: Sequence[str], labels: np.ndarray | None = None
            ) -> dict[str, np.ndarray]:
    """``{"loo": .., "gcv": .., "loo_accuracy": ..}`` (those asked for; the accuracy with
    ``labels``) of the linear smoother whose ``I - H`` has eigenvalues ``factors[j]`` (None:
    not defined, scores inf), one residual ``(I - H) y`` per candidate serving all."""
    out = {c: np.full(len(factors), np.inf) for c in criteria}
    if labels is not None:
        out["loo_accuracy"] = np.full(len(factors), np.nan)
    y2 = _as_columns(y)
    proj = eig.U.T @ y2
    u2 = eig.U ** 2
    n = len(eig.s)
    for j, g in enumerate(factors):
        if g is None:
            continue
        resid = eig.U @ (proj * g[:, None])
        with np.errstate(divide="ignore", invalid="ignore"):  # λ = 0: nan
            if "loo" in out:
                e = resid / (u2 @ g)[:, None]
                out["loo"][j] = float(np.mean(e ** 2))
                if labels is not None:
                    out["loo_accuracy"][j] = float(np.mean(np.argmax(y2 - e, axis=1)
                                                           == labels))
            if "gcv" in out:
                out["gcv"][j] = float(n * np.sum(resid ** 2) / y2.shape[1] / np.sum(g) ** 2)
    return out


@dataclass(frozen=True)
class Selection:
    """What :func:`select` chose: ``best`` (a row of ``table``) and every scored candidate.

    A row: ``member`` (index), ``name``, ``depth`` (None outside a family), ``kernel``
    (``"ntk"`` / ``"nngp"`` / None), ``lam`` (as given: relative to mean(diag K) when
    ``relative``), ``lam_absolute`` (with ``times``: ``t``, ``t_absolute``), ``loo`` (mean
    squared leave-one-out residual), ``gcv``,
    and for labels ``accuracy`` (leave-one-out). Non-finite where ``K + λI`` is not positive
    definite.
    """

    best: dict[str, Any]
    table: list[dict[str, Any]] = field(repr=False)
    criterion: str = "loo"

    def to_dict(self) -> dict[str, Any]:
        """``{"best", "criterion", "table"}`` as JSON takes it: non-finite scores (a λ with
        ``K + λI`` not positive definite) as None."""

        def safe(row: dict[str, Any]) -> dict[str, Any]:
            return {k: None if isinstance(v, float) and not np.isfinite(v) else v
                    for k, v in row.items()}

        return {"best": safe(self.best), "criterion": self.criterion,
                "table": [safe(r) for r in self.table]}


class _Members:
    """The members of :func:`select`'s ``kernels``, each loaded (as a float64 ``(n, n)``
    array, checked square and finite) only when scored, so a stored family is read one
    member at a time: a ``kernel_family`` result (``depths`` and ``ntk`` / ``nngp`` stacks
    of shape (D, n, n): NumPy, dask, or anything with ``shape`` and ``stack[i]``; with
    ``variants``, ``ntk`` (D, V, n, n) read as ``stack[i, j]``, rows with ``variant``), or a
    mapping name -> (n, n) Gram matrix, or a zero-argument callable returning one (the
    names ``"ntk"`` / ``"nngp"`` also set the rows' ``kernel``)."""

    def __init__(self, kernels: Any) -> None:
        if not isinstance(kernels, Mapping) or not kernels:
            raise InputError("must be a kernel_family result or a non-empty mapping of "
                             "names to (n, n) Gram matrices", field="kernels")
        self.descs: list[dict[str, Any]] = []
        self._get: list[Any] = []
        if "depths" in kernels:
            def values(key: str, cast: Any) -> list | None:
                if kernels.get(key) is None:
                    return None
                return [cast(v) for v in np.asarray(kernels[key]).reshape(-1)]

            depths, variants = values("depths", int), values("variants", int)
            b_stds = values("b_stds", float)
            for kind in ("ntk", "nngp"):
                if kind not in kernels:
                    continue
                stack = kernels[kind]
                shape = tuple(np.shape(stack))
                axes = [("b_std", b_stds), ("depth", depths)]
                if kind == "ntk":
                    axes.append(("variant", variants))
                axes = [(a, v) for a, v in axes if v is not None]
                lead = tuple(len(v) for _, v in axes)
                if shape[:-2] != lead or len(shape) != len(lead) + 2:
                    what = ", ".join(f"len({a}s)" for a, _ in axes)
                    raise InputError(f"{kind} must be ({what}, n, n), got {shape}",
                                     field="kernels")
                for index in itertools.product(*(range(n) for n in lead)):
                    desc = dict(zip((a for a, _ in axes),
                                    (v[k] for (_, v), k in zip(axes, index, strict=True)),
                                    strict=True))
                    if variants is not None and kind == "nngp":
                        desc["variant"] = None
                    name = " ".join([kind, *(f"{a.replace('_', ' ')} {v:g}"
                                             for a, v in desc.items() if v is not None)])
                    self.descs.append({"name": name, **{a: desc.get(a) for a in
                                                        ("b_std", "depth", "variant")
                                                        if a in desc}, "kernel": kind})
                    self._get.append(lambda stack=stack, index=index: stack[index])
        else:
            for name, k in kernels.items():
                self.descs.append({"name": str(name), "depth": None,
                                   "kernel": name if name in ("ntk", "nngp") else None})
                self._get.append(k if callable(k) else lambda k=k: k)
        if not self.descs:
            raise InputError("holds no ntk or nngp stack", field="kernels")
        self._first = self._load(0, None)
        self.n = self._first.shape[0]

    def __len__(self) -> int:
        return len(self.descs)

    def _load(self, i: int, n: int | None) -> np.ndarray:
        k = np.asarray(self._get[i](), dtype=np.float64)
        name = self.descs[i]["name"]
        if k.ndim != 2 or k.shape[0] != k.shape[1] or (n is not None and k.shape[0] != n):
            raise InputError(f"{name} must be a square (n, n) Gram matrix like the first, "
                             f"got {k.shape}", field="kernels")
        if not np.isfinite(k).all():
            raise InputError(f"{name} has non-finite entries", field="kernels")
        return k

    def __iter__(self) -> Any:
        """``(i, description, K)``, one member loaded at a time."""
        for i, desc in enumerate(self.descs):
            if i == 0 and self._first is not None:  # (loaded for n; not kept after)
                k, self._first = self._first, None
            else:
                k = self._load(i, self.n)
            yield i, desc, k


def select(kernels: Mapping[str, Any], y: Any, *, lambdas: Sequence[float] = DEFAULT_LAMBDAS,
           relative: bool = True, criterion: str | None = None,
           classes: int | None = None, method: str = "ridge",
           C: Sequence[float] = DEFAULT_C, folds: int = 5, seed: int = 0,
           times: Sequence[float] | None = None, lr: float = 1.0) -> Selection:
    """The best (member, λ) of kernel ridge regression by leave-one-out or GCV, from one
    eigendecomposition per member; or, with ``method="svm"``, the best (member, C) of a
    support vector classifier on the precomputed kernel (scikit-learn's ``SVC``, as Arora et
    al. 2020) by ``folds``-fold stratified cross-validation accuracy (``seed`` shuffles the
    folds; rows then have ``C`` and ``accuracy``, the mean over folds, and ``std``).

    Args:
        kernels: a :func:`ntkcompute.kernel_family` result (each depth's NTK and NNGP, and
            each variant's NTK: rows then name ``variant``, None for the NNGP), or a
            mapping of names to ``(n, n)`` training Gram matrices. A family's stacks may be
            lazy (a stored job's ``to_dask()``), a mapping's values zero-argument callables
            returning the matrix: members are then read one at a time.
        y: ``(n,)`` integer labels (classification on one-hot codes 0.9 / -0.1, as
            :class:`ntkcompute.estimators.NTKClassifier`), or ``(n,)`` / ``(n, c)`` float
            targets (regression).
        lambdas: the λ grid; relative to each kernel's mean diagonal when ``relative``.
        criterion: ``"accuracy"`` (default for labels), ``"loo"`` (default for targets) or
            ``"gcv"``; see :data:`CRITERIA`.
        classes: the number of classes (default: max label + 1).
        times: regularise by gradient-flow time instead of λ (Lee et al. 2019: the net
            trained for time t on the squared loss with learning rate ``lr``; its train
            outputs are ``(I - e^{-ηKt}) y``): candidates (member, t), rows with ``t`` and
            ``t_absolute`` instead of ``lam``. With ``relative``, t is in units of
            ``1 / (lr · mean(diag K))``, so one grid means the same per member. GCV is that
            of this linear smoother exactly; its leave-one-out column is the ridge
            shortcut ``(y_i - ŷ_i) / (1 - H_ii)`` applied to it, an approximation (refitting
            gradient flow without point i is not a rank-one update).

    Returns:
        A :class:`Selection`: the best row (the first of equal ones, in member then λ
        order) and the table of every candidate.

    Raises:
        InputError: bad kernels, targets, λ grid or criterion (naming the field);
        NotPositiveDefinite: no candidate has ``K + λI`` positive definite.
    """
    if method not in ("ridge", "svm"):
        raise InputError(f"must be 'ridge' or 'svm', got {method!r}", field="method")
    members = _Members(kernels)
    n = members.n
    y = np.asarray(y)
    if method == "svm":
        return _select_svm(members, y, C, folds, seed)
    labels = None
    if y.dtype.kind in "iub":
        if y.shape != (n,) or (y < 0).any():
            raise InputError(f"labels must be (n,) = ({n},) ints >= 0, got shape {y.shape}",
                             field="y")
        c = int(y.max()) + 1 if classes is None else int(classes)
        if c < 2 or c > n or int(y.max()) >= c:
            raise InputError(f"needs 2 to n classes covering the labels, got {c}",
                             field="classes")
        labels, targets = y.astype(np.int64), one_hot(y, c)
    elif y.dtype.kind == "f" and y.shape[:1] == (n,) and y.ndim <= 2 and np.isfinite(y).all():
        targets = y.astype(np.float64)
    else:
        raise InputError(f"must be (n,) int labels or (n,) / (n, c) finite floats with n = "
                         f"{n}, got {y.dtype} {y.shape}", field="y")
    criterion = criterion or ("accuracy" if labels is not None else "loo")
    if criterion not in CRITERIA or (criterion == "accuracy" and labels is None):
        raise InputError(f"must be one of {', '.join(CRITERIA)} ('accuracy' needs int "
                         f"labels), got {criterion!r}", field="criterion")
    flow = times is not None
    name = "t" if flow else "lam"
    grid = np.asarray(times if flow else lambdas, dtype=np.float64).reshape(-1)
    if grid.size == 0 or not np.isfinite(grid).all() or (grid <= 0).any():
        raise InputError("must be a non-empty list of finite values > 0 (λ = 0 or t = ∞ "
                         "has no leave-one-out residual)", field="times" if flow else "lambdas")
    if flow and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                 or not np.isfinite(lr) or lr <= 0):
        raise InputError(f"must be a finite number > 0, got {lr!r}", field="lr")
    if grid.size * len(members) > MAX_CANDIDATES:
        raise InputError(f"{grid.size} values x {len(members)} members is more than "
                         f"{MAX_CANDIDATES} candidates", field="times" if flow else "lambdas")
    table: list[dict[str, Any]] = []
    for i, desc, k in members:
        eig = Eigen.of(k)
        if flow:
            scale = lr * eig.mean_diag if relative else 1.0
            if relative and not scale > 0:
                raise InputError("relative times need mean(diag K) > 0", field="times")
            absolute = [float(t) / scale for t in grid]
            factors = _flow_factors(eig, absolute, lr)
        else:
            absolute = absolute_lambdas([float(v) for v in grid], relative,
                                        eig.mean_diag if relative else None)
            factors = _ridge_factors(eig, absolute)
        sc = _scores(eig, targets, factors, ("loo", "gcv"), labels)
        for j, v in enumerate(grid):
            row = {"member": i, **desc, name: float(v), f"{name}_absolute": absolute[j],
                   "loo": float(sc["loo"][j]), "gcv": float(sc["gcv"][j])}
            if labels is not None:
                row["accuracy"] = float(sc["loo_accuracy"][j])
            table.append(row)

    def rank(row: dict[str, Any]) -> tuple[float, float]:
        if criterion == "accuracy":
            acc = row["accuracy"] if np.isfinite(row["loo"]) else -np.inf
            return (-acc, row["loo"] if np.isfinite(row["loo"]) else np.inf)
        v = row[criterion]
        return (v if np.isfinite(v) else np.inf, 0.0)

    best = min(table, key=rank)  # the first of equal ones
    if not np.isfinite(rank(best)[0]):
        raise NotPositiveDefinite("no member has K + λI positive definite at any λ of the "
                                  "grid", exact=True)
    return Selection(dict(best), table, criterion)


def _select_svm(members: _Members, y: np.ndarray, cs: Sequence[float], folds: int,
                seed: int) -> Selection:
    """``method="svm"`` of :func:`select` (scikit-learn imported here: it is not a runtime
    dependency of ``ntkcompute``)."""
    try:
        from sklearn.model_selection import StratifiedKFold
        from sklearn.svm import SVC
    except ImportError:  # pragma: no cover - the dev and sklearn extras have it
        raise InputError("needs scikit-learn (pip install 'ntkcompute[sklearn]')",
                         field="method") from None
    n = members.n
    if y.dtype.kind not in "iub" or y.shape != (n,):
        raise InputError(f"method='svm' needs (n,) = ({n},) int labels, got {y.dtype} "
                         f"{y.shape}", field="y")
    grid = np.asarray(cs, dtype=np.float64).reshape(-1)
    if grid.size == 0 or not np.isfinite(grid).all() or (grid <= 0).any():
        raise InputError("must be a non-empty list of finite C > 0", field="C")
    if grid.size * len(members) > MAX_CANDIDATES:
        raise InputError(f"{grid.size} C x {len(members)} members is more than "
                         f"{MAX_CANDIDATES} candidates", field="C")
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if not isinstance(folds, (int, np.integer)) or not 2 <= folds <= smallest:
        raise InputError(f"must be an int from 2 to the smallest class's size "
                         f"({smallest}), got {folds!r}", field="folds")
    splits = list(StratifiedKFold(int(folds), shuffle=True, random_state=seed).split(
        np.zeros(n), y))
    table = []
    for i, desc, k in members:
        for c in grid:
            accs = []
            for tr, te in splits:
                svc = SVC(kernel="precomputed", C=float(c)).fit(k[np.ix_(tr, tr)], y[tr])
                accs.append(float(np.mean(svc.predict(k[np.ix_(te, tr)]) == y[te])))
            table.append({"member": i, **desc, "C": float(c),
                          "accuracy": float(np.mean(accs)), "std": float(np.std(accs))})
    best = max(table, key=lambda r: r["accuracy"])  # the first of equal ones
    return Selection(dict(best), table, "svm_cv_accuracy")

"""scikit-learn estimators: kernel ridge regression with the infinite-width NTK or NNGP.

:class:`NTKRegressor` and :class:`NTKClassifier` follow scikit-learn's conventions (clone,
``get_params``/``set_params``, ``GridSearchCV``, ``Pipeline``) and fit
``α = (K + λI)⁻¹ Y`` on the exact Gram matrix ``K`` of an architecture; ``predict`` is
``K(X, X_fit) α``. There is no intercept (as :class:`sklearn.kernel_ridge.KernelRidge`):
center or scale targets far from 0 first (e.g. ``TransformedTargetRegressor``).

λ (and, optionally, the depth) is chosen in closed form from one eigendecomposition
``K = U diag(s) Uᵀ`` per kernel (:class:`ntkcompute.regression.Eigen`): with the hat matrix
``H = K (K + λI)⁻¹ = U diag(s/(s+λ)) Uᵀ``,

- leave-one-out (``"loo"``): ``e_i = (y_i - ŷ_i) / (1 - H_ii)`` is exactly the residual of
  the fit without point i; the criterion is ``mean(e²)`` (over points and outputs);
- generalized cross-validation (``"gcv"``): ``n ‖(I - H) y‖² / tr(I - H)²``, averaged over
  the outputs.

Both cost O(n²) per λ after the O(n³) ``eigh``. The estimators import scikit-learn, which is
not a runtime dependency of ``ntkcompute`` (only of its ``dev`` extra): import them from
this module (``from ntkcompute.estimators import NTKRegressor``) or as
``ntkcompute.NTKRegressor`` (resolved lazily).

Kernels come from a *backend*: any object with ``gram(arch, x1, x2=None, get="ntk")``
returning the ``(n1, n2)`` Gram matrix (:class:`GramBackend`); ``None`` computes in-process
(:class:`InProcess`, :func:`ntkcompute.kernel`); :class:`workers.DaskBackend` runs each
kernel as a tiled Dask job and :class:`ntkcompute.client.ServiceBackend` as a service job
(this module imports neither: ``ntkcompute`` imports no layer above it).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .architectures import fc
from .errors import InputError, NotPositiveDefinite
from .families import kernel_family, make_family
from .infinite import kernel as _kernel
from .regression import Eigen, absolute_lambdas, one_hot
from .selection import _shrink, gcv_scores, loo_residuals, selection_scores
from .spec import Architecture, parse_arch

__all__ = ["GramBackend", "InProcess", "NTKClassifier", "NTKRegressor", "gcv_scores",
           "loo_residuals", "selection_scores"]

#: The default ``lam_grid``: relative λ (multiples of mean(diag K)) from 1e-6 to 10.
DEFAULT_LAM_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-6, 1, 15))
#: The default architecture's depth: ``fc(2)``, two hidden ReLU layers.
DEFAULT_DEPTH = 2
KERNELS = ("ntk", "nngp")
CRITERIA = ("loo", "gcv")


@runtime_checkable
class GramBackend(Protocol):
    """Where the estimators get their Gram matrices from.

    ``gram(arch, x1, x2=None, get="ntk")``: ``arch`` a parsed
    :class:`~ntkcompute.spec.Architecture` (``arch.to_json()`` for a remote one), ``x1``
    ``(n1, ...)`` and ``x2`` ``(n2, ...)`` arrays of the estimator's ``dtype`` (``x2=None``:
    x1 with itself, symmetric), ``get`` ``"ntk"`` or ``"nngp"``; returns ``(n1, n2)``.

    Estimators deep-copy their parameters when cloned (``GridSearchCV``, ``clone``): a
    backend holding a connection should define ``__deepcopy__`` (returning ``self``).

    Optional: ``family(arch, x, depths, get="ntk", variants=None)`` returning ``(D, n, n)``
    float64, the train Gram of every depth of a family from one pass (with ``variants``
    the NTK's ``(D, V, n, n)``; else the estimators ask ``gram`` once per candidate).
    """

    def gram(self, arch: Architecture, x1: np.ndarray, x2: np.ndarray | None = None,
             get: str = "ntk") -> np.ndarray: ...


class InProcess:
    """The default backend: :func:`ntkcompute.kernel` in this process.

    ``options`` (``threads``, ``memory``, ``dtype``) are passed on to it; without ``dtype``
    the kernel is computed in the inputs' dtype (float32 only where ntkcompute has verified
    the architecture's float32 kernel, else float64).
    """

    def __init__(self, **options: Any) -> None:
        self.options = options

    def gram(self, arch: Architecture, x1: np.ndarray, x2: np.ndarray | None = None,
             get: str = "ntk") -> np.ndarray:
        """``(n1, n2)`` Gram matrix ``get`` of ``arch`` between the rows of x1 and x2."""
        return np.asarray(_kernel(arch, x1, x2, get=get, **self.options)[get])

    def family(self, arch: Architecture, x: np.ndarray, depths: Sequence[int],
               get: str = "ntk", variants: Sequence[int] | None = None,
               b_stds: Sequence[float] | None = None) -> np.ndarray:
        """``(D, n, n)``: the train Gram ``get`` of every depth of a family
        (:func:`ntkcompute.kernel_family`, one pass, float64); with ``variants`` the NTK's
        ``(D, V, n, n)``, with ``b_stds`` ``B`` first."""
        rest = {k: v for k, v in self.options.items() if k in ("memory", "threads")}
        return kernel_family(arch, x, depths=depths, variants=variants, b_stds=b_stds,
                             get=(get,), **rest)[get]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"InProcess({args})"


# -- argument checks --------------------------------------------------------------------

def _is_spec(arch: Any) -> bool:
    """A fixed architecture: an Architecture, a dict, JSON, or a stax triple (``.spec``)."""
    return isinstance(arch, (Architecture, dict, str, bytes)) or hasattr(arch, "spec")


def _parse(arch: Any) -> Architecture:
    if not isinstance(arch, (Architecture, dict, str, bytes)) and hasattr(arch, "spec"):
        arch = arch.spec
    return parse_arch(arch)


class Candidate(NamedTuple):
    """One network the estimators score: its depth, variant and b_std where searched."""

    depth: int | None
    variant: int | None
    b_std: float | None
    arch: Architecture


def _architectures(arch: Any, depths: Any, variants: Any = None, kernel: str = "ntk",
                   b_stds: Any = None) -> list[Candidate]:
    """The candidates: one without ``depths``, else one per depth of ``arch(depth)`` (``fc``
    when ``arch`` is None), and with ``variants`` (a family's NTK) and ``b_stds`` one per
    (b_std, depth, variant), in the order of a family's arrays."""
    if variants is not None or b_stds is not None:
        field = "variants" if variants is not None else "b_stds"
        if depths is None or arch is None or not _is_spec(arch):
            raise InputError(f"{field} are members of a kernel family: give a spec with one "
                             "top-level repeat and depths", field=field)
        if variants is not None and kernel != "ntk":
            raise InputError("variants fix bottom layers of the NTK; the NNGP does not "
                             "depend on which layers are trained", field="variants")
        for name, values in (("variants", variants), ("b_stds", b_stds)):
            if isinstance(values, (str, bytes)):
                raise InputError(f"must be a list of numbers, got {values!r}", field=name)
        fam = make_family(_parse(arch), _ints(depths),
                          None if variants is None else list(variants),
                          None if b_stds is None else list(b_stds))
        return [Candidate(d, v, b, fam.member(d, v or 0, b)) for b in fam.b_stds or (None,)
                for d in fam.depths for v in fam.variants or (None,)]
    if depths is None:
        if arch is None:
            return [Candidate(None, None, None, parse_arch(fc(DEFAULT_DEPTH)))]
        if not _is_spec(arch):
            kind = "a callable" if callable(arch) else type(arch).__name__
            raise InputError(f"must be a spec dict, JSON, an Architecture or a stax layer "
                             f"(got {kind}); a callable depth -> spec needs depths=[...]",
                             field="arch")
        return [Candidate(None, None, None, _parse(arch))]
    depths = _ints(depths)
    if arch is not None and _is_spec(arch):  # a family: one top-level repeat, its count
        fam = make_family(_parse(arch), depths)
        return [Candidate(d, None, None, m)
                for d, m in zip(fam.depths, fam.members, strict=True)]
    if arch is not None and not callable(arch):
        raise InputError("with depths, arch must be a spec with one top-level repeat (a "
                         "kernel family), a callable depth -> spec, or None for "
                         "ntkcompute.architectures.fc", field="arch")
    build = fc if arch is None else arch
    return [Candidate(d, None, None, _parse(build(d))) for d in depths]


def _ints(depths: Any) -> list[int]:
    if isinstance(depths, (str, bytes)) or not isinstance(depths, (Sequence, np.ndarray)) \
            or len(depths) == 0 or not all(isinstance(d, numbers.Integral)
                                           and not isinstance(d, bool) for d in depths):
        raise InputError(f"must be None or a non-empty list of ints, got {depths!r}",
                         field="depths")
    return [int(d) for d in depths]


def _train_grams(est: _NTKRidge, backend: GramBackend, X: np.ndarray,
                 candidates: list[Candidate]) -> Iterator[np.ndarray]:
    """Each candidate's train Gram matrix, one at a time. A family (a spec ``arch`` with
    ``depths``, and ``variants``, ``b_stds``) in float64 comes from one pass where the
    backend has a ``family(arch, x, depths, get, variants=, b_stds=)`` method
    (:class:`InProcess`, ``workers.DaskBackend``, ``ntkcompute.client.ServiceBackend``)."""
    family = est.depths is not None and est.arch is not None and _is_spec(est.arch)
    if family and X.dtype == np.float64 and callable(getattr(backend, "family", None)):
        depths = list(dict.fromkeys(c.depth for c in candidates))
        extra: dict[str, list] = {}
        for name, key in (("b_stds", "b_std"), ("variants", "variant")):
            if getattr(est, name) is not None:
                extra[name] = list(dict.fromkeys(getattr(c, key) for c in candidates))
        stack = np.asarray(backend.family(_parse(est.arch), X, depths, get=est.kernel,
                                          **extra))
        lead = tuple(len(v) for v in (extra.get("b_stds"), depths, extra.get("variants"))
                     if v is not None)
        if stack.shape != (*lead, len(X), len(X)):
            raise InputError(f"the backend returned a {stack.shape} family, expected "
                             f"{(*lead, len(X), len(X))}", field="backend")
        for k in stack.reshape(-1, len(X), len(X)):
            if not np.isfinite(k).all():
                raise NotPositiveDefinite(f"the kernel has {int((~np.isfinite(k)).sum())} "
                                          "non-finite entries", finite=False)
            yield k
        return
    for c in candidates:
        yield _gram(backend, c.arch, X, None, est.kernel)


def _check_params(est: _NTKRidge) -> tuple[str, float | None, np.ndarray, np.dtype,
                                           GramBackend]:
    """``(criterion, fixed λ or None, λ grid, dtype, backend)`` from the parameters."""
    if est.kernel not in KERNELS:
        raise InputError(f"must be 'ntk' or 'nngp', got {est.kernel!r}", field="kernel")
    if not isinstance(est.relative, (bool, np.bool_)):
        raise InputError(f"must be a bool, got {est.relative!r}", field="relative")
    lam = est.lam
    if isinstance(lam, str):
        if lam not in CRITERIA:
            raise InputError(f"must be a float >= 0, 'loo' or 'gcv', got {lam!r}",
                             field="lam")
        criterion, fixed = lam, None
    elif isinstance(lam, numbers.Real) and not isinstance(lam, bool) \
            and np.isfinite(lam) and lam >= 0:
        criterion, fixed = "loo", float(lam)
    else:
        raise InputError(f"must be a float >= 0, 'loo' or 'gcv', got {lam!r}", field="lam")
    grid = DEFAULT_LAM_GRID if est.lam_grid is None else est.lam_grid
    try:
        grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"must be a list of floats > 0, got {est.lam_grid!r}",
                         field="lam_grid") from None
    if fixed is None and (grid.size == 0 or not np.all(np.isfinite(grid))
                          or np.any(grid <= 0)):
        raise InputError(f"must be a non-empty list of finite floats > 0 (λ = 0 has no "
                         f"leave-one-out residual), got {est.lam_grid!r}", field="lam_grid")
    try:
        dtype = np.dtype(est.dtype)
    except TypeError:
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise InputError(f"must be float32 or float64, got {est.dtype!r}", field="dtype")
    backend = InProcess() if est.backend is None else est.backend
    if not callable(getattr(backend, "gram", None)):
        raise InputError("must be None or an object with a gram(arch, x1, x2=None, "
                         f"get='ntk') method, got {type(backend).__name__}", field="backend")
    return criterion, fixed, grid, dtype, backend


def _gram(backend: GramBackend, arch: Architecture, x1: np.ndarray, x2: np.ndarray | None,
          get: str) -> np.ndarray:
    k = np.asarray(backend.gram(arch, x1, x2, get=get))
    want = (len(x1), len(x1) if x2 is None else len(x2))
    if k.shape != want:
        raise InputError(f"the backend returned a {k.shape} kernel, expected {want}",
                         field="backend")
    if not np.isfinite(k).all():
        raise NotPositiveDefinite(f"the kernel has {int((~np.isfinite(k)).sum())} "
                                  "non-finite entries", finite=False)
    return k


# -- the estimators ---------------------------------------------------------------------

class _NTKRidge(BaseEstimator):
    """Kernel ridge regression on the NTK / NNGP; the shared part of both estimators."""

    def __init__(self, arch: Any = None, kernel: str = "ntk", lam: float | str = "loo",
                 lam_grid: Sequence[float] | None = None, relative: bool = True,
                 depths: Sequence[int] | None = None, dtype: Any = np.float64,
                 backend: GramBackend | None = None,
                 variants: Sequence[int] | None = None,
                 b_stds: Sequence[float] | None = None) -> None:
        self.arch = arch
        self.kernel = kernel
        self.lam = lam
        self.lam_grid = lam_grid
        self.relative = relative
        self.depths = depths
        self.dtype = dtype
        self.backend = backend
        self.variants = variants
        self.b_stds = b_stds

    def _validate_X(self, X: Any, y: Any = None, reset: bool = True, **kw: Any) -> Any:
        dtype = np.dtype(self.dtype) if reset else self.X_fit_.dtype
        if y is None and not reset:
            return validate_data(self, X, reset=False, allow_nd=True, dtype=dtype)
        return validate_data(self, X, y, allow_nd=True, dtype=dtype, copy=True, **kw)

    def _fit_codes(self, X: np.ndarray, Y: np.ndarray, params: tuple,
                   labels: np.ndarray | None = None) -> None:
        """Choose (depth, λ), then ``dual_coef_ = (K + λI)⁻¹ Y``; X validated, Y (n,) or
        (n, c) float64, ``params`` from :func:`_check_params`, ``labels`` (n,) class
        indices (the classifier)."""
        criterion, fixed, grid, _, backend = params
        given = [fixed] if fixed is not None else [float(v) for v in grid]
        rows: dict[str, list] = {"lam": [], "lam_absolute": [], "depth": [], "variant": [],
                                 "b_std": [], "kernel": [], "score": []}
        best: tuple[float, float, float, Eigen, Candidate] | None = None
        candidates = _architectures(self.arch, self.depths, self.variants, self.kernel,
                                    self.b_stds)
        grams = _train_grams(self, backend, X, candidates)
        for cand, k in zip(candidates, grams, strict=True):
            eig = Eigen.of(k)
            absolute = absolute_lambdas(given, self.relative,
                                        eig.mean_diag if self.relative else None)
            table = selection_scores(eig, Y, absolute, criterion, labels)
            for key in table.keys() - {"criterion"}:
                rows.setdefault(key, []).extend(table[key])
            scores = -table["criterion"]
            rows["lam"] += given
            rows["lam_absolute"] += absolute
            rows["depth"] += [cand.depth] * len(given)
            rows["variant"] += [cand.variant] * len(given)
            rows["b_std"] += [cand.b_std] * len(given)
            rows["kernel"] += [self.kernel] * len(given)
            rows["score"] += list(scores)
            j = int(np.argmax(np.where(np.isfinite(scores), scores, -np.inf)))
            if np.isfinite(scores[j]) and (best is None or scores[j] > best[0]):
                best = (float(scores[j]), absolute[j], given[j], eig, cand)
            last = (eig, max(absolute))
        if best is None:
            _shrink(*last)  # raises NotPositiveDefinite where that is the cause
            if len(rows["score"]) > 1:
                raise InputError("no candidate gives a finite score (λ = 0 has no "
                                 "leave-one-out residual)", field="lam")
            # one fixed λ = 0 (interpolation): nothing to choose, the score is undefined
            best = (float("nan"), absolute[0], given[0], eig, cand)
        score, lam_abs, lam, eig, (depth, variant, b_std, arch) = best
        types = {"kernel": object, "depth": np.int64, "variant": np.int64}
        given_axes = {"depth": self.depths, "variant": self.variants, "b_std": self.b_stds}
        self.cv_results_ = {k: np.asarray(v, dtype=types.get(k, np.float64))
                            for k, v in rows.items() if given_axes.get(k, ()) is not None}
        self.best_score_ = score
        self.lam_ = float(lam)
        self.lam_absolute_ = float(lam_abs)
        self.depth_ = depth
        self.variant_ = variant
        self.b_std_ = b_std
        self.arch_ = arch
        self.kernel_ = self.kernel
        self.backend_ = backend
        self.X_fit_ = X
        self.dual_coef_ = eig.solve(Y, lam_abs)

    def _decision(self, X: Any) -> np.ndarray:
        """``K(X, X_fit) dual_coef_``; (m,) or (m, c)."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        k = _gram(self.backend_, self.arch_, X, self.X_fit_, self.kernel_)
        return k @ self.dual_coef_


class NTKRegressor(RegressorMixin, _NTKRidge):
    """Kernel ridge regression with the infinite-width NTK (or NNGP) of an architecture.

    With the NTK this is the infinite-width network trained to convergence by gradient
    descent on the MSE (λ → 0), with the NNGP the Gaussian-process posterior mean.

    Parameters:
        arch: the architecture: a spec dict, JSON, an :class:`~ntkcompute.spec.Architecture`
            or a :mod:`ntkcompute.stax` layer (``.spec``); ``None``:
            ``ntkcompute.architectures.fc(2)``. With ``depths``, a spec with one top-level
            ``repeat`` (a kernel family: every depth's train kernel from one pass, see
            :func:`ntkcompute.kernel_family`), or a callable ``depth -> spec`` (``None``:
            ``fc``).
        kernel: ``"ntk"`` or ``"nngp"``.
        lam: the ridge λ (``>= 0``), or ``"loo"`` / ``"gcv"`` to choose it from
            ``lam_grid`` by closed-form leave-one-out error or generalized cross-validation.
        lam_grid: the candidates for ``"loo"`` / ``"gcv"``; ``None``:
            ``np.logspace(-6, 1, 15)``.
        relative: λ (and the grid) as multiples of mean(diag K), scale-free; else absolute.
        depths: candidate depths (a family's repeat counts, or a callable ``arch``'s
            argument): each depth's kernel is computed and (depth, λ) chosen together by
            the same criterion (leave-one-out for a fixed λ).
        dtype: float64 or float32, the inputs' dtype handed to the backend.
        backend: an object with ``gram(arch, x1, x2=None, get)`` (:class:`GramBackend`);
            ``None``: :class:`InProcess`.
        variants: with a family (a spec ``arch`` and ``depths``) and the NTK: numbers of
            fixed bottom blocks (Arora et al. 2020's "fixed bottom layers": the stem and
            the first v repeats not trained); (depth, variant, λ) are chosen together.
        b_stds: with a family: a bias grid, every layer's ``b_std`` set to each value
            (Arora et al. 2020's bias family); (b_std, depth, ..., λ) are chosen together.

    Attributes:
        dual_coef_: ``(K + λI)⁻¹ y``, (n,) or (n, n_outputs) like y.
        X_fit_: the training inputs (n, n_features) (or (n, *spatial, channels)).
        lam_: the chosen λ as given (relative when ``relative``); ``lam_absolute_`` the
            ridge actually added.
        depth_: the chosen depth (None without ``depths``), ``variant_`` the chosen variant
            (None without ``variants``), ``b_std_`` the chosen b_std (None without
            ``b_stds``); ``arch_`` its Architecture.
        best_score_: the chosen candidate's score: minus its criterion (greater is better,
            as in scikit-learn's searches): -(mean squared leave-one-out residual) or -GCV.
        cv_results_: one row per candidate: ``lam``, ``lam_absolute``, ``depth`` (with
            ``depths``), ``variant`` (with ``variants``), ``b_std`` (with ``b_stds``),
            ``kernel``, ``score`` (``-inf`` where K + λI is not positive definite); arrays
            of equal length.
        n_features_in_, feature_names_in_ (pandas input): as scikit-learn.
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: Any, y: Any) -> NTKRegressor:
        """Fit on X (n, n_features) (or (n, *spatial, channels)) and y (n,) or
        (n, n_outputs); returns self."""
        params = _check_params(self)
        X, y = self._validate_X(X, y, multi_output=True, y_numeric=True)
        self._fit_codes(X, np.asarray(y, dtype=np.float64), params)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions (m,) or (m, n_outputs) for X (m, ...)."""
        return self._decision(X)


class NTKClassifier(ClassifierMixin, _NTKRidge):
    """Classification by kernel ridge regression on one-hot codes (Arora et al. 2019).

    The targets are the codes ``0.9`` for the class and ``-0.1`` elsewhere
    (:func:`ntkcompute.regression.one_hot`, also for two classes: one column per class);
    ``predict`` is the ``argmax`` of the regression outputs, mapped to ``classes_``.
    ``"loo"`` / ``"gcv"`` choose λ (and the depth) by the squared error on the codes, not
    by accuracy (smoother, and what the closed form gives); ``cv_results_`` also holds the
    leave-one-out accuracy (``loo_accuracy``) of each candidate under ``"loo"``.

    Parameters and attributes as :class:`NTKRegressor`, with ``classes_`` (the sorted
    labels) and ``dual_coef_`` (n, n_classes).
    """

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        """Fit on X (n, n_features) (or (n, *spatial, channels)) and labels y (n,);
        returns self."""
        params = _check_params(self)
        X, y = self._validate_X(X, y)
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"NTKClassifier needs samples of at least 2 classes, got one "
                             f"class: {self.classes_[0]!r}")
        labels = labels.reshape(-1)
        self._fit_codes(X, one_hot(labels, len(self.classes_)), params, labels)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Regression outputs on the codes, (m, n_classes); for two classes (m,), the
        second class's output minus the first's (> 0: ``classes_[1]``)."""
        f = self._decision(X)
        return f[:, 1] - f[:, 0] if len(self.classes_) == 2 else f

    def predict(self, X: Any) -> np.ndarray:
        """Labels (m,) from ``classes_``: the argmax of the outputs."""
        f = self._decision(X)
        return self.classes_[np.argmax(f, axis=1)]

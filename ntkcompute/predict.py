"""Predictive distributions of infinite-width networks: the NNGP posterior and the Gaussian
that gradient flow on the MSE gives an infinite ensemble of infinitely wide networks.

Lee et al. 2019 (§2.3–2.4, eqs. 13–16): a wide network trained by gradient flow on
``½ Σ (f(x_i) − y_i)² / N`` evolves as its linearisation, so over random initialisations
its test outputs at time t are Gaussian with, for ``A_t = Θ⁻¹ (I − e^{−η Θ t / N})``
(Θ, K: train-train NTK and NNGP; Θ_*, K_*: test-train; K_**: test-test NNGP),

    mean_t = Θ_* A_t Y
    cov_t  = K_** + Θ_* A_t K A_t Θ_*ᵀ − (Θ_* A_t K_*ᵀ + K_* A_t Θ_*ᵀ)

and the Bayesian NNGP network (only the readout trained, or exact inference) gives the
same with K in place of Θ: ``cov_t = K_** − K_* K⁻¹ (I − e^{−2 η K t / N}) K_*ᵀ``. At
t = ∞ these are the NNGP posterior ``K_** − K_* K⁻¹ K_*ᵀ`` and the NTK ensemble's
``K_** + Θ_* Θ⁻¹ K Θ⁻¹ Θ_*ᵀ − (Θ_* Θ⁻¹ K_*ᵀ + h.c.)``.

:class:`Ensemble` holds the train-train kernels (one eigendecomposition per kernel, reused
by every time, test set and λ-free query). :func:`gp_inference` and
:func:`gradient_descent_mse_ensemble` are ``neural_tangents.predict``'s functions of the
same names, with its arguments and return forms, so an nt script computing predictive
uncertainty runs with ``from ntkcompute import predict``. Everything is float64.

Time convention: ``normalization`` N is the loss's divisor. ``neural_tangents`` (and the
two nt-style functions here) use N = ``y_train.size``; :class:`Ensemble` defaults to N = 1,
the convention of :func:`ntkcompute.regression.gd_predictions` and of a solve's ``times``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.linalg as sla

from .errors import InputError, NotPositiveDefinite
from .regression import Eigen, absolute_lambdas, flow_decay, flow_gain, mean_diagonal

#: A Gaussian over test outputs: ``mean`` (..., m, c) and ``covariance`` (..., m, m) (the
#: covariance is the same for every output column: outputs are independent and alike).
Gaussian = collections.namedtuple("Gaussian", ["mean", "covariance"])

_KINDS = ("nngp", "ntk")


def _part(k: Any, name: str) -> np.ndarray | None:
    """``k.name`` / ``k[name]`` of a Kernel namedtuple or dict, or ``k`` itself if an array."""
    if k is None:
        return None
    if isinstance(k, Mapping):
        v = k.get(name)
    elif hasattr(k, "_fields"):
        v = getattr(k, name, None)
    else:
        v = k
    return None if v is None else np.asarray(v, dtype=np.float64)


def _gets(get: str | Sequence[str] | None) -> tuple[str, ...]:
    gets = _KINDS if get is None else ((get,) if isinstance(get, str) else tuple(get))
    bad = [g for g in gets if g not in _KINDS]
    if bad or not gets:
        raise InputError(f"must be 'nngp', 'ntk' or both, got {get!r}", field="get")
    return gets


class Ensemble:
    """The predictive Gaussians of gradient flow from the train-train kernels.

    Args:
        nngp, ntk: train-train NNGP K and NTK Θ, (n, n); each optional, but NTK
            covariances need both (the ensemble's spread comes from K at initialisation).
        y_train: targets (n,) or (n, c).
        learning_rate: η; times are multiplied by it.
        diag_reg: λ added to each train-train kernel before it is decomposed (kernel
            ridge at t = ∞); relative to mean(diag) unless ``diag_reg_absolute_scale``
            (nt's convention; note :func:`ntkcompute.regression.absolute_lambdas` calls the
            absolute form the default).
        normalization: N of the loss ``½ Σ (f − y)² / N`` (1 here; nt uses y_train.size).

    Raises:
        InputError: shapes that do not agree (field ``y_train`` / ``k_train_train``).
        NotPositiveDefinite: a kernel with eigenvalues below rounding noise (gradient flow
            diverges along them), when a time needs its eigendecomposition.
    """

    def __init__(self, nngp: Any = None, ntk: Any = None, y_train: Any = None, *,
                 learning_rate: float = 1.0, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False, normalization: float = 1.0) -> None:
        self.kernels = {g: None if k is None else np.asarray(k, dtype=np.float64)
                        for g, k in (("nngp", nngp), ("ntk", ntk))}
        if y_train is None:
            raise InputError("targets are required", field="y_train")
        y = np.asarray(y_train, dtype=np.float64)
        self.y = y[:, None] if y.ndim == 1 else y
        if self.y.ndim != 2 or not np.isfinite(self.y).all():
            raise InputError("must be (n,) or (n, c) finite targets", field="y_train")
        for g, k in self.kernels.items():
            if k is not None and k.shape != (len(self.y), len(self.y)):
                raise InputError(f"{g}: shape {k.shape}, targets have {len(self.y)} rows",
                                 field="k_train_train")
        if not np.isfinite(learning_rate) or learning_rate <= 0:
            raise InputError(f"must be > 0, got {learning_rate}", field="learning_rate")
        if not np.isfinite(normalization) or normalization <= 0:
            raise InputError(f"must be > 0, got {normalization}", field="normalization")
        self.lr, self.normalization = float(learning_rate), float(normalization)
        self.diag_reg, self.absolute = float(diag_reg), bool(diag_reg_absolute_scale)
        self._eig: dict[str, Eigen] = {}
        self._cho: dict[str, tuple] = {}

    def _kernel(self, g: str) -> np.ndarray:
        k = self.kernels[g]
        if k is None:
            raise InputError(f"the train-train {g.upper()} is needed", field="k_train_train")
        return k

    def _regularised(self, g: str) -> np.ndarray:
        k = self._kernel(g)
        if not self.diag_reg:
            return k
        lam = absolute_lambdas(self.diag_reg, not self.absolute,
                               None if self.absolute else mean_diagonal(k))[0]
        return k + lam * np.eye(len(k))

    def eigen(self, g: str) -> Eigen:
        """The (cached) eigendecomposition of the regularised train-train kernel ``g``."""
        if g not in self._eig:
            self._eig[g] = Eigen.of(self._regularised(g))
        return self._eig[g]

    def _solve(self, g: str, b: np.ndarray) -> np.ndarray:
        """``(K_g + λI)⁻¹ b`` by a cached Cholesky factor (t = ∞)."""
        if g not in self._cho:
            try:
                self._cho[g] = sla.cho_factor(self._regularised(g), lower=True)
            except np.linalg.LinAlgError:
                raise NotPositiveDefinite(
                    f"the train-train {g.upper()} (+ diag_reg) has no Cholesky factor; "
                    "use a diag_reg > 0", lam=self.diag_reg) from None
        return sla.cho_solve(self._cho[g], b)

    def _times(self, t: Any) -> np.ndarray:
        ts = np.asarray(t, dtype=np.float64).reshape(-1)
        if np.isnan(ts).any() or (ts < 0).any():
            raise InputError(f"times must be >= 0, got {ts.tolist()}", field="t")
        return ts * self.lr / self.normalization

    def predict(self, t: Any = None, k_test_train: Any = None, nngp_test_test: Any = None, *,
                get: str | Sequence[str] | None = None,
                compute_cov: bool = False) -> dict[str, Any]:
        """Mean (and covariance) of the outputs at times ``t``, for each kind in ``get``.

        Args:
            t: None (t = ∞, by Cholesky), a scalar, or a 1-d array of times (``np.inf``
                allowed: the pseudo-inverse limit).
            k_test_train: test-train kernels (m, n) (a Kernel namedtuple / dict with
                ``nngp`` / ``ntk``, or one array for a single ``get``); None: the train set.
            nngp_test_test: test-test NNGP (m, m), for ``compute_cov`` on a test set (its
                diagonal (m,) gives the variances alone, then ``covariance`` is (…, m)).
            get: "nngp", "ntk" or both (default both).

        Returns:
            ``{kind: mean}`` or ``{kind: Gaussian(mean, covariance)}``: mean (m, c) or
            (T, m, c) for T times, covariance (m, m) / (T, m, m) (or the diagonals).
        """
        gets = _gets(get)
        test = k_test_train is not None
        if compute_cov and test and nngp_test_test is None:
            raise InputError("a test covariance needs the test-test NNGP",
                             field="nngp_test_test")
        k_tt = None if nngp_test_test is None else np.asarray(nngp_test_test, np.float64)
        scalar = t is None or np.ndim(t) == 0
        out = {}
        for g in gets:
            k_td = _part(k_test_train, g) if test else None
            if test and (k_td is None or k_td.ndim != 2 or k_td.shape[1] != len(self.y)):
                raise InputError(f"{g}: needs a test-train kernel (m, {len(self.y)})",
                                 field="k_test_train")
            if t is None:
                mean, cov = self._infinite(g, k_td, k_tt, test, compute_cov,
                                           _part(k_test_train, "nngp") if test else None)
                mean, cov = mean[None], None if cov is None else cov[None]
            else:
                mean, cov = self._finite(g, self._times(t), k_td, k_tt, test, compute_cov,
                                         _part(k_test_train, "nngp") if test else None)
            if scalar:
                mean, cov = mean[0], None if cov is None else cov[0]
            out[g] = Gaussian(mean, cov) if compute_cov else mean
        return out

    def _infinite(self, g, k_td, k_tt, test, compute_cov, nngp_td):
        n = len(self.y)
        if not test:  # the train set is fit exactly: N(y, 0) (nt's convention)
            return self.y.copy(), np.zeros((n, n)) if compute_cov else None
        mean = k_td @ self._solve(g, self.y)
        if not compute_cov:
            return mean, None
        if g == "nngp":
            return mean, _minus_quadratic(k_tt, k_td, self._solve(g, k_td.T))
        if nngp_td is None:
            raise InputError("the NTK covariance needs the test-train NNGP too",
                             field="k_test_train")
        term = self._solve("ntk", k_td.T)  # Θ⁻¹ Θ_*ᵀ, (n, m)
        cross = nngp_td @ term             # K_* Θ⁻¹ Θ_*ᵀ
        return mean, _plus(k_tt, term.T @ self._kernel("nngp") @ term - cross - cross.T)

    def _finite(self, g, ts, k_td, k_tt, test, compute_cov, nngp_td):
        eig = self.eigen(g)
        if eig.negative:
            eig._check(0.0, f"gradient flow on the {g.upper()}")
        s, V = eig.s, eig.U
        proj = V.T @ self.y                                       # (n, c)
        gain = flow_gain(s, ts)                                   # (T, n): (1 − e^{−s t})/s
        if not test:
            mean = np.einsum("ij,tj,jc->tic", V, gain * s, proj)  # V (1 − e^{−s t}) Vᵀ y
            if not compute_cov:
                return mean, None
            decay = flow_decay(s, ts)                             # (T, n)
            if g == "nngp":
                return mean, np.einsum("ij,tj,kj->tik", V, s * decay ** 2, V)
            e = np.einsum("ij,tj,kj->tik", V, decay, V)
            return mean, e @ self._kernel("nngp") @ e
        P = k_td @ V                                              # Θ_* V, (m, n)
        mean = np.einsum("mj,tj,jc->tmc", P, gain, proj)
        if not compute_cov:
            return mean, None
        if g == "nngp":
            gain2 = flow_gain(s, 2 * ts)
            return mean, np.stack([_minus_quadratic(k_tt, P, (P * g2).T) for g2 in gain2])
        if nngp_td is None:
            raise InputError("the NTK covariance needs the test-train NNGP too",
                             field="k_test_train")
        K, Q = self._kernel("nngp"), nngp_td @ V                  # K_* V, (m, n)
        covs = []
        for g1 in gain:
            term = V @ (P * g1).T                                 # A_t Θ_*ᵀ, (n, m)
            cross = Q @ (P * g1).T                                # K_* A_t Θ_*ᵀ
            covs.append(_plus(k_tt, term.T @ K @ term - cross - cross.T))
        return mean, np.stack(covs)


def _minus_quadratic(k_tt: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``k_tt − a b`` (a: (m, n), b: (n, m)), or its diagonal when k_tt is one."""
    if k_tt.ndim == 1:
        return k_tt - np.einsum("mn,nm->m", a, b)
    return k_tt - a @ b


def _plus(k_tt: np.ndarray, m: np.ndarray) -> np.ndarray:
    return k_tt + (np.diagonal(m).copy() if k_tt.ndim == 1 else m)


def max_learning_rate(ntk_train_train: Any, y_train_size: int | None = None,
                      momentum: float = 0.0, eps: float = 1e-12) -> float:
    """Largest η for which full-batch GD (+ momentum) on ``½ Σ (f − y)² / N`` converges for
    the infinite-width network: ``2 (1 + momentum) N / λmax(Θ)`` (nt.predict's function;
    N = ``y_train_size``, default n)."""
    k = np.asarray(ntk_train_train, dtype=np.float64)
    top = float(sla.eigvalsh(k, subset_by_index=[len(k) - 1, len(k) - 1])[0])
    n = len(k) if y_train_size is None else y_train_size
    return 2.0 * (1.0 + momentum) * n / (top + eps)


# --- neural_tangents.predict's entry points --------------------------------------------------


def _trace_axes(trace_axes: Any, y: np.ndarray) -> None:
    axes = tuple(np.atleast_1d(trace_axes))
    if [a % max(y.ndim, 1) for a in axes] != [y.ndim - 1]:
        raise InputError("only trace_axes=(-1,) (outputs along the last axis of y_train) "
                         f"is supported, got {trace_axes}", field="trace_axes")


def _named(get: str | Sequence[str] | None, out: dict[str, Any]) -> Any:
    """nt's return form: one value for a string ``get``, else a namedtuple in get order."""
    if isinstance(get, str):
        return out[get]
    gets = _gets(get)
    return collections.namedtuple("Gaussians", gets)(*(out[g] for g in gets))


def _flat(y: np.ndarray, value: Any) -> Any:
    """Back to y's trailing shape: mean (..., m, c) -> (..., m) for a 1-d y_train."""
    if y.ndim != 1:
        return value
    if isinstance(value, Gaussian):
        return Gaussian(value.mean[..., 0], value.covariance)
    return value[..., 0]


def gp_inference(k_train_train: Any, y_train: Any, diag_reg: float = 0.0,
                 diag_reg_absolute_scale: bool = False, trace_axes: Any = (-1,)
                 ) -> Callable[..., Any]:
    """nt.predict.gp_inference: the t = ∞ posterior from precomputed kernels.

    ``k_train_train``: a Kernel namedtuple (``nngp``, ``ntk``), a dict, or one array.
    Returns ``predict_fn(get=None, k_test_train=None, k_test_test=None)``; with
    ``k_test_test`` (the test-test NNGP) each kind is a :data:`Gaussian`.
    """
    y = np.asarray(y_train, dtype=np.float64)
    _trace_axes(trace_axes, y)
    ens = Ensemble(_part(k_train_train, "nngp"), _part(k_train_train, "ntk"), y,
                   diag_reg=diag_reg, diag_reg_absolute_scale=diag_reg_absolute_scale)

    def predict_fn(get: str | Sequence[str] | None = None, k_test_train: Any = None,
                   k_test_test: Any = None) -> Any:
        cov = k_test_test is not None
        out = ens.predict(None, k_test_train, _part(k_test_test, "nngp") if cov and
                          k_test_train is not None else None, get=get, compute_cov=cov)
        return _named(get, {g: _flat(y, v) for g, v in out.items()})

    return predict_fn


def gradient_descent_mse_ensemble(kernel_fn: Callable[..., Any], x_train: Any, y_train: Any,
                                  learning_rate: float = 1.0, diag_reg: float = 0.0,
                                  diag_reg_absolute_scale: bool = False,
                                  trace_axes: Any = (-1,), **kernel_fn_train_train_kwargs: Any
                                  ) -> Callable[..., Any]:
    """nt.predict.gradient_descent_mse_ensemble: the infinite ensemble of infinite-width
    networks trained by gradient flow on ``½ Σ (f − y)² / y_train.size``.

    ``kernel_fn(x1, x2, get)`` is a :mod:`ntkcompute.stax` kernel function (or any with
    that signature returning a Kernel namedtuple). Returns
    ``predict_fn(t=None, x_test=None, get=None, compute_cov=False)``: means (or
    :data:`Gaussian` s) at times t (None: ∞), shapes as :meth:`Ensemble.predict`; train-
    train kernels are computed once, test kernels per call.
    """
    y = np.asarray(y_train, dtype=np.float64)
    _trace_axes(trace_axes, y)
    cache: dict[str, np.ndarray] = {}
    state: dict[str, Ensemble] = {}

    def ensemble(need: tuple[str, ...]) -> Ensemble:
        missing = tuple(g for g in need if g not in cache)
        if missing:
            k = kernel_fn(x_train, None, missing, **kernel_fn_train_train_kwargs)
            cache.update({g: np.asarray(getattr(k, g), np.float64) for g in missing})
            state["e"] = Ensemble(cache.get("nngp"), cache.get("ntk"), y,
                                  learning_rate=learning_rate, diag_reg=diag_reg,
                                  diag_reg_absolute_scale=diag_reg_absolute_scale,
                                  normalization=y.size)
        return state["e"]

    def predict_fn(t: Any = None, x_test: Any = None, get: str | Sequence[str] | None = None,
                   compute_cov: bool = False, **kernel_fn_test_test_kwargs: Any) -> Any:
        gets = _gets(get)
        need = tuple(g for g in _KINDS if g in gets or (g == "nngp" and compute_cov))
        ens = ensemble(need)
        k_td = k_tt = None
        if x_test is not None:
            kw = {**kernel_fn_train_train_kwargs, **kernel_fn_test_test_kwargs}
            k_td = kernel_fn(x_test, x_train, need, **kw)
            if compute_cov:
                k_tt = kernel_fn(x_test, None, "nngp", **kw)
        out = ens.predict(t, k_td, k_tt, get=gets, compute_cov=compute_cov)
        return _named(get, {g: _flat(y, v) for g, v in out.items()})

    return predict_fn

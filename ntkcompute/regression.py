"""Kernel (ridge) regression and the NTK analyses, for kernels that fit in memory.

Kernel regression with the NTK is the infinite-width network trained to convergence by
gradient descent on the MSE (Jacot et al. 2018; Lee et al. 2019). Everything here is float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg as sla

from .errors import InputError, NotPositiveDefinite


def one_hot(y: np.ndarray, classes: int, on: float = 0.9, off: float = -0.1) -> np.ndarray:
    """Arora et al. 2019 targets: ``on`` for the class, ``off`` elsewhere; (n, classes)."""
    out = np.full((len(y), classes), off)
    out[np.arange(len(y)), y] = on
    return out


def mean_diagonal(k: np.ndarray) -> float:
    """mean(diag K), the scale relative λ is measured in (float64 accumulation)."""
    return float(np.mean(np.diagonal(k), dtype=np.float64))


def absolute_lambdas(lam: float | list[float], relative: bool,
                     mean_diag: float | None = None) -> list[float]:
    """The λ convention every solver entry point shares (in-process, workers, REST, CLI).

    ``lam`` is one λ or a list; ``relative=False`` (the default everywhere) takes them as
    absolute ridges, ``relative=True`` as multiples of ``mean(diag K)`` (``mean_diag``),
    the scale-free choice (Arora et al. 2020 tune λ this way). Returns absolute λ values.

    Raises:
        InputError (field ``lambda``): a λ that is not finite or is negative, or
            ``relative`` without a usable ``mean_diag``.
    """
    lams = [float(v) for v in (lam if isinstance(lam, (list, tuple, np.ndarray)) else [lam])]
    if not lams or any(not np.isfinite(v) or v < 0 for v in lams):
        raise InputError(f"must be finite and >= 0, got {lams}", field="lambda")
    if not relative:
        return lams
    if mean_diag is None or not np.isfinite(mean_diag) or mean_diag <= 0:
        raise InputError(f"relative λ needs mean(diag K) > 0, got {mean_diag}",
                         field="lambda")
    return [v * mean_diag for v in lams]


def solve_direct(k_train: np.ndarray, targets: np.ndarray, lam: float, *,
                 relative: bool = False) -> np.ndarray:
    """Coefficients ``α = (K + λI)⁻¹ Y`` by Cholesky (float64); (n, c).

    ``lam`` is absolute unless ``relative`` (then a multiple of mean(diag K)).

    Raises:
        NotPositiveDefinite: ``K + λI`` has no Cholesky factor; the message gives λmin(K).
    """
    k = np.asarray(k_train, dtype=np.float64)
    lam = absolute_lambdas(lam, relative, mean_diagonal(k) if relative else None)[0]
    if not np.isfinite(k).all():
        raise NotPositiveDefinite(f"the kernel has {int((~np.isfinite(k)).sum())} "
                                  "non-finite entries", lam=lam, finite=False)
    try:
        factor = sla.cho_factor(k + lam * np.eye(len(k)), lower=True)
    except np.linalg.LinAlgError:
        low = float(sla.eigvalsh(k, subset_by_index=[0, 0])[0])
        raise NotPositiveDefinite(
            f"Cholesky found a non-positive pivot; λmin(K) + λ = {low + lam:.3g}", lam=lam,
            min_eigenvalue=low, scale=mean_diagonal(k), exact=True) from None
    return sla.cho_solve(factor, np.asarray(targets, dtype=np.float64))


def kernel_ridge(k_train: np.ndarray, targets: np.ndarray, k_cross: np.ndarray,
                 *legacy: float, lam: float | None = None, relative: bool = False,
                 reg: float | None = None) -> np.ndarray:
    """Predictions ``k_cross (k_train + λ I)⁻¹ targets``; λ absolute unless ``relative``.

    Shapes: k_train (n, n), targets (n, c), k_cross (m, n) -> (m, c).

    ``kernel_ridge(K, Y, Kc, reg=r)`` (and a positional 4th argument) used to mean
    ``λ = r · mean(diag K)``; such calls now raise instead of changing meaning: write
    ``lam=r, relative=True``.
    """
    if legacy or reg is not None or lam is None:
        was = reg if reg is not None else (legacy[0] if legacy else None)
        hint = (f"lam={was:g}, relative=True" if was is not None
                else "lam=1e-6, relative=True (the old default)")
        raise TypeError("kernel_ridge takes λ as lam= with relative= (absolute by default, "
                        f"like every solver); the old reg= was relative: write {hint}")
    coef = solve_direct(k_train, targets, lam, relative=relative)
    return np.asarray(k_cross, dtype=np.float64) @ coef


@dataclass(frozen=True)
class Eigen:
    """``K = U diag(s) Uᵀ`` (ascending ``s``), from one ``eigh``; reused by every λ and t.

    Eigenvalues in ``[-rounding, 0)`` are rounding noise of a PSD kernel and are set to 0
    (``clamped`` of them, the largest by ``clamped_by``); ones below ``-rounding`` are kept:
    the kernel is indefinite there (``negative`` of them, down to ``min_eigenvalue``), and
    every use that needs ``K + λI`` positive definite refuses it with
    :class:`NotPositiveDefinite`. ``rounding`` is eigh's backward error ``n·ε·max|s|``.
    """

    s: np.ndarray
    U: np.ndarray
    clamped: int = 0
    clamped_by: float = 0.0
    negative: int = 0
    min_eigenvalue: float = 0.0
    rounding: float = 0.0
    mean_diag: float = 0.0

    @classmethod
    def of(cls, k: np.ndarray) -> Eigen:
        k = np.asarray(k, dtype=np.float64)
        s, U = np.linalg.eigh(k)
        rounding = len(s) * np.finfo(np.float64).eps * float(np.abs(s).max(initial=0.0))
        noise = (s < 0) & (s >= -rounding)
        low = float(s[0]) if len(s) else 0.0
        return cls(np.where(noise, 0.0, s), U, clamped=int(noise.sum()),
                   clamped_by=float(-s[noise].min(initial=0.0)),
                   negative=int((s < -rounding).sum()), min_eigenvalue=low,
                   rounding=rounding, mean_diag=mean_diagonal(k) if len(k) else 0.0)

    def report(self) -> dict[str, Any]:
        """What the decomposition found about definiteness, for results and metrics."""
        return {"min_eigenvalue": self.min_eigenvalue,
                "min_eigenvalue_relative": self.min_eigenvalue / self.mean_diag
                if self.mean_diag else None,
                "clamped": self.clamped, "clamped_by": self.clamped_by,
                "negative_eigenvalues": self.negative}

    def _check(self, lam: float, what: str) -> None:
        if self.s.size and self.s[0] + lam <= self.rounding:
            raise NotPositiveDefinite(
                f"{what}: {self.negative} eigenvalue(s) of K below -{self.rounding:.2g} "
                f"(rounding), λmin(K) + λ = {self.min_eigenvalue + lam:.3g}", lam=lam,
                min_eigenvalue=self.min_eigenvalue, scale=self.mean_diag or None, exact=True)

    def _lams(self, lams: float | list[float], relative: bool) -> list[float]:
        return absolute_lambdas(lams, relative, self.mean_diag if relative else None)

    def solve(self, targets: np.ndarray, lam: float, *, relative: bool = False) -> np.ndarray:
        """``(K + λI)⁻¹ Y`` for one λ in O(n²)."""
        return self.sweep(targets, [lam], relative=relative)[0]

    def sweep(self, targets: np.ndarray, lams: list[float], *,
              relative: bool = False) -> list[np.ndarray]:
        """Coefficients for each λ of a sweep, sharing one decomposition; targets (n,) or
        (n, c), each result of the same shape."""
        lams = self._lams(lams, relative)
        for lam in lams:
            self._check(lam, "the λ sweep")
        y = np.asarray(targets, dtype=np.float64)
        proj = self.U.T @ (y[:, None] if y.ndim == 1 else y)
        out = [self.U @ (proj / (self.s + lam)[:, None]) for lam in lams]
        return [c[:, 0] for c in out] if y.ndim == 1 else out

    def gd_coefficients(self, targets: np.ndarray, t: float, lr: float = 1.0) -> np.ndarray:
        """``K⁻¹ (I - e^{-η K t}) Y``: the coefficients of gradient flow on the MSE at time t
        (Lee et al. 2019, eq. 9), stable for tiny eigenvalues (limit ``η t``). Gradient flow
        diverges along a negative eigenvalue: an indefinite K is refused."""
        if self.negative:
            self._check(0.0, "gradient flow")
        g = flow_gain(self.s, np.array([lr * t]))[0]
        return self.U @ ((self.U.T @ targets) * g[:, None])


def flow_gain(s: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """``(1 − e^{−s t}) / s`` for eigenvalues s (n,) >= 0 and times ts (T,): (T, n).

    The gain of gradient flow along an eigendirection: ``t`` where s = 0 (the limit),
    ``1/s`` at t = ∞ (and 0 where s = 0 too: the pseudo-inverse, the limit of a kernel
    whose test rows have no component along its null space)."""
    s = np.asarray(s, dtype=np.float64)
    ts = np.asarray(ts, dtype=np.float64).reshape(-1, 1)
    pos = s > 0
    safe = np.where(pos, s, 1.0)
    with np.errstate(invalid="ignore"):
        st = np.where(pos, s, 0.0) * np.where(np.isinf(ts), 1.0, ts)
        g = np.where(np.isinf(ts), 1.0 / safe, -np.expm1(-st) / safe)
    return np.where(pos, g, np.where(np.isinf(ts), 0.0, ts))


def flow_decay(s: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """``e^{−s t}`` (T, n) for s >= 0: 1 along the null space at every t (t = ∞ too)."""
    s = np.asarray(s, dtype=np.float64)
    ts = np.asarray(ts, dtype=np.float64).reshape(-1, 1)
    with np.errstate(invalid="ignore"):
        return np.where(s > 0, np.exp(-np.where(s > 0, s, 0.0) * ts), 1.0)


def gd_predictions(eig: Eigen, k_cross: np.ndarray, targets: np.ndarray, times: list[float],
                   lr: float = 1.0) -> list[np.ndarray]:
    """Outputs of the infinite-width network trained by gradient flow, at each time t:
    ``f_t = K_* K⁻¹ (I - e^{-η K t}) Y`` (0 at t = 0, kernel regression as t → ∞)."""
    kc = np.asarray(k_cross, dtype=np.float64)
    return [kc @ eig.gd_coefficients(targets, t, lr) for t in times]


def generalization_bound(eig: Eigen, y: np.ndarray) -> float:
    """Arora et al. 2019 (Thm 5.1): ``sqrt(2 yᵀ K⁻¹ y / n)`` (summed over target columns).

    The value is not scale-free: it is stated for inputs with ‖x‖ = 1, i.e. ``K₀ = ⟨x, x'⟩``
    of unit vectors; this library's input covariance is ``K₀ = ⟨x, x'⟩ / d`` (stax), so the
    kernel, and yᵀK⁻¹y with it, scales with the inputs' squared norm over d. Compare bounds
    across architectures on the same, identically scaled data only."""
    if eig.negative:
        eig._check(0.0, "the bound needs K⁻¹")
    y = np.asarray(y, dtype=np.float64)
    y2 = y[:, None] if y.ndim == 1 else y
    proj = eig.U.T @ y2
    pos = eig.s > eig.s.max() * 1e-14
    quad = float(np.sum(proj[pos] ** 2 / eig.s[pos, None]))
    return float(np.sqrt(2.0 * quad / len(y2)))


def spectrum(k: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest ``top`` eigenvalues (descending) and eigenvectors (n, top) of a PSD kernel:
    ``eigh`` below a few thousand rows, Lanczos (ARPACK) above."""
    k = np.asarray(k, dtype=np.float64)
    n = len(k)
    if n <= 3000 or top >= n // 2:
        s, U = np.linalg.eigh(k)
        return s[::-1][:top], U[:, ::-1][:, :top]
    from scipy.sparse.linalg import eigsh

    s, U = eigsh(k, k=top, which="LA")
    order = np.argsort(s)[::-1]
    return s[order], U[:, order]


def min_eigenvalue(matvec: Callable[[np.ndarray], np.ndarray], n: int, *,
                   scale: float | None = None, tol: float = 1e-4,
                   maxiter: int = 300) -> dict[str, Any]:
    """λmin(K) by Lanczos (ARPACK ``eigsh``, smallest algebraic) from products alone.

    ``matvec``: ``(n, k) -> K V``; ``scale``: mean(diag K), to report λmin relative to it.
    The smallest eigenvalues of a kernel cluster near 0, where Lanczos converges slowly:
    the work is bounded by ``maxiter`` restarts, and an unconverged run returns its best
    Ritz value with ``converged: False`` (still an upper bound on λmin: a Rayleigh
    quotient). Returns ``{"value", "relative", "exact": False, "converged", "matvecs"}``.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    count = [0]

    def mv(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        return np.asarray(matvec(np.asarray(v, dtype=np.float64).reshape(n, -1)),
                          dtype=np.float64).reshape(v.shape)

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    v0 = np.ones(n) / np.sqrt(n)  # deterministic start
    try:
        value = float(eigsh(op, k=1, which="SA", tol=tol, maxiter=maxiter, v0=v0,
                            return_eigenvectors=False)[0])
        converged = True
    except ArpackNoConvergence as e:
        value = float(np.min(e.eigenvalues)) if len(e.eigenvalues) else float("nan")
        converged = False
    return {"value": value, "relative": value / scale if scale else None, "exact": False,
            "converged": converged, "matvecs": count[0]}


def learning_curves(s: np.ndarray, U: np.ndarray, y: np.ndarray, times: list[float],
                    lr: float = 1.0) -> np.ndarray:
    """Per-eigendirection training error under gradient flow: ``(u_iᵀ y)² e^{-2 η s_i t}``,
    shape (len(times), len(s)): direction i is learned at a rate ∝ s_i (spectral bias)."""
    y = np.asarray(y, dtype=np.float64)
    y2 = y[:, None] if y.ndim == 1 else y
    proj2 = np.sum((U.T @ y2) ** 2, axis=1)
    t = np.asarray(times, dtype=np.float64)[:, None]
    return proj2[None, :] * np.exp(-2.0 * lr * s[None, :] * t)

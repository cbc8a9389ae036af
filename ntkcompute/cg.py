"""Preconditioned conjugate gradients for ``(K + λI) X = B`` with many right-hand sides.

All columns of ``B`` (one per class for one-hot labels) share every product with ``K``;
each column keeps its own step sizes (column-wise CG, not block CG, so one column's
convergence never disturbs another's). Vectors are float64 whatever the kernel's dtype.
The residual is recomputed from scratch every ``true_residual_every`` iterations, which
stops the recursively updated residual drifting away from ``B - A X`` in long solves.

Preconditioners: ``None``, :class:`Jacobi` and :class:`Nystrom` (rank-r pivoted Cholesky of
K, applied through the Woodbury identity: Harbrecht et al. 2012; Gardner et al. 2018,
GPyTorch; Meanti et al. 2020, Falkon).

Every solver here checks that it is solving a positive definite system and stops at the
first sign it is not, raising :class:`~ntkcompute.errors.NotPositiveDefinite` with the
evidence, the likely cause and the remedy (never a silent run to ``maxiter``, never a
library error): CG tests the curvature ``pᵀAp`` of every direction (for SPD ``A`` it is at
least ``λmin(A)·‖p‖²``; a value below zero beyond rounding is a direction of negative
curvature, and its Rayleigh quotient bounds ``λmin`` from above), the residual's finiteness
and growth; the preconditioners test the diagonal and the pivoted Cholesky's Schur
complement (Haynsworth inertia: a negative Schur diagonal means K has a negative eigenvalue).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from .errors import NotPositiveDefinite
from .regression import absolute_lambdas

Matvec = Callable[[np.ndarray], np.ndarray]  # (n, k) -> (n, k): K @ V (without λ)


@dataclass
class CGResult:
    x: np.ndarray  # (n, k) solution
    iterations: int
    converged: bool
    residuals: list[float] = field(default_factory=list)  # max relative residual per iteration


#: Curvature ``pᵀAp / ‖p‖²`` counts as negative below ``-CURVATURE_ROUNDING · n^½ · ε ·
#: qmax`` (qmax: the largest curvature seen, a lower bound on ‖A‖): the rounding of a
#: float64 product with n terms is ~n^½ ε ‖A‖ (Higham 2002, §3.1, probabilistic bound).
CURVATURE_ROUNDING = 64.0
#: A residual this many times its smallest value so far (and above its start) is divergence:
#: CG's residual may oscillate on an SPD system, by at most ~2 sqrt(κ) (κ ≤ 1e12 here).
RESIDUAL_GROWTH = 1e7


def _check_diagonal(diag: np.ndarray, lam: float) -> np.ndarray:
    """The kernel diagonal as float64, refused when non-finite or with ``K_ii + λ ≤ 0``
    (a kernel's diagonal is a variance: never negative)."""
    d = np.asarray(diag, dtype=np.float64)
    if not np.isfinite(d).all():
        raise NotPositiveDefinite(f"the diagonal has {int((~np.isfinite(d)).sum())} "
                                  "non-finite values", lam=lam, finite=False)
    if d.size and (d + lam).min() <= 0:
        i = int(np.argmin(d))
        raise NotPositiveDefinite(f"diagonal entry {i} is {d[i]:.3g}", lam=lam,
                                  min_eigenvalue=float(d[i]),
                                  scale=float(np.mean(np.abs(d))) or None)
    return d


class Jacobi:
    """``diag(K) + λ`` as preconditioner."""

    def __init__(self, diag: np.ndarray, lam: float) -> None:
        self.inv = 1.0 / (_check_diagonal(diag, lam) + lam)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        return self.inv[:, None] * r


def pivoted_cholesky(diag: np.ndarray, column: Callable[[int], np.ndarray], rank: int,
                     tol: float = 1e-12, lam: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy pivoted Cholesky: ``L`` (n, r) with ``K ≈ L Lᵀ`` from ``rank`` columns of K.

    ``column(j)`` returns column j of K (n,). Stops early when the largest remaining
    diagonal falls below ``tol`` times the largest initial one. Returns ``(L, pivots)``.

    A diagonal of the Schur complement ``K - L Lᵀ`` below ``-√tol · max diag`` means K has
    a negative eigenvalue beyond rounding (Haynsworth inertia additivity): with ``λ = 0``
    that raises; with ``λ > 0`` the factorisation stops there (whether ``K + λI`` is
    positive definite is then for CG's curvature test to find). Raises
    :class:`NotPositiveDefinite` also on a non-finite diagonal or column.
    """
    d = _check_diagonal(diag, lam).copy()
    n = d.shape[0]
    rank = min(rank, n)
    L = np.zeros((n, rank))
    pivots = []
    scale = d.max() if n else 0.0
    for m in range(rank):
        j = int(np.argmax(d))
        if d[j] <= tol * scale:
            L = L[:, :m]
            break
        pivots.append(j)
        raw = np.asarray(column(j), dtype=np.float64)
        if not np.isfinite(raw).all():
            raise NotPositiveDefinite(f"column {j} has {int((~np.isfinite(raw)).sum())} "
                                      "non-finite values", lam=lam, finite=False)
        col = raw - L[:, :m] @ L[j, :m]
        L[:, m] = col / np.sqrt(d[j])
        d -= L[:, m] ** 2
        d[j] = 0.0
        low = int(np.argmin(d))
        if d[low] < -np.sqrt(tol) * scale:  # K is indefinite beyond rounding
            if lam <= 0:
                raise NotPositiveDefinite(
                    f"pivoted Cholesky's Schur complement has diagonal {d[low]:.3g} at row "
                    f"{low} after {m + 1} pivots, so K has a negative eigenvalue", lam=lam)
            # K + λI may still be positive definite: keep the exact factor of the (positive
            # definite) pivot block so far; CG's curvature test decides about K + λI.
            L = L[:, :m + 1]
            break
    return L, np.array(pivots, dtype=int)


class Nystrom:
    """``P = L Lᵀ + λ I`` with ``L`` from :func:`pivoted_cholesky`; ``P⁻¹`` by Woodbury:
    ``P⁻¹ v = (v - L (λ I + LᵀL)⁻¹ Lᵀ v) / λ``."""

    def __init__(self, L: np.ndarray, lam: float) -> None:
        if lam <= 0:
            raise ValueError("the Nystrom preconditioner needs λ > 0")
        if not np.isfinite(L).all():
            raise NotPositiveDefinite("the Nyström factor has non-finite values", lam=lam,
                                      finite=False)
        self.L = L
        self.lam = lam
        self.factor = sla.cho_factor(lam * np.eye(L.shape[1]) + L.T @ L, lower=True)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        return (r - self.L @ sla.cho_solve(self.factor, self.L.T @ r)) / self.lam


def cg(matvec: Matvec, B: np.ndarray, lam: float, *, tol: float = 1e-8, maxiter: int = 1000,
       precond: Callable[[np.ndarray], np.ndarray] | None = None, x0: np.ndarray | None = None,
       true_residual_every: int = 50,
       callback: Callable[[int, float], None] | None = None,
       scale: float | None = None, relative: bool = False) -> CGResult:
    """Solve ``(K + λI) X = B`` column by column, sharing each ``K @ V``.

    Args:
        matvec: ``V (n, k) -> K V``, the kernel's product (λ is added here).
        B: (n,) or (n, k) right-hand sides.
        lam: ridge λ >= 0, absolute unless ``relative`` (then a multiple of ``scale``).
        tol: stop when every column's ``||B - A X|| / ||B||`` is below ``tol``.
        maxiter: iteration cap.
        precond: ``R (n, k) -> M⁻¹ R``.
        x0: warm start (n, k).
        true_residual_every: recompute ``R = B - A X`` this often.
        callback: ``callback(iteration, max_relative_residual)``.
        scale: mean(diag K), if known: the error message then gives λ relative to it.
        relative: λ is a multiple of ``scale`` (which is then required), the convention of
            :func:`ntkcompute.regression.absolute_lambdas`.

    Returns:
        :class:`CGResult` with ``x`` of B's shape.

    Raises:
        NotPositiveDefinite: at the iteration where a search direction has negative
            curvature beyond rounding, a product or residual is non-finite, or the residual
            grows ``RESIDUAL_GROWTH``-fold (CG on an indefinite system diverges).
    """
    lam = absolute_lambdas(lam, relative, scale)[0]
    B = np.asarray(B, dtype=np.float64)
    vector = B.ndim == 1
    B2 = B[:, None] if vector else B

    def A(V: np.ndarray) -> np.ndarray:
        out = np.asarray(matvec(V), dtype=np.float64)
        return out + lam * V

    X = np.zeros_like(B2) if x0 is None else np.array(x0, dtype=np.float64).reshape(B2.shape)
    R = B2 - A(X) if x0 is not None else B2.copy()
    bnorm = np.linalg.norm(B2, axis=0)
    bnorm[bnorm == 0] = 1.0
    Z = precond(R) if precond else R
    P = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    res = [float((np.linalg.norm(R, axis=0) / bnorm).max())]
    n = B2.shape[0]
    rounding = CURVATURE_ROUNDING * np.sqrt(n) * np.finfo(np.float64).eps
    qmax = 0.0
    it = 0
    while res[-1] > tol and it < maxiter:
        it += 1
        AP = A(P)
        if not np.isfinite(AP).all():
            raise NotPositiveDefinite(f"K·p is not finite at iteration {it}", lam=lam,
                                      iteration=it, finite=False)
        pap = np.einsum("ij,ij->j", P, AP)
        pp = np.einsum("ij,ij->j", P, P)
        q = pap / np.where(pp > 0, pp, 1.0)  # Rayleigh quotients of the directions
        qmax = max(qmax, float(q.max(initial=0.0)))
        bad = (pp > 0) & (q < -rounding * qmax)
        if bad.any():
            qmin = float(q[bad].min())
            raise NotPositiveDefinite(
                f"CG found a direction of negative curvature, pᵀ(K + λI)p = {qmin:.3g}·‖p‖², "
                f"at iteration {it}", lam=lam, min_eigenvalue=qmin - lam, iteration=it,
                scale=scale)
        active = pap > 0
        alpha = np.where(active, rz / np.where(active, pap, 1.0), 0.0)
        X += alpha * P
        if it % true_residual_every == 0:
            R = B2 - A(X)
        else:
            R -= alpha * AP
        rel = np.linalg.norm(R, axis=0) / bnorm
        res.append(float(rel.max()))
        if not np.isfinite(res[-1]):
            raise NotPositiveDefinite(f"the residual is not finite at iteration {it}",
                                      lam=lam, iteration=it, finite=False)
        if res[-1] > max(RESIDUAL_GROWTH * min(res), res[0]):
            raise NotPositiveDefinite(
                f"the residual grew to {res[-1]:.3g} (from at best {min(res):.3g}) at "
                f"iteration {it}: CG diverges", lam=lam, iteration=it, scale=scale)
        if callback:
            callback(it, res[-1])
        if res[-1] <= tol:
            break
        Z = precond(R) if precond else R
        rz_new = np.einsum("ij,ij->j", R, Z)
        beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        beta[~active] = 0.0  # breakdown (pᵀAp <= 0 in rounding): restart along Z
        moving = rel > tol  # converged columns stop moving
        P = (Z + beta * P) * moving
        rz = rz_new
    x = X[:, 0] if vector else X
    return CGResult(x=x, iterations=it, converged=res[-1] <= tol, residuals=res)

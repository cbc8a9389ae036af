"""Preconditioned conjugate gradients for ``(K + λI) X = B`` with many right-hand sides.

All columns of ``B`` (one per class for one-hot labels) share every product with ``K``;
each column keeps its own step sizes (column-wise CG, not block CG, so one column's
convergence never disturbs another's). Vectors are float64 whatever the kernel's dtype.
The residual is recomputed from scratch every ``true_residual_every`` iterations, which
stops the recursively updated residual drifting away from ``B - A X`` in long solves.

Preconditioners: ``None``, :class:`Jacobi` and :class:`Nystrom` (rank-r pivoted Cholesky of
K, applied through the Woodbury identity: Harbrecht et al. 2012; Gardner et al. 2018,
GPyTorch; Meanti et al. 2020, Falkon).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

Matvec = Callable[[np.ndarray], np.ndarray]  # (n, k) -> (n, k): K @ V (without λ)


@dataclass
class CGResult:
    x: np.ndarray  # (n, k) solution
    iterations: int
    converged: bool
    residuals: list[float] = field(default_factory=list)  # max relative residual per iteration


class Jacobi:
    """``diag(K) + λ`` as preconditioner."""

    def __init__(self, diag: np.ndarray, lam: float) -> None:
        self.inv = 1.0 / (np.asarray(diag, dtype=np.float64) + lam)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        return self.inv[:, None] * r


def pivoted_cholesky(diag: np.ndarray, column: Callable[[int], np.ndarray], rank: int,
                     tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Greedy pivoted Cholesky: ``L`` (n, r) with ``K ≈ L Lᵀ`` from ``rank`` columns of K.

    ``column(j)`` returns column j of K (n,). Stops early when the largest remaining
    diagonal falls below ``tol`` times the largest initial one. Returns ``(L, pivots)``.
    """
    d = np.array(diag, dtype=np.float64)
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
        col = np.asarray(column(j), dtype=np.float64) - L[:, :m] @ L[j, :m]
        L[:, m] = col / np.sqrt(d[j])
        d -= L[:, m] ** 2
        d[j] = 0.0
    return L, np.array(pivots, dtype=int)


class Nystrom:
    """``P = L Lᵀ + λ I`` with ``L`` from :func:`pivoted_cholesky`; ``P⁻¹`` by Woodbury:
    ``P⁻¹ v = (v - L (λ I + LᵀL)⁻¹ Lᵀ v) / λ``."""

    def __init__(self, L: np.ndarray, lam: float) -> None:
        if lam <= 0:
            raise ValueError("the Nystrom preconditioner needs λ > 0")
        self.L = L
        self.lam = lam
        self.factor = sla.cho_factor(lam * np.eye(L.shape[1]) + L.T @ L, lower=True)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        return (r - self.L @ sla.cho_solve(self.factor, self.L.T @ r)) / self.lam


def cg(matvec: Matvec, B: np.ndarray, lam: float, *, tol: float = 1e-8, maxiter: int = 1000,
       precond: Callable[[np.ndarray], np.ndarray] | None = None, x0: np.ndarray | None = None,
       true_residual_every: int = 50,
       callback: Callable[[int, float], None] | None = None) -> CGResult:
    """Solve ``(K + λI) X = B`` column by column, sharing each ``K @ V``.

    Args:
        matvec: ``V (n, k) -> K V``, the kernel's product (λ is added here).
        B: (n,) or (n, k) right-hand sides.
        lam: ridge λ >= 0.
        tol: stop when every column's ``||B - A X|| / ||B||`` is below ``tol``.
        maxiter: iteration cap.
        precond: ``R (n, k) -> M⁻¹ R``.
        x0: warm start (n, k).
        true_residual_every: recompute ``R = B - A X`` this often.
        callback: ``callback(iteration, max_relative_residual)``.

    Returns:
        :class:`CGResult` with ``x`` of B's shape.
    """
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
    it = 0
    while res[-1] > tol and it < maxiter:
        it += 1
        AP = A(P)
        pap = np.einsum("ij,ij->j", P, AP)
        active = pap > 0
        alpha = np.where(active, rz / np.where(active, pap, 1.0), 0.0)
        X += alpha * P
        if it % true_residual_every == 0:
            R = B2 - A(X)
        else:
            R -= alpha * AP
        rel = np.linalg.norm(R, axis=0) / bnorm
        res.append(float(rel.max()))
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

"""Kernel (ridge) regression and the NTK analyses, for kernels that fit in memory.

Kernel regression with the NTK is the infinite-width network trained to convergence by
gradient descent on the MSE (Jacot et al. 2018; Lee et al. 2019). Everything here is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla


def one_hot(y: np.ndarray, classes: int, on: float = 0.9, off: float = -0.1) -> np.ndarray:
    """Arora et al. 2019 targets: ``on`` for the class, ``off`` elsewhere; (n, classes)."""
    out = np.full((len(y), classes), off)
    out[np.arange(len(y)), y] = on
    return out


def solve_direct(k_train: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    """Coefficients ``α = (K + λI)⁻¹ Y`` by Cholesky (float64); (n, c)."""
    k = np.asarray(k_train, dtype=np.float64)
    factor = sla.cho_factor(k + lam * np.eye(len(k)), lower=True)
    return sla.cho_solve(factor, np.asarray(targets, dtype=np.float64))


def kernel_ridge(k_train: np.ndarray, targets: np.ndarray, k_cross: np.ndarray,
                 reg: float = 1e-6) -> np.ndarray:
    """Predictions ``k_cross (k_train + λ I)^-1 targets`` with ``λ = reg * mean(diag K)``.

    Shapes: k_train (n, n), targets (n, c), k_cross (m, n) -> (m, c).
    """
    lam = reg * float(np.mean(np.diag(k_train)))
    return np.asarray(k_cross, dtype=np.float64) @ solve_direct(k_train, targets, lam)


@dataclass(frozen=True)
class Eigen:
    """``K = U diag(s) Uᵀ`` (ascending ``s``), from one ``eigh``; reused by every λ and t."""

    s: np.ndarray
    U: np.ndarray

    @classmethod
    def of(cls, k: np.ndarray) -> Eigen:
        s, U = np.linalg.eigh(np.asarray(k, dtype=np.float64))
        return cls(np.maximum(s, 0.0), U)

    def solve(self, targets: np.ndarray, lam: float) -> np.ndarray:
        """``(K + λI)⁻¹ Y`` for one λ in O(n²)."""
        return self.U @ ((self.U.T @ targets) / (self.s + lam)[:, None])

    def sweep(self, targets: np.ndarray, lams: list[float]) -> list[np.ndarray]:
        """Coefficients for each λ of a sweep, sharing one decomposition."""
        proj = self.U.T @ np.asarray(targets, dtype=np.float64)
        return [self.U @ (proj / (self.s + lam)[:, None]) for lam in lams]

    def gd_coefficients(self, targets: np.ndarray, t: float, lr: float = 1.0) -> np.ndarray:
        """``K⁻¹ (I - e^{-η K t}) Y``: the coefficients of gradient flow on the MSE at time t
        (Lee et al. 2019, eq. 9), stable for tiny eigenvalues (limit ``η t``)."""
        st = self.s * (lr * t)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(self.s > 0, -np.expm1(-st) / np.where(self.s > 0, self.s, 1.0),
                         lr * t)
        return self.U @ ((self.U.T @ targets) * g[:, None])


def gd_predictions(eig: Eigen, k_cross: np.ndarray, targets: np.ndarray, times: list[float],
                   lr: float = 1.0) -> list[np.ndarray]:
    """Outputs of the infinite-width network trained by gradient flow, at each time t:
    ``f_t = K_* K⁻¹ (I - e^{-η K t}) Y`` (0 at t = 0, kernel regression as t → ∞)."""
    kc = np.asarray(k_cross, dtype=np.float64)
    return [kc @ eig.gd_coefficients(targets, t, lr) for t in times]


def generalization_bound(eig: Eigen, y: np.ndarray) -> float:
    """Arora et al. 2019 (Thm 5.1): ``sqrt(2 yᵀ K⁻¹ y / n)`` (summed over target columns)."""
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


def learning_curves(s: np.ndarray, U: np.ndarray, y: np.ndarray, times: list[float],
                    lr: float = 1.0) -> np.ndarray:
    """Per-eigendirection training error under gradient flow: ``(u_iᵀ y)² e^{-2 η s_i t}``,
    shape (len(times), len(s)): direction i is learned at a rate ∝ s_i (spectral bias)."""
    y = np.asarray(y, dtype=np.float64)
    y2 = y[:, None] if y.ndim == 1 else y
    proj2 = np.sum((U.T @ y2) ** 2, axis=1)
    t = np.asarray(times, dtype=np.float64)[:, None]
    return proj2[None, :] * np.exp(-2.0 * lr * s[None, :] * t)

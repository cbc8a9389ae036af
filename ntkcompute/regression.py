"""Kernel ridge regression by a direct (Cholesky) solve: the infinite-width network trained to
convergence on MSE (Jacot et al. 2018; Lee et al. 2019). The distributed CG solver builds on it."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla


def one_hot(y: np.ndarray, classes: int, on: float = 0.9, off: float = -0.1) -> np.ndarray:
    """Arora et al. 2019 targets: ``on`` for the class, ``off`` elsewhere; (n, classes)."""
    out = np.full((len(y), classes), off)
    out[np.arange(len(y)), y] = on
    return out


def kernel_ridge(k_train: np.ndarray, targets: np.ndarray, k_cross: np.ndarray,
                 reg: float = 1e-6) -> np.ndarray:
    """Predictions ``k_cross (k_train + λ I)^-1 targets``.

    Args:
        k_train: (n, n) symmetric PSD train Gram matrix.
        targets: (n, c) regression targets.
        k_cross: (m, n) kernel between test and train points.
        reg: ridge λ relative to the mean of the diagonal of ``k_train``.

    Returns:
        (m, c) predictions, float64.
    """
    k = np.asarray(k_train, dtype=np.float64)
    lam = reg * float(np.mean(np.diag(k)))
    factor = sla.cho_factor(k + lam * np.eye(len(k)), lower=True)
    alpha = sla.cho_solve(factor, np.asarray(targets, dtype=np.float64))
    return np.asarray(k_cross, dtype=np.float64) @ alpha

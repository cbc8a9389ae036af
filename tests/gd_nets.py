"""Finite-width networks trained by full-batch gradient descent, an ensemble at once.

Independent of ``ntkcompute``: a two-layer ReLU network in the NTK parameterization
(stax's ``Dense(w, W_std, b_std) -> Relu -> Dense(1, W_std, b_std)``), forward and backward
written out by hand in NumPy, every member of the ensemble its own initialisation. Loss
``½ Σ_i (f(x_i) − y_i)²`` (no 1/N), so GD with step η for k steps follows gradient flow to
time ``t = k η`` (the convention of :class:`ntkcompute.predict.Ensemble`).
"""

from __future__ import annotations

import numpy as np


def train_ensemble(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *,
                   width: int, members: int, lr: float, steps: list[int], w_std: float,
                   b_std: float, seed: int) -> np.ndarray:
    """Outputs on ``x_test`` (len(steps), members, m) of ``members`` nets after each
    number of steps in ``steps`` (0: at initialisation)."""
    rng = np.random.default_rng(seed)
    d = x_train.shape[1]
    w1 = rng.standard_normal((members, d, width))
    b1 = rng.standard_normal((members, 1, width))
    w2 = rng.standard_normal((members, width, 1))
    b2 = rng.standard_normal((members, 1, 1))
    c1, c2 = w_std / np.sqrt(d), w_std / np.sqrt(width)
    y = y_train.reshape(1, -1, 1)

    def hidden(x):
        return c1 * (x @ w1) + b_std * b1          # (members, rows, width)

    def out(a):
        return c2 * (a @ w2) + b_std * b2          # (members, rows, 1)

    results, k = [], 0
    for target in sorted(steps):
        while k < target:
            z = hidden(x_train)
            a = np.maximum(z, 0.0)
            r = out(a) - y                          # dL/df
            g_w2 = c2 * a.transpose(0, 2, 1) @ r
            g_b2 = b_std * r.sum(axis=1, keepdims=True)
            dz = (c2 * r @ w2.transpose(0, 2, 1)) * (z > 0)
            g_w1 = c1 * x_train.T[None] @ dz
            g_b1 = b_std * dz.sum(axis=1, keepdims=True)
            w1 -= lr * g_w1
            b1 -= lr * g_b1
            w2 -= lr * g_w2
            b2 -= lr * g_b2
            k += 1
        results.append(out(np.maximum(hidden(x_test), 0.0))[..., 0])
    return np.stack(results)

"""Real datasets that need no network: scikit-learn's digits, the shared CIFAR-10 subset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: ``../shared/data`` beside the checkout, or ``$NTKCOMPUTE_DATA``.
SHARED = Path(os.environ.get("NTKCOMPUTE_DATA",
                             Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as (1797, 8, 8, 1) images in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[..., None] / 16.0), d.target


def cifar10(n: int | None = None, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` (<= 4000) CIFAR-10 training images, (n, 32, 32, 3) uint8, and labels."""
    f = np.load((root or SHARED) / "cifar10" / "cifar10_train_first4000.npz")
    return f["x"][:n], f["y"][:n]


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Arora et al. 2019 preprocessing: /255, then per-channel mean/std of the training set."""
    scaled = [a.astype(np.float64) / 255.0 for a in (train, *others)]
    axes = tuple(range(train.ndim - 1))
    mu, sd = scaled[0].mean(axis=axes), scaled[0].std(axis=axes)
    return [(a - mu) / sd for a in scaled]

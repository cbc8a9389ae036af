"""Real datasets that need no network: scikit-learn's digits, the shared CIFAR-10 and MNIST
subsets."""

from __future__ import annotations

import gzip
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


def _idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format: magic 0x08 0x0d, big-endian dims, uint8 data)."""
    raw = gzip.decompress(path.read_bytes())
    if raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    dims = np.frombuffer(raw, ">u4", count=raw[3], offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def mnist(split: str = "train", n: int | None = None, root: Path | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (n, 28, 28) uint8 and int64 labels: ``"train"`` the first (<= 20000)
    official training images, ``"test"`` the official 10000-image test set."""
    base = (root or SHARED) / "mnist"
    if split == "train":
        f = np.load(base / "mnist_train_first20000.npz")
        return f["x"][:n], f["y"][:n]
    if split == "test":
        x = _idx(base / "t10k-images-idx3-ubyte.gz")
        y = _idx(base / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        return x[:n], y[:n]
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Arora et al. 2019 preprocessing: /255, then per-channel mean/std of the training set
    (:class:`ntkcompute.preprocess.Standardize`)."""
    from .preprocess import Standardize

    scaled = [a.astype(np.float64) / 255.0 for a in (train, *others)]
    fit = Standardize.fit(scaled[0])
    return [fit(a) for a in scaled]

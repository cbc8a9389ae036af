"""float32 kernels agree with float64 on real images (issue 15, accurate reduced precision).

On a few MNIST and CIFAR-10 rows (``../shared/data``, /255, optionally 2x2-averaged,
standardised): the float32 NNGP and NTK Grams are within 1e-6 of float64 in the kernel's own
scale, ``max |K32_ij - K64_ij| / sqrt(K64_ii K64_jj)``, and Grams of images with near-duplicates
(nearly singular) stay positive semi-definite in float32, ``λmin(K32) >= -1e-7 mean(diag)``.
Every case fails with the code before the fix (efc13d3): bench/precision.py has the numbers.
"""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.datasets import SHARED

ERR = 1e-6
LMIN = -1e-7


def images(kind: str, n: int, size: int, copies: int = 0, pixels: int = 0,
           sigma: float = 0.0) -> np.ndarray:
    """``(n + copies, size, size, C)`` standardised images; the last ``copies`` are copies of
    the first ones with ``pixels`` random pixels moved by one grey level, or (``sigma``)
    Gaussian noise of that many grey levels on every pixel, rounded back to uint8."""
    if kind == "mnist":
        x = np.load(SHARED / "mnist" / "mnist_train_first20000.npz")["x"][:n, ..., None]
    else:
        x = np.load(SHARED / "cifar10" / "cifar10_train_first4000.npz")["x"][:n]
    rng = np.random.default_rng(0)
    dup = x[:copies].astype(np.float64)
    if sigma:
        dup += rng.normal(0.0, sigma, dup.shape)
    for img in dup:
        flat = img.reshape(-1)
        idx = rng.choice(flat.size, pixels, replace=False)
        flat[idx] += rng.choice([-1.0, 1.0], pixels)
    x = np.concatenate([x, np.clip(np.round(dup), 0, 255)]) / 255.0
    f = x.shape[1] // size
    if f > 1:
        x = x.reshape(len(x), size, f, size, f, x.shape[-1]).mean(axis=(2, 4))
    return (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))


def gram_pair(arch: dict, x: np.ndarray) -> tuple[dict, dict]:
    return (nc.kernel(arch, x, dtype=np.float32, threads=1),
            nc.kernel(arch, x, dtype=np.float64, threads=1))


def kernel_error(k32: np.ndarray, k64: np.ndarray) -> float:
    d = np.sqrt(np.diag(k64))
    return float(np.max(np.abs(k32.astype(np.float64) - k64) / np.outer(d, d)))


def lmin(k: np.ndarray) -> float:
    k = np.asarray(k, dtype=np.float64)
    return float(np.linalg.eigvalsh(k)[0] / np.mean(np.diag(k)))


ERF30 = {"layers": [*[{"type": "conv", "filter_shape": [3, 3], "padding": "SAME",
                       "W_std": 1.5, "b_std": 0.1}, {"type": "erf", "b": 30.0}] * 3,
                    {"type": "flatten"}, {"type": "dense", "W_std": 1.5, "b_std": 0.1}]}

# (id, architecture, images(...) arguments, flatten the pixels). Comments: the error before
# the fix on the same rows (nngp / ntk) and its mechanism.
CASES = [
    ("cntk-gap-3 mnist14", A.cntk(3), ("mnist", 10, 14), False),  # 1.2e-5 / 8.8e-6 GAP mean
    ("cntk-gap-3 cifar16", A.cntk(3), ("cifar", 8, 16), False),  # 1.2e-5 / 9.5e-6 GAP mean
    ("cntk-gap-8 cifar16", A.cntk(8), ("cifar", 5, 16), False),  # 6.1e-6 / 4.5e-6 GAP mean
    ("resnet-2-gap cifar16", A.resnet(2, "global_avg_pool"), ("cifar", 5, 16), False),  # 8e-6
    ("cntk-v-3 mnist28", A.cntk(3, "flatten"), ("mnist", 32, 28), False),  # 2.2e-6 / 3.0e-6
    ("cntk-v-8 mnist28", A.cntk(8, "flatten"), ("mnist", 40, 28), False),  # 1.2e-6 / 5.2e-6
    ("fc-3 mnist28", A.fc(3), ("mnist", 64, 28), True),  # 5.3e-6 / 9.8e-4 input sums
    ("cntk-v-8 mnist14 near-duplicates", A.cntk(8, "flatten"),  # 6.1e-7 / 1.1e-3 small angles
     ("mnist", 8, 14, 8, 16), False),
    ("erf(b=30) cnn mnist28", ERF30, ("mnist", 16, 28), False),  # 2.4e-6 / 3.9e-5 erf's p
]


@pytest.mark.parametrize("arch,data,flat", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_float32_is_within_1e6_of_float64(arch, data, flat):
    x = images(*data)
    if flat:
        x = x.reshape(len(x), -1)
    k32, k64 = gram_pair(arch, x)
    for g in ("nngp", "ntk"):
        e = kernel_error(k32[g], k64[g])
        assert e <= ERR, f"{g}: float32 error {e:.2e} (lmin32 {lmin(k32[g]):.1e})"


def test_float32_cross_kernel_with_near_duplicates():
    """x2 holds near-duplicates of x1's rows (a test set overlapping the training set): the
    cross block, scaled by the two sets' self kernels. Before the fix: NTK error 1.1e-3."""
    x = images("mnist", 8, 14, 8, 16)
    x1, x2 = x[:8], x[8:]
    arch = A.cntk(8, "flatten")
    k32 = nc.kernel(arch, x1, x2, dtype=np.float32, threads=1)
    k64 = nc.kernel(arch, x, dtype=np.float64, threads=1)
    for g in ("nngp", "ntk"):
        d = np.sqrt(np.diag(k64[g]))
        e = np.max(np.abs(k32[g] - k64[g][:8, 8:]) / np.outer(d[:8], d[8:]))
        assert e <= ERR, f"{g}: float32 error {e:.2e}"


# Near-duplicates make the float64 Gram nearly singular (λmin64 1.4e-6, 1.9e-6, 5.8e-6 of
# mean diag); float32 noise above that makes it indefinite. Before the fix: λmin32 -1.1e-5,
# -1.3e-5, -2.6e-6.
PSD_CASES = [
    ("cntk-gap-3 mnist14 noisy copies", "nngp", ("mnist", 12, 14, 6, 0, 4.0)),
    ("cntk-gap-3 cifar16 noisy copies", "nngp", ("cifar", 12, 16, 6, 0, 4.0)),
    ("cntk-gap-3 mnist14 near-duplicates", "ntk", ("mnist", 12, 14, 6, 16)),
]


@pytest.mark.parametrize("g,data", [c[1:] for c in PSD_CASES], ids=[c[0] for c in PSD_CASES])
def test_float32_gram_of_near_duplicates_stays_psd(g, data):
    k32, k64 = gram_pair(A.cntk(3), images(*data))
    lo = lmin(k32[g])
    assert lo >= LMIN, f"λmin32 {lo:.2e}, λmin64 {lmin(k64[g]):.2e} (of mean diag)"

"""Indefinite kernels for the solver tests: a constructed one, and a real float32 CNTK Gram
computed before the float32 fix (tests/fixtures/indefinite_f32.npz)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.datasets import digits

FIXTURE = Path(__file__).parent / "fixtures" / "indefinite_f32.npz"


@functools.lru_cache(maxsize=2)
def _digits_gram(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, _ = digits()
    return np.linalg.eigh(nc.kernel(A.cntk(2), x[:n], get="nngp")["nngp"])


def constructed(n: int = 200, low: float = -1e-3) -> np.ndarray:
    """A real CNTK-2 NNGP Gram of n digits with its smallest eigenvalue moved to
    ``low``·mean diag: everything else about it (scale, spectrum, structure) is a kernel's."""
    s, U = (a.copy() for a in _digits_gram(n))
    s[0] = low * float(np.mean(s))  # mean diag = trace / n
    out = (U * s) @ U.T
    return (out + out.T) / 2


def fixture() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(k32, k64, y)``: the pre-fix float32 Gram (indefinite), the float64 one of the same
    rows (PSD) and their labels."""
    with np.load(FIXTURE) as f:
        return f["k32"], f["k64"], f["y"]


def breakdown(K: np.ndarray, b: np.ndarray, lam: float, precond=None,
              maxiter: int = 10_000) -> int:
    """The first iteration of textbook (P)CG on ``(K + λI) x = b`` whose direction has
    ``pᵀAp <= 0``: where CG breaks down in exact arithmetic's sense (0 if never)."""
    A_ = K.astype(np.float64) + lam * np.eye(len(K))
    r = b.astype(np.float64).copy()
    z = precond(r[:, None])[:, 0] if precond else r
    p, rz = z.copy(), r @ z
    for it in range(1, maxiter + 1):
        ap = A_ @ p
        pap = p @ ap
        if pap <= 0:
            return it
        alpha = rz / pap
        r = r - alpha * ap
        z = precond(r[:, None])[:, 0] if precond else r
        rz, rz_old = r @ z, rz
        p = z + (rz / rz_old) * p
    return 0

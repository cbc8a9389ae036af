"""``K @ V`` and ``Kᵀ @ V`` for a big dense block ``K`` and a few columns ``V``: CG's product.

OpenBLAS's ``gemm`` with ~10 columns packs the big operand on every call and runs at ~27
GFLOP/s per core here (float32; a 5120 x 5120 tile times 12 columns: 19 ms), far from the
bandwidth a single pass over ``K`` needs. These compiled loops make that one pass:
:func:`matmul` keeps a 4 x 4 block of dot products in registers while streaming four rows of
``K`` (12 ms), :func:`matmul_t` adds eight rows of ``K``, weighted by ``V``, into each output
row (21 ms against 24 for ``K.T @ V``); float64 27 and 42 ms against 44 and 61. Sums are
reassociated (SIMD), so results differ from BLAS's by rounding only. Other shapes and mixed
dtypes go to BLAS.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Widest ``V`` the compiled loops take; wider blocks (a sketch ``K Ω``) are BLAS's forte.
MAX_COLUMNS = 32


@njit(fastmath=True, cache=True, nogil=True)
def _rows_dot(K, VT, out):  # pragma: no cover - compiled
    """``out[r, q] = Σ_c K[r, c] VT[q, c]`` for rows in blocks of 4 (``len(VT) % 4 == 0``)."""
    R, C = K.shape
    Q = VT.shape[0]
    z = K.dtype.type(0)
    for i in range(0, R - 3, 4):
        for q in range(0, Q, 4):
            a00 = z; a01 = z; a02 = z; a03 = z  # noqa: E702
            a10 = z; a11 = z; a12 = z; a13 = z  # noqa: E702
            a20 = z; a21 = z; a22 = z; a23 = z  # noqa: E702
            a30 = z; a31 = z; a32 = z; a33 = z  # noqa: E702
            for j in range(C):
                v0 = VT[q, j]
                v1 = VT[q + 1, j]
                v2 = VT[q + 2, j]
                v3 = VT[q + 3, j]
                k = K[i, j]
                a00 += k * v0; a01 += k * v1; a02 += k * v2; a03 += k * v3  # noqa: E702
                k = K[i + 1, j]
                a10 += k * v0; a11 += k * v1; a12 += k * v2; a13 += k * v3  # noqa: E702
                k = K[i + 2, j]
                a20 += k * v0; a21 += k * v1; a22 += k * v2; a23 += k * v3  # noqa: E702
                k = K[i + 3, j]
                a30 += k * v0; a31 += k * v1; a32 += k * v2; a33 += k * v3  # noqa: E702
            out[i, q] = a00; out[i, q + 1] = a01; out[i, q + 2] = a02; out[i, q + 3] = a03  # noqa: E702
            out[i + 1, q] = a10; out[i + 1, q + 1] = a11  # noqa: E702
            out[i + 1, q + 2] = a12; out[i + 1, q + 3] = a13  # noqa: E702
            out[i + 2, q] = a20; out[i + 2, q + 1] = a21  # noqa: E702
            out[i + 2, q + 2] = a22; out[i + 2, q + 3] = a23  # noqa: E702
            out[i + 3, q] = a30; out[i + 3, q + 1] = a31  # noqa: E702
            out[i + 3, q + 2] = a32; out[i + 3, q + 3] = a33  # noqa: E702


@njit(fastmath=True, cache=True, nogil=True)
def _cols_axpy(K, V, outT):  # pragma: no cover - compiled
    """``outT[q, c] = Σ_r K[r, c] V[r, q]`` for rows in blocks of 8 (the rest left out)."""
    R, C = K.shape
    Q = V.shape[1]
    outT[:] = 0
    for r in range(0, R - 7, 8):
        for q in range(Q):
            v0 = V[r, q]
            v1 = V[r + 1, q]
            v2 = V[r + 2, q]
            v3 = V[r + 3, q]
            v4 = V[r + 4, q]
            v5 = V[r + 5, q]
            v6 = V[r + 6, q]
            v7 = V[r + 7, q]
            for c in range(C):
                outT[q, c] += (v0 * K[r, c] + v1 * K[r + 1, c] + v2 * K[r + 2, c]
                               + v3 * K[r + 3, c] + v4 * K[r + 4, c] + v5 * K[r + 5, c]
                               + v6 * K[r + 6, c] + v7 * K[r + 7, c])


def _compiled(K: np.ndarray, V: np.ndarray) -> bool:
    return (K.ndim == 2 and V.ndim == 2 and K.dtype == V.dtype
            and K.dtype in (np.float32, np.float64) and K.flags.c_contiguous
            and 0 < V.shape[1] <= MAX_COLUMNS and min(K.shape) >= 8)


def matmul(K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``K @ V``: K (R, C) C-contiguous, V (C, Q), same float dtype; (R, Q) of that dtype."""
    if not _compiled(K, V):
        return K @ V
    R, Q = K.shape[0], V.shape[1]
    q4 = -(-Q // 4) * 4
    VT = np.zeros((q4, K.shape[1]), K.dtype)
    VT[:Q] = V.T
    out = np.empty((R, q4), K.dtype)
    _rows_dot(K, VT, out)
    r4 = R - R % 4
    if r4 < R:
        out[r4:, :Q] = K[r4:] @ V
    return out[:, :Q]


def matmul_t(K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``K.T @ V``: K (R, C) C-contiguous, V (R, Q), same float dtype; (C, Q)."""
    if not _compiled(K, V):
        return K.T @ V
    V = np.ascontiguousarray(V)
    outT = np.empty((V.shape[1], K.shape[1]), K.dtype)
    _cols_axpy(K, V, outT)
    r8 = K.shape[0] - K.shape[0] % 8
    out = outT.T
    if r8 < K.shape[0]:
        out += K[r8:].T @ V[r8:]
    return out

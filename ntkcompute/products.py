"""``K @ V`` and ``Kᵀ @ V`` for a big dense block ``K`` and a few columns ``V`` (CG's
product), and a blocked transposed copy (a symmetric Gram's mirror blocks).

OpenBLAS's ``gemm`` with ~10 columns packs the big operand on every call and runs at ~27
GFLOP/s per core here (float32; a 5120 x 5120 tile times 12 columns: 19 ms), far from the
bandwidth a single pass over ``K`` needs. These compiled loops make that one pass:
:func:`matmul` keeps a 4 x 4 block of dot products in registers while streaming four rows of
``K`` (12 ms), :func:`matmul_t` adds eight rows of ``K``, weighted by ``V``, into each output
row (21 ms against 24 for ``K.T @ V``); float64 27 and 42 ms against 44 and 61.
:func:`matmul_sym` gives both ``K @ V`` and ``Kᵀ @ W`` in one pass (an off-diagonal tile of a
symmetric Gram stands for its mirror too): 19 ms float32 against 31 for the two passes,
37 against 61 float64. Sums are reassociated (SIMD), so results differ from BLAS's by
rounding only. A float32 K with float64 V is multiplied in float64 without a copy. Other
shapes and dtypes go to BLAS.
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
    z = out.dtype.type(0)
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


@njit(fastmath=True, cache=True, nogil=True)
def _rows_dot_and_axpy(K, VT, WT, out, outT):  # pragma: no cover - compiled
    """``out[r, q] = Σ_c K[r, c] VT[q, c]`` and ``outT[q, c] += Σ_r K[r, c] WT[q, r]`` in one
    pass over four rows of K at a time (``len(VT) % 4 == 0``; rows past ``R - R % 4`` left
    out)."""
    R, C = K.shape
    Q = VT.shape[0]
    z = out.dtype.type(0)
    for i in range(0, R - 3, 4):
        k0r = K[i]
        k1r = K[i + 1]
        k2r = K[i + 2]
        k3r = K[i + 3]
        for q in range(0, Q, 4):
            a00 = z; a01 = z; a02 = z; a03 = z  # noqa: E702
            a10 = z; a11 = z; a12 = z; a13 = z  # noqa: E702
            a20 = z; a21 = z; a22 = z; a23 = z  # noqa: E702
            a30 = z; a31 = z; a32 = z; a33 = z  # noqa: E702
            w00 = WT[q, i]; w01 = WT[q, i + 1]; w02 = WT[q, i + 2]; w03 = WT[q, i + 3]  # noqa: E702
            w10 = WT[q + 1, i]; w11 = WT[q + 1, i + 1]  # noqa: E702
            w12 = WT[q + 1, i + 2]; w13 = WT[q + 1, i + 3]  # noqa: E702
            w20 = WT[q + 2, i]; w21 = WT[q + 2, i + 1]  # noqa: E702
            w22 = WT[q + 2, i + 2]; w23 = WT[q + 2, i + 3]  # noqa: E702
            w30 = WT[q + 3, i]; w31 = WT[q + 3, i + 1]  # noqa: E702
            w32 = WT[q + 3, i + 2]; w33 = WT[q + 3, i + 3]  # noqa: E702
            v0r = VT[q]
            v1r = VT[q + 1]
            v2r = VT[q + 2]
            v3r = VT[q + 3]
            o0 = outT[q]
            o1 = outT[q + 1]
            o2 = outT[q + 2]
            o3 = outT[q + 3]
            for j in range(C):
                k0 = k0r[j]
                k1 = k1r[j]
                k2 = k2r[j]
                k3 = k3r[j]
                v0 = v0r[j]
                v1 = v1r[j]
                v2 = v2r[j]
                v3 = v3r[j]
                a00 += k0 * v0; a01 += k0 * v1; a02 += k0 * v2; a03 += k0 * v3  # noqa: E702
                a10 += k1 * v0; a11 += k1 * v1; a12 += k1 * v2; a13 += k1 * v3  # noqa: E702
                a20 += k2 * v0; a21 += k2 * v1; a22 += k2 * v2; a23 += k2 * v3  # noqa: E702
                a30 += k3 * v0; a31 += k3 * v1; a32 += k3 * v2; a33 += k3 * v3  # noqa: E702
                o0[j] += w00 * k0 + w01 * k1 + w02 * k2 + w03 * k3
                o1[j] += w10 * k0 + w11 * k1 + w12 * k2 + w13 * k3
                o2[j] += w20 * k0 + w21 * k1 + w22 * k2 + w23 * k3
                o3[j] += w30 * k0 + w31 * k1 + w32 * k2 + w33 * k3
            out[i, q] = a00; out[i, q + 1] = a01; out[i, q + 2] = a02; out[i, q + 3] = a03  # noqa: E702
            out[i + 1, q] = a10; out[i + 1, q + 1] = a11  # noqa: E702
            out[i + 1, q + 2] = a12; out[i + 1, q + 3] = a13  # noqa: E702
            out[i + 2, q] = a20; out[i + 2, q + 1] = a21  # noqa: E702
            out[i + 2, q + 2] = a22; out[i + 2, q + 3] = a23  # noqa: E702
            out[i + 3, q] = a30; out[i + 3, q + 1] = a31  # noqa: E702
            out[i + 3, q + 2] = a32; out[i + 3, q + 3] = a33  # noqa: E702


#: (K, V) dtypes the loops take; the result has V's dtype. A float32 K with float64 V
#: multiplies in float64 (each K entry widened in registers): half the bytes of a float64 K,
#: no converted copy.
_DTYPES = {(np.dtype(np.float32), np.dtype(np.float32)), (np.dtype(np.float64),) * 2,
           (np.dtype(np.float32), np.dtype(np.float64))}


def compiled(K: np.ndarray, V: np.ndarray) -> bool:
    """Whether ``K @ V`` runs the compiled loops (else BLAS)."""
    return (K.ndim == 2 and V.ndim == 2 and (K.dtype, V.dtype) in _DTYPES
            and K.flags.c_contiguous
            and 0 < V.shape[1] <= MAX_COLUMNS and min(K.shape) >= 8)


def matmul(K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``K @ V``: K (R, C) C-contiguous, V (C, Q) of K's float dtype (or float64 for a
    float32 K); (R, Q) of V's dtype."""
    if not compiled(K, V):
        return K @ V
    R, Q = K.shape[0], V.shape[1]
    q4 = -(-Q // 4) * 4
    out = np.empty((R, q4), V.dtype)
    _rows_dot(K, _padded_t(V, q4), out)
    r4 = R - R % 4
    if r4 < R:
        out[r4:, :Q] = K[r4:] @ V
    return out[:, :Q]


def matmul_t(K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``K.T @ V``: K (R, C) C-contiguous, V (R, Q) as for :func:`matmul`; (C, Q)."""
    if not compiled(K, V):
        return K.T @ V
    V = np.ascontiguousarray(V)
    outT = np.empty((V.shape[1], K.shape[1]), V.dtype)
    _cols_axpy(K, V, outT)
    r8 = K.shape[0] - K.shape[0] % 8
    out = outT.T
    if r8 < K.shape[0]:
        out += K[r8:].T @ V[r8:]
    return out


@njit(cache=True, nogil=True)
def _transpose_into(dst, src, b):  # pragma: no cover - compiled
    R, C = src.shape
    for i0 in range(0, R, b):
        i1 = min(i0 + b, R)
        for j0 in range(0, C, b):
            j1 = min(j0 + b, C)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    dst[j, i] = src[i, j]


#: Side of the square blocks :func:`transpose_into` copies at a time (two 32 x 32 float64
#: blocks stay in L1).
TRANSPOSE_BLOCK = 32


def transpose_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src.T`` for 2-D arrays (``dst`` may be a strided view, e.g. the mirror
    block of a symmetric Gram), copied in cache-sized square blocks: NumPy's copy of a
    transposed view walks ``src`` a column at a time and took ~20% of an FC-3 Gram's time
    here. Same values, any dtype numba takes; other arrays (CuPy) are assigned directly."""
    if not (isinstance(dst, np.ndarray) and isinstance(src, np.ndarray)
            and dst.dtype == src.dtype and dst.ndim == src.ndim == 2
            and dst.shape == src.shape[::-1]):
        dst[...] = src.T
        return
    _transpose_into(dst, src, TRANSPOSE_BLOCK)


def _padded_t(V: np.ndarray, q4: int) -> np.ndarray:
    """``V.T`` (Q, m) with zero rows up to ``q4``, contiguous."""
    VT = np.zeros((q4, V.shape[0]), V.dtype)
    VT[:V.shape[1]] = V.T
    return VT


def matmul_sym(K: np.ndarray, V: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K @ V, K.T @ W)`` in one pass over K: K (R, C) C-contiguous, V (C, Q), W (R, Q)
    as for :func:`matmul`; (R, Q) and (C, Q) of V's dtype."""
    if not (compiled(K, V) and compiled(K, W) and V.shape[1] == W.shape[1]):
        return matmul(K, V), matmul_t(K, W)
    R, Q = K.shape[0], V.shape[1]
    q4 = -(-Q // 4) * 4
    out = np.empty((R, q4), V.dtype)
    outT = np.zeros((q4, K.shape[1]), V.dtype)
    _rows_dot_and_axpy(K, _padded_t(V, q4), _padded_t(W, q4), out, outT)
    r4 = R - R % 4
    rows, cols = out[:, :Q], outT[:Q].T
    if r4 < R:
        rows[r4:] = K[r4:] @ V
        cols += K[r4:].T @ W[r4:]
    return rows, cols


def warm_up(dtype: np.dtype | type, v_dtype: np.dtype | type | None = None) -> None:
    """Load (or compile) the loops for a ``dtype`` K (and ``v_dtype`` V, default the same)
    now, on a tiny block: the first call otherwise pays numba's cache lookup (~0.1-0.3 s),
    which would land in a timed product."""
    K = np.ones((8, 8), dtype)
    V = np.ones((8, 4), v_dtype or dtype)
    matmul(K, V)
    matmul_t(K, V)
    matmul_sym(K, V, V)

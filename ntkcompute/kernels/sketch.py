"""Randomized sketches for the random features (:mod:`ntkcompute.features`, whose docstring
gives the estimators): subsampled randomized Hadamard transforms, TensorSRHT, the ReLU
layer's random directions, and the conv-window patches of a feature array."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backend import array_module
from .spatial import _pad

if TYPE_CHECKING:
    from ..layers.registry import Window

#: A ReLU layer's directions are drawn as rotated cross-polytopes when its input dimension d
#: is at most this (and 2d <= m): the QR factorisations then cost O(m d²) once per map.
ORTHO_MAX_DIM = 1024


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=32)
def hadamard(b: int) -> np.ndarray:
    """The orthonormal Sylvester–Hadamard matrix of size b (a power of two), symmetric."""
    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(b)


def _block(big: int) -> int:
    """The block size b = 2^⌈log2(big)/2⌉ that :func:`_srht_rows` splits H_big into."""
    return 1 << (big.bit_length() // 2)


def _srht_macs(d: int) -> int:
    """Multiply-adds of :func:`_srht_rows` per row of dimension d."""
    big = _pow2(d)
    b = _block(big)
    return d * b + big * -(-d // b)


def _coords(rng: np.random.Generator, p: int, m: int) -> np.ndarray:
    """(m,) coordinates of [0, p) drawn without replacement, in rounds of p when m > p.

    Each is uniform on [0, p), which is all the sketches' unbiasedness asks of them; within a
    round none repeats, so every Hadamard coordinate is used ⌊m/p⌋ or ⌈m/p⌉ times and m = p
    keeps all of them (the sketch is then an isometry).
    """
    full, rest = divmod(m, p)
    parts = [rng.permutation(p) for _ in range(full)]
    if rest:
        parts.append(rng.choice(p, rest, replace=False))
    return np.concatenate(parts)


def relu_directions(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    """The (m, d) random directions G of a ReLU layer's arc-cosine features.

    When ``2d <= m`` (and d <= :data:`ORTHO_MAX_DIM`), the rows ±√d·q_i of randomly rotated
    cross-polytopes: Haar orthonormal frames (q_i) of R^d (QR of a Gaussian matrix, signs
    fixed so the frame is Haar), each row taken with its negative; otherwise i.i.d. standard
    normal rows. Every row is marginally √d times a uniform direction and relu, step are
    positively homogeneous, so E relu(g·a) relu(g·b) and E step(g·a) step(g·b) are those of
    a Gaussian g (E|g|² = d): the features stay unbiased. A full cross-polytope is a
    spherical 3-design: Σ_i relu(√d q_i·a)² + relu(-√d q_i·a)² = d|a|² and half of its steps
    fire, whatever a, so the order-1 norms and order-0 counts of a low-dimensional layer (a
    conv's first window: |F|·C coordinates) are exact instead of χ²-like.
    """
    if 2 * d > m or d > ORTHO_MAX_DIM:
        return rng.standard_normal((m, d))
    half = (m + 1) // 2
    frames = []
    for _ in range(-(-half // d)):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        frames.append((q * np.sign(np.diag(r))).T)  # rows: a Haar orthonormal frame
    rows = np.concatenate(frames)[:half] * math.sqrt(d)
    return np.concatenate([rows, -rows])[:m]


def _srht_rows(xp: Any, x: Any, signs: np.ndarray, rows: np.ndarray) -> Any:
    """``(H S x)[:, rows]`` for the rows of x (n, d): S = diag(signs) and H the orthonormal
    Walsh–Hadamard transform of size D = len(signs), x zero-padded to D.

    H_D = H_a ⊗ H_b with b = 2^⌈log2(D)/2⌉, so ``(H x)[i_a b + i_b] = Σ_j H_a[i_a, j]
    (X H_b)[j, i_b]`` for X = x as (a, b): two BLAS products, the first over only the blocks
    x fills (the zero padding is never touched), O(d·b + D·d/b) per row instead of the
    butterflies' log2(D) passes over memory.
    """
    n, d = x.shape
    big = signs.shape[0]
    b = _block(big)
    a = big // b
    used = -(-d // b)  # blocks of b coordinates that x reaches
    hb = xp.asarray(hadamard(b), dtype=x.dtype)
    ha = xp.asarray(hadamard(a)[:, :used].T, dtype=x.dtype)  # (used, a)
    xs = xp.zeros((n, used * b), dtype=x.dtype)
    xs[:, :d] = x * xp.asarray(signs[:d], dtype=x.dtype)
    y = (xs.reshape(n * used, b) @ hb).reshape(n, used, b).transpose(0, 2, 1)  # (n, b, used)
    y = (y.reshape(n * b, used) @ ha).reshape(n, b * a)  # (H x)[i_a b + i_b] at i_b a + i_a
    rows = np.asarray(rows)
    return y[:, xp.asarray((rows % b) * a + rows // b)]


@dataclass(frozen=True)
class SRHT:
    """A subsampled randomized Hadamard transform R^d → R^m; E⟨Sa, Sb⟩ = ⟨a, b⟩."""

    d: int
    m: int
    signs: np.ndarray  # (D,) ±1
    rows: np.ndarray  # (m,) in [0, D), without replacement (:func:`_coords`)

    @classmethod
    def draw(cls, rng: np.random.Generator, d: int, m: int) -> SRHT:
        p = _pow2(d)
        return cls(d, m, rng.choice([-1.0, 1.0], p), _coords(rng, p, m))

    def __call__(self, a: Any) -> Any:
        """(n, d) -> (n, m)."""
        xp = array_module(a)
        return _srht_rows(xp, a, self.signs, self.rows) * math.sqrt(self.signs.shape[0] / self.m)


@dataclass(frozen=True)
class TensorSRHT:
    """A sketch of a ⊗ b (a ∈ R^d1, b ∈ R^d2) into R^m; inner products preserved in
    expectation."""

    d1: int
    d2: int
    m: int
    signs1: np.ndarray  # (D1,) ±1
    signs2: np.ndarray  # (D2,) ±1
    rows1: np.ndarray  # (m,) in [0, D1), without replacement in rounds (:func:`_coords`)
    rows2: np.ndarray  # (m,) in [0, D2), the same, drawn independently of rows1

    @classmethod
    def draw(cls, rng: np.random.Generator, d1: int, d2: int, m: int) -> TensorSRHT:
        p1, p2 = _pow2(d1), _pow2(d2)
        return cls(d1, d2, m, rng.choice([-1.0, 1.0], p1), rng.choice([-1.0, 1.0], p2),
                   _coords(rng, p1, m), _coords(rng, p2, m))

    def __call__(self, a: Any, b: Any) -> Any:
        """(n, d1), (n, d2) -> (n, m)."""
        xp = array_module(a)
        scale = math.sqrt(self.signs1.shape[0] * self.signs2.shape[0] / self.m)
        return (_srht_rows(xp, a, self.signs1, self.rows1)
                * _srht_rows(xp, b, self.signs2, self.rows2) * scale)


def cat(xp: Any, parts: list[Any], axis: int = -1) -> Any:
    return xp.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]


def with_bias(xp: Any, a: Any, b_std: float | None) -> Any:
    if not b_std:
        return a
    return cat(xp, [a, xp.full((*a.shape[:-1], 1), b_std, dtype=a.dtype)])


def patches(xp: Any, a: Any, win: Window) -> Any:
    """(n, *S, D) -> (n, *out, |F| D): each output position's window, side by side."""
    for k, (lo, hi) in enumerate(win.pad):
        if lo or hi:
            a = _pad(xp, a, (k + 1,), (lo, hi), win.circular)
    parts = []
    for offs in itertools.product(*(range(f) for f in win.size)):
        idx = [slice(d, d + s * (o - 1) + 1, s)
               for d, s, o in zip(offs, win.strides, win.out, strict=True)]
        parts.append(a[(slice(None), *idx)])
    return cat(xp, parts)



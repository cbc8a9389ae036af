"""Nonlinearity rules: ``K' = E[φ(u) φ(v)]`` and ``Θ' = Θ · E[φ'(u) φ'(v)]``,
``(u, v) ~ N(0, [[k11, k12], [k12, k22]])``, with closed forms as in stax (Cho & Saul 2009 for
the ReLU family; Williams 1997 for erf; Tsuchida et al. 2021, arXiv 2002.08517, for GELU).

The layers (spec, dispatch, finite-width φ) are in :mod:`ntkcompute.layers.activations`.
Every function takes the cross-covariance ``k12`` and the per-position variances ``k11``,
``k22`` (broadcastable to ``k12``) and returns ``(K', dot)``; ``dot`` is ``None`` when the NTK is
not wanted.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from .state import Array

#: ``k11 k22 - k12^2`` at or below this many ulps of ``k11 k22`` is taken as rounding noise and
#: set to 0 (θ = 0 exactly). θ = atan2(sqrt(det), k12) is ill-conditioned at θ -> 0: a relative
#: error e of k12 against k11, k22 moves θ by ~e/θ (~sqrt(e) at θ = 0), and the NTK factor
#: c0 - c1 θ with it, so a snap both removes noise angles and zeroes true angles below
#: sqrt(ulps · eps). float64 keeps 32 ulps (θ < 1e-7). In float32, 32 ulps zero θ < 2e-3: an
#: NTK error of up to c1 θ = 3e-4 at such positions, 3e-6 on MNIST CNTK-V-3 and 9e-6 on
#: near-duplicates (bench/precision.py). float32 needs no snap now that both passes compute
#: k12 and k11, k22 by the same operations from the same float64-accumulated input sums
#: (inputs.py): the diagonal and duplicates give det = 0 bit for bit. 2 or 4 ulps measured
#: worse on CNTK-V-8 MNIST (NTK 3.6e-7, 6.6e-7 against 1.5e-7) and equal elsewhere but for
#: CNTK-V-3 MNIST (1.2e-7 at 2 ulps against 2.6e-7).
_SNAP_ULPS = {np.dtype(np.float32): 0, np.dtype(np.float64): 32}


def _det(xp: ModuleType, k12: Array, k11: Array, k22: Array) -> Array:
    """``max(k11 k22 - k12^2, 0)``, the covariance determinant (>= 0 up to rounding)."""
    d = k12 * k12
    xp.subtract(k11 * k22, d, out=d)
    return xp.maximum(d, 0, out=d)


def _angle(xp: ModuleType, k12: Array, k11: Array, k22: Array) -> tuple[Array, Array]:
    """``(r, θ)``, ``r = sqrt(k11 k22 - k12^2) = sqrt(k11 k22) sin θ``; θ = π/2 at zero variance."""
    prod = k11 * k22
    r2 = k12 * k12
    xp.subtract(prod, r2, out=r2)
    # k11, k22 are the small per-input arrays: checking them is cheap, a mask of prod is not.
    zero = (prod == 0) if not (bool(k11.all()) and bool(k22.all())) else None
    ulps = _SNAP_ULPS[np.dtype(k12.dtype)]
    if ulps:
        prod *= ulps * xp.finfo(k12.dtype).eps
        r2[r2 <= prod] = 0
    else:
        xp.maximum(r2, 0, out=r2)
    del prod
    r = xp.sqrt(r2, out=r2)
    theta = xp.arctan2(r, k12)
    if zero is not None:
        theta[zero] = math.pi / 2
    return r, theta


def ab_relu(xp, a: float, b: float, k12, k11, k22, want_dot):
    """``φ(x) = a min(x, 0) + b max(x, 0)``; ReLU is (0, 1), Abs (-1, 1), LeakyRelu (α, 1)."""
    c0 = (a * a + b * b) / 2
    c1 = (a - b) ** 2 / (2 * math.pi)
    r, theta = _angle(xp, k12, k11, k22)
    dot = theta
    dot *= -c1
    dot += c0
    nngp = r
    nngp *= c1
    nngp += dot * k12
    return nngp, (dot if want_dot else None)


def erf(xp, a: float, b: float, c: float, k12, k11, k22, want_dot):
    """``φ(x) = a erf(b x) + c``: ``K' = (2a²/π) atan2(2b² k12, sqrt(p)) + c²``,
    ``dot = 4a²b² / (π sqrt(p))``, ``p = (1 + 2b² k11)(1 + 2b² k22) - 4b⁴ k12²``."""
    b2 = b * b
    # p = 1 + 2b² (k11 + k22) + 4b⁴ det, a sum of terms >= 0. The product form subtracts two
    # terms of size 4b⁴k², so its rounding noise, eps·4b⁴k², is there even where det = 0 (the
    # diagonal, duplicates): NTK error 7e-5 at b = 30 on MNIST (3e-7 this way).
    p = _det(xp, k12, k11, k22)
    p *= 4 * b2 * b2
    p += 2 * b2 * (k11 + k22)
    p += 1
    r = xp.sqrt(p, out=p)
    nngp = xp.arctan2(2 * b2 * k12, r)
    nngp *= a * a * 2 / math.pi
    if c:
        nngp += c * c
    dot = None
    if want_dot:
        dot = (a * a * b2 * 4 / math.pi) / r
    return nngp, dot


def gelu(xp, k12, k11, k22, want_dot):
    """Exact GELU ``x Φ(x)``."""
    p1 = (1 + k11) * (1 + k22)
    pi12 = k11 * k22
    # delta² = p1 - k12² = 1 + k11 + k22 + det, terms >= 0: see erf.
    delta = _det(xp, k12, k11, k22)
    delta += k11 + k22
    delta += 1
    delta = xp.sqrt(delta, out=delta)
    phi = xp.arctan2(k12, delta)
    nngp = k12 / 4 + ((k12 * k12 + pi12 * delta * delta) / (p1 * delta) + k12 * phi) / (2 * math.pi)
    dot = None
    if want_dot:
        dot = 0.25 + phi / (2 * math.pi) + k12 / (2 * math.pi * delta) * (
            1 / (delta * delta) + (1 - pi12) / p1 + 1)
    return nngp, dot


def sin(xp, a: float, b: float, c: float, k12, k11, k22, want_dot):
    """``φ(x) = a sin(b x + c)``."""
    b2 = b * b
    half = -(k11 + k22) / 2
    s1 = xp.exp(b2 * (half + k12))
    s2 = xp.exp(b2 * (half - k12))
    if c:
        s2 *= math.cos(2 * c)
    nngp = (a * a / 2) * (s1 - s2)
    dot = (a * a * b2 / 2) * (s1 + s2) if want_dot else None
    return nngp, dot


def exp(xp, a: float, b: float, k12, k11, k22, want_dot):
    """``φ(x) = a exp(b x)``: ``E = a² exp(b² (k11 + k22 + 2 k12) / 2)`` (log-normal moments);
    ``φ' = b φ``, so ``dot = b² K'``."""
    nngp = xp.exp((b * b / 2) * (k11 + k22 + 2 * k12))
    nngp *= a * a
    return nngp, ((b * b) * nngp if want_dot else None)


def gaussian(xp, a: float, b: float, k12, k11, k22, want_dot):
    """``φ(x) = a exp(b x²)``, b <= 0. With ``D = det(I - 2bΣ) = (1 - 2b k11)(1 - 2b k22) -
    4b² k12²``: ``E φ(u)φ(v) = a² D^-1/2`` and, as ``E[uv e^{b(u²+v²)}] = k12 D^-3/2``,
    ``E φ'(u)φ'(v) = 4a²b² k12 D^-3/2``."""
    # D = 1 - 2b (k11 + k22) + 4b² det, terms >= 0 (b <= 0): see erf.
    d = _det(xp, k12, k11, k22)
    d *= 4 * b * b
    d -= 2 * b * (k11 + k22)
    d += 1
    nngp = (a * a) / xp.sqrt(d)
    return nngp, ((4 * b * b) * k12 * nngp / d if want_dot else None)


def sign(xp, k12, k11, k22, want_dot):
    """``φ(x) = sign(x)``: ``K' = 1 - 2θ/π``; its derivative is 0 almost everywhere."""
    _, theta = _angle(xp, k12, k11, k22)
    nngp = theta
    nngp *= -2 / math.pi
    nngp += 1.0
    return nngp, (xp.zeros_like(nngp) if want_dot else None)


def apply(xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
          want_dot: bool) -> tuple[Array, Array | None]:
    """``(K', dot)`` of a nonlinearity spec (its registered rule's :meth:`dual`)."""
    from ..layers import rule_of
    from ..layers.activations import Activation

    rule = rule_of(layer)
    if not isinstance(rule, Activation):
        raise TypeError(f"not a nonlinearity: {layer!r}")
    return rule.dual(xp, layer, k12, k11, k22, want_dot)

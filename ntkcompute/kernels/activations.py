"""Nonlinearity rules: ``K' = E[φ(u) φ(v)]`` and ``Θ' = Θ · E[φ'(u) φ'(v)]``,
``(u, v) ~ N(0, [[k11, k12], [k12, k22]])``, with closed forms as in stax (Cho & Saul 2009 for
the ReLU family; Williams 1997 for erf; Tsuchida et al. 2021, arXiv 2002.08517, for GELU).

Every function takes the cross-covariance ``k12`` and the per-position variances ``k11``,
``k22`` (broadcastable to ``k12``) and returns ``(K', dot)``; ``dot`` is ``None`` when the NTK is
not wanted.
"""

from __future__ import annotations

import math
from types import ModuleType

from .. import spec
from .quadrature import gauss_hermite
from .state import Array

# k11 k22 - k12^2 below this many ulps of k11 k22 is rounding noise: such pairs (the
# diagonal, duplicates, constant patches) get theta = 0 exactly instead of theta ~ sqrt(eps).
# The snap also zeroes true angles below sqrt(ulps * eps), and the NTK factor c0 - c1 theta
# moves by c1 theta there: 32 float32 ulps is theta < 2e-3, an NTK error of up to 3e-4 at those
# positions (5e-6 on MNIST CNTK-V-8). The passes compute k12 and k11, k22 by the same
# operations (inputs.py accumulates in float64 so that BLAS and sum() agree), so what remains
# is ~1 ulp: float32 snaps at 2 ulps (theta < 5e-4), the value that minimised the error on
# MNIST and CIFAR CNTKs (bench/precision.py). float64 keeps its 32 (theta < 1e-7).
_SNAP_ULPS = {4: 2, 8: 32}


def _angle(xp: ModuleType, k12: Array, k11: Array, k22: Array) -> tuple[Array, Array]:
    """``(r, θ)``, ``r = sqrt(k11 k22 - k12^2) = sqrt(k11 k22) sin θ``; θ = π/2 at zero variance."""
    prod = k11 * k22
    r2 = k12 * k12
    xp.subtract(prod, r2, out=r2)
    # k11, k22 are the small per-input arrays: checking them is cheap, a mask of prod is not.
    zero = (prod == 0) if not (bool(k11.all()) and bool(k22.all())) else None
    prod *= _SNAP_ULPS[k12.dtype.itemsize] * xp.finfo(k12.dtype).eps
    r2[r2 <= prod] = 0
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
    # K' = c1 r + (c0 - c1 θ) k12 = c0 k12 + c1 (r - θ k12), r - θ k12 = s (sin θ - θ cos θ)
    # ≈ s θ³/3: as θ -> 0 the rounding error of K' is then that of c0 k12 alone (plus
    # eps·θ·s), the same rounding the self pass makes for c0 k11, instead of eps·k12 from
    # rounding c0 - c1 θ first. Near-parallel pairs (duplicates, constant patches) so keep
    # k11 k22 - k12^2 of the next layer free of rounding noise.
    t = theta * k12
    nngp = r
    nngp -= t
    nngp *= c1
    xp.multiply(k12, c0, out=t)
    nngp += t
    dot = theta
    dot *= -c1
    dot += c0
    return nngp, (dot if want_dot else None)


def erf(xp, a: float, b: float, c: float, k12, k11, k22, want_dot):
    """``φ(x) = a erf(b x) + c``."""
    b2 = b * b
    p = (1 + 2 * b2 * k11) * (1 + 2 * b2 * k22)
    p -= 4 * b2 * b2 * k12 * k12
    r = xp.sqrt(xp.maximum(p, 0.0, out=p), out=p)
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
    delta = xp.sqrt(xp.maximum(p1 - k12 * k12, 0.0))
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
    d = (1 - 2 * b * k11) * (1 - 2 * b * k22)
    d -= 4 * b * b * k12 * k12
    nngp = (a * a) / xp.sqrt(d)
    return nngp, ((4 * b * b) * k12 * nngp / d if want_dot else None)


def sign(xp, k12, k11, k22, want_dot):
    """``φ(x) = sign(x)``: ``K' = 1 - 2θ/π``; its derivative is 0 almost everywhere."""
    _, theta = _angle(xp, k12, k11, k22)
    nngp = theta
    nngp *= -2 / math.pi
    nngp += 1.0
    return nngp, (xp.zeros_like(nngp) if want_dot else None)


def apply(xp: ModuleType, layer, k12: Array, k11: Array, k22: Array,
          want_dot: bool) -> tuple[Array, Array | None]:
    """Dispatch on the layer spec."""
    if isinstance(layer, spec.Relu):
        return ab_relu(xp, 0.0, 1.0, k12, k11, k22, want_dot)
    if isinstance(layer, spec.LeakyRelu):
        return ab_relu(xp, layer.alpha, 1.0, k12, k11, k22, want_dot)
    if isinstance(layer, spec.ABRelu):
        return ab_relu(xp, layer.a, layer.b, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Abs):
        return ab_relu(xp, -1.0, 1.0, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Erf):
        return erf(xp, layer.a, layer.b, layer.c, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Gelu):
        return gelu(xp, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Sin):
        return sin(xp, layer.a, layer.b, layer.c, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Cos):  # cos(t) = sin(t + π/2)
        return sin(xp, layer.a, layer.b, layer.c + math.pi / 2, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Rbf):
        return sin(xp, math.sqrt(2), math.sqrt(2 * layer.gamma), math.pi / 4, k12, k11, k22,
                   want_dot)
    if isinstance(layer, spec.Exp):
        return exp(xp, layer.a, layer.b, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Gaussian):
        return gaussian(xp, layer.a, layer.b, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Sign):
        return sign(xp, k12, k11, k22, want_dot)
    if isinstance(layer, spec.Elementwise):
        return gauss_hermite(xp, layer.fn, layer.deg, k12, k11, k22, want_dot)
    raise TypeError(f"not a nonlinearity: {layer!r}")

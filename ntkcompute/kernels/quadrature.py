"""Activations without a closed-form kernel: Gauss–Hermite quadrature (stax.ElementwiseNumerical).

``E[f(u) f(v)]`` for ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` by the ``deg x deg``-point
product rule after the Cholesky change of variables ``u = sqrt(2 q11) x``,
``v = q12 / sqrt(q11 / 2) x + sqrt(2 (q22 - q12^2 / q11)) y`` (weight ``exp(-x^2 - y^2) / pi``).
The NTK factor is the same integral of ``f'(u) f'(v)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from types import ModuleType

import numpy as np

from ..backend import special
from .state import Array

Fn = Callable[[ModuleType, Array], Array]


def _sigmoid(xp, x):
    return 0.5 * (xp.tanh(0.5 * x) + 1.0)


def _gelu_tanh(xp, x):
    return 0.5 * x * (1.0 + xp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _d_gelu_tanh(xp, x):
    c = math.sqrt(2 / math.pi)
    t = xp.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)


def _phi(xp, x):  # standard normal cdf
    return 0.5 * (1.0 + special(xp).erf(x / math.sqrt(2.0)))


#: name -> (f, f')
FUNCTIONS: dict[str, tuple[Fn, Fn]] = {
    "tanh": (lambda xp, x: xp.tanh(x), lambda xp, x: 1.0 - xp.tanh(x) ** 2),
    "sigmoid": (_sigmoid, lambda xp, x: _sigmoid(xp, x) * (1.0 - _sigmoid(xp, x))),
    "softplus": (lambda xp, x: xp.logaddexp(0.0, x), _sigmoid),
    "silu": (lambda xp, x: x * _sigmoid(xp, x),
             lambda xp, x: _sigmoid(xp, x) * (1.0 + x * (1.0 - _sigmoid(xp, x)))),
    "elu": (lambda xp, x: xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0.0))),
            lambda xp, x: xp.where(x > 0, 1.0, xp.exp(xp.minimum(x, 0.0)))),
    "gelu_tanh": (_gelu_tanh, _d_gelu_tanh),
    "gelu": (lambda xp, x: x * _phi(xp, x),
             lambda xp, x: _phi(xp, x) + x * xp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)),
    "relu": (lambda xp, x: xp.maximum(x, 0.0), lambda xp, x: (x > 0).astype(x.dtype)),
    "erf": (lambda xp, x: special(xp).erf(x),
            lambda xp, x: (2 / math.sqrt(math.pi)) * xp.exp(-x * x)),
    "sin": (lambda xp, x: xp.sin(x), lambda xp, x: xp.cos(x)),
}


@lru_cache(maxsize=32)
def hermite_rule(deg: int) -> tuple[np.ndarray, np.ndarray]:
    """Physicists' Gauss–Hermite nodes and weights (weight ``exp(-x^2)``)."""
    return np.polynomial.hermite.hermgauss(deg)


def gauss_hermite(xp: ModuleType, fn: str | tuple[Fn, Fn], deg: int, k12: Array, k11: Array,
                  k22: Array, want_dot: bool) -> tuple[Array, Array | None]:
    """``(E f(u) f(v), E f'(u) f'(v) or None)``; ``fn`` a name of :data:`FUNCTIONS` or a pair
    ``(f, f')`` of functions ``(xp, x) -> array``."""
    f, df = FUNCTIONS[fn] if isinstance(fn, str) else fn
    nodes, weights = hermite_rule(deg)
    tiny = 1e-30
    c1 = k12 / xp.sqrt(xp.maximum(k11 / 2, tiny))
    c2 = xp.sqrt(xp.maximum(2 * (k22 - k12 * k12 / xp.maximum(k11, tiny)), 0.0))
    su = xp.sqrt(2 * k11)
    shape = np.broadcast_shapes(k12.shape, k11.shape, k22.shape)
    nngp = xp.zeros(shape, dtype=k12.dtype)
    dot = xp.zeros_like(nngp) if want_dot else None
    # the inner nodes in chunks, each one array op over (chunk, *shape): ≤ _CHUNK floats
    step = max(1, min(deg, _CHUNK // max(1, math.prod(shape))))
    ys = [(xp.asarray(nodes[i:i + step], dtype=k12.dtype).reshape((-1,) + (1,) * len(shape)),
           xp.asarray(weights[i:i + step], dtype=k12.dtype).reshape((-1,) + (1,) * len(shape)))
          for i in range(0, deg, step)]
    for xk, wk in zip(nodes, weights, strict=True):
        u = su * xk
        base = c1 * xk
        inner = xp.zeros_like(nngp)
        inner_d = xp.zeros_like(nngp) if want_dot else None
        for yl, wl in ys:
            v = xp.broadcast_to(base + c2 * yl, (yl.shape[0], *shape))
            inner += (wl * f(xp, v)).sum(axis=0)
            if want_dot:
                inner_d += (wl * df(xp, v)).sum(axis=0)
        nngp += (wk / math.pi) * f(xp, xp.broadcast_to(u, shape)) * inner
        if want_dot:
            dot += (wk / math.pi) * df(xp, xp.broadcast_to(u, shape)) * inner_d
    return nngp, dot


#: most floats one vectorised step of the inner quadrature sum evaluates at once
_CHUNK = 1 << 20

"""Nonlinearities: spec, kernel rule, finite-width φ / φ', and ReLU's random features.

Kernel rules ``K' = E[φ(u) φ(v)]`` and ``Θ' = Θ · E[φ'(u) φ'(v)]``,
``(u, v) ~ N(0, [[k11, k12], [k12, k22]])``; the closed forms (and Gauss–Hermite quadrature
for ``elementwise``) are in :mod:`ntkcompute.kernels.activations`. Every nonlinearity needs
Gaussian pre-activations and the per-position variances of its two inputs.

ReLU's random features: with one random matrix G (m × dim ψ), the same at every position (a
random conv), ``ψ ← relu(Gψ)/sqrt(m)`` (arc-cosine features of order 1) and
``φ̇ = step(Gψ)/sqrt(m)`` (order 0); ``ξ ← TensorSRHT(ξ, φ̇)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ..kernels import activations as dual
from ..kernels.quadrature import FUNCTIONS, gauss_hermite
from ..kernels.sketch import TensorSRHT, _pow2, _srht_macs, relu_directions
from ..kernels.state import expand_var
from .registry import FeatureDims, LayerRule, _Layer, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan

#: Activations computed by Gauss–Hermite quadrature (``stax.ElementwiseNumerical``).
ELEMENTWISE_FNS = (
    "tanh", "sigmoid", "softplus", "silu", "elu", "gelu", "gelu_tanh", "relu", "erf", "sin",
)

Fn = Callable[[np.ndarray], np.ndarray]


class Relu(_Layer):
    type: Literal["relu"] = "relu"


class LeakyRelu(_Layer):
    type: Literal["leaky_relu"] = "leaky_relu"
    alpha: float = 0.01

    @field_validator("alpha")
    @classmethod
    def _a(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("alpha must be finite")
        return v


class ABRelu(_Layer):
    """``a * min(x, 0) + b * max(x, 0)`` (stax.ABRelu)."""

    type: Literal["ab_relu"] = "ab_relu"
    a: float
    b: float


class ABReluStax(ABRelu):
    """``abrelu``: the same layer under stax's spelling of the name."""

    type: Literal["abrelu"] = "abrelu"  # type: ignore[assignment]


class Abs(_Layer):
    type: Literal["abs"] = "abs"


class _Scaled(_Layer):
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0


class Erf(_Scaled):
    """``a * erf(b * x) + c``."""

    type: Literal["erf"] = "erf"


class Gelu(_Layer):
    """Exact GELU ``x * Phi(x)`` (stax.Gelu(approximate=False))."""

    type: Literal["gelu"] = "gelu"


class Sin(_Scaled):
    """``a * sin(b * x + c)``."""

    type: Literal["sin"] = "sin"


class Cos(_Scaled):
    """``a * cos(b * x + c)`` (stax.Cos)."""

    type: Literal["cos"] = "cos"


class Rbf(_Layer):
    """``sqrt(2) * sin(sqrt(2 gamma) * x + pi/4)`` (stax.Rbf): on unit-variance inputs its
    NNGP is the RBF kernel ``exp(-gamma |x - x'|^2)``."""

    type: Literal["rbf"] = "rbf"
    gamma: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class Exp(_Layer):
    """``a * exp(b * x)`` (stax.Exp)."""

    type: Literal["exp"] = "exp"
    a: float = Field(default=1.0, allow_inf_nan=False)
    b: float = Field(default=1.0, allow_inf_nan=False)


class Gaussian(_Layer):
    """``a * exp(b * x^2)`` (stax.Gaussian); ``b <= 0``, else its moments are infinite."""

    type: Literal["gaussian"] = "gaussian"
    a: float = Field(default=1.0, allow_inf_nan=False)
    b: float = Field(default=-1.0, le=0, allow_inf_nan=False)


class Sign(_Layer):
    type: Literal["sign"] = "sign"


class Elementwise(_Layer):
    """Any listed activation, kernel by ``deg``-point Gauss–Hermite quadrature per axis."""

    type: Literal["elementwise"] = "elementwise"
    fn: Literal[ELEMENTWISE_FNS]  # type: ignore[valid-type]
    deg: int = Field(default=25, ge=2, le=200)


class Activation(LayerRule):
    """A nonlinearity φ: subclasses give its Gaussian expectations (:meth:`dual`) and
    ``(φ, φ')`` on NumPy arrays (:meth:`fn`)."""

    gaussian_input = True
    nonlinear = True

    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        """``(E φ(u)φ(v), E φ'(u)φ'(v) or None)`` for covariances broadcastable to ``k12``."""
        raise NotImplementedError

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        raise NotImplementedError

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        k11 = expand_var(xp, va, st.nb, 0, st.full)
        k22 = expand_var(xp, vb, st.nb, 1, st.full)
        nngp, dot = self.dual(xp, lp.layer, st.nngp, k11, k22, st.ntk is not None)
        ntk = None
        if st.ntk is not None:
            ntk = st.ntk
            ntk *= dot
        return st.with_(nngp=nngp, ntk=ntk)

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        f, df = self.fn(lp.layer)
        return f(a), df(a)  # the tape holds φ'(a)

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        return d * data


def _ab(a: float, b: float) -> tuple[Fn, Fn]:
    return (lambda z: np.where(z > 0, b * z, a * z),
            lambda z: np.where(z > 0, b, a).astype(z.dtype))


def fused_relu(layer: Any, dtype: Any) -> tuple[float, float, float] | None:
    """``(snap, c0, c1)`` of ``fused._ab`` for a ReLU-family layer (``ab_relu``'s constants),
    None for any other layer."""
    from . import rule_of

    rule = rule_of(layer)
    if not isinstance(rule, _ABFamily):
        return None
    a, b = rule.slopes(layer)
    dt = np.dtype(dtype)
    return (dual._SNAP_ULPS[dt] * float(np.finfo(dt).eps), (a * a + b * b) / 2,
            (a - b) ** 2 / (2 * math.pi))


class _ABFamily(Activation):
    """``a min(x, 0) + b max(x, 0)``: arc-cosine closed form (Cho & Saul 2009)."""

    def slopes(self, layer: Any) -> tuple[float, float]:
        return layer.a, layer.b

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        from ..kernels import fused  # numba loads on the first kernel, not on import

        how = fused_relu(lp.layer, st.nngp.dtype) if fused.enabled(xp) else None
        out = None if how is None else fused.activation(st, *how, va, vb)
        return out if out is not None else super().kernel(lp, st, xp, va, vb)

    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return dual.ab_relu(xp, *self.slopes(layer), k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        return _ab(*self.slopes(layer))


@register(Relu)
class ReluRule(_ABFamily):
    float32_verified = True
    has_features = True

    def slopes(self, layer: Any) -> tuple[float, float]:
        return 0.0, 1.0

    def feature_draws(self, lp: LayerPlan, rng: Any, m: int, dims: FeatureDims
                      ) -> tuple[Any, ...]:
        p_in = dims.p_in
        draws = (relu_directions(rng, m, dims.psi), TensorSRHT.draw(rng, dims.xi, m, m))
        # the sketch of ξ (the larger input): its blocks, both products, the sampled rows
        dims.row = max(dims.row, p_in * (3 * dims.xi + 2 * _pow2(dims.xi) + 3 * m))
        dims.flops += 2 * p_in * (m * dims.psi + _srht_macs(dims.xi) + _srht_macs(m))
        dims.psi, dims.xi = m, m
        return draws

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        gauss, sketch = draws
        m = gauss.shape[0]
        lead = psi.shape[:-1]
        # one (n·P, d) x (d, m) product: an N-d @ runs as n·P/rows small ones
        z = psi.reshape(-1, psi.shape[-1]) @ xp.asarray(gauss.T, dtype=psi.dtype)
        scale = 1.0 / math.sqrt(m)
        xi = sketch(xi.reshape(-1, xi.shape[-1]), (z > 0).astype(psi.dtype) * scale)
        return (xp.maximum(z, 0) * scale).reshape(*lead, m), xi.reshape(*lead, m)


@register(LeakyRelu)
class LeakyReluRule(_ABFamily):
    def slopes(self, layer: Any) -> tuple[float, float]:
        return layer.alpha, 1.0


@register(ABRelu)
class ABReluRule(_ABFamily):
    pass


@register(ABReluStax)
class ABReluStaxRule(_ABFamily):
    pass


@register(Abs)
class AbsRule(_ABFamily):
    def slopes(self, layer: Any) -> tuple[float, float]:
        return -1.0, 1.0


@register(Erf)
class ErfRule(Activation):
    float32_verified = True

    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return dual.erf(xp, layer.a, layer.b, layer.c, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        f, df = FUNCTIONS["erf"]
        return (lambda z: layer.a * f(np, layer.b * z) + layer.c,
                lambda z: layer.a * layer.b * df(np, layer.b * z))


@register(Gelu)
class GeluRule(Activation):
    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return dual.gelu(xp, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        f, df = FUNCTIONS["gelu"]
        return (lambda z: f(np, z), lambda z: df(np, z))


@register(Sin)
class SinRule(Activation):
    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return dual.sin(xp, layer.a, layer.b, layer.c, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        return (lambda z: layer.a * np.sin(layer.b * z + layer.c),
                lambda z: layer.a * layer.b * np.cos(layer.b * z + layer.c))


@register(Cos)
class CosRule(Activation):
    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        # cos(t) = sin(t + π/2)
        return dual.sin(xp, layer.a, layer.b, layer.c + math.pi / 2, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        return (lambda z: layer.a * np.cos(layer.b * z + layer.c),
                lambda z: -layer.a * layer.b * np.sin(layer.b * z + layer.c))


@register(Rbf)
class RbfRule(Activation):
    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return dual.sin(xp, math.sqrt(2), math.sqrt(2 * layer.gamma), math.pi / 4, k12, k11,
                        k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        w = np.sqrt(2 * layer.gamma)
        return (lambda z: np.sqrt(2) * np.sin(w * z + np.pi / 4),
                lambda z: np.sqrt(2) * w * np.cos(w * z + np.pi / 4))


@register(Exp)
class ExpRule(Activation):
    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return dual.exp(xp, layer.a, layer.b, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        return (lambda z: layer.a * np.exp(layer.b * z),
                lambda z: layer.a * layer.b * np.exp(layer.b * z))


@register(Gaussian)
class GaussianRule(Activation):
    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return dual.gaussian(xp, layer.a, layer.b, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        return (lambda z: layer.a * np.exp(layer.b * z * z),
                lambda z: 2 * layer.a * layer.b * z * np.exp(layer.b * z * z))


@register(Sign)
class SignRule(Activation):
    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return dual.sign(xp, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        return np.sign, np.zeros_like


@register(Elementwise)
class ElementwiseRule(Activation):
    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        return gauss_hermite(xp, layer.fn, layer.deg, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        f, df = FUNCTIONS[layer.fn]
        return (lambda z: f(np, z), lambda z: df(np, z))

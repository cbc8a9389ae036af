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
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_serializer, field_validator, model_serializer

from ..backend import to_numpy
from ..errors import InputError
from ..kernels import activations as dual
from ..kernels import expression
from ..kernels.expression import ExpressionError
from ..kernels.quadrature import FUNCTIONS, gauss_hermite
from ..kernels.sketch import TensorSRHT, _pow2, _srht_macs, relu_directions
from ..kernels.state import expand_var
from .registry import FeatureDims, LayerRule, _Layer, layer_index, register

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


@dataclass(frozen=True, eq=False)
class PyFunctions:
    """An activation given as Python functions in-process (``stax.Elementwise`` /
    ``stax.ElementwiseNumerical`` with a callable that is neither a named function nor
    traceable to an expression). It cannot travel in a JSON spec.

    ``fn``, ``df``: φ and φ' on NumPy arrays (``df`` None: φ' by a finite difference, see
    :func:`finite_difference`); ``nngp_fn``, ``d_nngp_fn``: ``(cov12, var1, var2) ->
    E φ(u)φ(v)`` and ``E φ'(u)φ'(v)`` in closed form (``nngp_fn`` None: Gauss–Hermite
    quadrature of ``fn``; ``d_nngp_fn`` None: the complex-step derivative of ``nngp_fn``
    in ``cov12``)."""

    fn: Callable[[np.ndarray], np.ndarray] | None
    df: Callable[[np.ndarray], np.ndarray] | None = None
    nngp_fn: Callable[..., Any] | None = None
    d_nngp_fn: Callable[..., Any] | None = None
    name: str = "fn"


_NO_JSON = ("holds Python functions given in-process (ntkcompute.stax.Elementwise or "
            "ElementwiseNumerical with a callable); they cannot travel in a JSON spec: give "
            "the activation as expr, e.g. \"x * tanh(x)\"")


class Elementwise(_Layer):
    """An activation by ``deg``-point Gauss–Hermite quadrature per axis: a listed function
    (``fn``), a safe expression in ``x`` (``expr``, see :mod:`ntkcompute.kernels.expression`;
    its derivative is symbolic), or, in-process only, Python functions (``py``). Exactly one
    of the three."""

    type: Literal["elementwise"] = "elementwise"
    fn: Literal[ELEMENTWISE_FNS] | None = None  # type: ignore[valid-type]
    py: Any = None
    expr: str | None = Field(default=None, validate_default=True)
    deg: int = Field(default=25, ge=2, le=200)

    @field_validator("py")
    @classmethod
    def _py(cls, v: Any) -> Any:
        if v is None or isinstance(v, PyFunctions):
            return v
        raise ValueError(_NO_JSON)

    @field_validator("expr")
    @classmethod
    def _expr(cls, v: str | None, info: ValidationInfo) -> str | None:
        given = [k for k in ("fn", "py") if info.data.get(k) is not None]
        if v is not None:
            given.append("expr")
            try:
                compiled(v)
            except ExpressionError as e:
                raise ValueError(str(e)) from None
        if len(given) != 1 and ("fn" in info.data and "py" in info.data):
            raise ValueError("give exactly one of fn (a function's name) and expr (an "
                             f"expression in x), got {' and '.join(given) or 'neither'}")
        return v

    @field_serializer("py")
    def _py_json(self, v: Any) -> None:
        if v is not None:
            raise ValueError(_NO_JSON)
        return None

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # a layer of a listed fn dumps as before expr and py existed: a stored job's
        # identity (its spec's dump) stays the same, so old stores still resume
        out = handler(self)
        for key in ("py", "expr"):
            if isinstance(out, dict) and out.get(key) is None:
                out.pop(key, None)
        return out


@lru_cache(maxsize=256)
def compiled(text: str) -> tuple[expression.Tree, expression.Tree]:
    """``(tree, derivative tree)`` of an expression (cached by its text)."""
    tree = expression.parse(text)
    return tree, expression.derivative(tree)


def finite_difference(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], Any]:
    """φ' of a Python φ by the 4th-order central difference with step ``1e-3 (1 + |x|)``:
    ~1e-11 relative for smooth φ (truncation ~h⁴ φ⁽⁵⁾/30, rounding ~ε/h); wrong within h of
    a kink (give ``df`` there)."""

    def df(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        h = 1e-3 * (1.0 + np.abs(x))
        fx = [np.asarray(f(x + k * h), dtype=np.result_type(x, np.float64))
              for k in (-2, -1, 1, 2)]
        return ((fx[0] - fx[3]) + 8.0 * (fx[2] - fx[1])) / (12.0 * h)

    return df


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


def _on_host(fn: Callable[[np.ndarray], Any]) -> Callable[[ModuleType, Array], Array]:
    """A user's NumPy function as ``(xp, x) -> array`` (CuPy arrays go through the host)."""

    def f(xp: ModuleType, x: Array) -> Array:
        out = np.asarray(fn(to_numpy(x)), dtype=x.dtype)
        return xp.asarray(np.broadcast_to(out, x.shape))

    return f


def _closed(fn: Callable[..., Any], k12: Array, k11: Array, k22: Array, xp: ModuleType
            ) -> Array:
    """A user's ``(cov12, var1, var2) -> value``, on whole arrays if it broadcasts (NumPy
    functions do), else entry by entry (``numpy.vectorize``)."""
    args = [to_numpy(a) for a in np.broadcast_arrays(*(to_numpy(a) for a in (k12, k11, k22)))]
    try:
        out = np.asarray(fn(*args))
        if out.shape != args[0].shape:
            raise ValueError
    except Exception:
        out = np.asarray(np.vectorize(lambda a, b, c: complex(fn(a, b, c)))(*args))
    return xp.asarray(out)


def complex_step(nngp_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``∂ nngp_fn / ∂ cov12`` by the complex step ``Im f(c + ih) / h`` (h = 1e-30·scale):
    exact to rounding for an analytic ``nngp_fn`` that takes complex arrays."""

    def d(k12: Any, k11: Any, k22: Any) -> Any:
        h = 1e-30 * np.sqrt(np.abs(k11 * k22)) + 1e-300
        return np.imag(nngp_fn(k12 + 1j * h, k11, k22)) / h

    return d


@register(Elementwise)
class ElementwiseRule(Activation):
    def _pair(self, layer: Any) -> tuple[Any, Any]:
        """``(f, f')`` as functions ``(xp, x) -> array``."""
        if layer.fn is not None:
            return FUNCTIONS[layer.fn]
        if layer.expr is not None:
            tree, dtree = compiled(layer.expr)
            return (lambda xp, x: expression.evaluate(tree, xp, x),
                    lambda xp, x: expression.evaluate(dtree, xp, x))
        py = layer.py
        if py.fn is None:
            raise InputError("the finite network needs fn (Elementwise was given only "
                             "nngp_fn)", field="fn")
        return _on_host(py.fn), _on_host(py.df or finite_difference(py.fn))

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        with np.errstate(all="ignore"):
            out = super().kernel(lp, st, xp, va, vb)
        layer = lp.layer
        for a in (out.nngp, out.ntk):
            if a is not None and not bool(xp.isfinite(a).all()):
                field = "expr" if layer.expr is not None else "fn" if layer.fn else "py"
                raise InputError(
                    "its Gaussian expectations are not finite on these inputs (the function "
                    "or its derivative is infinite or NaN at some quadrature node, e.g. log "
                    "or sqrt of a negative pre-activation, or grows too fast)", field=field,
                    layer=layer_index(lp.path))
        return out

    def dual(self, xp: ModuleType, layer: Any, k12: Array, k11: Array, k22: Array,
             want_dot: bool) -> tuple[Array, Array | None]:
        py = layer.py
        if py is not None and py.nngp_fn is not None:
            nngp = _closed(py.nngp_fn, k12, k11, k22, xp).real.astype(k12.dtype)
            if not want_dot:
                return nngp, None
            d_fn = py.d_nngp_fn or complex_step(py.nngp_fn)
            return nngp, _closed(d_fn, k12, k11, k22, xp).real.astype(k12.dtype)
        return gauss_hermite(xp, self._pair(layer), layer.deg, k12, k11, k22, want_dot)

    def fn(self, layer: Any) -> tuple[Fn, Fn]:
        f, df = self._pair(layer)
        return (lambda z: f(np, z), lambda z: df(np, z))

"""Dense and Conv: spec, plan, kernel rule (Jacot et al. 2018; Novak et al. 2019 for Conv),
finite-width forward / backward and random features.

NTK parameterization (stax default), with ``A`` the layer's linear map on the kernel
(identity for Dense, the window average ``(1/|F|) sum_{d in F} K[s o + d, s o' + d]`` for Conv):

    K'  = W_std^2 A(K) + b_std^2
    Θ'  = W_std^2 A(Θ) + K'

Standard parameterization (stax): ``Θ' = fan_in A(K) + W_std^2 A(Θ) + [b_std is not None]``
with ``fan_in`` the finite input width (channels, times ``|F|`` for Conv).

Random features: ``ψ ← [W_std ψ ; b_std]``, ``ξ ← [W_std ξ ; ψ']``; a Conv replaces
``W_std ψ`` by the window's features side by side, ``(W_std / sqrt|F|) [ψ_{s p + d}]_{d ∈ F}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_serializer

from ..kernels.sketch import patches, with_bias
from ..kernels.spatial import conv_window_sum
from .finite import gather, scatter, window_index
from .registry import (
    FeatureDims,
    LayerRule,
    Leaf,
    OptionalStd,
    Padding,
    Std,
    _Layer,
    _positive_ints,
    make_window,
    register,
)

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan


class _Affine(_Layer):
    W_std: Std = 1.0
    b_std: OptionalStd = None
    #: ``false``: the layer's weights and bias are fixed at their random initial values (not
    #: trained), so they add no term to the NTK (Arora et al. 2020's "fixed bottom layers");
    #: the NNGP is unchanged
    trainable: bool = True

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # a trained layer dumps as before trainable existed: stored jobs keep their identity
        out = handler(self)
        if isinstance(out, dict) and out.get("trainable") is True:
            out.pop("trainable")
        return out


class Dense(_Affine):
    """Fully connected layer acting on the channel (last) axis. ``b_std: null`` = no bias."""

    type: Literal["dense"] = "dense"
    out_dim: int | None = Field(default=None, gt=0)


class Conv(_Affine):
    """Convolution over all spatial axes; window averaged with a fixed ``1/prod(filter_shape)``."""

    type: Literal["conv"] = "conv"
    filter_shape: list[int]
    strides: list[int] | None = None
    padding: Padding = "VALID"
    out_chan: int | None = Field(default=None, gt=0)

    @field_validator("filter_shape")
    @classmethod
    def _f(cls, v: list[int]) -> list[int]:
        return _positive_ints(v, "filter_shape")

    @field_validator("strides")
    @classmethod
    def _s(cls, v: list[int] | None) -> list[int] | None:
        return _positive_ints(v, "strides")


def _affine_kernel(lp: LayerPlan, st: State, window_sum: Callable[[Array], Array],
                   size: int) -> State:
    """``window_sum`` is the unnormalised linear map, ``size`` its normaliser ``|F|``."""
    layer = lp.layer
    w2 = layer.W_std**2
    b2 = layer.b_std**2 if layer.b_std is not None else None
    s_k = window_sum(st.nngp)
    trained = layer.trainable
    if lp.parameterization == "standard" and st.ntk is not None:
        fan_in = lp.in_channels * size
        s_t = window_sum(st.ntk)
        s_t *= w2 / size
        if trained:
            s_t += s_k * (fan_in / size)
            if b2 is not None:
                s_t += 1.0
    nngp = s_k
    nngp *= w2 / size
    if b2:
        nngp += b2
    if lp.parameterization != "standard" and st.ntk is not None:
        s_t = window_sum(st.ntk)
        s_t *= w2 / size
        if trained:
            s_t += nngp
    return st.with_(nngp=nngp, ntk=None if st.ntk is None else s_t, spatial=lp.out_spatial)


def _coefficients(lp: LayerPlan, size: int) -> tuple[float, ...]:
    """``_affine_kernel``'s map as ``fused.affine``'s ``(ck, cb, ct, cn, cs, c1)``."""
    layer = lp.layer
    w2 = layer.W_std**2
    b2 = layer.b_std**2 if layer.b_std is not None else 0.0
    trained = 1.0 if layer.trainable else 0.0
    if lp.parameterization == "standard":
        fan_in = lp.in_channels * size
        return (w2 / size, b2, w2 / size, 0.0, trained * fan_in / size,
                trained if layer.b_std is not None else 0.0)
    return w2 / size, b2, w2 / size, trained, 0.0, 0.0


def _affine_features(xp: ModuleType, psi: Any, xi: Any, linear: Callable[[Any], Any],
                     layer: Any) -> tuple[Any, Any]:
    psi = with_bias(xp, linear(psi), layer.b_std)
    return psi, (psi if xi is None else xp.concatenate([linear(xi), psi], axis=-1))


class _AffineRule(LayerRule):
    """Shared by Dense and Conv: weights ``W`` ``(fan_in, out)`` and an optional bias."""

    weighted = True
    float32_verified = True
    has_features = True

    def _fan(self, lp: LayerPlan) -> int:
        """``|F|``: 1 for Dense."""
        return 1

    def kernel_then(self, lp: LayerPlan, st: State, xp: ModuleType, act: LayerPlan,
                    va: Array, vb: Array) -> State | None:
        """This layer and the nonlinearity ``act`` after it in one compiled pass
        (``fused.affine``), or None where that path does not serve ``st``."""
        from ..kernels import fused  # numba loads on the first kernel, not on import
        from .activations import fused_relu

        how = fused_relu(act.layer, st.nngp.dtype) if fused.enabled(xp) else None
        if how is None:
            return None
        return fused.affine(st, lp.window, lp.out_spatial,
                            _coefficients(lp, self._fan(lp)), (*how, va, vb))

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        from ..kernels import fused

        if fused.enabled(xp):
            out = fused.affine(st, lp.window, lp.out_spatial, _coefficients(lp, self._fan(lp)))
            if out is not None:
                return out
        return self.numpy_kernel(lp, st, xp)

    def init(self, lp: LayerPlan, rng: Any, dtype: Any, parameterization: str
             ) -> tuple | None:
        """``(W, b)``: standard normal (NTK parameterization) or scaled by
        ``W_std / sqrt(fan_in)`` and ``b_std`` (standard); ``fan_in = |F| * C_in``."""
        layer = lp.layer
        fan_in = lp.in_channels * self._fan(lp)
        W = rng.standard_normal((fan_in, lp.out_channels)).astype(dtype)
        b = rng.standard_normal(lp.out_channels).astype(dtype) \
            if layer.b_std is not None else None
        if parameterization == "standard":
            W *= layer.W_std / math.sqrt(fan_in)
            if b is not None:
                b *= layer.b_std
        return W, b

    def _inputs(self, lp: LayerPlan, a: Any) -> tuple[Any, Any]:
        """``(what W multiplies, window index or None)``."""
        return a, None

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        layer = lp.layer
        W, b = params
        inp, idx = self._inputs(lp, a)
        if lp.parameterization == "ntk":
            scale = layer.W_std / math.sqrt(inp.shape[-1])
            b_scale = layer.b_std or 0.0
        else:  # standard: the stds live in the initial values, gradients are unscaled
            scale, b_scale = 1.0, 1.0
        out = scale * (inp @ W)
        if b is not None:
            out = out + b_scale * b
        return out, (W, b, scale, b_scale, idx, inp)

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        W, b, scale, b_scale, idx, inp = data
        if lp.layer.trainable:
            gram.add(inp, d, scale)
            if b is not None:
                gram.add_bias(d, b_scale)
        dinp = scale * (d @ W.T)
        if idx is None:
            return dinp
        kk, nn, po, _ = dinp.shape
        dinp = dinp.reshape(kk, nn, po, idx.shape[1], -1)
        return scatter(dinp, idx, math.prod(lp.in_spatial))

    def feature_draws(self, lp: LayerPlan, rng: Any, m: int, dims: FeatureDims
                      ) -> tuple[Any, ...]:
        fan = self._fan(lp)
        dims.psi = fan * dims.psi + (1 if lp.layer.b_std else 0)
        dims.xi = dims.psi + fan * dims.xi
        return ()


@register(Dense)
class DenseRule(_AffineRule):
    readout_width = "out_dim"

    def out_channels(self, layer: Any, channels: int | None, width: int | None) -> int | None:
        return layer.out_dim or width

    def numpy_kernel(self, lp: LayerPlan, st: State, xp: ModuleType) -> State:
        return _affine_kernel(lp, st, lambda a: a.copy(), 1)

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        w = lp.layer.W_std
        return _affine_features(xp, psi, xi, lambda a: w * a, lp.layer)


@register(Conv)
class ConvRule(_AffineRule):
    readout_width = "out_chan"

    def out_channels(self, layer: Any, channels: int | None, width: int | None) -> int | None:
        return layer.out_chan or width

    def shape(self, layer: Any, leaf: Leaf) -> None:
        cur = leaf.in_spatial
        leaf.window = make_window(leaf.path, "filter_shape", cur, layer.filter_shape,
                                  layer.strides, layer.padding, (1,) * len(cur))
        leaf.out_spatial = leaf.window.out

    def _fan(self, lp: LayerPlan) -> int:
        return math.prod(lp.window.size)

    def numpy_kernel(self, lp: LayerPlan, st: State, xp: ModuleType) -> State:
        win = lp.window
        return _affine_kernel(lp, st, lambda a: conv_window_sum(xp, a, st.full, win),
                              math.prod(win.size))

    def _inputs(self, lp: LayerPlan, a: Any) -> tuple[Any, Any]:
        idx = window_index(lp.in_spatial, lp.window)
        return gather(a, idx).reshape(a.shape[0], idx.shape[0], -1), idx

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        win = lp.window
        scale = lp.layer.W_std / math.sqrt(math.prod(win.size))
        return _affine_features(xp, psi, xi, lambda a: scale * patches(xp, a, win), lp.layer)

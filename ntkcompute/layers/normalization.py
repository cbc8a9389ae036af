"""LayerNorm (stax.LayerNorm): spec, plan, kernel rule and finite-width forward / backward.

In the limit the norm over channels is deterministic, so

    K'[p, p'] = K[p, p'] / sqrt((v(x)_p + eps) (v(x')_p' + eps)),   Θ' the same,

with ``v(x)_p`` the variance of input x at position p (the self pass's diagonal), averaged
over the spatial axes listed in ``axis`` besides the channel axis. The mean subtraction
vanishes in the limit for the Gaussian pre-activations the plan requires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..kernels.state import expand_var, reduce64
from .registry import LayerRule, Leaf, _Layer, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan


class LayerNorm(_Layer):
    """Normalise each input over ``axis`` (stax.LayerNorm): the channel axis (-1), optionally
    with spatial axes (1 .. d, or negative), never the batch axis 0."""

    type: Literal["layer_norm"] = "layer_norm"
    axis: int | list[int] = -1
    eps: float = Field(default=1e-12, ge=0, allow_inf_nan=False)


def layer_norm_axes(axis: int | list[int], in_spatial: tuple[int, ...]) -> tuple[int, ...]:
    """``layer_norm``'s axes of its ``(n, *spatial, C)`` input, non-negative and sorted
    (out-of-range axes stay out of range, for the plan to report)."""
    nd = len(in_spatial) + 2
    return tuple(sorted(a + nd if a < 0 else a for a in (axis if isinstance(axis, list)
                                                          else [axis])))


def _normaliser(xp: ModuleType, lp: LayerPlan, v: Array) -> Array:
    """``(n, *spatial)`` variances -> ``v + eps``, averaged over the normalised spatial axes."""
    # v's axes are the input's without the channel: spatial axis a of the input is v's a
    spatial = tuple(a for a in layer_norm_axes(lp.layer.axis, lp.in_spatial) if 0 < a < v.ndim)
    if spatial:  # a mean of P values: accumulated in float64 (see pooling.py)
        v = xp.broadcast_to(reduce64(xp, v, "mean", spatial, keepdims=True), v.shape)
    return v + lp.layer.eps


@register(LayerNorm)
class LayerNormRule(LayerRule):
    gaussian_input = True

    def shape(self, layer: Any, leaf: Leaf) -> None:
        cur = leaf.in_spatial
        nd = len(cur) + 2
        norm = layer_norm_axes(layer.axis, cur)
        if any(not 0 <= a < nd for a in norm) or len(set(norm)) != len(norm):
            raise leaf.err(f"axes must be distinct and within the input's {nd} axes "
                           f"(n, *spatial, C), got {layer.axis}", field="axis")
        if 0 in norm:
            raise leaf.err("cannot normalise over the batch axis 0: a kernel entry "
                           "would depend on the other rows", field="axis")
        if nd - 1 not in norm:
            raise leaf.err(f"must contain the channel axis -1 (as stax requires), "
                           f"got {layer.axis}", field="axis")
        leaf.out_spatial = cur

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        a = expand_var(xp, _normaliser(xp, lp, va), st.nb, 0, st.full)
        b = expand_var(xp, _normaliser(xp, lp, vb), st.nb, 1, st.full)
        scale = 1.0 / xp.sqrt(a * b)
        return st.with_(nngp=st.nngp * scale, ntk=None if st.ntk is None else st.ntk * scale)

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        layer = lp.layer
        full = a.reshape(a.shape[0], *lp.in_spatial, a.shape[-1])
        axes = layer_norm_axes(layer.axis, lp.in_spatial)
        y = full - full.mean(axis=axes, keepdims=True)
        sigma = np.sqrt(layer.eps + (y * y).mean(axis=axes, keepdims=True))
        y = y / sigma
        return y.reshape(a.shape), (y, sigma, axes)

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        y, sigma, axes = data
        shape = d.shape
        dy = d.reshape(shape[0], *y.shape)
        ax = tuple(a + 1 for a in axes)
        dx = dy - dy.mean(axis=ax, keepdims=True) - y * (dy * y).mean(axis=ax, keepdims=True)
        return (dx / sigma).reshape(shape)

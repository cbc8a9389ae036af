"""GlobalSelfAttention (stax.GlobalSelfAttention; Hron et al. 2020, "Infinite attention"):
spec, plan, kernel rule (the math is in :mod:`ntkcompute.kernels.attention`) and the
finite-width forward / backward of its four weight matrices (query, key, value, out).

Under ``linear_scaling`` the rule needs each input's full self-covariance (self statistic
``"cov"``); both scalings need the full spatial covariance of the pairs entering it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..kernels import attention
from .registry import LayerRule, Leaf, OptionalStd, Std, _Layer, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan


class GlobalSelfAttention(_Layer):
    """Multi-head self-attention over all positions (stax.GlobalSelfAttention)."""

    type: Literal["global_self_attention"] = "global_self_attention"
    n_chan_out: int | None = Field(default=None, gt=0)
    n_chan_key: int | None = Field(default=None, gt=0)
    n_chan_val: int | None = Field(default=None, gt=0)
    n_heads: int = Field(default=1, gt=0)
    linear_scaling: bool = True
    W_key_std: Std = 1.0
    W_value_std: Std = 1.0
    W_query_std: Std = 1.0
    W_out_std: Std = 1.0
    b_std: OptionalStd = None
    attention_mechanism: Literal["SOFTMAX", "IDENTITY", "ABS", "RELU"] = "SOFTMAX"


def _heads(layer: GlobalSelfAttention, width: int) -> tuple[int, int, int]:
    """(n_heads, key channels, value channels) per head, ``width`` where unset."""
    return layer.n_heads, layer.n_chan_key or width, layer.n_chan_val or width


@register(GlobalSelfAttention)
class GlobalSelfAttentionRule(LayerRule):
    covariance = "full"
    weighted = True

    def out_channels(self, layer: Any, channels: int | None, width: int | None) -> int | None:
        return layer.n_chan_out or width

    def shape(self, layer: Any, leaf: Leaf) -> None:
        if not leaf.in_spatial:
            raise leaf.err("global_self_attention attends over positions: it needs "
                           "inputs (n, T, C) or (n, *spatial, C), but its input here is a "
                           "vector")
        if not layer.linear_scaling and layer.attention_mechanism != "IDENTITY":
            raise leaf.err("with linear_scaling false the infinite-width kernel has "
                           "a closed form only for attention_mechanism IDENTITY (as in "
                           "stax)", field="attention_mechanism")
        if leaf.parameterization != "ntk":
            raise leaf.err("global_self_attention follows the ntk parameterization only")
        leaf.self_stat = "cov" if layer.linear_scaling else None
        leaf.out_spatial = leaf.in_spatial

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        # square-root scaling has no self statistic: va, vb are None
        return attention.global_self_attention(lp, st, xp, va, vb)

    def init(self, lp: LayerPlan, rng: Any, dtype: Any, parameterization: str
             ) -> tuple | None:
        """``(W_query, W_key, W_value, W_out, b)``, the first three ``(C_in, heads * chan)``,
        ``W_out`` ``(heads * n_chan_val, n_chan_out)``; under ``linear_scaling`` the key
        weights are the query weights (``W_key`` is ``None``), as in stax: with independent
        ones the logits would converge to 0."""
        layer = lp.layer
        h, dk, dv = _heads(layer, lp.out_channels)
        c = lp.in_channels
        shapes = [(c, h * dk), (c, h * dk), (c, h * dv), (h * dv, lp.out_channels)]
        ws = [rng.standard_normal(sh).astype(dtype) for sh in shapes]
        if layer.linear_scaling:
            ws[1] = None
        b = rng.standard_normal(lp.out_channels).astype(dtype) \
            if layer.b_std is not None else None
        return (*ws, b)

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        layer = lp.layer
        wq, wk, wv, wo, b = params
        wk = wq if wk is None else wk
        h, dk, dv = _heads(layer, lp.out_channels)
        n, t, c = a.shape
        sq, sk, sv = (std / math.sqrt(c) for std in
                      (layer.W_query_std, layer.W_key_std, layer.W_value_std))
        so = layer.W_out_std / math.sqrt(h * dv)
        q = (sq * (a @ wq)).reshape(n, t, h, dk)
        k = (sk * (a @ wk)).reshape(n, t, h, dk)
        v = (sv * (a @ wv)).reshape(n, t, h, dv)
        norm = dk if layer.linear_scaling else math.sqrt(dk)
        logits = np.einsum("nthd,nshd->nhts", q, k) / norm
        g = attention.mechanism(np, layer.attention_mechanism, logits)
        heads = np.einsum("nhts,nshd->nthd", g, v).reshape(n, t, h * dv)
        out = so * (heads @ wo)
        if b is not None:
            out = out + (layer.b_std or 0.0) * b
        return out, dict(x=a, q=q, k=k, v=v, logits=logits, g=g, heads=heads, norm=norm,
                         scales=(sq, sk, sv, so), w=(wq, wk, wv, wo), b=b,
                         tied=layer.linear_scaling)

    def backward(self, lp: LayerPlan, data: Any, delta: Any, gram: Any) -> Any:
        """Gradient contributions of W_query, W_key, W_value, W_out, b and the input cotangent."""
        layer = lp.layer
        sq, sk, sv, so = data["scales"]
        wq, wk, wv, wo = data["w"]
        q, k, v, g, x = data["q"], data["k"], data["v"], data["g"], data["x"]
        kk, n, t, _ = delta.shape
        h, dv = v.shape[2], v.shape[3]
        gram.add(data["heads"], delta, so)
        if data["b"] is not None:
            gram.add_bias(delta, layer.b_std or 0.0)
        d_heads = (so * (delta @ wo.T)).reshape(kk, n, t, h, dv)
        d_g = np.einsum("knthd,nshd->knhts", d_heads, v)
        d_v = np.einsum("nhts,knthd->knshd", g, d_heads)
        mech = layer.attention_mechanism
        if mech == "SOFTMAX":
            d_l = g * (d_g - (g * d_g).sum(axis=-1, keepdims=True))
        elif mech == "ABS":
            d_l = np.sign(data["logits"]) * d_g
        elif mech == "RELU":
            d_l = (data["logits"] > 0) * d_g
        else:
            d_l = d_g
        d_l /= data["norm"]
        d_q = np.einsum("knhts,nshd->knthd", d_l, k).reshape(kk, n, t, -1)
        d_k = np.einsum("knhts,nthd->knshd", d_l, q).reshape(kk, n, t, -1)
        d_v = d_v.reshape(kk, n, t, -1)
        dx = np.zeros((kk, *x.shape), dtype=x.dtype)
        for d, w, sc in ((d_q, wq, sq), (d_k, wk, sk), (d_v, wv, sv)):
            dx += sc * (d @ w.T)
        gram.add(x, d_v, sv)
        if data["tied"]:  # one matrix on both paths: its gradient is their sum
            gram.add(x, sq * d_q + sk * d_k, 1.0)
        else:
            gram.add(x, d_q, sq)
            gram.add(x, d_k, sk)
        return dx

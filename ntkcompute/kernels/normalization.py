"""LayerNorm rule (stax.LayerNorm): in the limit the norm over channels is deterministic, so

    K'[p, p'] = K[p, p'] / sqrt((v(x)_p + eps) (v(x')_p' + eps)),   Θ' the same,

with ``v(x)_p`` the variance of input x at position p (the self pass's diagonal), averaged
over the spatial axes listed in ``axis`` besides the channel axis. The mean subtraction
vanishes in the limit for the Gaussian pre-activations the plan requires.
"""

from __future__ import annotations

from ..plan import LayerPlan, layer_norm_axes
from .state import Array, State, expand_var, reduce64


def _normaliser(xp, lp: LayerPlan, v: Array) -> Array:
    """``(n, *spatial)`` variances -> ``v + eps``, averaged over the normalised spatial axes."""
    # v's axes are the input's without the channel: spatial axis a of the input is v's a
    spatial = tuple(a for a in layer_norm_axes(lp.layer.axis, lp.in_spatial) if 0 < a < v.ndim)
    if spatial:  # a mean of P values: accumulated in float64 (see pooling.py)
        v = xp.broadcast_to(reduce64(xp, v, "mean", spatial, keepdims=True), v.shape)
    return v + lp.layer.eps


def layer_norm(lp: LayerPlan, st: State, xp, va: Array, vb: Array) -> State:
    a = expand_var(xp, _normaliser(xp, lp, va), st.nb, 0, st.full)
    b = expand_var(xp, _normaliser(xp, lp, vb), st.nb, 1, st.full)
    scale = 1.0 / xp.sqrt(a * b)
    return st.with_(nngp=st.nngp * scale, ntk=None if st.ntk is None else st.ntk * scale)

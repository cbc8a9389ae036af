"""Dense and Conv kernel rules (Jacot et al. 2018; Novak et al. 2019 for Conv).

NTK parameterization (stax default), with ``A`` the layer's linear map on the kernel
(identity for Dense, the window average ``(1/|F|) sum_{d in F} K[s o + d, s o' + d]`` for Conv):

    K'  = W_std^2 A(K) + b_std^2
    Θ'  = W_std^2 A(Θ) + K'

Standard parameterization (stax): ``Θ' = fan_in A(K) + W_std^2 A(Θ) + [b_std is not None]``
with ``fan_in`` the finite input width (channels, times ``|F|`` for Conv).
"""

from __future__ import annotations

import math

from ..plan import LayerPlan
from .spatial import conv_window_sum
from .state import State


def _affine(lp: LayerPlan, st: State, window_sum, size: int) -> State:
    """``window_sum`` is the unnormalised linear map, ``size`` its normaliser ``|F|``."""
    layer = lp.layer
    w2 = layer.W_std**2
    b2 = layer.b_std**2 if layer.b_std is not None else None
    s_k = window_sum(st.nngp)
    if lp.parameterization == "standard" and st.ntk is not None:
        fan_in = lp.in_channels * size
        s_t = window_sum(st.ntk)
        s_t *= w2 / size
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
        s_t += nngp
    return st.with_(nngp=nngp, ntk=None if st.ntk is None else s_t, spatial=lp.out_spatial)


def dense(lp: LayerPlan, st: State, xp) -> State:
    return _affine(lp, st, lambda a: a.copy(), 1)


def conv(lp: LayerPlan, st: State, xp) -> State:
    win = lp.window
    return _affine(lp, st, lambda a: conv_window_sum(xp, a, st.full, win),
                   math.prod(win.size))

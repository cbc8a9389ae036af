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


def _affine(lp: LayerPlan, st: State, xp, op, fan_in: int | None) -> State:
    layer = lp.layer
    w2 = layer.W_std**2
    b2 = layer.b_std**2 if layer.b_std is not None else None
    k_lin = op(st.nngp)
    nngp = k_lin * w2
    if b2:
        nngp += b2
    ntk = None
    if st.ntk is not None:
        if lp.parameterization == "standard":
            ntk = op(st.ntk) * w2
            ntk += k_lin * fan_in
            if layer.b_std is not None:
                ntk += 1.0
        else:
            ntk = op(st.ntk)
            ntk *= w2
            ntk += nngp
    return st.with_(nngp=nngp, ntk=ntk, spatial=lp.out_spatial)


def dense(lp: LayerPlan, st: State, xp) -> State:
    return _affine(lp, st, xp, lambda a: a, lp.in_channels)


def conv(lp: LayerPlan, st: State, xp) -> State:
    win = lp.window
    size = math.prod(win.size)

    def op(a):
        out = conv_window_sum(xp, a, st.nb, st.full, win)
        out *= 1.0 / size
        return out

    fan_in = lp.in_channels * size if lp.in_channels is not None else None
    return _affine(lp, st, xp, op, fan_in)

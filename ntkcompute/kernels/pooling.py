"""Weight-free linear layers: AvgPool, SumPool, GlobalAvgPool, GlobalSumPool, Flatten, Identity
(the same map on K and Θ)."""

from __future__ import annotations

import math

from .. import spec
from ..plan import LayerPlan
from .spatial import pool_window_sum
from .state import State, spatial_diagonal


def _both(st: State, f) -> dict:
    return {"nngp": f(st.nngp), "ntk": f(st.ntk) if st.ntk is not None else None}


def avg_pool(lp: LayerPlan, st: State, xp) -> State:
    """``K'[o, o'] = |W|^-2 sum_{d, d' in W} K[s o + d, s o' + d']`` (padded zeros count);
    SumPool without the ``|W|^-2``."""
    scale = 1.0 if isinstance(lp.layer, spec.SumPool) else 1.0 / math.prod(lp.window.size) ** 2

    def f(a):
        out = pool_window_sum(xp, a, lp.window)
        if scale != 1.0:
            out *= scale
        return out

    return st.with_(spatial=lp.out_spatial, **_both(st, f))


def global_avg_pool(lp: LayerPlan, st: State, xp) -> State:
    """Mean over all pairs of positions (p, p'); GlobalSumPool: their sum."""
    axes = tuple(range(st.nngp.ndim - st.nb))
    op = "sum" if isinstance(lp.layer, spec.GlobalSumPool) else "mean"
    return st.with_(spatial=(), full=False, **_both(st, lambda a: getattr(a, op)(axis=axes)))


def flatten(lp: LayerPlan, st: State, xp) -> State:
    """Mean over the spatial diagonal p == p' (the next Dense divides by C * P)."""
    if not st.spatial:
        return st
    ndim = len(st.spatial)

    def f(a):
        if st.full:
            a = spatial_diagonal(xp, a, ndim)
        return a.mean(axis=tuple(range(ndim)))

    return st.with_(spatial=(), full=False, **_both(st, f))


def identity(lp: LayerPlan, st: State, xp) -> State:
    return st

"""Weight-free linear layers: AvgPool, SumPool, GlobalAvgPool, GlobalSumPool, Flatten, Identity
(the same map on K and Θ).

The global reductions (GAP over the ``P²`` position pairs, Flatten over the ``P`` diagonal
positions) accumulate in float64 whatever the dtype. NumPy reduces leading axes by adding
whole slices one after another (pairwise summation only runs along a contiguous axis), so a
float32 sum of N terms errs by ~sqrt(N)·eps typically and N·eps at worst (Higham 2002, §4.2):
1.3e-5 of the kernel for CNTK-GAP-3 on 14x14 MNIST (N = 196²), 3e-6 for the Flatten of
CNTK-V-3 on 28x28 (N = 784). In float64 the same sums err by ~1e-13 before the one rounding
to float32; NumPy and CuPy convert blockwise, without a float64 copy of the state.
"""

from __future__ import annotations

import math

from .. import spec
from ..plan import LayerPlan
from .spatial import pool_window_sum
from .state import State, reduce64, spatial_diagonal


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
    """Mean over all pairs of positions (p, p'); GlobalSumPool: their sum.

    ``(S1, S1', .., Sd, Sd') + B`` (or the diagonal ``(S1, .., Sd) + B``) -> ``B``.
    """
    axes = tuple(range(st.nngp.ndim - st.nb))
    op = "sum" if isinstance(lp.layer, spec.GlobalSumPool) else "mean"
    return st.with_(spatial=(), full=False, **_both(st, lambda a: reduce64(xp, a, op, axes)))


def flatten(lp: LayerPlan, st: State, xp) -> State:
    """Mean over the spatial diagonal p == p' (the next Dense divides by C * P):
    ``(S1, .., Sd) + B`` (or the full layout) -> ``B``."""
    if not st.spatial:
        return st
    ndim = len(st.spatial)

    def f(a):
        if st.full:
            a = spatial_diagonal(xp, a, ndim)
        return reduce64(xp, a, "mean", tuple(range(ndim)))

    return st.with_(spatial=(), full=False, **_both(st, f))


def identity(lp: LayerPlan, st: State, xp) -> State:
    return st

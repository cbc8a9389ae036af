"""Weight-free linear layers: AvgPool, SumPool, GlobalAvgPool, GlobalSumPool, Flatten, Identity
(the same map on K and Θ, and on the NNGP and NTK random features).

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import field_validator

from ..kernels.sketch import SRHT
from ..kernels.spatial import pool_window_sum, shifted_sum
from ..kernels.state import reduce64, spatial_diagonal
from .finite import gather, scatter, window_index
from .registry import (
    FeatureDims,
    LayerRule,
    Leaf,
    Padding,
    _Layer,
    _positive_ints,
    make_window,
    register,
)

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan


class AvgPool(_Layer):
    """Average pooling; padded zeros count in the divisor (stax ``normalize_edges=False``)."""

    type: Literal["avg_pool"] = "avg_pool"
    window_shape: list[int]
    strides: list[int] | None = None
    padding: Padding = "VALID"

    @field_validator("window_shape")
    @classmethod
    def _w(cls, v: list[int]) -> list[int]:
        return _positive_ints(v, "window_shape")

    @field_validator("strides")
    @classmethod
    def _s(cls, v: list[int] | None) -> list[int] | None:
        return _positive_ints(v, "strides")


class SumPool(AvgPool):
    """Sum pooling: ``avg_pool`` without the division by the window size (stax.SumPool)."""

    type: Literal["sum_pool"] = "sum_pool"  # type: ignore[assignment]


class GlobalAvgPool(_Layer):
    type: Literal["global_avg_pool"] = "global_avg_pool"


class GlobalSumPool(_Layer):
    """Sum over every spatial position (stax.GlobalSumPool)."""

    type: Literal["global_sum_pool"] = "global_sum_pool"


class Flatten(_Layer):
    type: Literal["flatten"] = "flatten"


class Identity(_Layer):
    type: Literal["identity"] = "identity"


def _both(st: State, f: Callable[[Array], Array]) -> dict:
    return {"nngp": f(st.nngp), "ntk": f(st.ntk) if st.ntk is not None else None}


@register(AvgPool)
class AvgPoolRule(LayerRule):
    """``K'[o, o'] = |W|^-2 sum_{d, d' in W} K[s o + d, s o' + d']`` (padded zeros count);
    features: the window average of ψ and ξ (linear, so exact)."""

    covariance = "full"
    float32_verified = True
    has_features = True
    summed = False  # SumPool: no division by the window size

    def shape(self, layer: Any, leaf: Leaf) -> None:
        cur = leaf.in_spatial
        leaf.window = make_window(leaf.path, "window_shape", cur, layer.window_shape,
                                  layer.strides, layer.padding, (1,) * len(cur))
        leaf.out_spatial = leaf.window.out

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        from ..kernels import fused  # numba loads on the first kernel, not on import

        scale = 1.0 if self.summed else 1.0 / math.prod(lp.window.size) ** 2

        def f(a: Array) -> Array:
            if fused.enabled(xp):
                out = fused.pool(a, lp.window, st.nb, scale)
                if out is not None:
                    return out
            out = pool_window_sum(xp, a, lp.window)
            if scale != 1.0:
                out *= scale
            return out

        return st.with_(spatial=lp.out_spatial, **_both(st, f))

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        idx = window_index(lp.in_spatial, lp.window)
        div = 1 if self.summed else idx.shape[1]
        return gather(a, idx).sum(axis=2) / div, (idx, a.shape[1], div)

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        idx, p_in, div = data
        g = np.broadcast_to(d[..., :, None, :] / div, (*d.shape[:-1], idx.shape[1], d.shape[-1]))
        return scatter(g, idx, p_in)

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        win = lp.window
        scale = 1.0 / math.prod(win.size)

        def pool(a: Any) -> Any:
            for k in range(len(win.size)):
                a = shifted_sum(xp, a, (k + 1,), win.size[k], win.strides[k], win.pad[k],
                                win.out[k], win.circular)
            return a * scale

        return pool(psi), None if xi is None else pool(xi)


@register(SumPool)
class SumPoolRule(AvgPoolRule):
    summed = True
    has_features = False


@register(GlobalAvgPool)
class GlobalAvgPoolRule(LayerRule):
    """Mean over all pairs of positions (p, p'); GlobalSumPool: their sum.

    ``(S1, S1', .., Sd, Sd') + B`` (or the diagonal ``(S1, .., Sd) + B``) -> ``B``.
    """

    def keeps_input(self, lp: LayerPlan) -> bool:
        return bool(lp.in_spatial)  # a reduction into new arrays

    covariance = "full"
    float32_verified = True
    has_features = True
    summed = False

    def shape(self, layer: Any, leaf: Leaf) -> None:
        if not leaf.in_spatial:
            raise leaf.err(f"{layer.type} needs spatial inputs (n, *spatial, channels), "
                           "but its input here is a vector")
        leaf.out_spatial = ()

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        axes = tuple(range(st.nngp.ndim - st.nb))
        op = "sum" if self.summed else "mean"
        return st.with_(spatial=(), full=False,
                        **_both(st, lambda a: reduce64(xp, a, op, axes)))

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        div = 1 if self.summed else a.shape[1]
        return a.sum(axis=1) / div, (a.shape[1], div)

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        p, div = data
        return np.broadcast_to(d[:, :, None, :] / div, (d.shape[0], d.shape[1], p, d.shape[-1]))

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        axes = tuple(range(1, psi.ndim - 1))
        return psi.mean(axis=axes), None if xi is None else xi.mean(axis=axes)


@register(GlobalSumPool)
class GlobalSumPoolRule(GlobalAvgPoolRule):
    summed = True
    has_features = False


@register(Flatten)
class FlattenRule(LayerRule):
    """Mean over the spatial diagonal p == p' (the next Dense divides by C * P):
    ``(S1, .., Sd) + B`` (or the full layout) -> ``B``. Features: ``[ψ_p]_p / sqrt(P)``,
    projected to m coordinates by an SRHT when longer."""

    def keeps_input(self, lp: LayerPlan) -> bool:
        return bool(lp.in_spatial)  # a reduction into new arrays (else the state itself)

    covariance = "diagonal"
    float32_verified = True
    has_features = True

    def shape(self, layer: Any, leaf: Leaf) -> None:
        cur = leaf.in_spatial
        if cur:
            leaf.gaussian = False  # features at different positions have different covariances
        leaf.out_spatial = ()
        if leaf.channels is not None:
            leaf.channels *= math.prod(cur) if cur else 1

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        if not st.spatial:
            return st
        ndim = len(st.spatial)

        def f(a: Array) -> Array:
            if st.full:
                a = spatial_diagonal(xp, a, ndim)
            return reduce64(xp, a, "mean", tuple(range(ndim)))

        return st.with_(spatial=(), full=False, **_both(st, f))

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        return a.reshape(a.shape[0], -1), a.shape

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        return d.reshape(d.shape[0], *data)

    def feature_draws(self, lp: LayerPlan, rng: Any, m: int, dims: FeatureDims
                      ) -> tuple[Any, ...]:
        if not lp.in_spatial:
            return ()
        p_in = dims.p_in
        draws = tuple(SRHT.draw(rng, p_in * dd, m) if p_in * dd > m else None
                      for dd in (dims.psi, dims.xi))
        dims.row = max(dims.row, p_in * 3 * (dims.psi + dims.xi))
        dims.psi, dims.xi = (min(m, p_in * dd) for dd in (dims.psi, dims.xi))
        return draws

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        if psi.ndim == 2:
            return psi, xi
        out = []
        for a, proj in zip((psi, xi), draws, strict=True):
            if a is None:
                out.append(a)
                continue
            a = a.reshape(a.shape[0], -1) / math.sqrt(math.prod(a.shape[1:-1]))
            out.append(a if proj is None else proj(a))
        return out[0], out[1]


@register(Identity)
class IdentityRule(LayerRule):
    float32_verified = True
    has_features = True

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        return st

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        return a, None

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        return d

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        return psi, xi

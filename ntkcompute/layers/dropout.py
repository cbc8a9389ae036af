"""Dropout (stax.Dropout): spec, plan, kernel rule and finite-width forward / backward.

``rate`` is the *keep* probability, as in stax: in ``mode="train"`` each unit (position and
channel) of each input is kept with probability ``rate`` and scaled by ``1/rate``, else
zeroed; ``mode="test"`` is the identity. The masks of two different inputs, and of two
different units, are independent and average to 1 (``E[m/rate] = 1``), while a unit paired
with itself sees ``E[(m/rate)²] = 1/rate``. So in the limit

    K'[p, p'](x, x') = K[p, p'](x, x') · (1/rate if x is x' and p == p' else 1),   Θ' the same,

which is stax's rule: it scales the variances of each input (cov1, cov2) at every position,
and the Gram entries of the batch diagonal at equal positions when x1 is x2. Here "x is x'"
is decided per pair, by its two inputs being equal bit for bit (``State.same``, from
``inputs``), so every tiling of a Gram matrix agrees and ``kernel(x, x)`` equals
``kernel(x)`` as in stax. stax instead decides once per call (x1 against x2 as a whole) and
then scales the batch diagonal, so the two differ only on equal rows at different places
(duplicates in one batch, or a row of x1 repeated in a different x2): one input here. The
output is no longer Gaussian (stax sets ``is_gaussian=False``): a
nonlinearity or fan_in_sum / prod directly after it is refused.

Finite width: the masks are drawn from a seed the layer takes from the network's seed, one per
batch row and unit, and rows with equal activations at the layer share the mask of the first
of them (the same input, the same mask; distinct inputs equal at the layer would too), so the
empirical kernel averages to the rule above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from .registry import LayerRule, Leaf, _Layer, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan


class Dropout(_Layer):
    """Keep each unit with probability ``rate`` and scale it by ``1/rate`` (``"train"``), or
    pass the input on (``"test"``) (stax.Dropout)."""

    type: Literal["dropout"] = "dropout"
    rate: float = Field(gt=0, le=1, allow_inf_nan=False)
    mode: Literal["train", "test"] = "train"

    @field_validator("rate")
    @classmethod
    def _bounded(cls, v: float) -> float:
        # 1/rate scales variances as W_std² does: bounded like W_std (<= 1e100)
        if v < 1e-100:
            raise ValueError(f"must be >= 1e-100 (1/rate scales the variances), got {v}")
        return v


def _scale_same(xp: ModuleType, a: Array, st: State, factor: Any) -> None:
    """``a`` (a state's NNGP or NTK) times ``factor`` (a scalar, or an array of the batch
    shape) in place, at the entries pairing each spatial position with itself."""
    d = len(st.spatial)
    if not (st.full and d):  # vectors, or the spatial diagonal: every entry is p == p'
        a *= factor
        return
    idx = []
    for k, s in enumerate(st.spatial):  # (S1, S1', .., Sd, Sd') + B: the p == p' entries
        shape = [1] * d
        shape[k] = s
        idx += [xp.arange(s).reshape(shape)] * 2
    idx = tuple(idx)
    a[idx] = a[idx] * factor


@register(Dropout)
class DropoutRule(LayerRule):
    pair_identity = True

    def shape(self, layer: Any, leaf: Leaf) -> None:
        if layer.mode == "train":
            leaf.gaussian = False
        leaf.out_spatial = leaf.in_spatial

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        if lp.layer.mode == "test" or st.same is False:
            return st
        factor: Any = 1.0 / lp.layer.rate
        if st.same is not True:  # a mask of the pairs that are one input twice
            factor = xp.where(st.same, factor, 1.0).astype(st.nngp.dtype)
        for a in (st.nngp, st.ntk):
            if a is not None:
                _scale_same(xp, a, st, factor)
        return st

    def has_params(self, layer: Any) -> bool:
        return layer.mode == "train"

    def init(self, lp: LayerPlan, rng: Any, dtype: Any, parameterization: str
             ) -> tuple | None:
        """``(seed,)`` of the masks."""
        return (int(rng.integers(2**63)),)

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        if params is None:  # test mode
            return a, None
        rate = lp.layer.rate
        keep = np.random.default_rng(params[0]).random(a.shape) < rate
        # each row takes the mask of the first row equal to it
        _, first, inv = np.unique(a.reshape(a.shape[0], -1), axis=0, return_index=True,
                                  return_inverse=True)
        mask = keep[first[inv.reshape(-1)]] / rate
        return a * mask.astype(a.dtype), mask.astype(a.dtype)

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        return d if data is None else d * data

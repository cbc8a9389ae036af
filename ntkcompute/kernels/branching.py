"""FanIn rules: merge the kernels of independent branches (stax.FanInSum / Prod / Concat).

The plan has checked that the branches are independent (at most one lacks weights of its
own after the fan_out), so cross-branch covariances vanish in the limit:

* sum:     K = sum_i K_i,            Θ = sum_i Θ_i
* prod:    K = prod_i K_i,           Θ = sum_i Θ_i prod_{j != i} K_j   (product rule)
* concat:  K = sum_i c_i K_i / sum_i c_i, the same for Θ, with c_i the branches' channel
  counts (equal weights when the widths are left to the infinite limit)
"""

from __future__ import annotations

from .. import spec
from ..plan import LayerPlan
from .state import State


def fan_in(lp: LayerPlan, states: list[State], xp) -> State:
    """Merge ``states`` (all in one layout: the caller has aligned them)."""
    first = states[0]
    want_ntk = first.ntk is not None
    if isinstance(lp.layer, spec.FanInProd):
        nngp = first.nngp.copy()
        ntk = first.ntk.copy() if want_ntk else None
        for s in states[1:]:
            if want_ntk:
                ntk *= s.nngp
                ntk += nngp * s.ntk
            nngp *= s.nngp
        return first.with_(nngp=nngp, ntk=ntk)
    if isinstance(lp.layer, spec.FanInConcat) and lp.in_chans[0] is not None:
        weights = [c / sum(lp.in_chans) for c in lp.in_chans]
    elif isinstance(lp.layer, spec.FanInConcat):
        weights = [1.0 / len(states)] * len(states)
    else:
        weights = [1.0] * len(states)

    def combine(name: str):
        out = getattr(first, name) * weights[0]
        for w, s in zip(weights[1:], states[1:], strict=True):
            out += w * getattr(s, name)
        return out

    return first.with_(nngp=combine("nngp"), ntk=combine("ntk") if want_ntk else None)

"""Compose the per-layer rules along a plan: the one loop every kernel computation runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

from .. import spec
from ..plan import LayerPlan, Plan
from . import activations, linear, pooling
from .state import Array, State, expand_var, spatial_diagonal

Rule = Callable[[LayerPlan, State, ModuleType], State]

#: layer type -> kernel rule for the weighted and weight-free linear layers
RULES: dict[type, Rule] = {
    spec.Dense: linear.dense,
    spec.Conv: linear.conv,
    spec.AvgPool: pooling.avg_pool,
    spec.GlobalAvgPool: pooling.global_avg_pool,
    spec.Flatten: pooling.flatten,
    spec.Identity: pooling.identity,
}


def _diagonal_of(st: State, xp: ModuleType) -> Array:
    """Per-input variances at each position, ``(n, *spatial)``, from a self-pass state."""
    v = spatial_diagonal(xp, st.nngp, len(st.spatial)) if st.full else st.nngp
    return xp.ascontiguousarray(xp.moveaxis(v, -1, 0))


def _nonlinear(lp: LayerPlan, st: State, xp: ModuleType, va: Array, vb: Array) -> State:
    k11 = expand_var(xp, va, st.nb, 0, st.full)
    k22 = expand_var(xp, vb, st.nb, 1, st.full)
    nngp, dot = activations.apply(xp, lp.layer, st.nngp, k11, k22, st.ntk is not None)
    ntk = None
    if st.ntk is not None:
        ntk = st.ntk
        ntk *= dot
    return st.with_(nngp=nngp, ntk=ntk)


def _to_diagonal(st: State, xp: ModuleType) -> State:
    def diag(a: Array) -> Array:
        return xp.ascontiguousarray(spatial_diagonal(xp, a, len(st.spatial)))

    return st.with_(nngp=diag(st.nngp), ntk=None if st.ntk is None else diag(st.ntk), full=False)


def run(plan: Plan, st: State, xp: ModuleType,
        variances: tuple[Sequence[Array], Sequence[Array]] | None = None) -> tuple[State, list]:
    """Apply every layer of ``plan`` to ``st``.

    ``variances`` holds, for each nonlinearity in order, the per-input variances of the first
    and second inputs of the pairs. Without it (the self pass, ``st.nb == 1``) they are read
    off the state's own diagonal and returned, for the pair passes to reuse.
    """
    collected: list[Array] = []
    j = 0
    for lp in plan.layers:
        if isinstance(lp.layer, spec.NONLINEAR):
            if variances is None:
                v = _diagonal_of(st, xp)
                collected.append(v)
                st = _nonlinear(lp, st, xp, v, v)
            else:
                st = _nonlinear(lp, st, xp, variances[0][j], variances[1][j])
            j += 1
        else:
            st = RULES[type(lp.layer)](lp, st, xp)
        if st.full and not lp.out_full:
            st = _to_diagonal(st, xp)
    return st, collected

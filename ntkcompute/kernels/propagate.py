"""Compose the per-layer rules along a plan: the one loop every kernel computation runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

from .. import spec
from ..plan import LayerPlan, Plan
from . import activations, attention, branching, linear, normalization, pooling
from .state import Array, State, expand_var, spatial_diagonal

Rule = Callable[[LayerPlan, State, ModuleType], State]

#: layer type -> kernel rule for the weighted and weight-free linear layers
RULES: dict[type, Rule] = {
    spec.Dense: linear.dense,
    spec.Conv: linear.conv,
    spec.AvgPool: pooling.avg_pool,
    spec.GlobalAvgPool: pooling.global_avg_pool,
    spec.GlobalSumPool: pooling.global_avg_pool,  # SumPool is an AvgPool
    spec.Flatten: pooling.flatten,
    spec.Identity: pooling.identity,
    spec.GlobalSelfAttention: lambda lp, st, xp: attention.global_self_attention(
        lp, st, xp, None, None),  # square-root scaling: no self statistic
}


def _nonlinear(lp: LayerPlan, st: State, xp: ModuleType, va: Array, vb: Array) -> State:
    k11 = expand_var(xp, va, st.nb, 0, st.full)
    k22 = expand_var(xp, vb, st.nb, 1, st.full)
    nngp, dot = activations.apply(xp, lp.layer, st.nngp, k11, k22, st.ntk is not None)
    ntk = None
    if st.ntk is not None:
        ntk = st.ntk
        ntk *= dot
    return st.with_(nngp=nngp, ntk=ntk)


#: layer type -> rule that also takes the self statistics of the pairs' two inputs
SELF_RULES: dict[type, Callable[..., State]] = {
    **{cls: _nonlinear for cls in spec.NONLINEAR},
    spec.LayerNorm: normalization.layer_norm,
    spec.GlobalSelfAttention: attention.global_self_attention,
}


def _rule(table: dict[type, Callable[..., State]], layer: object) -> Callable[..., State]:
    """The rule of the layer's type, or of its nearest base (``abrelu`` is an ``ab_relu``)."""
    return next(table[c] for c in type(layer).__mro__ if c in table)


def self_statistic(lp: LayerPlan, st: State, xp: ModuleType) -> Array:
    """From a self-pass state (batch ``(n,)``): per-input variances ``(n, *spatial)``
    (``"var"``) or self-covariances ``(n, *spatial, *spatial)`` (``"cov"``)."""
    d = len(st.spatial)
    if lp.self_stat == "cov":  # (S1, S1', .., b) -> (b, S1, .., Sd, S1', .., Sd')
        perm = [st.nngp.ndim - 1, *range(0, 2 * d, 2), *range(1, 2 * d, 2)]
        return xp.ascontiguousarray(st.nngp.transpose(perm))
    v = spatial_diagonal(xp, st.nngp, d) if st.full else st.nngp
    return xp.ascontiguousarray(xp.moveaxis(v, -1, 0))


def _to_diagonal(st: State, xp: ModuleType) -> State:
    def diag(a: Array) -> Array:
        return xp.ascontiguousarray(spatial_diagonal(xp, a, len(st.spatial)))

    return st.with_(nngp=diag(st.nngp), ntk=None if st.ntk is None else diag(st.ntk), full=False)


def _copy(st: State) -> State:
    """An independent copy: rules may update their input's arrays in place."""
    return st.with_(nngp=st.nngp.copy(), ntk=None if st.ntk is None else st.ntk.copy())


def run(plan: Plan, st: State, xp: ModuleType,
        stats: tuple[Sequence[Array], Sequence[Array]] | None = None) -> tuple[State, list]:
    """Apply every layer of ``plan`` to ``st``.

    ``stats`` holds, for each layer in ``plan.self_indices`` in order, the self statistics of
    the first and second inputs of the pairs. Without it (the self pass, ``st.nb == 1``) they
    are read off the states themselves and returned, for the pair passes to reuse.
    """
    collected: list[Array] = []
    slots = [st]  # one state per open branch
    j = 0
    for lp in plan.layers:
        s, layer = lp.slot, lp.layer
        if isinstance(layer, spec.FanOut):
            slots[s:s + 1] = [slots[s]] + [_copy(slots[s]) for _ in range(lp.arity - 1)]
            continue
        if isinstance(layer, spec.FAN_IN):
            ins = slots[s:s + lp.arity]
            if not lp.out_full:
                ins = [_to_diagonal(x, xp) if x.full else x for x in ins]
            slots[s:s + lp.arity] = [branching.fan_in(lp, ins, xp)]
        elif lp.self_stat:
            if stats is None:
                v = self_statistic(lp, slots[s], xp)
                collected.append(v)
                slots[s] = _rule(SELF_RULES, layer)(lp, slots[s], xp, v, v)
            else:
                slots[s] = _rule(SELF_RULES, layer)(lp, slots[s], xp, stats[0][j], stats[1][j])
            j += 1
        else:
            slots[s] = _rule(RULES, layer)(lp, slots[s], xp)
        if slots[s].full and not lp.out_full:
            slots[s] = _to_diagonal(slots[s], xp)
    return slots[0], collected

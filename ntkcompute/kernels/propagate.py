"""Compose the per-layer rules along a plan: the one loop every kernel computation runs.

Each layer's rule is its registered :class:`ntkcompute.layers.LayerRule` (``kernel``, or
``merge`` for a fan_in)."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from ..layers import rule_of
from ..plan import LayerPlan, Plan
from . import inputs
from .state import Array, Refine, State, spatial_diagonal


def self_statistic(lp: LayerPlan, st: State, xp: ModuleType) -> Array:
    """From a self-pass state (batch ``(n,)``): per-input variances ``(n, *spatial)``
    (``"var"``) or self-covariances ``(n, *spatial, *spatial)`` (``"cov"``)."""
    d = len(st.spatial)
    if lp.self_stat == "cov":  # (S1, S1', .., b) -> (b, S1, .., Sd, S1', .., Sd')
        perm = [st.nngp.ndim - 1, *range(0, 2 * d, 2), *range(1, 2 * d, 2)]
        return xp.ascontiguousarray(st.nngp.transpose(perm))
    v = spatial_diagonal(xp, st.nngp, d) if st.full else st.nngp
    return xp.ascontiguousarray(xp.moveaxis(v, -1, 0))


def to_diagonal(st: State, xp: ModuleType) -> State:
    """A full-layout state reduced to its spatial diagonal."""

    def diag(a: Array) -> Array:
        return xp.ascontiguousarray(spatial_diagonal(xp, a, len(st.spatial)))

    return st.with_(nngp=diag(st.nngp), ntk=None if st.ntk is None else diag(st.ntk), full=False)


def copy(st: State) -> State:
    """An independent copy: rules may update their input's arrays in place."""
    return st.with_(nngp=st.nngp.copy(), ntk=None if st.ntk is None else st.ntk.copy())


def run(plan: Plan, st: State, xp: ModuleType,
        stats: tuple[Sequence[Array], Sequence[Array]] | None = None) -> tuple[State, list]:
    """Apply every layer of ``plan`` to ``st``.

    ``stats`` holds, for each layer in ``plan.self_indices`` in order, the self statistics of
    the first and second inputs of the pairs. Without it (the self pass, ``st.nb == 1``) they
    are read off the states themselves and returned, for the pair passes to reuse. Pairs that
    ``st.refine`` lists (near pairs of a float32 block) are recomputed in float64 at the end.
    """
    refine = st.refine
    out, collected = run_layers(plan.layers, st.with_(refine=None), xp, stats)
    if refine is not None and stats is not None:
        return _refined(plan, out, refine, xp), collected
    return out, collected


def run_layers(layers: Sequence[LayerPlan], st: State, xp: ModuleType,
               stats: tuple[Sequence[Array], Sequence[Array]] | None = None
               ) -> tuple[State, list]:
    """Apply ``layers`` (a run of a plan's rows that starts and ends on one open branch)
    to ``st``; ``stats`` and the returned statistics as for :func:`run`, for these layers'
    self statistics in order."""
    collected: list[Array] = []
    slots = [st]  # one state per open branch
    j = 0
    skip = False
    for at, lp in enumerate(layers):
        if skip:  # the nonlinearity the layer before absorbed
            skip = False
            continue
        s, rule = lp.slot, rule_of(lp.layer)
        if rule.structure == "fan_out":
            slots[s:s + 1] = [slots[s]] + [copy(slots[s]) for _ in range(lp.arity - 1)]
            continue
        if rule.structure == "fan_in":
            ins = slots[s:s + lp.arity]
            if not lp.out_full:
                ins = [to_diagonal(x, xp) if x.full else x for x in ins]
            slots[s:s + lp.arity] = [rule.merge(lp, ins, xp)]
        elif lp.self_stat:
            if stats is None:
                v = self_statistic(lp, slots[s], xp)
                collected.append(v)
                slots[s] = rule.kernel(lp, slots[s], xp, v, v)
            else:
                slots[s] = rule.kernel(lp, slots[s], xp, stats[0][j], stats[1][j])
            j += 1
        else:
            nxt = _absorbable(layers, at, stats is not None)
            out = None
            if nxt is not None:
                out = rule.kernel_then(lp, slots[s], xp, nxt, stats[0][j], stats[1][j])
            if out is None:
                slots[s] = rule.kernel(lp, slots[s], xp)
            else:
                slots[s], lp, skip = out, nxt, True
                j += 1
        if slots[s].full and not lp.out_full:
            slots[s] = to_diagonal(slots[s], xp)
    return slots[0], collected


def _absorbable(layers: Sequence[LayerPlan], at: int, pair_pass: bool) -> LayerPlan | None:
    """The layer after ``layers[at]`` if ``layers[at]``'s rule may fuse it into its own pass
    (``kernel_then``): a pair pass (its self statistics are known beforehand), a rule that
    has ``kernel_then``, and a nonlinearity on the same branch right after it."""
    if not pair_pass or at + 1 >= len(layers):
        return None
    lp, nxt = layers[at], layers[at + 1]
    if not hasattr(rule_of(lp.layer), "kernel_then") or nxt.slot != lp.slot or \
            nxt.self_stat != "var" or not rule_of(nxt.layer).nonlinear:
        return None
    return nxt


def _self_stats(plan: Plan, x: Array, xp: ModuleType, want_ntk: bool) -> list[Array]:
    """The self statistics of the rows of ``x``, as ``infinite.self_pass`` collects them."""
    return run(plan, inputs.self_input(xp, x, plan.input_full, want_ntk, plan.pattern), xp)[1]


def _refined(plan: Plan, st: State, ref: Refine, xp: ModuleType) -> State:
    """``st`` (a finished float32 pair block, batch ``(n1, n2)``) with the pairs of ``ref``
    recomputed in float64 from the inputs: their self statistics (float64 self passes of the
    inputs involved), then the pairs as a list (batch ``(m,)``), in chunks of at most half the
    block's pair count so that the float64 work fits in the block's memory."""
    want_ntk = st.ntk is not None
    names = ("nngp", "ntk") if want_ntk else ("nngp",)
    out = {g: getattr(st, g).copy() for g in names}
    xa, xb = ref.x1.astype(xp.float64), ref.x2.astype(xp.float64)
    step = max(1, out["nngp"].size // 2)
    for i in range(0, ref.rows.size, step):
        r, c = ref.rows[i:i + step], ref.cols[i:i + step]
        ur, ir = xp.unique(r, return_inverse=True)
        uc, ic = xp.unique(c, return_inverse=True)
        va = _self_stats(plan, xa[ur], xp, want_ntk)
        vb = _self_stats(plan, xb[uc], xp, want_ntk)
        pairs = inputs.pairs_input(xp, xa[r], xb[c], plan.input_full, want_ntk,
                                   plan.pair_identity, plan.pattern)
        res, _ = run(plan, pairs, xp, ([v[ir] for v in va], [v[ic] for v in vb]))
        for g in names:
            out[g][r, c] = getattr(res, g)
    return st.with_(**out)

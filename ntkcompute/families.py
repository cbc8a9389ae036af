"""Kernel families: the kernels of every depth of a network from one pass over its layers.

A family is an architecture with one top-level ``repeat`` (the body: a block such as
``[conv, relu]`` or a residual block), the layers before it (the stem) and after it (the
head, e.g. ``[global_avg_pool, dense]``), and the depths wanted: member ``d`` is the network
with the body repeated ``d`` times. Arora et al. 2020 select the depth per dataset (and
Arora et al. 2019, Shankar et al. 2020 for CIFAR); computing each member on its own repeats
the shared first layers every time.

The family pass runs stem and body once, up to the deepest member, and at each member's
depth applies that member's head to a copy of the state: the head costs what the readout
costs (a pooling and a dense layer), so a 5-depth family costs little more than its deepest
member alone (``bench/families.py``). Each member's kernels are computed by the same rules
on the same values as a kernel of that member alone (tested to 1e-12; they are usually
bit-identical), and the self statistics of every member's head come from the same pass over
each input.

Variants ("fixed bottom layers", Arora et al. 2020, Sec. 4): variant ``v`` of a member is
its NTK with the stem and the first ``v`` repeats of the body fixed, only the layers after
them trained (at a member of depth ``d <= v`` every body layer is fixed: only the head is
trained). The NTK is a sum over layers of each layer's parameter contribution carried up
through the layers above it (Jacot et al. 2018, Thm. 1), so fixing the bottom layers is the
same recursion with the NTK restarted at zero after block ``v``; the NNGP does not depend on
which layers are trained. The pass therefore branches at each variant's block, with the NTK
zeroed, and carries every branch up to each member's head: a branch costs the layers above
its block (``bench/families.py --variants``), not a pass of its own.

Members are computed in float64.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .backend import array_module
from .errors import InputError
from .infinite import (
    DEFAULT_MEMORY,
    SelfCov,
    assemble,
    block_budget,
    block_side,
    by_chunks,
    bytes_per_pair,
    checked_inputs,
    thread_count,
)
from .kernels import inputs
from .kernels.propagate import copy, run_layers, to_diagonal
from .kernels.state import State
from .layers import rule_of
from .layers.branching import Repeat
from .plan import LayerPlan, Plan, make_plan
from .spec import Architecture, parse_arch, spec_size
from .validate import check_get

__all__ = ["Family", "FamilyPlan", "family_gram", "family_self_pass", "kernel_family",
           "make_family", "make_family_plan", "member_axes"]

#: Most members a family may have (each is a Gram matrix of the result).
MAX_MEMBERS = 64
#: Most repeats of the body (a ``repeat``'s own bound).
MAX_REPEAT = 1000
#: Most values of a bias grid (each a pass of its own over the shared inputs).
MAX_BIASES = 8


def _with_field(layer: Any, field: str, value: Any) -> Any:
    """``layer`` (a spec model, or a list of them) with every ``field`` it and its nested
    layers have set to ``value``."""
    if isinstance(layer, list):
        return [_with_field(x, field, value) for x in layer]
    if not hasattr(type(layer), "model_fields"):
        return layer
    fields = type(layer).model_fields
    update = {name: _with_field(getattr(layer, name), field, value) for name in fields}
    if field in fields:
        update[field] = value
    return layer.model_copy(update=update)


def fixed(layer: Any) -> Any:
    """``layer`` (a spec model, or a list of them) with every ``trainable`` field set to
    False, nested layers included."""
    return _with_field(layer, "trainable", False)


def with_bias(arch: Architecture, b_std: float) -> Architecture:
    """``arch`` with every layer's ``b_std`` (dense, conv, attention; nested ones too) set
    to ``b_std``."""
    return arch.model_copy(update={"layers": _with_field(list(arch.layers), "b_std",
                                                         float(b_std))})


@dataclass(frozen=True)
class Family:
    """An architecture with one top-level ``repeat`` at ``layers[at]``, the repeat counts of
    its members, increasing, the variants (numbers of fixed bottom blocks, increasing;
    None: the NTK of every layer trained only, the kernels have no variant axis) and the
    bias grid (``b_std`` values given to every layer with a bias field, increasing; None:
    the architecture's own, no ``b_std`` axis)."""

    arch: Architecture
    at: int
    depths: tuple[int, ...]
    variants: tuple[int, ...] | None = None
    b_stds: tuple[float, ...] | None = None

    def biased(self, b_std: float) -> Family:
        """The family of one value of the bias grid (no ``b_std`` axis)."""
        return Family(with_bias(self.arch, b_std), self.at, self.depths, self.variants)

    def member(self, depth: int, variant: int = 0, b_std: float | None = None
               ) -> Architecture:
        """The network with the body repeated ``depth`` times; ``variant`` v > 0: with the
        stem and the first ``min(v, depth)`` repeats fixed (``trainable: false``);
        ``b_std``: with every layer's ``b_std`` set to it."""
        if b_std is not None:
            return self.biased(b_std).member(depth, variant)
        layers = list(self.arch.layers)
        body = layers[self.at]
        frozen = min(variant, depth)
        if frozen == 0:
            layers[self.at] = body.model_copy(update={"n": depth})
            return self.arch.model_copy(update={"layers": layers})
        middle = [fixed(body.model_copy(update={"n": frozen}))]
        if depth > frozen:
            middle.append(body.model_copy(update={"n": depth - frozen}))
        layers = [*fixed(layers[:self.at]), *middle, *layers[self.at + 1:]]
        return self.arch.model_copy(update={"layers": layers})

    @property
    def members(self) -> list[Architecture]:
        return [self.member(d) for d in self.depths]


def member_axes(depths: Sequence[int] | None, variants: Sequence[int] | None,
                b_stds: Sequence[float] | None, name: str
                ) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The member axes of a family's kernel ``name`` ("ntk" / "nngp") and their names:
    ``([B,] D[, V])`` [b_std, depth, variant]; none without ``depths`` (one network). The
    NNGP has no variant axis: it does not depend on which layers are trained."""
    if depths is None:
        return (), ()
    axes = [] if b_stds is None else [(len(b_stds), "b_std")]
    axes.append((len(depths), "depth"))
    if variants is not None and name == "ntk":
        axes.append((len(variants), "variant"))
    return tuple(n for n, _ in axes), tuple(a for _, a in axes)


def _increasing(values: Any, field: str, least: int) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise InputError(f"must be a list of ints, got {values!r}", field=field)
    out = []
    for d in values:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < least:
            raise InputError(f"must be ints >= {least}, got {d!r}", field=field)
        out.append(int(d))
    if not out or len(out) > MAX_MEMBERS or any(b <= a for a, b in itertools.pairwise(out)):
        raise InputError(f"must be 1 to {MAX_MEMBERS} increasing ints, got {out}",
                         field=field)
    return out


def _bias_grid(values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise InputError(f"must be a list of numbers, got {values!r}", field="b_stds")
    out = []
    for b in values:
        if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)) \
                or not np.isfinite(b) or b < 0:
            raise InputError(f"must be finite numbers >= 0, got {b!r}", field="b_stds")
        out.append(float(b))
    if not out or len(out) > MAX_BIASES or any(b <= a for a, b in itertools.pairwise(out)):
        raise InputError(f"must be 1 to {MAX_BIASES} increasing values, got {out}",
                         field="b_stds")
    return tuple(out)


def make_family(arch: Architecture | dict | str, depths: Sequence[int],
                variants: Sequence[int] | None = None,
                b_stds: Sequence[float] | None = None) -> Family:
    """A :class:`Family` of ``arch`` (one top-level ``repeat`` layer; its ``n`` is ignored)
    at ``depths`` (increasing ints >= 1, at most :data:`MAX_MEMBERS`), with ``variants``
    (increasing ints >= 0, each at most the deepest depth: the numbers of fixed bottom
    blocks) and ``b_stds`` (increasing values >= 0, at most :data:`MAX_BIASES`: every
    layer's ``b_std``); at most :data:`MAX_MEMBERS` NTK Gram matrices in all.

    Raises:
        InputError: no or several top-level repeats (field ``layers``), bad depths
            (field ``depths``), bad variants (field ``variants``), a bad bias grid or one
            for a network without a layer that has a bias (field ``b_stds``).
    """
    arch = parse_arch(arch)
    at = [i for i, layer in enumerate(arch.layers) if isinstance(layer, Repeat)]
    if len(at) != 1:
        raise InputError(f"a family needs exactly one top-level repeat (the body whose "
                         f"count is the depth), found {len(at)}", field="layers")
    ds = _increasing(depths, "depths", 1)
    vs = None
    if variants is not None:
        vs = tuple(_increasing(variants, "variants", 0))
        if vs[-1] > ds[-1]:
            raise InputError(f"variant {vs[-1]} fixes more blocks than the deepest member "
                             f"({ds[-1]}) has", field="variants")
        if len(ds) * len(vs) > MAX_MEMBERS:
            raise InputError(f"{len(ds)} depths x {len(vs)} variants is more than "
                             f"{MAX_MEMBERS} kernels", field="variants")
    bs = None
    if b_stds is not None:
        bs = _bias_grid(b_stds)
        kernels = len(bs) * len(ds) * len(vs or (0,))
        if kernels > MAX_MEMBERS:
            raise InputError(f"{len(bs)} b_stds x {len(ds)} depths x {len(vs or (0,))} "
                             f"variants is more than {MAX_MEMBERS} kernels", field="b_stds")
        if with_bias(arch, 1.0) == arch and with_bias(arch, 0.0) == arch:
            raise InputError("no layer of the architecture has a bias (b_std)",
                             field="b_stds")
    fam = Family(arch, at[0], tuple(ds), vs, bs)
    if ds[-1] > MAX_REPEAT:
        raise InputError(f"the deepest member repeats its body {ds[-1]} times, more than "
                         f"{MAX_REPEAT}", field="depths")
    try:
        spec_size(list(fam.member(ds[-1]).layers))
    except ValueError as e:
        raise InputError(f"the deepest member {e}", field="depths") from None
    return fam


def _top(lp: LayerPlan) -> int:
    return int(re.match(r"layers\[(\d+)\]", lp.path).group(1))


def _same_row(a: LayerPlan, b: LayerPlan) -> bool:
    return (a.layer == b.layer and a.in_spatial == b.in_spatial
            and a.out_spatial == b.out_spatial and a.window == b.window and a.slot == b.slot
            and a.arity == b.arity and a.self_stat == b.self_stat)


@dataclass(frozen=True)
class FamilyPlan:
    """The family pass: ``segments[i]`` are the deepest plan's rows from member i-1's depth
    to member i's, ``heads[i]`` member i's rows after the body (from its own plan). Self
    statistics are collected and consumed in pass order: segment 0, head 0, segment 1, ..."""

    family: Family
    plans: tuple[Plan, ...]  # each member's own plan
    segments: tuple[tuple[LayerPlan, ...], ...]
    heads: tuple[tuple[LayerPlan, ...], ...]
    # variant v -> the row of the deepest plan's prefix (stem and body) after its v-th
    # block, where its branch starts; for 1 <= v < the deepest depth
    restarts: tuple[tuple[int, int], ...] = ()
    # a bias grid: one plan per b_std (the same rows, other biases), run on shared inputs;
    # this plan's own fields are the first's
    biased: tuple[FamilyPlan, ...] = ()

    @property
    def deepest(self) -> Plan:
        return self.plans[-1]

    @property
    def depths(self) -> tuple[int, ...]:
        return self.family.depths

    @property
    def variants(self) -> tuple[int, ...] | None:
        return self.family.variants

    @property
    def b_stds(self) -> tuple[float, ...] | None:
        return self.family.b_stds

    def lead(self, name: str) -> tuple[int, ...]:
        """The member axes of kernel ``name`` (:func:`member_axes`)."""
        return member_axes(self.depths, self.variants, self.b_stds, name)[0]

    @property
    def layers(self) -> tuple[LayerPlan, ...]:
        """Every row the pass runs, in pass order (segment 0, head 0, segment 1, ...)."""
        return tuple(lp for seg, head in zip(self.segments, self.heads, strict=True)
                     for lp in (*seg, *head))

    @property
    def self_layers(self) -> tuple[LayerPlan, ...]:
        """The rows with a self statistic, in the order the pass collects them."""
        return tuple(lp for lp in self.layers if lp.self_stat)

    def bytes_per_pair(self, itemsize: int) -> int:
        """Peak working memory of one pair: the worst member's, plus the state kept at a
        member's depth while its head runs, plus each variant branch's state."""
        tap = max(p.max_state_size for p in self.plans)
        if self.biased:  # and the shared input state, copied for each b_std
            return max(p.bytes_per_pair(itemsize) for p in self.biased) + \
                2 * tap * itemsize
        return max(bytes_per_pair(p, itemsize) for p in self.plans) + \
            2 * (1 + len(self.restarts)) * tap * itemsize


def _prefix_length(p: Plan, deep: tuple[LayerPlan, ...], at: int, what: str,
                   field: str) -> int:
    """How many of the deepest plan's rows ``p``'s stem and body are (they must be the
    same rows)."""
    prefix = [lp for lp in p.layers if _top(lp) <= at]
    end = len(prefix)
    if not all(_same_row(a, b) for a, b in zip(prefix, deep[:end], strict=False)) or \
            any(a.in_full and not b.in_full for a, b in zip(prefix, deep[:end], strict=False)):
        raise InputError(f"{what}'s layers do not run as the deepest member's first layers "
                         "(a shape or covariance layout differs); compute its kernel on its "
                         "own", field=field)
    return end


def make_family_plan(family: Family, input_shape: tuple[int, ...]) -> FamilyPlan:
    """Plan every member on inputs of ``input_shape`` and cut the deepest plan at each
    member's depth and each variant's block (raises :class:`InputError` as
    :func:`ntkcompute.plan.make_plan`; a weighted layer without a ``trainable`` field below
    a variant's block: field ``variants``); with a bias grid, one such plan per value."""
    if family.b_stds is not None:
        biased = tuple(make_family_plan(family.biased(b), input_shape)
                       for b in family.b_stds)
        return replace(biased[0], family=family, biased=biased)
    plans = tuple(make_plan(a, input_shape) for a in family.members)
    deep = plans[-1].layers
    segments, heads, start = [], [], 0
    for d, p in zip(family.depths, plans, strict=True):
        end = _prefix_length(p, deep, family.at, f"member {d}", "depths")
        segments.append(tuple(deep[start:end]))
        heads.append(tuple(lp for lp in p.layers if _top(lp) > family.at))
        start = end
    restarts = []
    for v in family.variants or ():
        if not 0 < v < family.depths[-1]:
            continue
        end = _prefix_length(make_plan(family.member(v), input_shape), deep, family.at,
                             f"variant {v}", "variants")
        restarts.append((v, end))
    top = max(family.variants or (0,))
    if top:
        stop = start if top >= family.depths[-1] else dict(restarts)[top]
        for lp in deep[:stop]:
            if rule_of(lp.layer).weighted and "trainable" not in type(lp.layer).model_fields:
                raise InputError(f"{lp.path} ({lp.layer.type}) has weights that cannot be "
                                 f"fixed (no trainable field), below variant {top}'s block",
                                 field="variants")
    return FamilyPlan(family, plans, tuple(segments), tuple(heads), tuple(restarts))


def run_family(fp: FamilyPlan, st: State, xp: Any,
               stats: tuple[Sequence[Any], Sequence[Any]] | None = None
               ) -> tuple[list[tuple[Any, list[Any]]], list]:
    """The family pass on ``st``: each member's ``(nngp, [ntk of each variant])`` (one ntk
    without variants; Nones without the NTK), and (without ``stats``: the self pass) the
    self statistics in pass order (segment 0, head 0, segment 1, ...: the unfixed pass's;
    a variant branch's are the same numbers, as they depend on the NNGP only)."""
    collected: list = []
    k = 0  # the pass-order index of the next self statistic
    deep = [lp for seg in fp.segments for lp in seg]
    restarts = dict(fp.restarts)
    variants = fp.variants or (0,)
    want_ntk = st.ntk is not None
    branches: dict[int, State] = {}  # variant -> its state, once past its block

    def run(layers: Sequence[LayerPlan], s: State, collect: bool) -> State:
        count = sum(1 for lp in layers if lp.self_stat)
        sub = None if stats is None else (stats[0][k:k + count], stats[1][k:k + count])
        s, c = run_layers(layers, s, xp, sub)
        if collect:
            collected.extend(c)
        return s

    def head_of(s: State, head: tuple[LayerPlan, ...], collect: bool, own: bool) -> State:
        """``head`` on ``s`` (``own``: ``s`` may be updated in place)."""
        if head and s.full and not head[0].in_full:
            s = to_diagonal(s, xp)  # new arrays
        elif not own and not (head and rule_of(head[0].layer).keeps_input(head[0])):
            s = copy(s)  # the head's rules may update the state's arrays in place
        return run(head, s, collect)

    def zeroed(s: State) -> State:  # the layers below fixed: the NTK restarts at zero
        return s.with_(nngp=s.nngp.copy(), ntk=xp.zeros_like(s.nngp))

    outs: list[tuple[Any, list[Any]]] = []
    pos = 0
    for d, seg, head in zip(fp.depths, fp.segments, fp.heads, strict=True):
        end = pos + len(seg)
        for cut in sorted({r for r in restarts.values() if pos < r < end} | {end}):
            rows = deep[pos:cut]
            for v in branches:
                branches[v] = run(rows, branches[v], False)
            st = run(rows, st, True)
            k += sum(1 for lp in rows if lp.self_stat)
            pos = cut
            if want_ntk:
                branches.update({v: zeroed(st) for v, r in restarts.items() if r == cut})
        head_k = k
        top = head_of(st, head, True, False)
        ntks = [top.ntk]
        if fp.variants is not None and want_ntk:
            ntks, only_head = [], None
            for v in variants:
                k = head_k  # each branch's head reads the same statistics
                if v == 0:
                    ntks.append(top.ntk)
                elif v < d:
                    ntks.append(head_of(branches[v], head, False, False).ntk)
                else:
                    if only_head is None:
                        only_head = head_of(zeroed(st), head, False, True).ntk
                    ntks.append(only_head)
        elif fp.variants is not None:
            ntks = [None] * len(variants)
        k = head_k + sum(1 for lp in head if lp.self_stat)
        outs.append((top.nngp, ntks))
    return outs, collected


def family_self_pass(fp: FamilyPlan, x: Any, *, want_ntk: bool = True,
                     memory: int = DEFAULT_MEMORY, threads: int = 1) -> SelfCov:
    """The family pass over every input paired with itself, ``x`` of shape
    ``(n, *spatial, C)``: ``variances`` in pass order (:attr:`FamilyPlan.self_layers`),
    ``nngp`` / ``ntk`` each member's diagonal, ``(n, D)`` (``ntk`` of a family with
    variants: ``(n, D, V)``); with a bias grid every field has ``B`` after ``n``."""
    xp = array_module(x)

    def run(p: FamilyPlan, st: State) -> tuple:
        outs, stats = run_family(p, st, xp)
        ntk = None
        if want_ntk:
            ntk = xp.stack([xp.stack(ntks, axis=1) for _, ntks in outs], axis=1)
            ntk = ntk if fp.variants is not None else ntk[:, :, 0]
        return (*stats, xp.stack([nngp for nngp, _ in outs], axis=1), ntk)

    def one(sl: slice) -> tuple:
        st = inputs.self_input(xp, x[sl], fp.deepest.input_full, want_ntk,
                               fp.deepest.pattern)
        if not fp.biased:
            return run(fp, st)
        # the data pass is shared; each b_std's statistics stacked on axis 1
        parts = [run(p, copy(st)) for p in fp.biased]
        return tuple(None if part[0] is None else xp.stack(part, axis=1)
                     for part in zip(*parts, strict=True))

    *variances, nngp, ntk = by_chunks(one, x, fp.bytes_per_pair(x.dtype.itemsize), memory,
                                      threads)
    return SelfCov(tuple(variances), nngp, ntk)


def family_gram(fp: FamilyPlan, x1: Any, x2: Any, s1: SelfCov, s2: SelfCov, *,
                symmetric: bool, get: tuple[str, ...], block: int, threads: int = 1,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Every member's Gram matrices ``{name: (D, n1, n2)}`` (``ntk`` of a family with
    variants: ``(D, V, n1, n2)``; with a bias grid ``B`` first) between validated rows ``x1``,
    ``x2`` given their :func:`family_self_pass` statistics (as :func:`ntkcompute.infinite.gram`
    for one network; ``symmetric``: x2 is x1, blocks mirrored exactly)."""
    xp = array_module(x1)
    want_ntk = "ntk" in get
    identity = any(p.pair_identity for p in fp.plans)

    plans = fp.biased or (fp,)

    def pair(r: slice, c: slice) -> dict[str, list[Any]]:
        st = inputs.pair_input(xp, x1[r], x2[c], fp.deepest.input_full, want_ntk, identity,
                               fp.deepest.pattern)
        out: dict[str, list[Any]] = {"nngp": [], "ntk": []}
        for k, p in enumerate(plans):  # a bias grid: the data pass is shared
            va = tuple(v[r][:, k] if fp.biased else v[r] for v in s1.variances)
            vb = tuple(v[c][:, k] if fp.biased else v[c] for v in s2.variances)
            outs, _ = run_family(p, copy(st) if fp.biased else st, xp, (va, vb))
            out["nngp"] += [nngp for nngp, _ in outs]
            out["ntk"] += [t for _, ntks in outs for t in ntks]
        return out

    lead = {name: fp.lead(name) for name in ("nngp", "ntk")}
    out = assemble(pair, x1.shape[0], x2.shape[0],
                   {name: int(np.prod(v)) for name, v in lead.items()}, symmetric=symmetric,
                   get=get, block=block, dtype=x1.dtype, xp=xp, threads=threads,
                   progress=progress)
    return {name: v.reshape(*lead[name], *v.shape[1:]) for name, v in out.items()}


def kernel_family(arch: Architecture | dict | str | Family, x1: Any, x2: Any | None = None, *,
                  depths: Sequence[int] | None = None,
                  variants: Sequence[int] | None = None,
                  b_stds: Sequence[float] | None = None,
                  get: tuple[str, ...] | str = ("ntk", "nngp"),
                  memory: int = DEFAULT_MEMORY, threads: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The NTK and NNGP of every member of a family, from one pass.

    Args:
        arch: an architecture with one top-level ``repeat`` (its count is the depth), or a
            :class:`Family`.
        x1, x2: as for :func:`ntkcompute.kernel` (x2 omitted: symmetric).
        depths: the members' repeat counts, increasing (required unless ``arch`` is a
            Family).
        variants: numbers of fixed bottom blocks, increasing (0: every layer trained; v:
            the stem and the first v repeats fixed), each at most the deepest depth.
        b_stds: a bias grid: every layer's ``b_std`` set to each value in turn, increasing
            (each value a family pass of its own; the inputs' pass is shared).
        get, memory, threads, progress: as for :func:`ntkcompute.kernel`.

    Returns:
        ``{"ntk": (D, n1, n2), "nngp": (D, n1, n2), "depths": (D,)}`` (float64), member i
        at ``depths[i]``; restricted to ``get``. With ``variants``: ``"ntk"`` is
        ``(D, V, n1, n2)``, ``[i, j]`` the member at ``depths[i]`` with ``variants[j]``
        blocks fixed, and ``"variants"`` is ``(V,)`` (the NNGP does not depend on it). With
        ``b_stds``: every array has ``B`` first (``[k]`` at ``b_stds[k]``), and
        ``"b_stds"`` is ``(B,)``.
    """
    if isinstance(arch, Family):
        fam = arch if variants is None and b_stds is None else make_family(
            arch.arch, arch.depths, variants if variants is not None else arch.variants,
            b_stds if b_stds is not None else arch.b_stds)
    else:
        fam = make_family(arch, depths if depths is not None else [], variants, b_stds)
    get = check_get(get)
    x1, x2, symmetric = checked_inputs(x1, x2, np.dtype(np.float64))
    fp = make_family_plan(fam, tuple(x1.shape))
    xp = array_module(x1)
    threads = thread_count(xp, threads)
    budget = block_budget(xp, memory, threads)
    s1 = family_self_pass(fp, x1, want_ntk="ntk" in get, memory=budget, threads=threads)
    s2 = s1 if symmetric else family_self_pass(fp, x2, want_ntk="ntk" in get, memory=budget,
                                               threads=threads)
    out = family_gram(fp, x1, x2, s1, s2, symmetric=symmetric, get=get,
                      block=block_side(fp.bytes_per_pair(8), budget), threads=threads,
                      progress=progress)
    out["depths"] = np.asarray(fam.depths)
    if fam.variants is not None:
        out["variants"] = np.asarray(fam.variants)
    if fam.b_stds is not None:
        out["b_stds"] = np.asarray(fam.b_stds)
    return out

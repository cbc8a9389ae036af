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

Members are computed in float64.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
           "make_family", "make_family_plan"]

#: Most members a family may have (each is a Gram matrix of the result).
MAX_MEMBERS = 64
#: Most repeats of the body (a ``repeat``'s own bound).
MAX_REPEAT = 1000


@dataclass(frozen=True)
class Family:
    """An architecture with one top-level ``repeat`` at ``layers[at]`` and the repeat
    counts of its members, increasing."""

    arch: Architecture
    at: int
    depths: tuple[int, ...]

    def member(self, depth: int) -> Architecture:
        """The network with the body repeated ``depth`` times."""
        layers = list(self.arch.layers)
        layers[self.at] = layers[self.at].model_copy(update={"n": depth})
        return self.arch.model_copy(update={"layers": layers})

    @property
    def members(self) -> list[Architecture]:
        return [self.member(d) for d in self.depths]


def make_family(arch: Architecture | dict | str, depths: Sequence[int]) -> Family:
    """A :class:`Family` of ``arch`` (one top-level ``repeat`` layer; its ``n`` is ignored)
    at ``depths`` (increasing ints >= 1, at most :data:`MAX_MEMBERS`).

    Raises:
        InputError: no or several top-level repeats (field ``layers``), bad depths
            (field ``depths``).
    """
    arch = parse_arch(arch)
    at = [i for i, layer in enumerate(arch.layers) if isinstance(layer, Repeat)]
    if len(at) != 1:
        raise InputError(f"a family needs exactly one top-level repeat (the body whose "
                         f"count is the depth), found {len(at)}", field="layers")
    if isinstance(depths, (str, bytes)) or not isinstance(depths, (Sequence, np.ndarray)):
        raise InputError(f"must be a list of ints, got {depths!r}", field="depths")
    ds = []
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InputError(f"must be ints >= 1, got {d!r}", field="depths")
        ds.append(int(d))
    if not ds or len(ds) > MAX_MEMBERS or any(b <= a for a, b in itertools.pairwise(ds)):
        raise InputError(f"must be 1 to {MAX_MEMBERS} increasing depths, got {ds}",
                         field="depths")
    fam = Family(arch, at[0], tuple(ds))
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

    @property
    def deepest(self) -> Plan:
        return self.plans[-1]

    @property
    def depths(self) -> tuple[int, ...]:
        return self.family.depths

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
        member's depth while its head runs."""
        tap = max(p.max_state_size for p in self.plans)
        return max(bytes_per_pair(p, itemsize) for p in self.plans) + 2 * tap * itemsize


def make_family_plan(family: Family, input_shape: tuple[int, ...]) -> FamilyPlan:
    """Plan every member on inputs of ``input_shape`` and cut the deepest plan at each
    member's depth (raises :class:`InputError` as :func:`ntkcompute.plan.make_plan`)."""
    plans = tuple(make_plan(a, input_shape) for a in family.members)
    deep = plans[-1].layers
    segments, heads, start = [], [], 0
    for p in plans:
        prefix = [lp for lp in p.layers if _top(lp) <= family.at]
        head = tuple(lp for lp in p.layers if _top(lp) > family.at)
        end = len(prefix)
        if not all(_same_row(a, b) for a, b in zip(prefix, deep[:end], strict=False)) or \
                any(a.in_full and not b.in_full for a, b in zip(prefix, deep[:end],
                                                                   strict=False)):
            raise InputError(f"member {family.depths[len(segments)]}'s layers do not run as "
                             "the deepest member's first layers (a shape or covariance layout "
                             "differs); compute its kernel on its own", field="depths")
        segments.append(tuple(deep[start:end]))
        heads.append(head)
        start = end
    return FamilyPlan(family, plans, tuple(segments), tuple(heads))


def run_family(fp: FamilyPlan, st: State, xp: Any,
               stats: tuple[Sequence[Any], Sequence[Any]] | None = None
               ) -> tuple[list[State], list]:
    """The family pass on ``st``: each member's output state, and (without ``stats``: the
    self pass) the self statistics in pass order."""
    collected: list = []
    outs: list[State] = []
    k = 0

    def part(layers: tuple[LayerPlan, ...], s: State) -> State:
        nonlocal k
        count = sum(1 for lp in layers if lp.self_stat)
        sub = None if stats is None else (stats[0][k:k + count], stats[1][k:k + count])
        s, c = run_layers(layers, s, xp, sub)
        k += count
        collected.extend(c)
        return s

    for seg, head in zip(fp.segments, fp.heads, strict=True):
        st = part(seg, st)
        if head and st.full and not head[0].in_full:
            h = to_diagonal(st, xp)  # new arrays
        elif head and rule_of(head[0].layer).keeps_input(head[0]):
            h = st
        else:  # the head's rules may update the state's arrays in place
            h = copy(st)
        outs.append(part(head, h))
    return outs, collected


def family_self_pass(fp: FamilyPlan, x: Any, *, want_ntk: bool = True,
                     memory: int = DEFAULT_MEMORY, threads: int = 1) -> SelfCov:
    """The family pass over every input paired with itself, ``x`` of shape
    ``(n, *spatial, C)``: ``variances`` in pass order (:attr:`FamilyPlan.self_layers`),
    ``nngp`` / ``ntk`` each member's diagonal, ``(n, D)``."""
    xp = array_module(x)

    def one(sl: slice) -> tuple:
        st = inputs.self_input(xp, x[sl], fp.deepest.input_full, want_ntk,
                               fp.deepest.pattern)
        outs, stats = run_family(fp, st, xp)
        return (*stats, xp.stack([o.nngp for o in outs], axis=1),
                xp.stack([o.ntk for o in outs], axis=1) if want_ntk else None)

    *variances, nngp, ntk = by_chunks(one, x, fp.bytes_per_pair(x.dtype.itemsize), memory,
                                      threads)
    return SelfCov(tuple(variances), nngp, ntk)


def family_gram(fp: FamilyPlan, x1: Any, x2: Any, s1: SelfCov, s2: SelfCov, *,
                symmetric: bool, get: tuple[str, ...], block: int, threads: int = 1,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Every member's Gram matrices ``{name: (D, n1, n2)}`` between validated rows ``x1``,
    ``x2`` given their :func:`family_self_pass` statistics (as :func:`ntkcompute.infinite.gram`
    for one network; ``symmetric``: x2 is x1, blocks mirrored exactly)."""
    xp = array_module(x1)
    want_ntk = "ntk" in get
    identity = any(p.pair_identity for p in fp.plans)

    def pair(r: slice, c: slice) -> list[tuple[Any, Any]]:
        st = inputs.pair_input(xp, x1[r], x2[c], fp.deepest.input_full, want_ntk, identity,
                               fp.deepest.pattern)
        outs, _ = run_family(fp, st, xp, (tuple(v[r] for v in s1.variances),
                                          tuple(v[c] for v in s2.variances)))
        return [(o.nngp, o.ntk) for o in outs]

    return assemble(pair, x1.shape[0], x2.shape[0], len(fp.plans), symmetric=symmetric,
                    get=get, block=block, dtype=x1.dtype, xp=xp, threads=threads,
                    progress=progress)


def kernel_family(arch: Architecture | dict | str | Family, x1: Any, x2: Any | None = None, *,
                  depths: Sequence[int] | None = None,
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
        get, memory, threads, progress: as for :func:`ntkcompute.kernel`.

    Returns:
        ``{"ntk": (D, n1, n2), "nngp": (D, n1, n2), "depths": (D,)}`` (float64), member i
        at ``depths[i]``; restricted to ``get``.
    """
    fam = arch if isinstance(arch, Family) else make_family(
        arch, depths if depths is not None else [])
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
    return out

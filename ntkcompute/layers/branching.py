"""Combinators (stax.serial, FanOut, parallel, FanInSum / Prod / Concat, repeat): spec, plan
walk, and the merge rules of the kernel and of the finite-width network.

A network value is a list of slots, one per open branch (:mod:`ntkcompute.plan`): a
``fan_out`` splices ``num`` copies in at its slot, a ``fan_in_*`` merges ``num`` slots into
one; ``serial``, ``parallel`` and ``repeat`` only exist in the spec, the plan inlines them.

The plan has checked that the branches a sum or product merges are independent (at most one
lacks weights of its own after the fan_out), so cross-branch covariances vanish in the limit:

* sum:     K = sum_i K_i,            Θ = sum_i Θ_i
* prod:    K = prod_i K_i,           Θ = sum_i Θ_i prod_{j != i} K_j   (product rule)
* concat:  K = sum_i c_i K_i / sum_i c_i, the same for Θ, with c_i the branches' channel
  counts (equal weights when the widths are left to the infinite limit)
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field

from .registry import LayerRule, _Layer, part, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import State
    from ..plan import LayerPlan
    from ..spec import Layer


class FanOut(_Layer):
    """Copy the input into ``num`` branches (stax.FanOut)."""

    type: Literal["fan_out"] = "fan_out"
    num: int = Field(ge=2, le=64)


class Parallel(_Layer):
    """Apply the i-th branch (a non-empty list of layers; ``identity`` passes a copy on) to
    the i-th of as many branch inputs."""

    type: Literal["parallel"] = "parallel"
    branches: list[Annotated[list[Layer], Field(min_length=1)]] = Field(min_length=1)


class FanInSum(_Layer):
    type: Literal["fan_in_sum"] = "fan_in_sum"


class FanInProd(_Layer):
    type: Literal["fan_in_prod"] = "fan_in_prod"


class FanInConcat(_Layer):
    """Concatenate the branches along ``axis``; only the channel axis (-1) is supported."""

    type: Literal["fan_in_concat"] = "fan_in_concat"
    axis: int = -1


class Serial(_Layer):
    """The layers in order: a block to nest in a branch or repeat."""

    type: Literal["serial"] = "serial"
    layers: list[Layer] = Field(min_length=1)


class Repeat(_Layer):
    """``layer`` applied ``n`` times in a row, each with its own weights."""

    type: Literal["repeat"] = "repeat"
    layer: Layer
    n: int = Field(ge=1, le=1000)


#: spec models whose fields name other layers (rebuilt by ``spec`` once ``Layer`` exists)
NESTED = (Parallel, Serial, Repeat)


@register(FanOut)
class FanOutRule(LayerRule):
    structure = "fan_out"
    float32_verified = True

    def walk(self, walker: Any, layer: Any, path: str, slot: int, arity: int) -> int:
        if arity != 1:
            raise walker.err(path, f"receives {arity} branches; merge them with a fan_in "
                             "before fanning out again")
        s = walker.slots[slot]
        walker.slots[slot:slot + 1] = [replace(s, fresh=False) for _ in range(layer.num)]
        walker.max_slots = max(walker.max_slots, len(walker.slots))
        walker.rows.append(dict(path=path, layer=layer, slot=slot, arity=layer.num,
                                in_spatial=s.spatial, out_spatial=s.spatial,
                                in_channels=s.channels, out_channels=s.channels))
        return layer.num


@register(Parallel)
class ParallelRule(LayerRule):
    structure = "container"
    float32_verified = True

    def nested(self, layer: Any) -> tuple[list[tuple[str, Any]], int]:
        branches = part(layer, "branches")
        if not isinstance(branches, list):
            return [], 1
        return [(f".branches[{b}][{i}]", x) for b, br in enumerate(branches)
                if isinstance(br, list) for i, x in enumerate(br)], 1

    def walk(self, walker: Any, layer: Any, path: str, slot: int, arity: int) -> int:
        k = len(layer.branches)
        if arity != k:
            raise walker.err(path, f"has {k} branches but receives {arity} input(s); "
                             f"put a fan_out with num {k} before it", field="branches")
        for b, branch in enumerate(layer.branches):
            out = walker.seq(branch, f"{path}.branches[{b}]", slot + b, 1)
            if out != 1:
                raise walker.err(f"{path}.branches[{b}]", f"ends with {out} open branches; "
                                 "close its fan_out with a fan_in_sum/concat/prod inside the "
                                 "branch", field=f"[{len(branch) - 1}]")
        return arity


class _FanIn(LayerRule):
    """Merges ``arity`` slots into one (kernel: :meth:`merge`; finite width:
    :meth:`merge_forward`, :meth:`merge_backward`)."""

    structure = "fan_in"

    def walk(self, walker: Any, layer: Any, path: str, slot: int, arity: int) -> int:
        if arity < 2:
            raise walker.err(path, f"{layer.type} merges branches, but it receives a single "
                             "input; put a fan_out (and a parallel) before it")
        ins = walker.slots[slot:slot + arity]
        shapes = {s.spatial for s in ins}
        if len(shapes) > 1:
            raise walker.err(path, f"its branches have different spatial shapes "
                             f"{[s.spatial for s in ins]}")
        chans = [s.channels for s in ins]
        out = self.merged_slot(walker, layer, path, ins, chans)
        walker.slots[slot:slot + arity] = [out]
        walker.rows.append(dict(path=path, layer=layer, slot=slot, arity=arity,
                                in_spatial=ins[0].spatial, out_spatial=out.spatial,
                                in_channels=None, out_channels=out.channels,
                                in_chans=tuple(chans)))
        return 1

    def merged_slot(self, walker: Any, layer: Any, path: str, ins: list, chans: list) -> Any:
        """The slot a sum or product of Gaussian, independent branches makes."""
        if not all(s.gaussian for s in ins):
            bad = next(i for i, s in enumerate(ins) if not s.gaussian)
            raise walker.err(path, f"{layer.type} needs Gaussian branches (ending in dense, "
                             f"conv or attention, or an identity of such); branch {bad} is not")
        if sum(not s.fresh for s in ins) > 1:
            raise walker.err(path, f"{layer.type} assumes independent branches, but several "
                             "have no dense/conv/attention of their own after the fan_out "
                             "(they are the same values)")
        if len({c for c in chans if c is not None}) > 1:
            raise walker.err(path, f"its branches have different widths {chans}")
        ch = next((c for c in chans if c is not None), None)
        return replace(ins[0], channels=ch, gaussian=self.gaussian_sum,
                       fresh=all(s.fresh for s in ins))

    gaussian_sum: bool = False  # the merged value is Gaussian (a sum of Gaussians)

    def merge(self, lp: LayerPlan, states: list[State], xp: ModuleType) -> State:
        """Merge ``states`` (all in one layout: the caller has aligned them)."""
        raise NotImplementedError

    def merge_forward(self, lp: LayerPlan, ins: list[Any]) -> tuple[Any, Any]:
        raise NotImplementedError

    def merge_backward(self, lp: LayerPlan, data: Any, d: Any) -> list[Any]:
        raise NotImplementedError


def _weighted_sum(states: list[State], weights: list[float]) -> State:
    first = states[0]

    def combine(name: str) -> Any:
        out = getattr(first, name) * weights[0]
        for w, s in zip(weights[1:], states[1:], strict=True):
            out += w * getattr(s, name)
        return out

    return first.with_(nngp=combine("nngp"),
                       ntk=combine("ntk") if first.ntk is not None else None)


@register(FanInSum)
class FanInSumRule(_FanIn):
    float32_verified = True
    gaussian_sum = True

    def merge(self, lp: LayerPlan, states: list[State], xp: ModuleType) -> State:
        return _weighted_sum(states, [1.0] * len(states))

    def merge_forward(self, lp: LayerPlan, ins: list[Any]) -> tuple[Any, Any]:
        return sum(ins[1:], ins[0]), None

    def merge_backward(self, lp: LayerPlan, data: Any, d: Any) -> list[Any]:
        return [d] * lp.arity


@register(FanInProd)
class FanInProdRule(_FanIn):
    def merge(self, lp: LayerPlan, states: list[State], xp: ModuleType) -> State:
        first = states[0]
        want_ntk = first.ntk is not None
        nngp = first.nngp.copy()
        ntk = first.ntk.copy() if want_ntk else None
        for s in states[1:]:
            if want_ntk:
                ntk *= s.nngp
                ntk += nngp * s.ntk
            nngp *= s.nngp
        return first.with_(nngp=nngp, ntk=ntk)

    def merge_forward(self, lp: LayerPlan, ins: list[Any]) -> tuple[Any, Any]:
        return math.prod(ins[1:], start=ins[0]), ins

    def merge_backward(self, lp: LayerPlan, data: Any, d: Any) -> list[Any]:
        return [d * math.prod(data[:i] + data[i + 1:]) for i in range(lp.arity)]


@register(FanInConcat)
class FanInConcatRule(_FanIn):
    def merged_slot(self, walker: Any, layer: Any, path: str, ins: list, chans: list) -> Any:
        if layer.axis not in (-1, len(ins[0].spatial) + 1):
            raise walker.err(path, f"only the channel axis (-1) is supported, got "
                             f"{layer.axis}", field="axis")
        if len({c is None for c in chans}) > 1:
            raise walker.err(path, "the branches' widths weight the concatenated kernel: "
                             "set out_dim / out_chan on the last dense/conv of every branch "
                             "or of none")
        ch = None if chans[0] is None else sum(chans)
        return replace(ins[0], channels=ch, gaussian=False, fresh=all(s.fresh for s in ins))

    def merge(self, lp: LayerPlan, states: list[State], xp: ModuleType) -> State:
        if lp.in_chans[0] is not None:
            weights = [c / sum(lp.in_chans) for c in lp.in_chans]
        else:
            weights = [1.0 / len(states)] * len(states)
        return _weighted_sum(states, weights)

    def merge_forward(self, lp: LayerPlan, ins: list[Any]) -> tuple[Any, Any]:
        return np.concatenate(ins, axis=-1), [i.shape[-1] for i in ins]

    def merge_backward(self, lp: LayerPlan, data: Any, d: Any) -> list[Any]:
        return np.split(d, np.cumsum(data)[:-1], axis=-1)


@register(Serial)
class SerialRule(LayerRule):
    structure = "container"
    float32_verified = True

    def nested(self, layer: Any) -> tuple[list[tuple[str, Any]], int]:
        layers = part(layer, "layers")
        if not isinstance(layers, list):
            return [], 1
        return [(f".layers[{i}]", x) for i, x in enumerate(layers)], 1

    def walk(self, walker: Any, layer: Any, path: str, slot: int, arity: int) -> int:
        return walker.seq(layer.layers, f"{path}.layers", slot, arity)


@register(Repeat)
class RepeatRule(LayerRule):
    structure = "container"
    float32_verified = True

    def nested(self, layer: Any) -> tuple[list[tuple[str, Any]], int]:
        n = part(layer, "n")
        return [(".layer", part(layer, "layer"))], n if isinstance(n, int) and n > 0 else 1

    def walk(self, walker: Any, layer: Any, path: str, slot: int, arity: int) -> int:
        for _ in range(layer.n):
            arity = walker.one(layer.layer, f"{path}.layer", slot, arity)
        return arity

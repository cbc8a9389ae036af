"""Shape inference, validation and per-layer requirements of an architecture on given inputs.

``make_plan(arch, input_shape)`` walks the layers once and returns them flattened into one
execution order: ``serial`` and ``repeat`` are inlined, and the branches of a ``parallel`` run
one after another, each on its own *slot*. A network value is a list of slots (one per open
branch): ``fan_out`` splices ``num`` copies in at its slot, a ``fan_in_*`` merges ``num``
slots back into one, and every other layer maps its slot. So each consumer (kernel rules,
empirical net, random features, Dask workers) runs one flat loop.

For each layer the plan holds the spatial shape it sees and produces, its window, and whether
the pair state entering it must hold the full spatial covariance (``P x P`` per pair: before
pooling and attention) or only its diagonal (``P`` per pair: enough for dense, conv, flatten,
nonlinearities, layer_norm over channels). This is the analogue of stax's layer
*requirements*, decided per branch from the layers after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import spec
from .errors import InputError
from .layers import rule_of
from .layers.normalization import layer_norm_axes
from .layers.registry import Leaf, Window
from .layers.registry import make_window as _window
from .spec import Architecture
from .validate import check_shape

__all__ = ["LayerPlan", "Plan", "Window", "_window", "layer_norm_axes", "make_plan"]


@dataclass(frozen=True)
class LayerPlan:
    index: int  # position in the flat execution order
    path: str  # where the layer is in the spec: "layers[2].branches[1][0]"
    layer: object
    in_spatial: tuple[int, ...]  # () for vectors
    out_spatial: tuple[int, ...]
    in_full: bool  # state entering is the full spatial covariance
    out_full: bool  # state leaving (after any reduction to the diagonal)
    window: Window | None = None
    in_channels: int | None = None  # finite width feeding this layer, where known
    out_channels: int | None = None
    parameterization: str = "ntk"
    slot: int = 0  # the branch slot it acts on (the first of ``arity`` for fan_in / fan_out)
    arity: int = 1  # branches merged by a fan_in, made by a fan_out
    in_chans: tuple[int | None, ...] = ()  # a fan_in's inputs' channel counts
    self_stat: str | None = None  # "var" / "cov": per-input statistic it needs (see below)

    @property
    def self_shape(self) -> tuple[int, ...]:
        """Per-input shape of its self statistic: variances at each position (``"var"``,
        nonlinearities and layer_norm) or the full self-covariance (``"cov"``, attention)."""
        return self.in_spatial * (2 if self.self_stat == "cov" else 1)


@dataclass(frozen=True)
class Plan:
    layers: tuple[LayerPlan, ...]
    input_spatial: tuple[int, ...]
    input_full: bool
    parameterization: str
    self_indices: tuple[int, ...] = field(default=())  # layers with a self statistic
    max_slots: int = 1  # most branch values alive at once
    pair_identity: bool = False  # a layer needs to know which pairs are one input twice
    # (V, aggregate axes among the spatial ones): the inputs' last V channels are their
    # graphs (``layers.graph``); None: every channel is a feature
    pattern: tuple[int, tuple[int, ...]] | None = None

    @property
    def max_state_size(self) -> int:
        """Largest number of floats one pair carries through one layer."""
        sizes = [_state_size(self.input_spatial, self.input_full)]
        for lp in self.layers:
            sizes.append(_state_size(lp.in_spatial, lp.in_full))
            sizes.append(_state_size(lp.out_spatial, lp.in_full if lp.out_spatial else False))
        return max(sizes)

    @property
    def self_layers(self) -> tuple[LayerPlan, ...]:
        return tuple(self.layers[i] for i in self.self_indices)


def _state_size(spatial: tuple[int, ...], full: bool) -> int:
    p = math.prod(spatial) if spatial else 1
    return p * p if full else p


@dataclass
class _Slot:
    """What shape inference tracks for one branch value."""

    spatial: tuple[int, ...]
    channels: int | None
    gaussian: bool  # a Gaussian process in the limit (dense/conv outputs, and linear maps of them)
    fresh: bool  # the output of weights drawn after the last fan_out copied it: independent


class _Walker:
    """Flattens the spec into ``LayerPlan`` rows (forward: shapes, windows, checks)."""

    def __init__(self, arch: Architecture, spatial: tuple[int, ...], channels: int,
                 width: int | None) -> None:
        self.arch, self.width = arch, width
        self.rows: list[dict] = []
        self.slots = [_Slot(spatial, channels, False, False)]
        self.max_slots = 1

    def err(self, path: str, msg: str, field: str = "type") -> InputError:
        return InputError(msg, field=field, layer=spec.layer_index(path))

    def seq(self, layers: list, prefix: str, slot: int, arity: int) -> int:
        """Walk ``layers`` acting on slots ``slot ..``; returns the arity after them."""
        for i, layer in enumerate(layers):
            arity = self.one(layer, f"{prefix}[{i}]", slot, arity)
        return arity

    def one(self, layer: object, path: str, slot: int, arity: int) -> int:
        """Walk one layer (a container walks its layers) on slots ``slot ..``."""
        return rule_of(layer).walk(self, layer, path, slot, arity)

    def leaf(self, layer: object, path: str, slot: int) -> None:
        """A layer that maps slot ``slot``: its requirements, width and shape rule."""
        rule = rule_of(layer)
        s = self.slots[slot]
        cur, ch_in = s.spatial, s.channels
        stat = None
        if rule.gaussian_input:
            if not s.gaussian:
                raise self.err(path, f"{layer.type}'s kernel rule needs Gaussian pre-activations, "
                               "but its input is not (the inputs, a nonlinearity, a flatten of "
                               "spatial features, a concat or a product); put a dense or conv "
                               "layer in between (as stax requires)")
            stat = "var"
        if rule.nonlinear:
            s.gaussian = s.fresh = False
        elif rule.weighted:
            s.gaussian = s.fresh = True
        ch = rule.out_channels(layer, ch_in, self.width)
        if rule.weighted and self.arch.parameterization == "standard" and ch_in is None:
            raise self.err(path, "the standard parameterization scales this layer's NTK by its "
                           "finite input width: set out_dim / out_chan on the layer before it")
        leaf = Leaf(path, cur, ch_in, self.arch.parameterization, self.width, channels=ch,
                    self_stat=stat)
        rule.shape(layer, leaf)
        if leaf.gaussian is not None:
            s.gaussian = leaf.gaussian
        s.spatial, s.channels = leaf.out_spatial, leaf.channels
        self.rows.append(dict(path=path, layer=layer, slot=slot, in_spatial=cur,
                              out_spatial=leaf.out_spatial, window=leaf.window,
                              in_channels=ch_in, out_channels=leaf.channels,
                              self_stat=leaf.self_stat))


def _needs_full_in(layer: object, need_out: bool) -> bool:
    return rule_of(layer).needs_full_in(layer, need_out)


def make_plan(arch: Architecture, input_shape: tuple[int, ...],
              width: int | None = None) -> Plan:
    """Validate ``arch`` against inputs of shape ``(n, *spatial, channels)``.

    ``width`` stands in for every ``out_dim`` / ``out_chan`` / ``n_chan_out`` left unset (the
    empirical network). Raises :class:`InputError` naming the layer's path and field when a
    layer does not fit.
    """
    check_shape(input_shape, "x1")
    spatial = tuple(int(s) for s in input_shape[1:-1])
    channels = int(input_shape[-1]) - (arch.pattern_channels or 0)
    if channels < 1:
        raise InputError(f"the inputs have {input_shape[-1]} channels, so none is left for "
                         f"features after the {arch.pattern_channels} of the graph",
                         field="pattern_channels")
    w = _Walker(arch, spatial, channels, width)
    arity = w.seq(arch.layers, "layers", 0, 1)
    last = f"layers[{len(arch.layers) - 1}]"
    if arity != 1:
        raise w.err(last, f"the network ends with {arity} open branches; merge them with "
                    "fan_in_sum, fan_in_concat or fan_in_prod")
    if w.slots[0].spatial:
        raise w.err(last, f"the network's output is spatial {w.slots[0].spatial}; end it with "
                    "flatten, global_avg_pool or global_sum_pool")

    # Backward, per slot: does the state entering each layer need the full covariance?
    rows = w.rows
    need = [False]
    for r in reversed(rows):
        layer, s = r["layer"], r["slot"]
        structure = rule_of(layer).structure
        if structure == "fan_out":
            r["out_full"] = any(need[s:s + r["arity"]]) and bool(r["out_spatial"])
            need[s:s + r["arity"]] = [r["out_full"]]
        elif structure == "fan_in":
            r["out_full"] = need[s] and bool(r["out_spatial"])
            need[s:s + 1] = [need[s]] * r["arity"]
        else:
            r["out_full"] = need[s] and bool(r["out_spatial"])
            need[s] = _needs_full_in(layer, need[s])
        r["in_full"] = need[s] and bool(r["in_spatial"])
    plans = tuple(LayerPlan(index=i, parameterization=arch.parameterization, **r)
                  for i, r in enumerate(rows))
    pattern = _pattern(arch, plans, spatial)
    return Plan(layers=plans, input_spatial=spatial,
                input_full=need[0] and bool(spatial),
                parameterization=arch.parameterization,
                self_indices=tuple(lp.index for lp in plans if lp.self_stat),
                max_slots=w.max_slots,
                pair_identity=any(rule_of(lp.layer).pair_identity for lp in plans),
                pattern=pattern)


def _pattern(arch: Architecture, plans: tuple[LayerPlan, ...], spatial: tuple[int, ...]
             ) -> tuple[int, tuple[int, ...]] | None:
    """The plan's ``pattern``: every layer that reads the inputs' graph spans the same axes,
    of the inputs' sizes, with ``pattern_channels`` vertices in all."""
    users = [lp for lp in plans if rule_of(lp.layer).uses_pattern]
    v = arch.pattern_channels
    if not users:
        if v:
            raise InputError("is set, but no layer reads a graph (aggregate)",
                             field="pattern_channels")
        return None
    first = users[0]
    if not v:
        raise InputError(f"{first.layer.type} needs each input's graph: set the "
                         "architecture's pattern_channels and append the graphs to the "
                         "inputs' channels (ntkcompute.pack_pattern)",
                         field="pattern_channels")
    axes = rule_of(first.layer).pattern_axes(first.layer, len(spatial))
    for lp in users:
        mine = rule_of(lp.layer).pattern_axes(lp.layer, len(lp.in_spatial))
        where = spec.layer_index(lp.path)
        if len(lp.in_spatial) != len(spatial) or mine != axes:
            raise InputError(f"aggregates spatial axes {mine} of a {len(lp.in_spatial)}-d "
                             f"input, but the graph spans axes {axes} of the "
                             f"{len(spatial)}-d inputs: every layer reading the graph must "
                             "aggregate the same axes", field="aggregate_axis", layer=where)
        sizes = tuple(lp.in_spatial[j] for j in axes)
        if sizes != tuple(spatial[j] for j in axes):
            raise InputError(f"sees aggregate axes of sizes {sizes}, but the inputs' graphs "
                             f"span {tuple(spatial[j] for j in axes)}: keep those axes' "
                             "sizes up to here (SAME padding, stride 1)",
                             field="aggregate_axis", layer=where)
    n_vert = math.prod(spatial[j] for j in axes)
    if n_vert != v:
        raise InputError(f"is {v}, but the aggregate axes {tuple(spatial[j] for j in axes)} "
                         f"have {n_vert} vertices", field="pattern_channels")
    return v, axes

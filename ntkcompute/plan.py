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
from .spec import FAN_IN, NONLINEAR, Architecture, Conv, Dense
from .validate import check_shape


@dataclass(frozen=True)
class Window:
    """A window op along each spatial axis: size, stride, padding (lo, hi) and output size."""

    size: tuple[int, ...]
    strides: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    out: tuple[int, ...]
    circular: bool


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


def _window(
    path: str, name: str, spatial: tuple[int, ...], size: list[int], strides: list[int] | None,
    padding: str, default_strides: tuple[int, ...],
) -> Window:
    where = spec.layer_index(path)
    if len(size) != len(spatial):
        kind = "vectors" if not spatial else f"{len(spatial)} spatial axes {spatial}"
        raise InputError(
            f"has {len(size)} entries but the input to this layer has {kind}; "
            "this layer needs inputs of shape (n, *spatial, channels)",
            field=name, layer=where)
    st = tuple(strides) if strides is not None else default_strides
    if len(st) != len(spatial):
        raise InputError(f"needs {len(spatial)} entries, got {len(st)}", field="strides",
                         layer=where)
    pads, outs = [], []
    for n, f, s in zip(spatial, size, st, strict=True):
        if padding == "VALID":
            if f > n:
                raise InputError(f"window {tuple(size)} is larger than the input {spatial} "
                                 "with VALID padding", field=name, layer=where)
            pads.append((0, 0))
            outs.append((n - f) // s + 1)
        else:  # SAME and CIRCULAR: output ceil(n / s), padding split low-first as in XLA
            out = -(-n // s)
            total = max((out - 1) * s + f - n, 0)
            if padding == "CIRCULAR" and total > n:
                raise InputError(f"window {tuple(size)} wraps more than once around {spatial}",
                                 field=name, layer=where)
            if total - total // 2 > n:  # taps that only ever see padding
                raise InputError(f"window {tuple(size)} with SAME padding reaches more than "
                                 f"the input's size past its edge {spatial}: at most "
                                 f"{3 * n - (out - 1) * s} along an axis of {n}",
                                 field=name, layer=where)
            pads.append((total // 2, total - total // 2))
            outs.append(out)
    return Window(tuple(size), st, tuple(pads), tuple(outs), padding == "CIRCULAR")


def layer_norm_axes(axis: int | list[int], in_spatial: tuple[int, ...]) -> tuple[int, ...]:
    """``layer_norm``'s axes of its ``(n, *spatial, C)`` input, non-negative and sorted
    (out-of-range axes stay out of range, for the plan to report)."""
    nd = len(in_spatial) + 2
    return tuple(sorted(a + nd if a < 0 else a for a in (axis if isinstance(axis, list)
                                                          else [axis])))


# Layers whose pair state must enter with the full spatial covariance (when spatial).
_FULL_IN = (spec.AvgPool, spec.GlobalAvgPool, spec.GlobalSumPool, spec.GlobalSelfAttention)
_WEIGHTED = (Dense, Conv, spec.GlobalSelfAttention)


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
        if isinstance(layer, spec.Serial):
            return self.seq(layer.layers, f"{path}.layers", slot, arity)
        if isinstance(layer, spec.Repeat):
            for _ in range(layer.n):
                arity = self.one(layer.layer, f"{path}.layer", slot, arity)
            return arity
        if isinstance(layer, spec.Parallel):
            k = len(layer.branches)
            if arity != k:
                raise self.err(path, f"has {k} branches but receives {arity} input(s); "
                               f"put a fan_out with num {k} before it", field="branches")
            for b, branch in enumerate(layer.branches):
                out = self.seq(branch, f"{path}.branches[{b}]", slot + b, 1)
                if out != 1:
                    raise self.err(f"{path}.branches[{b}]", f"ends with {out} open branches; "
                                   "close its fan_out with a fan_in_sum/concat/prod inside the "
                                   "branch", field=f"[{len(branch) - 1}]")
            return arity
        if isinstance(layer, spec.FanOut):
            if arity != 1:
                raise self.err(path, f"receives {arity} branches; merge them with a fan_in "
                               "before fanning out again")
            s = self.slots[slot]
            copies = [_Slot(s.spatial, s.channels, s.gaussian, False) for _ in range(layer.num)]
            self.slots[slot:slot + 1] = copies
            self.max_slots = max(self.max_slots, len(self.slots))
            self.rows.append(dict(path=path, layer=layer, slot=slot, arity=layer.num,
                                  in_spatial=s.spatial, out_spatial=s.spatial,
                                  in_channels=s.channels, out_channels=s.channels))
            return layer.num
        if isinstance(layer, FAN_IN):
            return self.fan_in(layer, path, slot, arity)
        if arity != 1:
            raise self.err(path, f"receives {arity} branches from a fan_out; give it a "
                           f"parallel with {arity} branches or merge them with a fan_in first")
        self.leaf(layer, path, slot)
        return 1

    def fan_in(self, layer: object, path: str, slot: int, arity: int) -> int:
        if arity < 2:
            raise self.err(path, f"{layer.type} merges branches, but it receives a single "
                           "input; put a fan_out (and a parallel) before it")
        ins = self.slots[slot:slot + arity]
        shapes = {s.spatial for s in ins}
        if len(shapes) > 1:
            raise self.err(path, f"its branches have different spatial shapes "
                           f"{[s.spatial for s in ins]}")
        chans = [s.channels for s in ins]
        if isinstance(layer, spec.FanInConcat):
            if layer.axis not in (-1, len(ins[0].spatial) + 1):
                raise self.err(path, f"only the channel axis (-1) is supported, got "
                               f"{layer.axis}", field="axis")
            if len({c is None for c in chans}) > 1:
                raise self.err(path, "the branches' widths weight the concatenated kernel: "
                               "set out_dim / out_chan on the last dense/conv of every branch "
                               "or of none")
            ch = None if chans[0] is None else sum(chans)
            out = _Slot(ins[0].spatial, ch, False, all(s.fresh for s in ins))
        else:
            if not all(s.gaussian for s in ins):
                bad = next(i for i, s in enumerate(ins) if not s.gaussian)
                raise self.err(path, f"{layer.type} needs Gaussian branches (ending in dense, "
                               f"conv or attention, or an identity of such); branch {bad} is not")
            if sum(not s.fresh for s in ins) > 1:
                raise self.err(path, f"{layer.type} assumes independent branches, but several "
                               "have no dense/conv/attention of their own after the fan_out "
                               "(they are the same values)")
            if len({c for c in chans if c is not None}) > 1:
                raise self.err(path, f"its branches have different widths {chans}")
            ch = next((c for c in chans if c is not None), None)
            out = _Slot(ins[0].spatial, ch, isinstance(layer, spec.FanInSum),
                        all(s.fresh for s in ins))
        self.slots[slot:slot + arity] = [out]
        self.rows.append(dict(path=path, layer=layer, slot=slot, arity=arity,
                              in_spatial=ins[0].spatial, out_spatial=out.spatial,
                              in_channels=None, out_channels=out.channels,
                              in_chans=tuple(chans)))
        return 1

    def leaf(self, layer: object, path: str, slot: int) -> None:
        s = self.slots[slot]
        cur, ch_in = s.spatial, s.channels
        ch = ch_in
        win = None
        stat = None
        name = getattr(layer, "type", "")
        if isinstance(layer, NONLINEAR) or isinstance(layer, spec.LayerNorm):
            if not s.gaussian:
                raise self.err(path, f"{name}'s kernel rule needs Gaussian pre-activations, but "
                               "its input is not (the inputs, a nonlinearity, a flatten of "
                               "spatial features, a concat or a product); put a dense or conv "
                               "layer in between (as stax requires)")
            stat = "var"
        if isinstance(layer, NONLINEAR):
            s.gaussian = s.fresh = False
        elif isinstance(layer, _WEIGHTED):
            s.gaussian = s.fresh = True
        elif isinstance(layer, spec.Flatten) and cur:
            s.gaussian = False  # features at different positions have different covariances
        if isinstance(layer, Dense):
            ch = layer.out_dim or self.width
        elif isinstance(layer, Conv):
            ch = layer.out_chan or self.width
        elif isinstance(layer, spec.GlobalSelfAttention):
            ch = layer.n_chan_out or self.width
        if isinstance(layer, _WEIGHTED) and self.arch.parameterization == "standard" \
                and ch_in is None:
            raise self.err(path, "the standard parameterization scales this layer's NTK by its "
                           "finite input width: set out_dim / out_chan on the layer before it")
        out = cur
        if isinstance(layer, Conv):
            win = _window(path, "filter_shape", cur, layer.filter_shape, layer.strides,
                          layer.padding, (1,) * len(cur))
            out = win.out
        elif isinstance(layer, spec.AvgPool):  # and SumPool
            win = _window(path, "window_shape", cur, layer.window_shape, layer.strides,
                          layer.padding, (1,) * len(cur))
            out = win.out
        elif isinstance(layer, (spec.GlobalAvgPool, spec.GlobalSumPool)):
            if not cur:
                raise self.err(path, f"{name} needs spatial inputs (n, *spatial, channels), "
                               "but its input here is a vector")
            out = ()
        elif isinstance(layer, spec.GlobalSelfAttention):
            if not cur:
                raise self.err(path, "global_self_attention attends over positions: it needs "
                               "inputs (n, T, C) or (n, *spatial, C), but its input here is a "
                               "vector")
            if not layer.linear_scaling and layer.attention_mechanism != "IDENTITY":
                raise self.err(path, "with linear_scaling false the infinite-width kernel has "
                               "a closed form only for attention_mechanism IDENTITY (as in "
                               "stax)", field="attention_mechanism")
            if self.arch.parameterization != "ntk":
                raise self.err(path, "global_self_attention follows the ntk "
                               "parameterization only")
            stat = "cov" if layer.linear_scaling else None
        elif isinstance(layer, spec.LayerNorm):
            nd = len(cur) + 2
            norm = layer_norm_axes(layer.axis, cur)
            if any(not 0 <= a < nd for a in norm) or len(set(norm)) != len(norm):
                raise self.err(path, f"axes must be distinct and within the input's {nd} axes "
                               f"(n, *spatial, C), got {layer.axis}", field="axis")
            if 0 in norm:
                raise self.err(path, "cannot normalise over the batch axis 0: a kernel entry "
                               "would depend on the other rows", field="axis")
            if nd - 1 not in norm:
                raise self.err(path, f"must contain the channel axis -1 (as stax requires), "
                               f"got {layer.axis}", field="axis")
        elif isinstance(layer, spec.Flatten):
            out = ()
            if ch is not None:
                ch *= math.prod(cur) if cur else 1
        s.spatial, s.channels = out, ch
        self.rows.append(dict(path=path, layer=layer, slot=slot, in_spatial=cur,
                              out_spatial=out, window=win, in_channels=ch_in, out_channels=ch,
                              self_stat=stat))


def _needs_full_in(layer: object, need_out: bool) -> bool:
    if isinstance(layer, _FULL_IN):  # AvgPool includes SumPool
        return True
    if isinstance(layer, spec.Flatten):
        return False
    return need_out


def make_plan(arch: Architecture, input_shape: tuple[int, ...],
              width: int | None = None) -> Plan:
    """Validate ``arch`` against inputs of shape ``(n, *spatial, channels)``.

    ``width`` stands in for every ``out_dim`` / ``out_chan`` / ``n_chan_out`` left unset (the
    empirical network). Raises :class:`InputError` naming the layer's path and field when a
    layer does not fit.
    """
    check_shape(input_shape, "x1")
    spatial = tuple(int(s) for s in input_shape[1:-1])
    w = _Walker(arch, spatial, int(input_shape[-1]), width)
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
        if isinstance(layer, spec.FanOut):
            r["out_full"] = any(need[s:s + r["arity"]]) and bool(r["out_spatial"])
            need[s:s + r["arity"]] = [r["out_full"]]
        elif isinstance(layer, FAN_IN):
            r["out_full"] = need[s] and bool(r["out_spatial"])
            need[s:s + 1] = [need[s]] * r["arity"]
        else:
            r["out_full"] = need[s] and bool(r["out_spatial"])
            need[s] = _needs_full_in(layer, need[s])
        r["in_full"] = need[s] and bool(r["in_spatial"])
    plans = tuple(LayerPlan(index=i, parameterization=arch.parameterization, **r)
                  for i, r in enumerate(rows))
    return Plan(layers=plans, input_spatial=spatial,
                input_full=need[0] and bool(spatial),
                parameterization=arch.parameterization,
                self_indices=tuple(lp.index for lp in plans if lp.self_stat),
                max_slots=w.max_slots)

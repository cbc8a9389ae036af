"""Shape inference, validation and per-layer requirements of an architecture on given inputs.

``make_plan(arch, input_shape)`` walks the layers once and returns, for each, the spatial
shape it sees and produces, the padding and strides it uses, and whether the pair state
entering it must hold the full spatial covariance (``P x P`` per pair, needed before
``avg_pool`` and ``global_avg_pool``) or only its diagonal (``P`` per pair, enough before
``flatten``). This is the analogue of stax's layer *requirements*, decided from the layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import InputError
from .spec import NONLINEAR, Architecture, AvgPool, Conv, Dense, Flatten, GlobalAvgPool
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
    index: int
    layer: object
    in_spatial: tuple[int, ...]  # () for vectors
    out_spatial: tuple[int, ...]
    in_full: bool  # state entering is the full spatial covariance
    out_full: bool  # state leaving (after any reduction to the diagonal)
    window: Window | None = None
    in_channels: int | None = None  # finite width feeding this layer, where known
    out_channels: int | None = None
    parameterization: str = "ntk"


@dataclass(frozen=True)
class Plan:
    layers: tuple[LayerPlan, ...]
    input_spatial: tuple[int, ...]
    input_full: bool
    parameterization: str
    nonlinear_indices: tuple[int, ...] = field(default=())

    @property
    def max_state_size(self) -> int:
        """Largest number of floats one pair carries through the network."""
        sizes = [_state_size(self.input_spatial, self.input_full)]
        for lp in self.layers:
            sizes.append(_state_size(lp.in_spatial, lp.in_full))
            sizes.append(_state_size(lp.out_spatial, lp.in_full if lp.out_spatial else False))
        return max(sizes)


def _state_size(spatial: tuple[int, ...], full: bool) -> int:
    p = math.prod(spatial) if spatial else 1
    return p * p if full else p


def _window(
    index: int, name: str, spatial: tuple[int, ...], size: list[int], strides: list[int] | None,
    padding: str, default_strides: tuple[int, ...],
) -> Window:
    if len(size) != len(spatial):
        kind = "vectors" if not spatial else f"{len(spatial)} spatial axes {spatial}"
        raise InputError(
            f"has {len(size)} entries but the input to this layer has {kind}; "
            "this layer needs inputs of shape (n, *spatial, channels)",
            field=name, layer=index)
    st = tuple(strides) if strides is not None else default_strides
    if len(st) != len(spatial):
        raise InputError(f"needs {len(spatial)} entries, got {len(st)}", field="strides",
                         layer=index)
    pads, outs = [], []
    for n, f, s in zip(spatial, size, st, strict=True):
        if padding == "VALID":
            if f > n:
                raise InputError(f"window {tuple(size)} is larger than the input {spatial} "
                                 "with VALID padding", field=name, layer=index)
            pads.append((0, 0))
            outs.append((n - f) // s + 1)
        else:  # SAME and CIRCULAR: output ceil(n / s), padding split low-first as in XLA
            out = -(-n // s)
            total = max((out - 1) * s + f - n, 0)
            if padding == "CIRCULAR" and total > n:
                raise InputError(f"window {tuple(size)} wraps more than once around {spatial}",
                                 field=name, layer=index)
            pads.append((total // 2, total - total // 2))
            outs.append(out)
    return Window(tuple(size), st, tuple(pads), tuple(outs), padding == "CIRCULAR")


def make_plan(arch: Architecture, input_shape: tuple[int, ...],
              width: int | None = None) -> Plan:
    """Validate ``arch`` against inputs of shape ``(n, *spatial, channels)``.

    ``width`` stands in for every ``out_dim`` / ``out_chan`` left unset (the empirical
    network). Raises :class:`InputError` naming the layer and field when a layer does not fit.
    """
    check_shape(input_shape, "x1")
    spatial = tuple(int(s) for s in input_shape[1:-1])

    # Forward: shapes and windows.
    shapes: list[tuple[tuple[int, ...], tuple[int, ...], Window | None]] = []
    channels: list[tuple[int | None, int | None]] = []
    cur = spatial
    ch: int | None = int(input_shape[-1])
    gaussian = False  # inputs are data; Dense/Conv outputs are Gaussian processes
    for i, layer in enumerate(arch.layers):
        if isinstance(layer, NONLINEAR):
            if not gaussian:
                after = f"layer {i - 1} ({arch.layers[i - 1].type})" if i else "the inputs"
                raise InputError(
                    f"a nonlinearity's kernel rule needs Gaussian pre-activations, but it "
                    f"follows {after}; put a dense or conv layer in between (as stax requires)",
                    field="type", layer=i)
            gaussian = False
        elif isinstance(layer, (Dense, Conv)):
            gaussian = True
        elif isinstance(layer, Flatten) and cur:
            gaussian = False  # features at different positions have different covariances
        win = None
        ch_in = ch
        if isinstance(layer, Dense):
            ch = layer.out_dim or width
        elif isinstance(layer, Conv):
            ch = layer.out_chan or width
        if isinstance(layer, (Dense, Conv)) and arch.parameterization == "standard" \
                and ch_in is None:
            raise InputError("the standard parameterization scales this layer's NTK by its "
                             "finite input width: set out_dim / out_chan on the layer before it",
                             field="type", layer=i)
        if isinstance(layer, Conv):
            win = _window(i, "filter_shape", cur, layer.filter_shape, layer.strides, layer.padding,
                          (1,) * len(cur))
            out = win.out
        elif isinstance(layer, AvgPool):
            win = _window(i, "window_shape", cur, layer.window_shape, layer.strides,
                          layer.padding, (1,) * len(cur))
            out = win.out
        elif isinstance(layer, GlobalAvgPool):
            if not cur:
                raise InputError("global_avg_pool needs spatial inputs (n, *spatial, channels), "
                                 "but its input here is a vector", field="type", layer=i)
            out = ()
        elif isinstance(layer, Flatten):
            out = ()
            if ch is not None:
                ch *= math.prod(cur) if cur else 1
        else:
            out = cur
        shapes.append((cur, out, win))
        channels.append((ch_in, ch))
        cur = out

    if cur:
        raise InputError(f"the network's output is spatial {cur}; end it with flatten or "
                         "global_avg_pool", field="type", layer=len(arch.layers) - 1)

    # Backward: does the state entering each layer need the full spatial covariance?
    need = False
    need_in = [False] * len(arch.layers)
    need_out = [False] * len(arch.layers)
    for i in range(len(arch.layers) - 1, -1, -1):
        layer = arch.layers[i]
        need_out[i] = need
        if isinstance(layer, (GlobalAvgPool, AvgPool)):
            need = True
        elif isinstance(layer, Flatten):
            need = False
        need_in[i] = need and bool(shapes[i][0])

    plans = []
    for i, layer in enumerate(arch.layers):
        sin, sout, win = shapes[i]
        plans.append(LayerPlan(index=i, layer=layer, in_spatial=sin, out_spatial=sout,
                               in_full=need_in[i], out_full=need_out[i] and bool(sout),
                               window=win, in_channels=channels[i][0],
                               out_channels=channels[i][1],
                               parameterization=arch.parameterization))
    nonlin = tuple(i for i, layer in enumerate(arch.layers) if isinstance(layer, NONLINEAR))
    return Plan(layers=tuple(plans), input_spatial=spatial,
                input_full=need_in[0] if plans else False,
                parameterization=arch.parameterization, nonlinear_indices=nonlin)

"""A drop-in for ``neural_tangents.stax``: the layers we support, with stax's names, positional
arguments and defaults, each returning ``(init_fn, apply_fn, kernel_fn)``.

A script written against neural-tangents 0.6.5 runs after changing ``from neural_tangents
import stax`` to ``from ntkcompute import stax``, and gives the same float64 kernels
(``make conformance`` runs nt's README examples and the Myrtle notebook's architectures both
ways)::

    import numpy as np
    from ntkcompute import stax

    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(512), stax.Relu(), stax.Dense(512), stax.Relu(), stax.Dense(1))
    x1 = np.random.default_rng(1).standard_normal((10, 100))
    x2 = np.random.default_rng(2).standard_normal((20, 100))
    nngp = kernel_fn(x1, x2, 'nngp')          # (10, 20)
    both = kernel_fn(x1, None, ('nngp', 'ntk'))  # both.nngp, both.ntk: (10, 10)

What differs from stax:

- ``kernel_fn(x1, x2=None, get=None, *, dtype=None, memory=..., threads=None, progress=None)``
  is :func:`ntkcompute.kernel`: in-process, tiled under a memory budget, symmetric when
  ``x2`` is omitted, inputs as NumPy (or CuPy) arrays, or anything ``numpy.asarray`` takes
  (JAX arrays too). It is not a JAX function: drop ``jax.jit`` and ``nt.batch`` around it
  (it batches itself). ``get=None`` returns ``Kernel(nngp, ntk)``; a name returns that
  array; a tuple a named tuple in its order, as stax. The output must not be spatial (end a
  conv net with a readout), and stax's ``mask_constant`` argument is absent. ``pattern``
  (Aggregate's graphs) is taken as in stax, by ``apply_fn`` and ``kernel_fn``.
- ``init_fn(rng, input_shape)`` and ``apply_fn(params, x)`` are the finite-width NumPy net of
  :mod:`ntkcompute.empirical` (the one ``empirical_kernel`` differentiates): ``rng`` is an
  int seed, a ``numpy.random.Generator`` or a JAX PRNG key; ``params`` is a list with one
  tuple per layer that has weights. Its draws are not JAX's, so a finite net's outputs are
  not nt's; its kernels are.
- ``.spec`` (on the returned triple and on its ``kernel_fn``) is the architecture as the
  JSON spec that the service, the client and the Dask workers take.
- One parameterization per net (stax allows one per layer; a mix is refused), and the
  ``batch_axis`` / ``channel_axis`` / ``dimension_numbers`` arguments only at their
  defaults (batch first, channels last). ``Gelu(approximate=True)`` changes only a finite
  net's function in stax; here the finite net uses the exact GELU either way.
- ``DotGeneral`` takes the ``dimension_numbers`` whose output keeps the batch axis first and
  the channels last: every axis of the constant contracted against a spatial axis of the
  input, no batch dimensions. With neither ``lhs`` nor ``rhs`` it is the identity, as stax
  documents (nt 0.6.5 computes NaN there: it takes ``jnp.array(None)`` as the constant).
- ``ElementwiseNumerical(fn, deg)`` takes a listed function (:data:`ntkcompute.spec.
  ELEMENTWISE_FNS`, by name or as a callable equal to one, checked on a grid, so
  ``jnp.tanh`` or ``jax.nn.gelu`` work), an expression string (``"x * tanh(x)"``), a
  callable of NumPy / SciPy ufuncs (traced to an expression: the spec stays JSON), or any
  NumPy callable (in-process only, φ' by finite differences unless ``df`` is given).
  ``Elementwise(fn, nngp_fn, d_nngp_fn)`` runs in-process; without ``nngp_fn`` it is
  ``ElementwiseNumerical(fn, 25)``.

Every layer's arguments are validated when the layer is built (an
:class:`~ntkcompute.InputError` naming the field), the net's shapes when it first meets
inputs.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .empirical import forward, init_params
from .errors import InputError
from .infinite import DEFAULT_MEMORY
from .infinite import kernel as _kernel
from .kernels import expression
from .kernels.quadrature import FUNCTIONS
from .layers.activations import PyFunctions, compiled
from .layers.dot import MAX_CONSTANT
from .layers.graph import pack_pattern
from .plan import make_plan
from .spec import ELEMENTWISE_FNS, Architecture, parse_arch
from .validate import check_get

__all__ = [
    "ABRelu", "Abs", "Aggregate", "AvgPool", "Conv", "ConvLocal", "ConvTranspose", "Cos",
    "Dense", "DotGeneral", "Dropout",
    "Elementwise", "ElementwiseNumerical", "Erf", "Exp", "FanInConcat", "FanInProd",
    "FanInSum", "FanOut", "Flatten", "Gaussian", "Gelu", "GlobalAvgPool",
    "GlobalSelfAttention", "GlobalSumPool", "Identity", "ImageResize", "Kernel", "KernelFn",
    "LayerNorm", "LeakyRelu", "Rbf", "Relu", "Sign", "Sin", "StaxLayer", "parallel", "repeat",
    "serial",
]


class _Graph(NamedTuple):
    """How an Aggregate layer reads stax's ``pattern``."""

    aggregate_axis: list[int] | None
    implementation: str
    to_dense: Callable[[Any], Any]


#: What ``kernel_fn(x1, x2)`` returns with ``get=None``.
Kernel = collections.namedtuple("Kernel", ["nngp", "ntk"])


@functools.cache
def _kernel_tuple(names: tuple[str, ...]) -> type:
    return collections.namedtuple("Kernel", names)


class _Net:
    """What a layer or net is: its spec's layer dicts and its parameterization."""

    def __init__(self, layers: list[dict[str, Any]], parameterization: str | None,
                 graphs: tuple[_Graph, ...] = ()) -> None:
        self.layers, self.parameterization, self.graphs = layers, parameterization, graphs
        self.spec = {"layers": layers, "parameterization": parameterization or "ntk"}
        parse_arch(self.spec)  # the fields of every layer, now; shapes when inputs come

    @functools.cached_property
    def arch(self) -> Architecture:
        return parse_arch(self.spec)

    def packed(self, x: Any, pattern: Any) -> tuple[Architecture, Any]:
        """The architecture and inputs to compute with: with Aggregate layers, ``x`` with
        its graphs (stax's ``pattern``; ``None``: the identity graph) appended as channels
        and ``pattern_channels`` set (see :func:`ntkcompute.pack_pattern`)."""
        if not self.graphs:
            return self.arch, x
        g = self.graphs[0]
        if any(h.implementation != g.implementation or h.to_dense is not g.to_dense
               for h in self.graphs[1:]):
            raise InputError("the net's Aggregate layers read the pattern differently "
                             "(implementation or to_dense); stax passes one pattern to all, "
                             "so give them the same", field="pattern")
        if pattern is not None and g.implementation == "DENSE":
            pattern = g.to_dense(pattern)
        out = pack_pattern(x, pattern, g.aggregate_axis, g.implementation)
        v = out.shape[-1] - np.shape(x)[-1]
        return self.arch.model_copy(update={"pattern_channels": v}), out

    def init(self, rng: Any, input_shape: Sequence[int], dtype: Any = np.float64
             ) -> tuple[tuple[int, ...], list[tuple[np.ndarray | None, ...]]]:
        """``(output_shape, params)`` for inputs of ``input_shape`` (batch axis first, any
        size, ``-1`` allowed, as stax); ``params``: one tuple per layer with weights."""
        shape = tuple(int(s) for s in input_shape)
        arch, x = self.packed(np.zeros((1, *shape[1:]), dtype=dtype), None)
        plan = make_plan(arch, x.shape)
        params = init_params(plan, _seed(rng), np.dtype(dtype))
        out, _ = forward(plan, params, x)
        return (shape[0], *out.shape[1:]), params

    def apply(self, params: list[tuple[np.ndarray | None, ...]], x: Any, *,
              pattern: Any = None, **kwargs: Any) -> np.ndarray:
        """Outputs ``(n, out_dim)`` of the finite net with ``params`` on inputs ``x`` (and
        their graphs ``pattern``, as stax's, for Aggregate layers)."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        arch, x = self.packed(x, pattern)
        return forward(make_plan(arch, tuple(x.shape)), params, x)[0]


class KernelFn:
    """``kernel_fn(x1, x2=None, get=None, **kwargs)`` of a layer or net."""

    def __init__(self, net: _Net) -> None:
        self._net = net

    @property
    def spec(self) -> dict[str, Any]:
        """The architecture as the JSON spec (:func:`ntkcompute.parse_arch` takes it)."""
        return self._net.spec

    def pack(self, x: Any, pattern: Any = None) -> tuple[dict[str, Any], np.ndarray]:
        """``(spec, inputs)`` for the service, the client and the workers, which take one
        array: for a net with Aggregate layers, ``x`` with its graphs ``pattern`` (stax's
        form) appended as channels and the spec's ``pattern_channels`` set; otherwise
        ``(self.spec, x)``."""
        arch, packed = self._net.packed(np.asarray(x), pattern)
        return arch.model_dump(mode="json"), np.asarray(packed)

    def __call__(self, x1: Any, x2: Any | None = None, get: str | Sequence[str] | None = None,
                 *, pattern: Any = None, dtype: Any = None, memory: int = DEFAULT_MEMORY,
                 threads: int | None = None, progress: Callable[[int, int], None] | None = None
                 ) -> Any:
        """NNGP and / or NTK Gram matrices ``(n1, n2)`` between the rows of x1 and x2
        (x2 omitted: x1 with itself, symmetric); arguments as :func:`ntkcompute.kernel`.
        ``pattern``: the inputs' graphs for Aggregate layers, ``(pattern1, pattern2)`` as
        stax (with x2 omitted, ``pattern1`` alone will do); ``None``: identity graphs."""
        net = self._net
        p1, p2 = pattern if isinstance(pattern, (tuple, list)) else (pattern, None)
        if x2 is not None and net.graphs and (p1 is None) != (p2 is None):
            raise InputError("give both inputs' patterns, (pattern1, pattern2), or neither",
                             field="pattern")
        arch, x1 = net.packed(_array(x1), p1)
        if x2 is not None:
            x2 = net.packed(_array(x2), p2)[1]
        names = ("nngp", "ntk") if get is None else check_get(get)
        k = _kernel(arch, x1, x2, get=names, dtype=dtype, memory=memory, threads=threads,
                    progress=progress)
        if isinstance(get, str):
            return k[get]
        return (Kernel if get is None else _kernel_tuple(names))(*(k[g] for g in names))


class StaxLayer(tuple):
    """``(init_fn, apply_fn, kernel_fn)`` of a layer or a net; unpacks as stax's triple.

    ``.spec`` is the architecture as the JSON spec; ``.layers`` its layer dicts (a
    ``serial`` contributes its layers); ``.parameterization`` ``"ntk"``, ``"standard"``, or
    ``None`` when no layer has weights.
    """

    def __new__(cls, layers: list[dict[str, Any]], parameterization: str | None = None,
                graphs: tuple[_Graph, ...] = ()) -> StaxLayer:
        net = _Net(layers, parameterization, graphs)
        self = super().__new__(cls, (net.init, net.apply, KernelFn(net)))
        self._net = net
        return self

    def __reduce__(self) -> tuple:  # pickle, copy and deepcopy rebuild it from its spec
        return StaxLayer, (self.layers, self.parameterization, self._net.graphs)

    @property
    def spec(self) -> dict[str, Any]:
        return self._net.spec

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self._net.layers

    @property
    def parameterization(self) -> str | None:
        return self._net.parameterization


def _array(x: Any) -> Any:
    """NumPy and CuPy arrays as they are; anything else (a JAX array, a list) via NumPy."""
    return x if hasattr(x, "__cuda_array_interface__") or isinstance(x, np.ndarray) \
        else np.asarray(x)


def _seed(rng: Any) -> int:
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(2**63))
    if isinstance(rng, (int, np.integer)):
        return int(rng)
    key = np.asarray(rng)  # a JAX PRNG key: a few uint32 words (new-style keys: key_data)
    if key.dtype.kind not in "iu":
        try:
            import jax

            key = np.asarray(jax.random.key_data(rng))
        except Exception:
            raise InputError("must be an int seed, a numpy Generator or a JAX PRNG key, got "
                             f"{type(rng).__name__}", field="rng") from None
    return int(np.random.SeedSequence([int(v) for v in key.ravel()]).generate_state(1)[0])


def _layer(layer: dict[str, Any], parameterization: str | None = None,
           graphs: tuple[_Graph, ...] = ()) -> StaxLayer:
    return StaxLayer([layer], parameterization, graphs)


def _graphs(layers: Sequence[StaxLayer]) -> tuple[_Graph, ...]:
    return tuple(g for lay in layers for g in lay._net.graphs)


def _defaults(**kw: Any) -> None:
    """Refuse stax arguments we only support at their default values."""
    allowed = {"batch_axis": (0,), "channel_axis": (-1,), "batch_axis_out": (0,),
               "s": ((1, 1),), "do_stabilize": (False, True), "pos_emb_type": ("NONE",),
               "val_pos_emb": (False,), "pos_emb_decay_fn": (None,),
               "n_chan_pos_emb": (None,)}
    for name, value in kw.items():
        v = tuple(value) if isinstance(value, list) else value
        if v not in allowed[name]:
            raise InputError(f"only {allowed[name][0]!r} is supported, got {value!r}",
                             field=name)


def _param(p: str) -> str:
    if p not in ("ntk", "standard"):
        raise InputError(f"must be 'ntk' or 'standard', got {p!r}", field="parameterization")
    return p


def _dims(dimension_numbers: tuple[str, str, str] | None) -> None:
    if dimension_numbers is None:
        return
    lhs, _, out = dimension_numbers
    if not (lhs[0] == out[0] == "N" and lhs[-1] == out[-1] == "C" and lhs == out):
        raise InputError("only batch-first, channels-last layouts such as ('NHWC', 'HWIO', "
                         f"'NHWC') are supported, got {dimension_numbers!r}",
                         field="dimension_numbers")


def _ints(v: Sequence[int] | None) -> list[int] | None:
    return None if v is None else [int(s) for s in v]


# --- combinators ---------------------------------------------------------------------------

def _common(layers: Sequence[StaxLayer]) -> str | None:
    ps = {lay.parameterization for lay in layers} - {None}
    if len(ps) > 1:
        raise InputError("mixes the 'ntk' and 'standard' parameterizations; ntkcompute takes "
                         "one per net", field="parameterization")
    return ps.pop() if ps else None


def _triple(layer: Any) -> StaxLayer:
    if not isinstance(layer, StaxLayer):
        raise InputError("must be a layer built by ntkcompute.stax (a neural_tangents layer "
                         f"cannot be mixed in), got {type(layer).__name__}", field="layers")
    return layer


def serial(*layers: StaxLayer) -> StaxLayer:
    """The layers applied in order (stax.serial)."""
    layers = tuple(_triple(lay) for lay in layers)
    if not layers:
        raise InputError("needs at least one layer", field="layers")
    return StaxLayer([d for lay in layers for d in lay.layers], _common(layers),
                     _graphs(layers))


def parallel(*layers: StaxLayer) -> StaxLayer:
    """Layer i applied to the i-th of as many inputs, e.g. after a ``FanOut`` (stax.parallel)."""
    layers = tuple(_triple(lay) for lay in layers)
    return _layer({"type": "parallel", "branches": [lay.layers for lay in layers]},
                  _common(layers), _graphs(layers))


def repeat(layer: StaxLayer, n: int) -> StaxLayer:
    """``serial(*[layer] * n)``, each copy with its own weights (stax.repeat)."""
    layer = _triple(layer)
    inner = layer.layers[0] if len(layer.layers) == 1 else {"type": "serial",
                                                            "layers": layer.layers}
    return _layer({"type": "repeat", "layer": inner, "n": n}, layer.parameterization,
                  layer._net.graphs)


def FanOut(num: int) -> StaxLayer:
    """``num`` copies of the input, for ``parallel`` branches (stax.FanOut)."""
    return _layer({"type": "fan_out", "num": num})


def FanInSum() -> StaxLayer:
    """The sum of the open branches (stax.FanInSum)."""
    return _layer({"type": "fan_in_sum"})


def FanInProd() -> StaxLayer:
    """The elementwise product of the open branches (stax.FanInProd)."""
    return _layer({"type": "fan_in_prod"})


def FanInConcat(axis: int = -1) -> StaxLayer:
    """The open branches concatenated along ``axis`` (stax.FanInConcat)."""
    return _layer({"type": "fan_in_concat", "axis": axis})


def Identity() -> StaxLayer:
    """The input unchanged (stax.Identity)."""
    return _layer({"type": "identity"})


# --- affine --------------------------------------------------------------------------------

def Dense(out_dim: int, W_std: float = 1., b_std: float | None = None, batch_axis: int = 0,
          channel_axis: int = -1, parameterization: str = "ntk", s: tuple[int, int] = (1, 1)
          ) -> StaxLayer:
    """Fully connected layer on the channel axis (stax.Dense)."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis, s=s)
    return _layer({"type": "dense", "out_dim": out_dim, "W_std": W_std, "b_std": b_std},
                  _param(parameterization))


def Conv(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
         padding: str = "VALID", W_std: float = 1.0, b_std: float | None = None,
         dimension_numbers: tuple[str, str, str] | None = None,
         parameterization: str = "ntk", s: tuple[int, int] = (1, 1)) -> StaxLayer:
    """Convolution over all spatial axes, ``padding`` SAME / VALID / CIRCULAR (stax.Conv)."""
    _dims(dimension_numbers)
    _defaults(s=s)
    return _layer({"type": "conv", "out_chan": out_chan, "filter_shape": _ints(filter_shape),
                   "strides": _ints(strides), "padding": padding, "W_std": W_std,
                   "b_std": b_std}, _param(parameterization))


def ConvTranspose(out_chan: int, filter_shape: Sequence[int],
                  strides: Sequence[int] | None = None, padding: str = "VALID",
                  W_std: float = 1.0, b_std: float | None = None,
                  dimension_numbers: tuple[str, str, str] | None = None,
                  parameterization: str = "ntk", s: tuple[int, int] = (1, 1)) -> StaxLayer:
    """Transposed convolution (``jax.lax.conv_transpose``), ``padding`` SAME / VALID /
    CIRCULAR (stax.ConvTranspose)."""
    _dims(dimension_numbers)
    _defaults(s=s)
    return _layer({"type": "conv_transpose", "out_chan": out_chan,
                   "filter_shape": _ints(filter_shape), "strides": _ints(strides),
                   "padding": padding, "W_std": W_std, "b_std": b_std},
                  _param(parameterization))


def ConvLocal(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
              padding: str = "VALID", W_std: float = 1.0, b_std: float | None = None,
              dimension_numbers: tuple[str, str, str] | None = None,
              parameterization: str = "ntk", s: tuple[int, int] = (1, 1)) -> StaxLayer:
    """Locally connected convolution, a weight per output position (stax.ConvLocal)."""
    _dims(dimension_numbers)
    _defaults(s=s)
    return _layer({"type": "conv_local", "out_chan": out_chan,
                   "filter_shape": _ints(filter_shape), "strides": _ints(strides),
                   "padding": padding, "W_std": W_std, "b_std": b_std},
                  _param(parameterization))


def ImageResize(shape: Sequence[int], method: Any, antialias: bool = True,
                precision: Any = "HIGHEST", batch_axis: int = 0,
                channel_axis: int = -1) -> StaxLayer:
    """``jax.image.resize`` of the spatial axes (stax.ImageResize): ``shape`` the whole
    input shape, -1 where unchanged (batch and channels must be -1); every ``method``
    (nearest, linear, cubic, lanczos3, lanczos5, a string or a ``jax.image.ResizeMethod``)
    has an exact kernel. ``precision`` (``jax.lax.Precision.HIGHEST`` in stax) is ignored:
    NumPy computes in full precision."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis)
    if not isinstance(method, str):
        method = getattr(method, "name", method)
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise InputError(f"must be a sequence of ints, got {type(shape).__name__}",
                         field="shape")
    return _layer({"type": "image_resize", "shape": [int(v) for v in shape],
                   "method": method, "antialias": bool(antialias)})


def _constant(v: Any, name: str) -> float | list | None:
    """A DotGeneral factor (a number, a nested sequence, a NumPy or JAX array) as the spec's
    number or nested list, its size checked before it is converted."""
    if v is None:
        return None
    try:
        a = np.asarray(v)
    except Exception as e:
        raise InputError(f"must be a number or an array of numbers: {e}", field=name) from None
    if a.size > MAX_CONSTANT:
        raise InputError(f"has {a.size} entries, more than {MAX_CONSTANT}", field=name)
    if a.dtype.kind not in "biuf" or a.dtype.kind == "b":
        raise InputError(f"must hold real numbers, got dtype {a.dtype}", field=name)
    a = a.astype(np.float64)
    return float(a) if a.ndim == 0 else a.tolist()


def _dimension_numbers(dn: Any) -> list:
    try:
        (lc, rc), (lb, rb) = dn
        return [[[int(i) for i in lc], [int(i) for i in rc]],
                [[int(i) for i in lb], [int(i) for i in rb]]]
    except (TypeError, ValueError):
        raise InputError("must be ((lhs_contracting, rhs_contracting), (lhs_batch, "
                         f"rhs_batch)), tuples of ints, got {dn!r}",
                         field="dimension_numbers") from None


def DotGeneral(*, lhs: Any = None, rhs: Any = None,
               dimension_numbers: Any = (((), ()), ((), ())), precision: Any = None,
               batch_axis: int = 0, channel_axis: int = -1) -> StaxLayer:
    """``lax.dot_general`` of the input with a constant, non-trainable ``rhs`` (or of a
    constant ``lhs`` with the input) (stax.DotGeneral): at most one of them; neither is the
    identity; a scalar scales. Every axis of an array constant must be contracted against a
    spatial axis of the input, without batch dimensions, so that the output keeps the batch
    axis first and the channels last (other layouts are refused). ``precision`` is ignored:
    NumPy computes in full precision."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis)
    if lhs is not None and rhs is not None:
        raise InputError("give at most one of lhs and rhs: the layer's input is the other "
                         "factor of the dot_general", field="rhs")
    layer: dict[str, Any] = {"type": "dot_general"}
    for name, v in (("lhs", lhs), ("rhs", rhs)):
        if v is not None:
            layer[name] = _constant(v, name)
    layer["dimension_numbers"] = _dimension_numbers(dimension_numbers)
    return _layer(layer)


# --- pooling, readouts, normalisation ------------------------------------------------------

def AvgPool(window_shape: Sequence[int], strides: Sequence[int] | None = None,
            padding: str = "VALID", normalize_edges: bool = False, batch_axis: int = 0,
            channel_axis: int = -1) -> StaxLayer:
    """Average over windows, padded zeros counted (stax.AvgPool). ``normalize_edges=True``
    (dividing by the in-image count instead) is refused with SAME padding, where it
    matters."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis)
    if normalize_edges and padding != "VALID":
        raise InputError("normalize_edges=True is not supported with SAME or CIRCULAR "
                         "padding", field="normalize_edges")
    return _layer({"type": "avg_pool", "window_shape": _ints(window_shape),
                   "strides": _ints(strides), "padding": padding})


def SumPool(window_shape: Sequence[int], strides: Sequence[int] | None = None,
            padding: str = "VALID", batch_axis: int = 0, channel_axis: int = -1) -> StaxLayer:
    """Sum over windows (stax.SumPool)."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis)
    return _layer({"type": "sum_pool", "window_shape": _ints(window_shape),
                   "strides": _ints(strides), "padding": padding})


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1) -> StaxLayer:
    """Mean over all spatial positions (stax.GlobalAvgPool)."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis)
    return _layer({"type": "global_avg_pool"})


def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1) -> StaxLayer:
    """Sum over all spatial positions (stax.GlobalSumPool)."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis)
    return _layer({"type": "global_sum_pool"})


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0) -> StaxLayer:
    """All non-batch axes into one (stax.Flatten)."""
    _defaults(batch_axis=batch_axis, batch_axis_out=batch_axis_out)
    return _layer({"type": "flatten"})


def LayerNorm(axis: int | Sequence[int] = -1, eps: float = 1e-12, batch_axis: int = 0,
              channel_axis: int = -1) -> StaxLayer:
    """Normalise over ``axis`` (must include the channels) (stax.LayerNorm)."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis)
    return _layer({"type": "layer_norm", "eps": eps,
                   "axis": axis if isinstance(axis, int) else _ints(axis)})


def _same(p: Any) -> Any:
    return p


def Aggregate(aggregate_axis: int | Sequence[int] | None = None, batch_axis: int = 0,
              channel_axis: int = -1, to_dense: Callable[[Any], Any] = _same,
              implementation: str = "DENSE") -> StaxLayer:
    """Graph aggregation, ``out[j] = sum_i pattern[i, j] x[i]`` over the vertices of
    ``aggregate_axis`` (stax.Aggregate; ``None``: every spatial axis). The graphs come as
    stax's ``pattern`` keyword of ``apply_fn`` and ``kernel_fn``: dense weights
    ``(n, *agg, *agg)`` (``to_dense`` applied first) or, with ``implementation="SPARSE"``,
    integer edges ``(n, n_edges, K, 2)``. For the service, append them to the inputs with
    :func:`ntkcompute.pack_pattern` and set the spec's ``pattern_channels``."""
    _defaults(batch_axis=batch_axis, channel_axis=channel_axis)
    if implementation not in ("DENSE", "SPARSE"):
        raise InputError(f"must be 'DENSE' or 'SPARSE', got {implementation!r}",
                         field="implementation")
    if not callable(to_dense):
        raise InputError(f"must be a function, got {type(to_dense).__name__}",
                         field="to_dense")
    axes = None if aggregate_axis is None else \
        [int(a) for a in np.atleast_1d(aggregate_axis)]
    return _layer({"type": "aggregate", "aggregate_axis": axes}, None,
                  (_Graph(axes, implementation, to_dense),))


def Dropout(rate: float, mode: str = "train") -> StaxLayer:
    """Keep each unit with probability ``rate`` (stax.Dropout: ``rate`` is the keep rate)."""
    return _layer({"type": "dropout", "rate": rate, "mode": mode})


def GlobalSelfAttention(n_chan_out: int, n_chan_key: int, n_chan_val: int, n_heads: int,
                        linear_scaling: bool = True, W_key_std: float = 1.0,
                        W_value_std: float = 1.0, W_query_std: float = 1.0,
                        W_out_std: float = 1.0, b_std: float | None = None,
                        attention_mechanism: str = "SOFTMAX", pos_emb_type: str = "NONE",
                        pos_emb_p_norm: float = 2, pos_emb_decay_fn: Any = None,
                        n_chan_pos_emb: int | None = None, W_pos_emb_std: float = 1.0,
                        val_pos_emb: bool = False, batch_axis: int = 0,
                        channel_axis: int = -1) -> StaxLayer:
    """Multi-head self-attention over all positions (stax.GlobalSelfAttention), without
    positional embeddings (``pos_emb_type='NONE'``)."""
    _defaults(pos_emb_type=pos_emb_type, pos_emb_decay_fn=pos_emb_decay_fn,
              n_chan_pos_emb=n_chan_pos_emb, val_pos_emb=val_pos_emb, batch_axis=batch_axis,
              channel_axis=channel_axis)
    return _layer({"type": "global_self_attention", "n_chan_out": n_chan_out,
                   "n_chan_key": n_chan_key, "n_chan_val": n_chan_val, "n_heads": n_heads,
                   "linear_scaling": linear_scaling, "W_key_std": W_key_std,
                   "W_value_std": W_value_std, "W_query_std": W_query_std,
                   "W_out_std": W_out_std, "b_std": b_std,
                   "attention_mechanism": attention_mechanism})


# --- nonlinearities ------------------------------------------------------------------------

def Relu(do_stabilize: bool = False) -> StaxLayer:
    """max(x, 0) (stax.Relu; ``do_stabilize`` is accepted: our angle is stable without)."""
    _defaults(do_stabilize=do_stabilize)
    return _layer({"type": "relu"})


def LeakyRelu(alpha: float, do_stabilize: bool = False) -> StaxLayer:
    """x for x > 0, ``alpha``·x below (stax.LeakyRelu: ``alpha`` has no default)."""
    _defaults(do_stabilize=do_stabilize)
    return _layer({"type": "leaky_relu", "alpha": alpha})


def ABRelu(a: float, b: float, do_stabilize: bool = False) -> StaxLayer:
    """a·x for x < 0, b·x above (stax.ABRelu)."""
    _defaults(do_stabilize=do_stabilize)
    return _layer({"type": "ab_relu", "a": a, "b": b})


def Abs(do_stabilize: bool = False) -> StaxLayer:
    """|x| (stax.Abs)."""
    _defaults(do_stabilize=do_stabilize)
    return _layer({"type": "abs"})


def Sign() -> StaxLayer:
    """sign(x) (stax.Sign)."""
    return _layer({"type": "sign"})


def Gelu(approximate: bool = False) -> StaxLayer:
    """x·Φ(x) (stax.Gelu; ``approximate`` only chose stax's finite-net function)."""
    return _layer({"type": "gelu"})


def Erf(a: float = 1., b: float = 1., c: float = 0.) -> StaxLayer:
    """a·erf(b·x) + c (stax.Erf)."""
    return _layer({"type": "erf", "a": a, "b": b, "c": c})


def Sin(a: float = 1., b: float = 1., c: float = 0.) -> StaxLayer:
    """a·sin(b·x + c) (stax.Sin)."""
    return _layer({"type": "sin", "a": a, "b": b, "c": c})


def Cos(a: float = 1., b: float = 1., c: float = 0.) -> StaxLayer:
    """a·cos(b·x + c) (stax.Cos)."""
    return _layer({"type": "cos", "a": a, "b": b, "c": c})


def Rbf(gamma: float = 1.0) -> StaxLayer:
    """√2·sin(√(2γ)·x + π/4), whose NNGP is an RBF kernel (stax.Rbf)."""
    return _layer({"type": "rbf", "gamma": gamma})


def Exp(a: float = 1, b: float = 1) -> StaxLayer:
    """a·exp(b·x) (stax.Exp)."""
    return _layer({"type": "exp", "a": a, "b": b})


def Gaussian(a: float = 1, b: float = -1) -> StaxLayer:
    """a·exp(b·x²) (stax.Gaussian)."""
    return _layer({"type": "gaussian", "a": a, "b": b})


#: Where a callable is compared with the named functions: [-6, 6] covers ≥ 6σ of a
#: unit-variance pre-activation; the tolerance separates gelu from gelu_tanh (≤ 5e-4 apart).
_GRID = np.linspace(-6.0, 6.0, 241)


def _named(fn: Any) -> str | None:
    """The name of the listed function ``fn`` is (a name, or a callable equal to one on
    :data:`_GRID`), else None."""
    if isinstance(fn, str):
        return fn if fn in ELEMENTWISE_FNS else None
    got = _on_grid(fn)
    for name in ELEMENTWISE_FNS:
        want = FUNCTIONS[name][0](np, _GRID)
        if got.shape == want.shape and np.all(np.abs(got - want) <= 1e-5 * (1 + np.abs(want))):
            return name
    return None


def _on_grid(fn: Any) -> np.ndarray:
    try:
        with np.errstate(all="ignore"):
            return np.asarray(fn(_GRID), dtype=np.float64)
    except Exception as e:
        raise InputError(f"could not be evaluated on a NumPy array: {e}", field="fn") from None


def _traced(fn: Any) -> str | None:
    """``fn`` as an expression's text, if calling it on a symbol gives a tree (NumPy / SciPy
    ufuncs and arithmetic only) that equals ``fn`` on :data:`_GRID` and fits the bounds."""
    tree = expression.trace(fn)
    if tree is None:
        return None
    text = expression.unparse(tree)
    try:
        tree = compiled(text)[0]
    except expression.ExpressionError:
        return None
    with np.errstate(all="ignore"):
        want = _on_grid(fn)
        got = expression.evaluate(tree, np, _GRID.copy())
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-12, atol=1e-12,
                                                  equal_nan=True):
        return None
    return text


def _activation(fn: Any, deg: int, df: Any = None) -> dict[str, Any]:
    """The spec of φ = ``fn``: a listed function by name, an expression (a string, or a
    callable traced to one), or the in-process functions themselves."""
    name = _named(fn)
    if name is not None:
        return {"type": "elementwise", "fn": name, "deg": deg}
    if isinstance(fn, str):
        try:
            compiled(fn)
        except expression.ExpressionError as e:
            raise InputError(f"is neither one of {', '.join(ELEMENTWISE_FNS)} nor an "
                             f"expression in x: {e}", field="fn") from None
        return {"type": "elementwise", "expr": fn, "deg": deg}
    if not callable(fn):
        raise InputError(f"must be a function, a name or an expression, got "
                         f"{type(fn).__name__}", field="fn")
    text = _traced(fn)
    if text is not None:
        return {"type": "elementwise", "expr": text, "deg": deg}
    return {"type": "elementwise", "deg": deg,
            "py": PyFunctions(fn, df, name=getattr(fn, "__name__", "fn"))}


def ElementwiseNumerical(fn: Any, deg: int, df: Any = None) -> StaxLayer:
    """φ = ``fn`` by Gauss–Hermite quadrature of degree ``deg`` (stax.ElementwiseNumerical).

    ``fn`` may be a listed function (its name, or a callable equal to it), an expression in
    ``x`` (``"x * tanh(x)"``), a callable built of NumPy / SciPy ufuncs and arithmetic (traced
    to an expression, so the spec stays JSON and φ' is symbolic), or any other NumPy callable
    (in-process only; φ' is ``df``, or a 4th-order finite difference of ``fn`` when ``df``
    is None). ``df`` is ignored where φ' is known exactly."""
    return _layer(_activation(fn, deg, df))


def Elementwise(fn: Any = None, nngp_fn: Any = None, d_nngp_fn: Any = None) -> StaxLayer:
    """φ = ``fn`` with the NNGP map ``nngp_fn(cov12, var1, var2) = E φ(u)φ(v)`` in closed form
    (stax.Elementwise); ``d_nngp_fn`` is ``E φ'(u)φ'(v)``, by default the complex-step
    derivative of ``nngp_fn`` in ``cov12`` (exact to rounding; ``nngp_fn`` must accept complex
    arrays, as NumPy's arcsin, sqrt and exp do). Both are called on whole NumPy arrays (entry
    by entry where that fails), in-process only.

    Without ``nngp_fn`` (nt refuses ``kernel_fn`` then), the kernel is the Gauss–Hermite
    quadrature of ``fn`` of degree 25, as ``ElementwiseNumerical(fn, 25)``."""
    if fn is None and nngp_fn is None:
        raise InputError("give fn (the activation) or nngp_fn (its NNGP map), or both",
                         field="fn")
    if nngp_fn is None:
        return ElementwiseNumerical(fn, 25)
    for name, f in (("fn", fn), ("nngp_fn", nngp_fn), ("d_nngp_fn", d_nngp_fn)):
        if f is not None and not callable(f):
            raise InputError(f"must be a function, got {type(f).__name__}", field=name)
    if d_nngp_fn is None:
        try:
            v = complex(np.asarray(nngp_fn(np.array([0.3 + 1e-30j]), np.array([1.0]),
                                           np.array([1.2]))).ravel()[0])
            ok = np.isfinite(v) and v.imag != 0.0
        except Exception:
            ok = False
        if not ok:
            raise InputError("was not given, and nngp_fn does not take complex arguments, "
                             "so its derivative cannot be taken by complex step: pass "
                             "d_nngp_fn", field="d_nngp_fn")
    df = None
    if fn is not None:
        text = _traced(fn)
        if text is not None:
            dtree = compiled(text)[1]
            df = functools.partial(expression.evaluate, dtree, np)
    return _layer({"type": "elementwise", "py": PyFunctions(
        fn, df, nngp_fn, d_nngp_fn, name=getattr(fn or nngp_fn, "__name__", "fn"))})

"""Architecture specs: layers as data, named and parameterised as in ``neural_tangents.stax``.

An architecture is JSON such as::

    {"layers": [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.414},
                {"type": "relu"},
                {"type": "global_avg_pool"},
                {"type": "dense", "W_std": 1.0}],
     "parameterization": "ntk"}

Every layer is a pydantic model tagged by ``type``; the kernel rules live in
``ntkcompute.kernels`` (one pure function per layer type) and the finite-width network in
``ntkcompute.empirical``. Widths (``out_dim``, ``out_chan``) do not enter the infinite-width
kernels in the NTK parameterization; the empirical kernel uses them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import InputError

Padding = Literal["SAME", "VALID", "CIRCULAR"]

#: Activations computed by Gauss–Hermite quadrature (``stax.ElementwiseNumerical``).
ELEMENTWISE_FNS = (
    "tanh", "sigmoid", "softplus", "silu", "elu", "gelu", "gelu_tanh", "relu", "erf", "sin",
)


class _Layer(BaseModel):
    # no layer parameter may be inf or NaN (JSON's Infinity/NaN parse as floats)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _std(v: float | None) -> float | None:
    if v is None:
        return v
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"must be a finite number >= 0, got {v}")
    if v > 1e100:  # its square enters every kernel entry; past this it overflows float64
        raise ValueError(f"must be <= 1e100, got {v}")
    return v


#: A weight or bias standard deviation (``W_std``, ``b_std``, attention's ``W_*_std``).
Std = Annotated[float, AfterValidator(_std)]
OptionalStd = Annotated[float | None, AfterValidator(_std)]


class _Affine(_Layer):
    W_std: Std = 1.0
    b_std: OptionalStd = None


class Dense(_Affine):
    """Fully connected layer acting on the channel (last) axis. ``b_std: null`` = no bias."""

    type: Literal["dense"] = "dense"
    out_dim: int | None = Field(default=None, gt=0)


def _positive_ints(v: list[int] | None, name: str) -> list[int] | None:
    if v is None:
        return v
    if len(v) == 0 or any(int(s) <= 0 for s in v):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {v}")
    return v


class Conv(_Affine):
    """Convolution over all spatial axes; window averaged with a fixed ``1/prod(filter_shape)``."""

    type: Literal["conv"] = "conv"
    filter_shape: list[int]
    strides: list[int] | None = None
    padding: Padding = "VALID"
    out_chan: int | None = Field(default=None, gt=0)

    @field_validator("filter_shape")
    @classmethod
    def _f(cls, v: list[int]) -> list[int]:
        return _positive_ints(v, "filter_shape")

    @field_validator("strides")
    @classmethod
    def _s(cls, v: list[int] | None) -> list[int] | None:
        return _positive_ints(v, "strides")


class AvgPool(_Layer):
    """Average pooling; padded zeros count in the divisor (stax ``normalize_edges=False``)."""

    type: Literal["avg_pool"] = "avg_pool"
    window_shape: list[int]
    strides: list[int] | None = None
    padding: Padding = "VALID"

    @field_validator("window_shape")
    @classmethod
    def _w(cls, v: list[int]) -> list[int]:
        return _positive_ints(v, "window_shape")

    @field_validator("strides")
    @classmethod
    def _s(cls, v: list[int] | None) -> list[int] | None:
        return _positive_ints(v, "strides")


class GlobalAvgPool(_Layer):
    type: Literal["global_avg_pool"] = "global_avg_pool"


class Flatten(_Layer):
    type: Literal["flatten"] = "flatten"


class Identity(_Layer):
    type: Literal["identity"] = "identity"


class Relu(_Layer):
    type: Literal["relu"] = "relu"


class LeakyRelu(_Layer):
    type: Literal["leaky_relu"] = "leaky_relu"
    alpha: float = 0.01

    @field_validator("alpha")
    @classmethod
    def _a(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("alpha must be finite")
        return v


class ABRelu(_Layer):
    """``a * min(x, 0) + b * max(x, 0)`` (stax.ABRelu)."""

    type: Literal["ab_relu"] = "ab_relu"
    a: float
    b: float


class ABReluStax(ABRelu):
    """``abrelu``: the same layer under stax's spelling of the name."""

    type: Literal["abrelu"] = "abrelu"  # type: ignore[assignment]


class Abs(_Layer):
    type: Literal["abs"] = "abs"


class _Scaled(_Layer):
    a: float = 1.0
    b: float = 1.0
    c: float = 0.0


class Erf(_Scaled):
    """``a * erf(b * x) + c``."""

    type: Literal["erf"] = "erf"


class Gelu(_Layer):
    """Exact GELU ``x * Phi(x)`` (stax.Gelu(approximate=False))."""

    type: Literal["gelu"] = "gelu"


class Sin(_Scaled):
    """``a * sin(b * x + c)``."""

    type: Literal["sin"] = "sin"


class Cos(_Scaled):
    """``a * cos(b * x + c)`` (stax.Cos)."""

    type: Literal["cos"] = "cos"


class Rbf(_Layer):
    """``sqrt(2) * sin(sqrt(2 gamma) * x + pi/4)`` (stax.Rbf): on unit-variance inputs its
    NNGP is the RBF kernel ``exp(-gamma |x - x'|^2)``."""

    type: Literal["rbf"] = "rbf"
    gamma: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class Exp(_Layer):
    """``a * exp(b * x)`` (stax.Exp)."""

    type: Literal["exp"] = "exp"
    a: float = Field(default=1.0, allow_inf_nan=False)
    b: float = Field(default=1.0, allow_inf_nan=False)


class Gaussian(_Layer):
    """``a * exp(b * x^2)`` (stax.Gaussian); ``b <= 0``, else its moments are infinite."""

    type: Literal["gaussian"] = "gaussian"
    a: float = Field(default=1.0, allow_inf_nan=False)
    b: float = Field(default=-1.0, le=0, allow_inf_nan=False)


class Sign(_Layer):
    type: Literal["sign"] = "sign"


class Elementwise(_Layer):
    """Any listed activation, kernel by ``deg``-point Gauss–Hermite quadrature per axis."""

    type: Literal["elementwise"] = "elementwise"
    fn: Literal[ELEMENTWISE_FNS]  # type: ignore[valid-type]
    deg: int = Field(default=25, ge=2, le=200)


class SumPool(AvgPool):
    """Sum pooling: ``avg_pool`` without the division by the window size (stax.SumPool)."""

    type: Literal["sum_pool"] = "sum_pool"  # type: ignore[assignment]


class GlobalSumPool(_Layer):
    """Sum over every spatial position (stax.GlobalSumPool)."""

    type: Literal["global_sum_pool"] = "global_sum_pool"


class LayerNorm(_Layer):
    """Normalise each input over ``axis`` (stax.LayerNorm): the channel axis (-1), optionally
    with spatial axes (1 .. d, or negative), never the batch axis 0."""

    type: Literal["layer_norm"] = "layer_norm"
    axis: int | list[int] = -1
    eps: float = Field(default=1e-12, ge=0, allow_inf_nan=False)


class GlobalSelfAttention(_Layer):
    """Multi-head self-attention over all positions (stax.GlobalSelfAttention)."""

    type: Literal["global_self_attention"] = "global_self_attention"
    n_chan_out: int | None = Field(default=None, gt=0)
    n_chan_key: int | None = Field(default=None, gt=0)
    n_chan_val: int | None = Field(default=None, gt=0)
    n_heads: int = Field(default=1, gt=0)
    linear_scaling: bool = True
    W_key_std: Std = 1.0
    W_value_std: Std = 1.0
    W_query_std: Std = 1.0
    W_out_std: Std = 1.0
    b_std: OptionalStd = None
    attention_mechanism: Literal["SOFTMAX", "IDENTITY", "ABS", "RELU"] = "SOFTMAX"


# --- combinators (stax.serial, FanOut, parallel, FanInSum/Concat/Prod) ----------------------


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


LAYER_CLASSES = (Dense, Conv, AvgPool, SumPool, GlobalAvgPool, GlobalSumPool, Flatten, Identity,
                 Relu, LeakyRelu, ABRelu, ABReluStax, Abs, Erf, Gelu, Sin, Cos, Rbf, Exp,
                 Gaussian, Sign, Elementwise, LayerNorm, GlobalSelfAttention, FanOut, Parallel,
                 FanInSum, FanInProd, FanInConcat, Serial, Repeat)
Layer = Annotated[Union[LAYER_CLASSES], Field(discriminator="type")]  # noqa: UP007
for _cls in (Parallel, Serial, Repeat):
    _cls.model_rebuild()

NONLINEAR = (Relu, LeakyRelu, ABRelu, Abs, Erf, Gelu, Sin, Cos, Rbf, Exp, Gaussian, Sign,
             Elementwise)
FAN_IN = (FanInSum, FanInProd, FanInConcat)


#: Deepest nesting of serial / parallel / repeat: validation and serialisation recurse once
#: per level, and no network needs more.
MAX_NESTING = 32
#: Most layers a spec may expand to (each ``repeat`` multiplies its layer's count): planning
#: costs ~0.1 ms a layer, so this bounds it below a second. Counted on the raw spec.
MAX_LAYERS = 4096


#: Layers whose float32 kernels meet 1e-6 of float64 (relative to sqrt(K_ii K_jj)) and stay
#: PSD to -1e-7·mean diag on the real-image workloads of bench/precision.py (CIFAR-10, MNIST,
#: full and half resolution). float32 inputs compute in float32 by default only when every
#: layer is one of these; otherwise the default is float64 (LayerNorm over space, attention,
#: Abs and Sign with biases were measured at 1e-6 to 1e-5 in float32; the rest untested).
FLOAT32_VERIFIED = (Dense, Conv, AvgPool, SumPool, GlobalAvgPool, GlobalSumPool, Flatten,
                    Identity, Relu, Erf, FanOut, Parallel, FanInSum, Serial, Repeat)


def float32_verified(arch: Architecture) -> bool:
    """Whether every layer of ``arch`` (nested ones too) is in :data:`FLOAT32_VERIFIED`."""
    todo = list(arch.layers)
    while todo:
        layer = todo.pop()
        if not isinstance(layer, FLOAT32_VERIFIED):
            return False
        todo += [x for _, x in _nested(layer)[0]]
    return True


def _part(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _nested(layer: Any) -> tuple[list[tuple[str, Any]], int]:
    """The layers directly inside a serial / parallel / repeat (with their paths relative to
    it) and the repeat count; ``([], 1)`` for any other layer."""
    kind = _part(layer, "type")
    if kind == "serial" and isinstance(_part(layer, "layers"), list):
        return [(f".layers[{i}]", x) for i, x in enumerate(_part(layer, "layers"))], 1
    if kind == "parallel" and isinstance(_part(layer, "branches"), list):
        return [(f".branches[{b}][{i}]", x) for b, br in enumerate(_part(layer, "branches"))
                if isinstance(br, list) for i, x in enumerate(br)], 1
    if kind == "repeat":
        n = _part(layer, "n")
        return [(".layer", _part(layer, "layer"))], n if isinstance(n, int) and n > 0 else 1
    return [], 1


def spec_size(layers: list) -> tuple[int, int]:
    """``(planned layers, nesting depth)`` of a spec's (raw or parsed) layer list, without
    expanding anything: a ``repeat`` multiplies, containers count 0, every other layer 1.

    Raises:
        ValueError: past :data:`MAX_NESTING` (naming where) or :data:`MAX_LAYERS`.
    """
    stack, deepest = [(f"layers[{i}]", x, 0) for i, x in enumerate(layers)], 0
    while stack:  # depth first, without recursion: the input may be nested arbitrarily deep
        path, layer, depth = stack.pop()
        inner, _ = _nested(layer)
        if inner:
            if depth + 1 > MAX_NESTING:
                raise ValueError(f"{path} nests serial/parallel/repeat more than "
                                 f"{MAX_NESTING} levels deep")
            deepest = max(deepest, depth + 1)
            stack.extend((path + p, x, depth + 1) for p, x in inner)

    def count(layer: Any) -> int:  # recursion bounded by MAX_NESTING now
        inner, n = _nested(layer)
        return n * sum(count(x) for _, x in inner) if inner else 1

    total = sum(count(x) for x in layers)
    if total > MAX_LAYERS:
        raise ValueError(f"expands to {total} layers (repeat multiplies), more than the "
                         f"limit of {MAX_LAYERS}")
    return total, deepest


class Architecture(BaseModel):
    """A serial network: ``layers`` applied in order, one parameterization for all.

    At most :data:`MAX_LAYERS` layers once repeats are expanded, nested at most
    :data:`MAX_NESTING` deep (checked before the layers are validated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: list[Layer] = Field(min_length=1)
    parameterization: Literal["ntk", "standard"] = "ntk"

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        layers = _part(data, "layers")
        if isinstance(layers, list):
            spec_size(layers)
        return data

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=False)


def _error_from_validation(err: ValidationError) -> InputError:
    """The first error, located as ``layers[2].branches[1][0]`` + field ``W_std``."""
    e = err.errors()[0]
    loc = list(e.get("loc", ()))
    msg = e.get("msg", "invalid value")
    if e.get("type") == "union_tag_not_found":
        msg = f"{msg}; known layer types: {', '.join(_LAYER_TYPES)}"
    if not (loc and loc[0] == "layers" and len(loc) >= 2 and isinstance(loc[1], int)):
        return InputError(msg, field=".".join(str(p) for p in loc) if loc else "arch")
    path, layer_path, rest = "", "", []
    for k, p in enumerate(loc):
        if isinstance(p, int):
            path += f"[{p}]"
        elif is_union_tag(loc, k):
            layer_path, rest = path, []
            continue
        else:
            path += f".{p}" if path else p
        rest.append(f"[{p}]" if isinstance(p, int) else p)
    at_layer = loc[-1] == "layer" or (isinstance(loc[-1], int) and (
        loc[-2] == "layers" or isinstance(loc[-2], int)))  # not branches[b], a list
    if not layer_path or at_layer:  # the error is a layer itself (a missing or unknown type)
        layer_path, rest = path, []
    field = ".".join(str(r) for r in rest).replace(".[", "[") if rest else "type"
    return InputError(msg, field=field, layer=layer_index(layer_path))


def is_union_tag(loc: list | tuple, k: int) -> bool:
    """Whether ``loc[k]`` of a pydantic error location is the layer-type tag pydantic puts
    after a layer's place (an index, or a repeat's ``layer``), not a field."""
    return k > 0 and (isinstance(loc[k - 1], int) or loc[k - 1] == "layer") \
        and loc[k] in _LAYER_TYPES


def layer_index(path: str) -> int | str:
    """``"layers[3]"`` -> 3 (a top-level layer); a nested path stays a string."""
    m = re.fullmatch(r"layers\[(\d+)\]", path)
    return int(m.group(1)) if m else path


_LAYER_TYPES = tuple(m.model_fields["type"].default for m in LAYER_CLASSES)


def parse_arch(arch: Architecture | dict[str, Any] | str) -> Architecture:
    """Accept a spec object, a dict or a JSON string; raise :class:`InputError` if invalid."""
    if isinstance(arch, Architecture):
        return arch
    try:
        if isinstance(arch, (str, bytes)):
            try:
                arch = json.loads(arch)
            except json.JSONDecodeError as e:
                raise InputError(f"not valid JSON: {e}", field="arch") from None
        if not isinstance(arch, dict):
            raise InputError("must be an object with a 'layers' list", field="arch")
        return Architecture.model_validate(arch)
    except ValidationError as err:
        raise _error_from_validation(err) from None

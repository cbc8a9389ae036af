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
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InputError

Padding = Literal["SAME", "VALID", "CIRCULAR"]

#: Activations computed by Gauss–Hermite quadrature (``stax.ElementwiseNumerical``).
ELEMENTWISE_FNS = (
    "tanh", "sigmoid", "softplus", "silu", "elu", "gelu", "gelu_tanh", "relu", "erf", "sin",
)


class _Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _std(v: float | None, name: str) -> float | None:
    if v is None:
        return v
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    if v > 1e100:  # its square enters every kernel entry; past this it overflows float64
        raise ValueError(f"{name} must be <= 1e100, got {v}")
    return v


class _Affine(_Layer):
    W_std: float = 1.0
    b_std: float | None = None

    @field_validator("W_std")
    @classmethod
    def _w(cls, v: float) -> float:
        return _std(v, "W_std")

    @field_validator("b_std")
    @classmethod
    def _b(cls, v: float | None) -> float | None:
        return _std(v, "b_std")


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


LAYER_CLASSES = (Dense, Conv, AvgPool, GlobalAvgPool, Flatten, Identity, Relu, LeakyRelu,
                 ABRelu, ABReluStax, Abs, Erf, Gelu, Sin, Cos, Rbf, Exp, Gaussian, Sign,
                 Elementwise)
Layer = Annotated[Union[LAYER_CLASSES], Field(discriminator="type")]  # noqa: UP007

NONLINEAR = (Relu, LeakyRelu, ABRelu, Abs, Erf, Gelu, Sin, Cos, Rbf, Exp, Gaussian, Sign,
             Elementwise)


class Architecture(BaseModel):
    """A serial network: ``layers`` applied in order, one parameterization for all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: list[Layer] = Field(min_length=1)
    parameterization: Literal["ntk", "standard"] = "ntk"

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=False)


def _error_from_validation(err: ValidationError) -> InputError:
    e = err.errors()[0]
    loc = list(e.get("loc", ()))
    msg = e.get("msg", "invalid value")
    if e.get("type") == "union_tag_not_found":
        msg = f"{msg}; known layer types: {', '.join(_LAYER_TYPES)}"
    if loc and loc[0] == "layers" and len(loc) >= 2 and isinstance(loc[1], int):
        layer = loc[1]
        rest = [str(p) for p in loc[2:]]
        if rest and rest[0] in _LAYER_TYPES:
            rest = rest[1:]  # pydantic puts the union tag in the path
        field = ".".join(rest) if rest else "type"
        return InputError(msg, field=field, layer=layer)
    field = ".".join(str(p) for p in loc) if loc else "arch"
    return InputError(msg, field=field)


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

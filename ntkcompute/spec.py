"""Architecture specs: layers as data, named and parameterised as in ``neural_tangents.stax``.

An architecture is JSON such as::

    {"layers": [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.414},
                {"type": "relu"},
                {"type": "global_avg_pool"},
                {"type": "dense", "W_std": 1.0}],
     "parameterization": "ntk"}

Every layer is a pydantic model tagged by ``type``, declared with everything else about the
layer (requirements, shape rule, kernel rule, finite-width forward / backward, random
features) in its family module of :mod:`ntkcompute.layers`, and registered there; this module
gathers the registered models into the ``Layer`` union and the :class:`Architecture`.
Widths (``out_dim``, ``out_chan``) do not enter the infinite-width kernels in the NTK
parameterization; the empirical kernel uses them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from . import layers as _layers
from .errors import InputError
from .layers.activations import (
    ELEMENTWISE_FNS,
    ABRelu,
    ABReluStax,
    Abs,
    Cos,
    Elementwise,
    Erf,
    Exp,
    Gaussian,
    Gelu,
    LeakyRelu,
    Rbf,
    Relu,
    Sign,
    Sin,
)
from .layers.attention import GlobalSelfAttention
from .layers.branching import (
    NESTED,
    FanInConcat,
    FanInProd,
    FanInSum,
    FanOut,
    Parallel,
    Repeat,
    Serial,
)
from .layers.graph import MAX_VERTICES, Aggregate
from .layers.linear import Conv, Dense
from .layers.normalization import LayerNorm
from .layers.pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, Identity, SumPool
from .layers.registry import OptionalStd, Padding, Std, _Layer, _positive_ints, layer_index
from .layers.registry import part as _part

__all__ = [
    "ELEMENTWISE_FNS", "FAN_IN", "FLOAT32_VERIFIED", "LAYER_CLASSES", "MAX_LAYERS",
    "MAX_NESTING", "NONLINEAR", "ABRelu", "ABReluStax", "Abs", "Aggregate", "Architecture",
    "AvgPool",
    "Conv", "Cos", "Dense", "Elementwise", "Erf", "Exp", "FanInConcat", "FanInProd",
    "FanInSum", "FanOut", "Flatten", "Gaussian", "Gelu", "GlobalAvgPool", "GlobalSelfAttention",
    "GlobalSumPool", "Identity", "Layer", "LayerNorm", "LeakyRelu", "OptionalStd", "Padding",
    "Parallel", "Rbf", "Relu", "Repeat", "Serial", "Sign", "Sin", "Std", "SumPool",
    "_Layer", "_positive_ints", "float32_verified", "is_union_tag", "layer_index",
    "parse_arch", "spec_size",
]

#: Every layer spec class, in the order of the registry (``ntkcompute.layers``).
LAYER_CLASSES = _layers.registered()
Layer = Annotated[Union[LAYER_CLASSES], Field(discriminator="type")]  # noqa: UP007
for _cls in NESTED:
    _cls.model_rebuild(_types_namespace={"Layer": Layer})

NONLINEAR = tuple(c for c in LAYER_CLASSES if _layers.rule_of_class(c).nonlinear)
FAN_IN = tuple(c for c in LAYER_CLASSES if _layers.rule_of_class(c).structure == "fan_in")


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
FLOAT32_VERIFIED = tuple(c for c in LAYER_CLASSES
                         if _layers.rule_of_class(c).float32_verified)


def float32_verified(arch: Architecture) -> bool:
    """Whether every layer of ``arch`` (nested ones too) is in :data:`FLOAT32_VERIFIED`."""
    todo = list(arch.layers)
    while todo:
        layer = todo.pop()
        if not _layers.rule_of(layer).float32_verified:
            return False
        todo += [x for _, x in _nested(layer)[0]]
    return True


def _nested(layer: Any) -> tuple[list[tuple[str, Any]], int]:
    """The layers directly inside a serial / parallel / repeat (with their paths relative to
    it) and the repeat count; ``([], 1)`` for any other layer (raw or parsed)."""
    rule = _layers.rule_of_tag(_part(layer, "type"))
    return rule.nested(layer) if rule is not None else ([], 1)


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
    #: the last ``pattern_channels`` channels of every input are its graph, for the
    #: ``aggregate`` layers (see :mod:`ntkcompute.layers.graph`, ``ntkcompute.pack_pattern``)
    pattern_channels: int | None = Field(None, ge=1, le=MAX_VERTICES)

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        layers = _part(data, "layers")
        if isinstance(layers, list):
            spec_size(layers)
        return data

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # without a graph it dumps as before pattern_channels existed: a stored job's
        # identity (its spec's dump) stays the same
        out = handler(self)
        if isinstance(out, dict) and out.get("pattern_channels") is None:
            out.pop("pattern_channels", None)
        return out

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

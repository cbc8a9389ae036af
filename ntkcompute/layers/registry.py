"""The layer registry: one :class:`LayerRule` per layer type, found by the spec's class.

A layer family module (``linear``, ``pooling``, ``activations``, ...) declares, next to each
other, a layer's spec model (pydantic, tagged by ``type``), what it requires of its input, its
shape rule, its infinite-width kernel rule, its finite-width forward / backward and, where one
exists, its random-feature rule, as one ``LayerRule`` subclass registered with
:func:`register`. The plan (:mod:`ntkcompute.plan`), the kernel loop
(:mod:`ntkcompute.kernels.propagate`), the empirical network (:mod:`ntkcompute.empirical`)
and the random features (:mod:`ntkcompute.features`) look rules up with :func:`rule_of`, in
the spirit of ``neural_tangents.stax``, where a layer is one object carrying its
init / apply / kernel functions.

This module also holds what the families share and the plan re-exports: the pydantic base of
the spec models, the weight-std type, and the window geometry of convolutions and pooling.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from ..errors import InputError

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan

# --- spec pieces every family uses -----------------------------------------------------------

Padding = Literal["SAME", "VALID", "CIRCULAR"]

#: Most spatial positions a layer that enlarges its input (conv_transpose, image_resize) may
#: output (a 1024 x 1024 image): checked in the plan, before any work.
MAX_OUT_POSITIONS = 1 << 20


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


def _positive_ints(v: list[int] | None, name: str) -> list[int] | None:
    if v is None:
        return v
    if len(v) == 0 or any(int(s) <= 0 for s in v):
        raise ValueError(f"{name} must be a non-empty list of positive integers, got {v}")
    return v


def part(obj: Any, key: str) -> Any:
    """Field ``key`` of a layer, parsed or still raw JSON (a dict); ``None`` if absent."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def layer_index(path: str) -> int | str:
    """``"layers[3]"`` -> 3 (a top-level layer); a nested path stays a string."""
    m = re.fullmatch(r"layers\[(\d+)\]", path)
    return int(m.group(1)) if m else path


# --- window geometry (conv, avg_pool, sum_pool) ---------------------------------------------


@dataclass(frozen=True)
class Window:
    """A window op along each spatial axis: size, stride, padding (lo, hi) and output size."""

    size: tuple[int, ...]
    strides: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    out: tuple[int, ...]
    circular: bool


def make_window(
    path: str, name: str, spatial: tuple[int, ...], size: list[int], strides: list[int] | None,
    padding: str, default_strides: tuple[int, ...],
) -> Window:
    """The window of a layer at ``path`` on inputs with spatial shape ``spatial``.

    Raises:
        InputError: the window does not fit (naming field ``name`` or ``strides``).
    """
    where = layer_index(path)
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


# --- the rule protocol ----------------------------------------------------------------------


@dataclass
class Leaf:
    """One layer acting on one branch value, as the plan's shape inference sees it.

    A rule's :meth:`LayerRule.shape` reads ``path``, ``in_spatial``, ``parameterization`` and
    ``width``, and sets ``out_spatial``, ``channels`` (set to the layer's output width by
    :meth:`LayerRule.out_channels` before), ``window``, ``self_stat`` and, if the layer changes
    it, ``gaussian``.
    """

    path: str
    in_spatial: tuple[int, ...]
    in_channels: int | None
    parameterization: str
    width: int | None
    out_spatial: tuple[int, ...] = ()
    channels: int | None = None
    window: Window | None = None
    self_stat: str | None = None
    gaussian: bool | None = None  # None: as the base rule decides

    def err(self, msg: str, field: str = "type") -> InputError:
        return InputError(msg, field=field, layer=layer_index(self.path))


@dataclass
class FeatureDims:
    """What :func:`ntkcompute.features.feature_map` tracks while drawing a map, per row: the
    NNGP / NTK feature dimensions per position, positions entering the layer, the peak
    working floats and the floating-point operations."""

    psi: int
    xi: int
    p_in: int
    row: int
    flops: int


class LayerRule:
    """Everything about one layer type. Subclasses set the class attributes and override the
    methods their layer needs; :func:`register` binds one to its spec model.

    Requirements of the layer's input:

    * ``covariance``: ``"full"``: the pair state entering it must hold the full spatial
      covariance (pooling, attention); ``"diagonal"``: the diagonal is enough whatever follows
      (flatten); ``"any"``: whatever the layers after it need.
    * ``gaussian_input``: its rule needs Gaussian pre-activations, and the per-input variances
      at each position (self statistic ``"var"``): nonlinearities, layer_norm.
    * ``pair_identity``: its rule needs to know which pairs are one input twice
      (``State.same``; without it every pair block has ``same=False``).

    What it does to the branch value: ``weighted`` (weights of its own: the output is Gaussian
    and independent of other branches), ``nonlinear`` (neither). ``structure`` is ``"leaf"``
    (maps one branch value), ``"fan_out"``, ``"fan_in"`` or ``"container"`` (serial,
    parallel, repeat: only the plan sees them).
    """

    spec: ClassVar[type[BaseModel]]
    covariance: ClassVar[Literal["full", "diagonal", "any"]] = "any"
    gaussian_input: ClassVar[bool] = False
    pair_identity: ClassVar[bool] = False
    weighted: ClassVar[bool] = False
    nonlinear: ClassVar[bool] = False
    #: its float32 kernels were measured within 1e-6 of float64 (see spec.FLOAT32_VERIFIED)
    float32_verified: ClassVar[bool] = False
    structure: ClassVar[Literal["leaf", "fan_out", "fan_in", "container"]] = "leaf"
    #: the layer has a random-feature rule (:meth:`feature`)
    has_features: ClassVar[bool] = False
    #: the field setting its output width, which the empirical network sets to 1 when it is
    #: the last such layer (the readout) and unset
    readout_width: ClassVar[str | None] = None
    #: the rule reads each input's graph (aggregate): ``State.pattern`` in ``kernel``, a
    #: ``pattern=`` keyword in ``forward``; :meth:`pattern_axes` says which axes it spans
    uses_pattern: ClassVar[bool] = False

    # --- spec ---
    def nested(self, layer: Any) -> tuple[list[tuple[str, Any]], int]:
        """The layers directly inside this one (with their paths relative to it) and how many
        times they run; ``([], 1)`` but for containers. ``layer`` may be raw JSON (a dict,
        not yet validated: see ``spec.spec_size``)."""
        return [], 1

    # --- plan ---
    def needs_full_in(self, layer: Any, need_out: bool) -> bool:
        """Whether the pair state entering ``layer`` must hold the full spatial covariance,
        given whether the layers after it need it (``need_out``): as ``covariance`` says,
        unless a rule's need depends on the layer's fields (dot_general)."""
        if self.covariance == "any":
            return need_out
        return self.covariance == "full"

    def walk(self, walker: Any, layer: Any, path: str, slot: int, arity: int) -> int:
        """Shape inference of ``layer`` on slots ``slot ..`` (``arity`` of them); returns the
        arity after it. A leaf maps one slot (``walker.leaf``)."""
        if arity != 1:
            raise walker.err(path, f"receives {arity} branches from a fan_out; give it a "
                             f"parallel with {arity} branches or merge them with a fan_in "
                             "first")
        walker.leaf(layer, path, slot)
        return 1

    def keeps_input(self, lp: LayerPlan) -> bool:
        """Whether its kernel rule leaves the arrays of the state it is given untouched
        (a reduction into new arrays), so that state may be read again after it (the
        family pass, ``ntkcompute.families``, then skips a copy)."""
        return False

    def pattern_axes(self, layer: Any, n_spatial: int) -> tuple[int, ...]:
        """The spatial axes (0 = the first) its graph spans, for inputs with ``n_spatial``
        spatial axes (rules with ``uses_pattern``)."""
        raise NotImplementedError

    def out_channels(self, layer: Any, channels: int | None, width: int | None) -> int | None:
        """Finite width of its output given its input's (``None``: left to the limit)."""
        return channels

    def shape(self, layer: Any, leaf: Leaf) -> None:
        """Check that the layer fits its input and set ``leaf``'s output fields."""
        leaf.out_spatial = leaf.in_spatial

    # --- infinite width ---
    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        """The next state. ``va``, ``vb``: self statistics of the pairs' first and second
        inputs, given when the plan row has a ``self_stat``. Rules may update ``st``'s arrays
        in place."""
        raise NotImplementedError(type(self).__name__)

    # --- finite width (NumPy) ---
    def has_params(self, layer: Any) -> bool:
        """Whether :meth:`init` draws something for the finite-width network (weights, or a
        dropout seed): weighted layers do."""
        return self.weighted

    def init(self, lp: LayerPlan, rng: Any, dtype: Any, parameterization: str
             ) -> tuple | None:
        """Its parameters (trainable ones, or a seed), drawn from ``rng`` where
        :meth:`has_params`."""
        return None

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        """``(output, tape data)`` for activations ``a`` ``(n, P, C)`` (``(n, C)`` for
        vectors)."""
        raise NotImplementedError(type(self).__name__)

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        """Input cotangents from output cotangents ``d`` ``(K, n, [P,] C)``, adding the
        parameter-gradient inner products to ``gram`` (``empirical._Gram``)."""
        raise NotImplementedError(type(self).__name__)

    # --- random features ---
    def feature_draws(self, lp: LayerPlan, rng: Any, m: int, dims: FeatureDims
                      ) -> tuple[Any, ...]:
        """Its random draws (from ``rng``, in plan order); updates ``dims``."""
        return ()

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        """``(ψ', ξ')`` from NNGP / NTK features ``(n, *spatial, dim)`` (``ξ`` may be None)."""
        raise NotImplementedError(type(self).__name__)


_RULES: dict[type, LayerRule] = {}
_BY_TAG: dict[str, LayerRule] = {}
R = TypeVar("R", bound=type[LayerRule])


def register(spec_cls: type[BaseModel]) -> Callable[[R], R]:
    """Class decorator: the rule of layers of exactly ``spec_cls`` (each spec class, aliases
    and subclasses included, is registered once, in the order of the known layer types)."""

    def deco(rule_cls: R) -> R:
        if spec_cls in _RULES:
            raise ValueError(f"{spec_cls.__name__} is registered twice")
        rule_cls.spec = spec_cls
        _RULES[spec_cls] = _BY_TAG[spec_cls.model_fields["type"].default] = rule_cls()
        return rule_cls

    return deco


def rule_of(layer: Any) -> LayerRule:
    """The rule of a parsed layer spec."""
    return _RULES[type(layer)]


def registered() -> tuple[type[BaseModel], ...]:
    """Every registered spec class, in registration order."""
    return tuple(_RULES)


def rules() -> tuple[LayerRule, ...]:
    return tuple(_RULES.values())


def rule_of_tag(tag: Any) -> LayerRule | None:
    """The rule of the layer type tagged ``tag`` (``None`` for anything else)."""
    return _BY_TAG.get(tag) if isinstance(tag, str) else None


def rule_of_class(spec_cls: type[BaseModel]) -> LayerRule:
    """The rule registered for ``spec_cls``."""
    return _RULES[spec_cls]

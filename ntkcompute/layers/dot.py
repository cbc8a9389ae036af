"""DotGeneral (stax.DotGeneral, ``jax.lax.dot_general`` with a constant factor): spec, plan,
kernel rule, finite-width forward / backward and random features.

The layer's input ``x`` ``(n, *spatial, C)`` is one factor of ``lax.dot_general``, the
constant ``lhs`` or ``rhs`` (at most one; neither: the identity) the other, contracted along
``dimension_numbers = ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`` as in
``lax``. Its output is ``lax.dot_general``'s: batched axes first, then the free axes of the
left factor, then those of the right one. Since here the output, like every layer's, must keep
the batch axis first and the channels last, the supported maps are those in which every axis
of the constant ``T`` is contracted against a spatial axis of the input (no batched axes: they
would come before the batch axis; no free axes of ``T``: they would come before the batch axis
or after the channels); neither the batch nor the channel axis is contracted (nt forbids the
channel axis; a contracted batch axis leaves no batch). A scalar ``T`` is a scale.

The map is linear along the contracted positions ``a``, the other spatial axes ``r`` kept::

    x'[r] = sum_a T[a] x[a, r]
    K'[r, r'] = sum_{a, a'} T[a] T[a'] K[(a, r), (a', r')]   (T K Tᵀ),  Θ' likewise

so the state entering it holds the full spatial covariance when it contracts anything (a
scalar, or the identity, acts on any layout: ``K c²``, ``Θ c²``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import ValidationInfo, field_validator

from .registry import LayerRule, Leaf, _Layer, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan

#: Most entries the constant may hold (checked while it is parsed, before any work).
MAX_CONSTANT = 1 << 16
#: Most axes the constant may have.
MAX_CONSTANT_NDIM = 16
#: Largest magnitude of an entry (its square enters every kernel entry, as a weight std's).
MAX_ENTRY = 1e100

DEFAULT_DIMENSION_NUMBERS = (((), ()), ((), ()))


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"entries must be numbers, got {type(v).__name__} {v!r}")
    f = float(v) if isinstance(v, float) or abs(v) <= MAX_ENTRY else math.inf  # big ints
    if not math.isfinite(f) or abs(f) > MAX_ENTRY:
        shown = repr(v) if len(repr(v)) <= 40 else f"{repr(v)[:20]}... ({len(repr(v))} digits)"
        raise ValueError(f"entries must be finite numbers of magnitude <= {MAX_ENTRY:g}, "
                         f"got {shown}")
    return f


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else float(v)


def constant(v: Any) -> float | tuple | None:
    """A spec's ``lhs`` / ``rhs``: ``None``, a number, or a rectangular nested list of
    numbers of at most :data:`MAX_CONSTANT` entries (counted level by level before the next
    level is read) and :data:`MAX_CONSTANT_NDIM` axes, returned as nested tuples of floats
    (hashable: the layer's map is cached on them, and the spec stays a frozen value).

    Raises:
        ValueError: anything else (pydantic reports it on the field).
    """
    if v is None:
        return None
    if not isinstance(v, (list, tuple)):
        return _number(v)
    level, shape = [v], []
    while isinstance(level[0], (list, tuple)):
        n = len(level[0])
        if n == 0:
            raise ValueError("must not have an axis of size 0")
        if any(not isinstance(x, (list, tuple)) or len(x) != n for x in level):
            raise ValueError("must be a rectangular nested list of numbers (every list at one "
                             f"depth of the same length), but lists at depth {len(shape)} "
                             "differ")
        shape.append(n)
        if len(shape) > MAX_CONSTANT_NDIM:
            raise ValueError(f"has more than {MAX_CONSTANT_NDIM} axes")
        if len(level) * n > MAX_CONSTANT:
            raise ValueError(f"has more than {MAX_CONSTANT} entries (shape starting "
                             f"{tuple(shape)})")
        level = [y for x in level for y in x]
    for x in level:
        _number(x)  # a list below the first leaf's depth fails here too
    return _tuples(v)


def _axes(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{what} must be a list of axes, got {v!r}")
    out = []
    for a in v:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise ValueError(f"{what} must hold integer axes, got {a!r}")
        if a < 0:  # as lax.dot_general
            raise ValueError(f"{what} must hold axes >= 0 (lax.dot_general takes no negative "
                             f"axes), got {a}")
        out.append(int(a))
    if len(set(out)) != len(out):
        raise ValueError(f"{what} lists an axis twice: {out}")
    return tuple(out)


def _pair(v: Any, what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"{what} must be a pair (lhs axes, rhs axes), got {v!r}")
    lhs, rhs = _axes(v[0], f"{what}'s lhs"), _axes(v[1], f"{what}'s rhs")
    if len(lhs) != len(rhs):
        raise ValueError(f"{what} pairs {len(lhs)} lhs axes with {len(rhs)} rhs axes")
    return lhs, rhs


def _shape(v: Any) -> tuple[int, ...]:
    s = []
    while isinstance(v, tuple):
        s.append(len(v))
        v = v[0]
    return tuple(s)


@lru_cache(maxsize=64)
def _contraction(other: float | tuple | None, dims: tuple, side: str | None
                 ) -> tuple[tuple[int, ...], np.ndarray | float | None]:
    if other is None or not isinstance(other, tuple):
        return (), other
    (lc, rc), _ = dims
    other_cs, input_cs = (rc, lc) if side == "rhs" else (lc, rc)
    pairs = sorted(zip(input_cs, other_cs, strict=True))
    t = np.asarray(other, dtype=np.float64).transpose([j for _, j in pairs])
    t = np.ascontiguousarray(t)
    t.flags.writeable = False  # shared by every call
    return tuple(i for i, _ in pairs), t


class DotGeneral(_Layer):
    """``lax.dot_general(x, rhs, dimension_numbers)`` or ``lax.dot_general(lhs, x, ...)``
    with a constant, non-trainable ``lhs`` / ``rhs`` (a number or a nested list; at most one
    of them; neither: the identity). Every axis of the constant must be contracted against a
    spatial axis of the input, and there are no batched axes (module docstring)."""

    type: Literal["dot_general"] = "dot_general"
    lhs: float | tuple[Any, ...] | None = None
    rhs: float | tuple[Any, ...] | None = None
    dimension_numbers: tuple[tuple[tuple[int, ...], tuple[int, ...]],
                             tuple[tuple[int, ...], tuple[int, ...]]] = DEFAULT_DIMENSION_NUMBERS

    @field_validator("lhs", "rhs", mode="before")
    @classmethod
    def _constant(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name == "rhs" and v is not None and info.data.get("lhs") is not None:
            raise ValueError("give at most one of lhs and rhs: the layer's input is the other "
                             "factor of the dot_general")
        return constant(v)

    @field_validator("dimension_numbers", mode="before")
    @classmethod
    def _dimension_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError("must be ((lhs_contracting, rhs_contracting), (lhs_batch, "
                             f"rhs_batch)), got {v!r}")
        (lc, rc), (lb, rb) = _pair(v[0], "the contracting pair"), _pair(v[1], "the batch pair")
        if lb or rb:
            raise ValueError(
                "batch dimensions are not supported: lax.dot_general puts batched axes "
                "first in its output, before the input's batch axis (and batching the batch "
                "axis itself ties the constant to the data set); contract instead")
        if "lhs" not in info.data or "rhs" not in info.data:
            return ((lc, rc), (lb, rb))  # the constant was refused already
        lhs, rhs = info.data["lhs"], info.data["rhs"]
        if lhs is None and rhs is None:
            if lc or rc:
                raise ValueError("must contract nothing when neither lhs nor rhs is given "
                                 "(the layer is the identity)")
            return ((lc, rc), (lb, rb))
        side = "rhs" if rhs is not None else "lhs"
        other_cs, input_cs = (rc, lc) if side == "rhs" else (lc, rc)
        nd = len(_shape(rhs if side == "rhs" else lhs))
        if any(a >= nd for a in other_cs):
            raise ValueError(f"contracts {side} axes {list(other_cs)}, but {side} has {nd} "
                             "axes")
        if len(other_cs) != nd:
            free = sorted(set(range(nd)) - set(other_cs))
            where = "after the channel axis" if side == "rhs" else "before the batch axis"
            raise ValueError(
                f"leaves axes {free} of {side} uncontracted: lax.dot_general would put them "
                f"{where} of the output; every axis of the constant must be contracted "
                "against a spatial axis of the input (batch first, channels last)")
        if 0 in input_cs:
            raise ValueError("contracts the input's batch axis 0; only spatial axes may be "
                             "contracted")
        return ((lc, rc), (lb, rb))

    @property
    def side(self) -> str | None:
        """``"lhs"`` / ``"rhs"``: which factor the constant is; ``None``: the identity."""
        return "rhs" if self.rhs is not None else "lhs" if self.lhs is not None else None

    @property
    def other(self) -> float | tuple | None:
        return self.rhs if self.rhs is not None else self.lhs

    @property
    def input_contracting(self) -> tuple[int, ...]:
        (lc, rc), _ = self.dimension_numbers
        return lc if self.side == "rhs" else rc

    @property
    def contraction(self) -> tuple[tuple[int, ...], np.ndarray | float | None]:
        """``(input axes, T)``: the contracted axes of the input in increasing order and the
        constant with its axes in that order (float64, read-only, cached); a scalar's axes
        are ``()`` and ``T`` a float; the identity ``((), None)``."""
        return _contraction(self.other, self.dimension_numbers, self.side)


def _perm(d: int, axes: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Spatial axes (0-based) contracted (``axes``, from input axes) and kept."""
    con = [i - 1 for i in axes]
    return con, [k for k in range(d) if k not in con]


@register(DotGeneral)
class DotGeneralRule(LayerRule):
    covariance = "full"  # when it contracts; see needs_full_in
    has_features = True

    def needs_full_in(self, layer: Any, need_out: bool) -> bool:
        return bool(layer.contraction[0]) or need_out

    def shape(self, layer: Any, leaf: Leaf) -> None:
        cur = leaf.in_spatial
        ndim = len(cur) + 2
        axes, t = layer.contraction
        side = layer.side
        bad = [a for a in layer.input_contracting if a >= ndim]
        if bad:
            raise leaf.err(f"contracts axes {bad} of the input, which has {ndim} axes "
                           f"(n, *{cur}, channels)", field="dimension_numbers")
        if ndim - 1 in axes:
            raise leaf.err(f"contracts the input's channel axis {ndim - 1}; only spatial "
                           "axes may be contracted (as in stax, whose kernel takes the "
                           "channel axis to be infinite)", field="dimension_numbers")
        if axes:
            want = tuple(cur[i - 1] for i in axes)
            if tuple(t.shape) != want:
                got = _shape(layer.other)
                raise leaf.err(f"has shape {got}, but the input axes it contracts "
                               f"({', '.join(map(str, layer.input_contracting))}) have sizes "
                               f"{tuple(cur[i - 1] for i in layer.input_contracting)} "
                               f"(input (n, *{cur}, channels))", field=side)
        con = {i - 1 for i in axes}
        leaf.out_spatial = tuple(s for k, s in enumerate(cur) if k not in con)

    # --- infinite width ---
    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        axes, t = lp.layer.contraction
        if t is None:
            return st
        if not axes:  # a scalar
            c2 = float(t) ** 2
            return st.with_(nngp=st.nngp * c2, ntk=None if st.ntk is None else st.ntk * c2)
        if not st.full:  # the plan keeps the full covariance before this layer
            raise AssertionError("dot_general needs the full spatial covariance")
        d = len(lp.in_spatial)
        con, keep = _perm(d, axes)
        perm = [2 * k for k in con] + [2 * k + 1 for k in con] + \
            [a for k in keep for a in (2 * k, 2 * k + 1)] + \
            list(range(2 * d, st.nngp.ndim))
        tv = xp.asarray(t.ravel(), dtype=st.nngp.dtype)
        pc = tv.shape[0]

        def f(a: Array) -> Array:
            rest = [a.shape[i] for i in perm[2 * len(con):]]
            b = xp.ascontiguousarray(a.transpose(perm)).reshape(pc, pc, -1)
            b = xp.tensordot(tv, b, axes=(0, 0))  # over a
            return xp.tensordot(tv, b, axes=(0, 0)).reshape(rest)  # over a'

        return st.with_(spatial=lp.out_spatial, full=bool(lp.out_spatial),
                        nngp=f(st.nngp), ntk=None if st.ntk is None else f(st.ntk))

    # --- finite width (NumPy) ---
    def _apply(self, xp: ModuleType, lp: LayerPlan, x: Any) -> Any:
        """The map on ``x`` ``(n, *in_spatial, C)`` -> ``(n, *out_spatial, C)``."""
        axes, t = lp.layer.contraction
        if t is None:
            return x
        if not axes:
            return x * float(t)
        con, keep = _perm(len(lp.in_spatial), axes)
        n, c = x.shape[0], x.shape[-1]
        perm = [0, *(k + 1 for k in con), *(k + 1 for k in keep), x.ndim - 1]
        b = xp.ascontiguousarray(x.transpose(perm)).reshape(n, t.size, -1)
        tv = xp.asarray(t.ravel(), dtype=x.dtype)
        return xp.tensordot(tv, b, axes=(0, 1)).reshape(n, *lp.out_spatial, c)

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        n, c = a.shape[0], a.shape[-1]
        x = a.reshape(n, *lp.in_spatial, c)
        out = self._apply(np, lp, x)
        return (out.reshape(n, -1, c) if lp.out_spatial else out.reshape(n, c)), None

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        axes, t = lp.layer.contraction
        if t is None:
            return d
        if not axes:
            return d * float(t)
        kk, n, c = d.shape[0], d.shape[1], d.shape[-1]
        con, keep = _perm(len(lp.in_spatial), axes)
        g = d.reshape(kk, n, 1, -1) * t.ravel().astype(d.dtype)[:, None]  # (K, n, a, r C)
        g = g.reshape(kk, n, *(lp.in_spatial[k] for k in con),
                      *(lp.in_spatial[k] for k in keep), c)
        src = [*con, *keep]  # the spatial axis at each position of g's spatial axes
        inv = [0, 1, *(2 + src.index(k) for k in range(len(src))), g.ndim - 1]
        return np.ascontiguousarray(g.transpose(inv)).reshape(kk, n, -1, c)

    # --- random features ---
    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        return self._apply(xp, lp, psi), None if xi is None else self._apply(xp, lp, xi)

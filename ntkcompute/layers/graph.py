"""Aggregate (stax.Aggregate): graph message passing, its spec, plan, kernel rule and finite
forward / backward, and how each input carries its graph.

Each input ``x_n`` ``(*S, C)`` comes with a weighted adjacency ``A_n`` over the positions
of its *aggregate axes* (stax's ``aggregate_axis``: some or all spatial axes, flattened to
``V`` vertices, row major): ``A_n[i, j]`` is the weight of the arc from tail ``i`` to head
``j``. The layer replaces every vertex by the weighted sum of its predecessors,

    out_n[j] = sum_i A_n[i, j] x_n[i]      (the other spatial axes and channels alike),

a fixed linear map per input, so the covariances of the output are (Du et al. 2019, GNTK,
Eq. 4; stax's dense kernel rule)

    K'(x, x')[j, j'] = sum_{i, i'} A[i, j] K(x, x')[i, i'] A'[i', j'] = (Aᵀ K A')[j, j'],

and Θ' likewise (no weights of its own). It needs the full spatial covariance.

stax passes the adjacency as ``pattern`` next to the inputs. Here it travels *in* the inputs,
so that a dataset, its tiles, checksums and the service need nothing new: the architecture's
``pattern_channels = V`` says that the last ``V`` channels of every input are its graph,
channel ``C + j`` at vertex ``i`` holding ``A[i, j]`` (repeated along the spatial axes that are
not aggregated; read at index 0 of them). :func:`pack_pattern` builds such inputs from
stax's dense ``(n, *agg, *agg)`` or sparse edge-list patterns. Every Aggregate layer of a
network reads the same graph (as stax passes one ``pattern`` to all), so all of them must
aggregate the same axes, and those axes must have the inputs' sizes where they act.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import field_validator

from ..errors import InputError
from .registry import LayerRule, Leaf, _Layer, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan

#: Most graph vertices an input may carry (``pattern_channels``): the kernel holds a
#: ``V x V`` covariance per pair and costs ``O(V^3)`` per pair and layer.
MAX_VERTICES = 4096


class Aggregate(_Layer):
    """``out[j] = sum_i A[i, j] x[i]`` over the vertices of the aggregate axes (stax's
    numbering of the whole input: batch 0, channels last; ``None``: every spatial axis),
    ``A`` each input's graph (see the module docstring)."""

    type: Literal["aggregate"] = "aggregate"
    aggregate_axis: list[int] | None = None

    @field_validator("aggregate_axis", mode="before")
    @classmethod
    def _axes(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        if isinstance(v, (list, tuple)) and len(set(v)) != len(v):
            raise ValueError(f"lists an axis twice: {list(v)}")
        return v


def aggregate_axes(aggregate_axis: list[int] | None, n_spatial: int) -> tuple[int, ...]:
    """The aggregate axes as sorted indices among the spatial axes (0 = the first spatial
    axis), from stax's numbering of an input with ``n_spatial + 2`` axes.

    Raises:
        ValueError: an axis out of range, or the batch or channel axis.
    """
    ndim = n_spatial + 2
    if aggregate_axis is None:
        return tuple(range(n_spatial))
    out = set()
    for a in aggregate_axis:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for inputs with {ndim} axes")
        a %= ndim
        if a in (0, ndim - 1):
            raise ValueError(f"axis {a} is the {'batch' if a == 0 else 'channel'} axis; "
                             "only spatial axes (1 .. ndim - 2) aggregate")
        out.add(a - 1)
    return tuple(sorted(out))


@register(Aggregate)
class AggregateRule(LayerRule):
    covariance = "full"
    #: the rule reads each input's graph (``State.pattern``; ``pattern=`` in ``forward``)
    uses_pattern = True

    def shape(self, layer: Any, leaf: Leaf) -> None:
        if not leaf.in_spatial:
            raise leaf.err("aggregates spatial axes, but its input is a vector (put it before "
                           "flatten or global pooling)", field="aggregate_axis")
        try:
            aggregate_axes(layer.aggregate_axis, len(leaf.in_spatial))
        except ValueError as e:
            raise leaf.err(str(e), field="aggregate_axis") from None
        leaf.out_spatial = leaf.in_spatial

    def pattern_axes(self, layer: Any, n_spatial: int) -> tuple[int, ...]:
        return aggregate_axes(layer.aggregate_axis, n_spatial)

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        if not st.full:  # the plan keeps the full covariance before this layer
            raise AssertionError("aggregate needs the full spatial covariance")
        axes = aggregate_axes(lp.layer.aggregate_axis, len(st.spatial))
        a1, a2 = st.pattern
        return st.with_(nngp=_both_sides(xp, st.nngp, st.spatial, axes, st.nb, a1, a2),
                        ntk=None if st.ntk is None else
                        _both_sides(xp, st.ntk, st.spatial, axes, st.nb, a1, a2))

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any, pattern: Any = None
                ) -> tuple[Any, Any]:
        return _one_side(a, lp.in_spatial, lp.layer.aggregate_axis, pattern, False), pattern

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        return np.stack([_one_side(dk, lp.in_spatial, lp.layer.aggregate_axis, data, True)
                         for dk in d])


def _both_sides(xp: ModuleType, k: Array, spatial: tuple[int, ...], axes: tuple[int, ...],
                nb: int, a1: Array, a2: Array) -> Array:
    """``A1ᵀ K A2`` over the aggregate axes of a full-layout covariance
    ``(S1, S1', ..., Sd, Sd') + B``: ``B = (n1, n2)`` with ``a1`` ``(n1, V, V)``, ``a2``
    ``(n2, V, V)``, or ``B = (m,)`` (self pass, pair lists) with both ``(m, V, V)``."""
    d = len(spatial)
    rest = [j for j in range(d) if j not in axes]
    batch = list(range(2 * d, 2 * d + nb))
    # (*B, rest, rest', agg, agg'): the two vertex axes last, for batched matmuls
    perm = batch + [2 * j for j in rest] + [2 * j + 1 for j in rest] + \
        [2 * j for j in axes] + [2 * j + 1 for j in axes]
    t = k.transpose(perm)
    shape = t.shape
    v = math.prod(spatial[j] for j in axes)
    r = math.prod(spatial[j] for j in rest)
    bshape = k.shape[2 * d:]
    t = t.reshape(*bshape, r * r, v, v)
    if nb == 2:
        left = a1.transpose(0, 2, 1)[:, None, None]  # (n1, 1, 1, V, V): Aᵀ
        right = a2[None, :, None]  # (1, n2, 1, V, V)
    else:
        left, right = a1.transpose(0, 2, 1)[:, None], a2[:, None]
    t = xp.matmul(xp.matmul(left, t), right).reshape(shape)
    return xp.ascontiguousarray(t.transpose(np.argsort(perm)))


def _one_side(a: Any, spatial: tuple[int, ...], aggregate_axis: list[int] | None,
              pattern: Any, transpose: bool) -> Any:
    """``sum_i A[i, j] a[i]`` (``transpose``: ``sum_j A[i, j] a[j]``, the backward map) for
    activations ``(n, P, C)`` with positions flattened over ``spatial``."""
    n, c = a.shape[0], a.shape[-1]
    axes = aggregate_axes(aggregate_axis, len(spatial))
    rest = [j for j in range(len(spatial)) if j not in axes]
    x = a.reshape(n, *spatial, c)
    perm = [0] + [1 + j for j in axes] + [1 + j for j in rest] + [len(spatial) + 1]
    t = x.transpose(perm)
    shape = t.shape
    v = math.prod(spatial[j] for j in axes)
    m = pattern.astype(a.dtype, copy=False)
    t = (m if transpose else m.transpose(0, 2, 1)) @ t.reshape(n, v, -1)
    return np.ascontiguousarray(t.reshape(shape).transpose(np.argsort(perm))
                                ).reshape(n, -1, c)


# --- the graph inside the inputs ---------------------------------------------------------------

def split_pattern(xp: ModuleType, x: Array, pattern: tuple[int, tuple[int, ...]]
                  ) -> tuple[Array, Array]:
    """Inputs ``(n, *S, C + V)`` -> the features ``(n, *S, C)`` and the graphs
    ``(n, V, V)`` (``pattern = (V, aggregate axes among the spatial ones)``: the plan's)."""
    v, axes = pattern
    d = x.ndim - 2
    feats = x[..., :-v]
    g = x[..., -v:]
    index = tuple(slice(None) if j in axes else 0 for j in range(d))
    g = g[(slice(None), *index)]  # (n, *agg, V)
    return xp.ascontiguousarray(feats), xp.ascontiguousarray(g.reshape(x.shape[0], v, v))


def _dense(pattern: Any, n: int, agg: tuple[int, ...], implementation: str) -> np.ndarray:
    """stax's ``pattern`` as dense ``(n, V, V)`` adjacencies."""
    k, v = len(agg), math.prod(agg)
    p = np.asarray(pattern)
    if implementation == "DENSE":
        want = (n, *agg, *agg)
        if p.shape != want:
            raise InputError(f"must have shape (batch, *aggregated axes, *aggregated axes) = "
                             f"{want}, got {p.shape}", field="pattern")
        if p.dtype.kind not in "biuf":
            raise InputError(f"must be numeric, got {p.dtype}", field="pattern")
        return p.reshape(n, v, v).astype(np.float64)
    # SPARSE: (n, n_edges, K, 2) integer tails and heads (K == 1: also (n, n_edges, 2));
    # repeated edges add up, coordinates wrap; an edge whose head has a negative coordinate
    # is padding, one whose tail has leaves the last vertex (stax 0.6.5 indexes with -1)
    if p.dtype.kind not in "iu":
        raise InputError(f"must be integers for implementation='SPARSE', got {p.dtype}",
                         field="pattern")
    if k == 1 and p.ndim == 3:
        p = p[:, :, None, :]
    if p.ndim != 4 or p.shape[0] != n or p.shape[2] != k or p.shape[3] != 2:
        raise InputError(f"must have shape (batch={n}, n_edges, {k}, 2), got {p.shape}",
                         field="pattern")
    out = np.zeros((n, v * v))
    tails, heads = p[..., 0], p[..., 1]  # (n, E, K)
    ok = (heads >= 0).all(-1)
    ti = np.where((tails >= 0).all(-1),
                  np.ravel_multi_index(np.moveaxis(tails, -1, 0), agg, mode="wrap"), v - 1)
    hi = np.ravel_multi_index(np.moveaxis(heads, -1, 0), agg, mode="wrap")
    rows = np.broadcast_to(np.arange(n)[:, None], ti.shape)
    np.add.at(out, (rows[ok], (ti * v + hi)[ok]), 1.0)
    return out.reshape(n, v, v)


def pack_pattern(x: Any, pattern: Any = None, aggregate_axis: int | list[int] | None = None,
                 implementation: Literal["DENSE", "SPARSE"] = "DENSE") -> np.ndarray:
    """Inputs ``x`` ``(n, *S, C)`` with their graphs appended as ``V`` channels, for an
    architecture with ``pattern_channels = V`` (returned with the inputs' float dtype).

    ``pattern`` is stax's: dense ``(n, *agg, *agg)`` weights (``implementation="DENSE"``)
    or integer edges ``(n, n_edges, K, 2)`` (tail, head; ``"SPARSE"``); ``None`` is the
    identity graph (the layer then changes nothing, as in stax). ``aggregate_axis`` as the
    network's Aggregate layers (stax's numbering).

    Raises:
        InputError: a pattern that does not fit the inputs (field ``pattern``), too many
            vertices, or bad axes (field ``aggregate_axis``).
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if x.ndim < 3:
        raise InputError(f"inputs to aggregate must be (n, *spatial, channels), got shape "
                         f"{x.shape}", field="x")
    n, spatial = x.shape[0], x.shape[1:-1]
    try:
        axes = aggregate_axes(None if aggregate_axis is None else
                              list(np.atleast_1d(aggregate_axis)), len(spatial))
    except ValueError as e:
        raise InputError(str(e), field="aggregate_axis") from None
    agg = tuple(spatial[j] for j in axes)
    v = math.prod(agg)
    if v > MAX_VERTICES:
        raise InputError(f"the aggregate axes have {v} vertices, more than {MAX_VERTICES}",
                         field="aggregate_axis")
    if implementation not in ("DENSE", "SPARSE"):
        raise InputError(f"must be 'DENSE' or 'SPARSE', got {implementation!r}",
                         field="implementation")
    a = np.broadcast_to(np.eye(v), (n, v, v)) if pattern is None else \
        _dense(pattern, n, agg, implementation)
    g = a.reshape(n, *agg, v)
    for j in range(len(spatial)):  # broadcast along the axes that do not aggregate
        if j not in axes:
            g = np.expand_dims(g, 1 + j)
    g = np.broadcast_to(g, (n, *spatial, v)).astype(x.dtype)
    return np.concatenate([x, g], axis=-1)

"""ConvTranspose and ConvLocal (stax.ConvTranspose, stax.ConvLocal): spec, plan, kernel rule
and finite-width forward / backward. No random features, no fused paths (the NumPy rules).

Both are affine layers like Conv, with Conv's normalisation (weights ``W_std / sqrt(|F| C)``,
``|F| = prod(filter_shape)``) and parameterizations (:mod:`.linear`); what differs is which
input positions a weight meets.

ConvTranspose (``jax.lax.conv_transpose``, as stax): output position ``o`` takes input ``i``
through tap ``j`` where ``s i = o + j - pad_a`` (the input dilated by the stride, padded by
``pad_a`` before). VALID: ``pad_a = k - 1``, output ``n s + max(k - s, 0)``; SAME: output
``n s``, ``pad_a = k - 1`` if ``s > k - 1`` else ``ceil((k + s - 2) / 2)``; CIRCULAR: the VALID
output folded onto ``n s`` positions (stax's ``_same_pad_for_filter_shape_transpose``), taps
wrapping around. Per spatial axis that is a table ``T[o, j]`` (input position or none), and

    K'[o, o'] = W_std² / |F| sum_j K[T(o, j), T(o', j)] + b_std²
    Θ'[o, o'] = W_std² / |F| sum_j Θ[T(o, j), T(o', j)] + K'[o, o']

(the same tap on both sides: one weight), separable over axes; on the spatial diagonal only
the diagonal of K enters, so the layer works on either layout.

ConvLocal: Conv's window with a weight per output position, so outputs at different positions
are independent: ``K'[o, o'] = 0`` for ``o != o'``, and on the diagonal Conv's rule (bias
included). It needs only the diagonal of its input; when a later layer needs the full
covariance (pooling, attention) the off-diagonal entries are zeros, as in stax.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import InputError
from ..kernels.spatial import conv_window_sum
from .finite import gather, scatter, window_index
from .linear import Conv, ConvRule, _affine_kernel, _AffineRule
from .registry import MAX_OUT_POSITIONS, Leaf, layer_index, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan


class ConvTranspose(Conv):
    """Transposed convolution over all spatial axes (stax.ConvTranspose)."""

    type: Literal["conv_transpose"] = "conv_transpose"  # type: ignore[assignment]


class ConvLocal(Conv):
    """Locally connected (unshared) convolution over all spatial axes (stax.ConvLocal)."""

    type: Literal["conv_local"] = "conv_local"  # type: ignore[assignment]


# --- ConvTranspose geometry ------------------------------------------------------------------

def transpose_out(n: int, k: int, s: int, padding: str) -> int:
    """Output length of a transposed convolution along one axis."""
    return n * s + max(k - s, 0) if padding == "VALID" else n * s


@lru_cache(maxsize=128)
def transpose_table(n: int, k: int, s: int, padding: str) -> np.ndarray:
    """``T`` ``(out, k)``: the input position output ``o`` takes through tap ``j``, or ``n``
    (none: the zero past the end)."""
    out = transpose_out(n, k, s, padding)
    o = np.arange(out)[:, None]
    j = np.arange(k)[None, :]
    if padding == "CIRCULAR":
        big = n * s
        lo = (transpose_out(n, k, s, "VALID") - big) // 2
        t = (o + lo - (k - 1 - j)) % big  # VALID position s i + c, c = k - 1 - j, folded
        ok = t % s == 0
        return np.where(ok, t // s, n)
    if padding == "SAME":
        pad_a = k - 1 if s > k - 1 else -(-(k + s - 2) // 2)
    else:
        pad_a = k - 1
    t = o + j - pad_a
    ok = (t % s == 0) & (t >= 0) & (t < n * s)
    return np.where(ok, t // s, n)


def flat_table(spatial: tuple[int, ...], tables: tuple[np.ndarray, ...]) -> np.ndarray:
    """Per-axis tables as one ``(P_out, |F|)`` table of flat input positions (``P`` = none),
    the layout of :func:`.finite.window_index`."""
    d = len(spatial)
    grids = []
    for k, t in enumerate(tables):
        shape = [1] * (2 * d)
        shape[k], shape[d + k] = t.shape
        grids.append(t.reshape(shape))
    grids = np.broadcast_arrays(*grids)
    valid = np.ones(grids[0].shape, dtype=bool)
    for g, n in zip(grids, spatial, strict=True):
        valid &= g < n
    flat = np.ravel_multi_index(tuple(np.minimum(g, n - 1) for g, n in zip(grids, spatial,
                                                                           strict=True)),
                                spatial)
    flat = np.where(valid, flat, math.prod(spatial))
    return flat.reshape(math.prod(t.shape[0] for t in tables), -1)


def table_sum(xp: ModuleType, a: Array, full: bool, tables: tuple[np.ndarray, ...]) -> Array:
    """``sum_j a[T(o, j), T(o', j)]`` (full layout) or ``sum_j a[T(o, j)]`` (diagonal), one
    spatial axis (or axis pair) at a time; positions ``n`` read zeros."""
    for k, t in enumerate(tables):
        axes = (2 * k, 2 * k + 1) if full else (k,)
        for ax in axes:  # a zero slice at position n of each axis
            pad = [(0, 0)] * a.ndim
            pad[ax] = (0, 1)
            a = xp.pad(a, pad)
        out = None
        for j in range(t.shape[1]):
            idx = xp.asarray(t[:, j])
            term = a
            for ax in axes:
                term = xp.take(term, idx, axis=ax)
            out = term if out is None else out + term
        a = out
    return a


@register(ConvTranspose)
class ConvTransposeRule(_AffineRule):
    readout_width = "out_chan"
    float32_verified = False
    has_features = False

    def out_channels(self, layer: Any, channels: int | None, width: int | None) -> int | None:
        return layer.out_chan or width

    def shape(self, layer: Any, leaf: Leaf) -> None:
        cur = leaf.in_spatial
        if len(layer.filter_shape) != len(cur):
            kind = "vectors" if not cur else f"{len(cur)} spatial axes {cur}"
            raise leaf.err(f"has {len(layer.filter_shape)} entries but the input to this layer "
                           f"has {kind}; this layer needs inputs of shape (n, *spatial, "
                           "channels)", field="filter_shape")
        st = tuple(layer.strides) if layer.strides is not None else (1,) * len(cur)
        if len(st) != len(cur):
            raise leaf.err(f"needs {len(cur)} entries, got {len(st)}", field="strides")
        out = []
        for n, k, s in zip(cur, layer.filter_shape, st, strict=True):
            if k > MAX_OUT_POSITIONS or s > MAX_OUT_POSITIONS:
                raise leaf.err(f"makes an output larger than {MAX_OUT_POSITIONS} positions",
                               field="filter_shape" if k > s else "strides")
            if layer.padding == "CIRCULAR" and k - s > n * s:
                raise leaf.err(f"filter {k} wraps more than once around the {n * s} output "
                               "positions of a CIRCULAR transposed convolution",
                               field="filter_shape")
            out.append(transpose_out(n, k, s, layer.padding))
        if math.prod(out) > MAX_OUT_POSITIONS:
            raise leaf.err(f"makes an output of {tuple(out)} positions, more than "
                           f"{MAX_OUT_POSITIONS}", field="strides"
                           if math.prod(st) > 1 else "filter_shape")
        leaf.out_spatial = tuple(out)

    def _tables(self, lp: LayerPlan) -> tuple[np.ndarray, ...]:
        layer = lp.layer
        st = layer.strides or [1] * len(lp.in_spatial)
        return tuple(transpose_table(n, k, s, layer.padding)
                     for n, k, s in zip(lp.in_spatial, layer.filter_shape, st, strict=True))

    def _fan(self, lp: LayerPlan) -> int:
        return math.prod(lp.layer.filter_shape)

    def kernel_then(self, lp: LayerPlan, st: State, xp: ModuleType, act: LayerPlan,
                    va: Array, vb: Array) -> State | None:
        return None  # no fused path: the NumPy rule, then the nonlinearity's own

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        tables = self._tables(lp)
        return _affine_kernel(lp, st, lambda a: table_sum(xp, a, st.full, tables),
                              self._fan(lp))

    def _inputs(self, lp: LayerPlan, a: Any) -> tuple[Any, Any]:
        idx = flat_table(lp.in_spatial, self._tables(lp))
        _check_patches(lp, idx)
        return gather(a, idx).reshape(a.shape[0], idx.shape[0], -1), idx


def _check_patches(lp: LayerPlan, idx: np.ndarray) -> None:
    if idx.size > 1 << 26:
        raise InputError(f"the finite network's patches would hold {idx.size} positions "
                         "per channel, more than 2^26", field="filter_shape",
                         layer=layer_index(lp.path))


@register(ConvLocal)
class ConvLocalRule(_AffineRule):
    """Weights ``W`` ``(P_out, |F| C_in, C_out)`` and a bias ``(P_out, C_out)``."""

    readout_width = "out_chan"
    covariance = "diagonal"
    float32_verified = False
    has_features = False

    # a local conv has Conv's window geometry and fan-in: one definition, ConvRule's
    out_channels = ConvRule.out_channels
    shape = ConvRule.shape
    _fan = ConvRule._fan

    def kernel_then(self, lp: LayerPlan, st: State, xp: ModuleType, act: LayerPlan,
                    va: Array, vb: Array) -> State | None:
        return None

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        win = lp.window
        if st.full:  # only the diagonal enters (the plan does not ask for more)
            from ..kernels.propagate import _to_diagonal

            st = _to_diagonal(st, xp)
        out = _affine_kernel(lp, st, lambda a: conv_window_sum(xp, a, False, win),
                             math.prod(win.size))
        if not lp.out_full or not out.spatial:
            return out
        return out.with_(nngp=_diagonal_to_full(xp, out.nngp, len(out.spatial)),
                         ntk=None if out.ntk is None
                         else _diagonal_to_full(xp, out.ntk, len(out.spatial)), full=True)

    def init(self, lp: LayerPlan, rng: Any, dtype: Any, parameterization: str
             ) -> tuple | None:
        layer = lp.layer
        fan_in = lp.in_channels * self._fan(lp)
        p = math.prod(lp.out_spatial)
        W = rng.standard_normal((p, fan_in, lp.out_channels)).astype(dtype)
        b = rng.standard_normal((p, lp.out_channels)).astype(dtype) \
            if layer.b_std is not None else None
        if parameterization == "standard":
            W *= layer.W_std / math.sqrt(fan_in)
            if b is not None:
                b *= layer.b_std
        return W, b

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        layer = lp.layer
        W, b = params
        idx = window_index(lp.in_spatial, lp.window)
        inp = gather(a, idx).reshape(a.shape[0], idx.shape[0], -1)  # (n, P, fan_in)
        if lp.parameterization == "ntk":
            scale, b_scale = layer.W_std / math.sqrt(inp.shape[-1]), layer.b_std or 0.0
        else:
            scale, b_scale = 1.0, 1.0
        out = scale * np.einsum("npf,pfo->npo", inp, W)
        if b is not None:
            out = out + b_scale * b
        return out, (W, b, scale, b_scale, idx, inp)

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        W, b, scale, b_scale, idx, inp = data
        if lp.layer.trainable:
            gram.add_local(inp, d, scale)
            if b is not None:
                gram.add_local(None, d, b_scale)
        dinp = scale * np.einsum("knpo,pfo->knpf", d, W)
        kk, nn, po, _ = dinp.shape
        dinp = dinp.reshape(kk, nn, po, idx.shape[1], -1)
        return scatter(dinp, idx, math.prod(lp.in_spatial))


def _diagonal_to_full(xp: ModuleType, a: Array, ndim: int) -> Array:
    """``(S1, .., Sd) + B`` -> ``(S1, S1', .., Sd, Sd') + B`` with zeros off the diagonal."""
    for k in range(ndim):
        n = a.shape[2 * k]
        rest = a.ndim - 2 * k - 1  # the axes after this one
        eye = xp.eye(n, dtype=a.dtype).reshape((1,) * (2 * k) + (n, n) + (1,) * rest)
        a = xp.expand_dims(a, 2 * k + 1) * eye
    return a

"""Window sums along spatial axes of a kernel state, one axis (or axis pair) at a time.

A ``k1 x k2`` window is done as a sum over ``k1`` shifts along one spatial dimension followed
by ``k2`` along the next (separable: ``k1 + k2`` slice-adds, not ``k1 * k2``).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from .state import Array

if TYPE_CHECKING:
    from ..layers.registry import Window


def _index(ndim: int, axes: tuple[int, ...], sl: slice) -> tuple[slice, ...]:
    idx = [slice(None)] * ndim
    for ax in axes:
        idx[ax] = sl
    return tuple(idx)


def _pad(xp: ModuleType, a: Array, axes: tuple[int, ...], pad: tuple[int, int],
         circular: bool) -> Array:
    """Zero (or wrap-around) padding of ``axes``, without ``xp.pad``'s per-call overhead."""
    lo, hi = pad
    n = a.shape[axes[0]]
    shape = list(a.shape)
    for ax in axes:
        shape[ax] = n + lo + hi
    out = xp.zeros(shape, dtype=a.dtype)
    out[_index(a.ndim, axes, slice(lo, lo + n))] = a
    if circular:
        # Each axis separately, so the corners of an axis pair wrap in both directions.
        for ax in axes:
            core = [slice(None)] * a.ndim
            if lo:
                dst, src = list(core), list(core)
                dst[ax], src[ax] = slice(0, lo), slice(n, n + lo)
                out[tuple(dst)] = out[tuple(src)]
            if hi:
                dst, src = list(core), list(core)
                dst[ax], src[ax] = slice(lo + n, lo + n + hi), slice(lo, lo + hi)
                out[tuple(dst)] = out[tuple(src)]
    return out


def shifted_sum(xp: ModuleType, a: Array, axes: tuple[int, ...], size: int, stride: int,
                pad: tuple[int, int], out_len: int, circular: bool) -> Array:
    """``out[o] = sum_{d < size} a[stride * o + d - pad_lo]`` applied jointly to ``axes``.

    With one axis this is a 1-D window sum. With the axis pair (p, p') of the full layout it
    shifts both positions by the same offset: the Conv rule ``sum_d K[s o + d, s o' + d]``.
    Out-of-range positions are zero (or wrap around when ``circular``).
    """
    n = a.shape[axes[0]]
    lo = pad[0]
    if stride == 1 and out_len == n and not circular:
        # SAME, stride 1: start from the unshifted term and add the others where in range.
        out = a.copy()
        for d in range(size):
            t = d - lo
            if t == 0:
                continue
            dst = slice(max(0, -t), min(n, n - t))
            src = slice(dst.start + t, dst.stop + t)
            out[_index(a.ndim, axes, dst)] += a[_index(a.ndim, axes, src)]
        return out
    if pad != (0, 0):
        a = _pad(xp, a, axes, pad, circular)
    span = stride * (out_len - 1) + 1
    out = a[_index(a.ndim, axes, slice(0, span, stride))].copy()
    for d in range(1, size):
        out += a[_index(a.ndim, axes, slice(d, d + span, stride))]
    return out


def conv_window_sum(xp: ModuleType, a: Array, full: bool, win: Window) -> Array:
    """Unnormalised Conv window sum over every spatial dimension of a state array."""
    for k in range(len(win.size)):
        axes = (2 * k, 2 * k + 1) if full else (k,)
        a = shifted_sum(xp, a, axes, win.size[k], win.strides[k], win.pad[k], win.out[k],
                        win.circular)
    return a


def pool_window_sum(xp: ModuleType, a: Array, win: Window) -> Array:
    """Unnormalised pooling sum on a full-layout state: p and p' pooled independently."""
    for k in range(len(win.size)):
        for ax in (2 * k, 2 * k + 1):
            a = shifted_sum(xp, a, (ax,), win.size[k], win.strides[k], win.pad[k], win.out[k],
                            win.circular)
    return a

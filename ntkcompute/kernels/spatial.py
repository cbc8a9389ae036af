"""Window sums along spatial axes of a kernel state, one axis (or axis pair) at a time.

A ``k1 x k2`` window is done as a sum over ``k1`` shifts along one spatial dimension followed
by ``k2`` along the next (separable: ``k1 + k2`` slice-adds, not ``k1 * k2``).
"""

from __future__ import annotations

from types import ModuleType

from ..plan import Window
from .state import Array


def _pad(xp: ModuleType, a: Array, axes: tuple[int, ...], pad: tuple[int, int],
         circular: bool) -> Array:
    if pad == (0, 0):
        return a
    widths = [(0, 0)] * a.ndim
    for ax in axes:
        widths[ax] = pad
    return xp.pad(a, widths, mode="wrap" if circular else "constant")


def _take(a: Array, axes: tuple[int, ...], start: int, count: int, stride: int) -> Array:
    idx = [slice(None)] * a.ndim
    for ax in axes:
        idx[ax] = slice(start, start + stride * (count - 1) + 1, stride)
    return a[tuple(idx)]


def shifted_sum(xp: ModuleType, a: Array, axes: tuple[int, ...], size: int, stride: int,
                pad: tuple[int, int], out_len: int, circular: bool) -> Array:
    """``out[o] = sum_{d < size} a[stride * o + d - pad_lo]`` applied jointly to ``axes``.

    With one axis this is a 1-D window sum. With the axis pair (p, p') of the full layout it
    shifts both positions by the same offset: the Conv rule ``sum_d K[s o + d, s o' + d]``.
    Out-of-range positions are zero (or wrap around when ``circular``).
    """
    a = _pad(xp, a, axes, pad, circular)
    out = _take(a, axes, 0, out_len, stride).copy()
    for d in range(1, size):
        out += _take(a, axes, d, out_len, stride)
    return out


def conv_window_sum(xp: ModuleType, a: Array, nb: int, full: bool, win: Window) -> Array:
    """Unnormalised Conv window sum over every spatial dimension of a state array."""
    for k in range(len(win.size)):
        axes = (nb + 2 * k, nb + 2 * k + 1) if full else (nb + k,)
        a = shifted_sum(xp, a, axes, win.size[k], win.strides[k], win.pad[k], win.out[k],
                        win.circular)
    return a


def pool_window_sum(xp: ModuleType, a: Array, nb: int, win: Window) -> Array:
    """Unnormalised pooling sum on a full-layout state: p and p' pooled independently."""
    for k in range(len(win.size)):
        for ax in (nb + 2 * k, nb + 2 * k + 1):
            a = shifted_sum(xp, a, (ax,), win.size[k], win.strides[k], win.pad[k], win.out[k],
                            win.circular)
    return a

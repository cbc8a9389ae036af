"""Finite-width helpers shared by the layers' forward / backward passes: the patches of a
window (conv, avg_pool, sum_pool) on activations ``(n, P, C)`` with positions flattened."""

from __future__ import annotations

import math

import numpy as np

from .registry import Window


def window_index(spatial: tuple[int, ...], win: Window) -> np.ndarray:
    """``(P_out, |W|)`` flat input positions for each output position and window offset.

    Positions falling in zero padding point at ``P`` (one past the end: a zero row).
    """
    grids = []
    for n, f, s, (lo, _), o in zip(spatial, win.size, win.strides, win.pad, win.out,
                                   strict=True):
        pos = s * np.arange(o)[:, None] + np.arange(f)[None, :] - lo  # (o, f)
        if win.circular:
            pos = pos % n
        grids.append(pos)
    d = len(spatial)
    # Broadcast to (o1, ..., od, f1, ..., fd) per dimension.
    full = []
    for k, pos in enumerate(grids):
        shape = [1] * (2 * d)
        shape[k], shape[d + k] = pos.shape
        full.append(pos.reshape(shape))
    full = np.broadcast_arrays(*full)
    valid = np.ones(full[0].shape, dtype=bool)
    for k, pos in enumerate(full):
        valid &= (pos >= 0) & (pos < spatial[k])
    flat = np.ravel_multi_index(tuple(np.clip(p, 0, n - 1) for p, n in zip(full, spatial,
                                                                            strict=True)),
                                spatial)
    flat = np.where(valid, flat, math.prod(spatial))
    return flat.reshape(math.prod(win.out), math.prod(win.size))


def gather(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a`` (n, P, C) -> patches (n, P_out, |W|, C), zeros where idx points past the end."""
    ext = np.concatenate([a, np.zeros_like(a[:, :1])], axis=1)
    return ext[:, idx, :]


def scatter(g: np.ndarray, idx: np.ndarray, p_in: int) -> np.ndarray:
    """Adjoint of :func:`gather`: (..., P_out, |W|, C) -> (..., P_in, C)."""
    out = np.zeros((*g.shape[:-3], p_in + 1, g.shape[-1]), dtype=g.dtype)
    for f in range(idx.shape[1]):  # for a fixed offset the positions are distinct
        out[..., idx[:, f], :] += g[..., f, :]
    return out[..., :p_in, :]

"""Input covariances ``<x, x'> / C`` (C = channel count, the last axis), as in stax.

The sums over channels (or features) accumulate in float64 whatever the dtype, in both the
pair and the self pass: for float32 inputs the products are exact in float64, so both passes
round the same (near-exact) sum to float32 and agree bit for bit wherever the true
covariances agree (x with itself, duplicates). The angle of the arc-cosine rules depends on
``k11 k22 - k12^2`` and so on that agreement (see ``activations._angle``).
"""

from __future__ import annotations

from types import ModuleType

from .state import Array, State


def _f64(xp: ModuleType, a: Array) -> Array:
    return a.astype(xp.float64, copy=False)


def _finish(xp: ModuleType, k: Array, c: int, dtype: object) -> Array:
    """Contiguous float64 sums -> ``sums / c`` in the computation's dtype."""
    k = xp.ascontiguousarray(k) / c
    return k.astype(dtype, copy=False)


def pair_input(xp: ModuleType, x1: Array, x2: Array, full: bool, want_ntk: bool) -> State:
    """State for all pairs of rows of ``x1`` (n1, *S, C) and ``x2`` (n2, *S, C)."""
    n1, n2, c = x1.shape[0], x2.shape[0], x1.shape[-1]
    spatial = tuple(x1.shape[1:-1])
    d = len(spatial)
    dtype = x1.dtype
    x1, x2 = _f64(xp, x1), _f64(xp, x2)
    if d == 0:
        k = x1 @ x2.T
    elif full:
        k = x1.reshape(-1, c) @ x2.reshape(-1, c).T  # (n1 P, n2 P)
        k = k.reshape((n1, *spatial, n2, *spatial))
        perm = [a for j in range(d) for a in (1 + j, d + 2 + j)] + [0, d + 1]
        k = k.transpose(perm)
    else:
        a = x1.reshape(n1, -1, c).transpose(1, 0, 2)  # (P, n1, C)
        b = x2.reshape(n2, -1, c).transpose(1, 2, 0)  # (P, C, n2)
        k = (a @ b).reshape((*spatial, n1, n2))
    k = _finish(xp, k, c, dtype)
    return State(nngp=k, ntk=xp.zeros_like(k) if want_ntk else None, nb=2, spatial=spatial,
                 full=full and d > 0)


def self_input(xp: ModuleType, x: Array, full: bool, want_ntk: bool) -> State:
    """State for the pairs (x_i, x_i): batch shape ``(n,)``."""
    n, c = x.shape[0], x.shape[-1]
    spatial = tuple(x.shape[1:-1])
    d = len(spatial)
    dtype = x.dtype
    x = _f64(xp, x)
    if d == 0:
        k = (x * x).sum(axis=-1)
    elif full:
        flat = x.reshape(n, -1, c)
        k = (flat @ flat.transpose(0, 2, 1)).reshape((n, *spatial, *spatial))
        k = k.transpose([a for j in range(d) for a in (1 + j, 1 + d + j)] + [0])
    else:
        k = xp.moveaxis((x * x).sum(axis=-1), 0, -1)
    k = _finish(xp, k, c, dtype)
    return State(nngp=k, ntk=xp.zeros_like(k) if want_ntk else None, nb=1, spatial=spatial,
                 full=full and d > 0)

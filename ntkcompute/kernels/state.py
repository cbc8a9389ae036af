"""The kernel state a layer rule maps to the next one.

A state holds, for a batch of input pairs, the NNGP covariance and the NTK of the current
layer's pre-activations, in one of three layouts (``B`` = batch axes):

* vectors: ``B``
* spatial diagonal: ``B + (S1, ..., Sd)``: covariance of position p of x with position p of x'
* full spatial: ``B + (S1, S1', ..., Sd, Sd')``: position p of x with every p' of x'

Pair tiles have ``B = (n1, n2)``; the self-covariance pass has ``B = (n,)`` (x paired with
itself). The same rules serve both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

Array = Any  # numpy.ndarray or cupy.ndarray


@dataclass(frozen=True)
class State:
    nngp: Array
    ntk: Array | None
    nb: int  # number of leading batch axes: 2 for pair tiles, 1 for the self pass
    spatial: tuple[int, ...]
    full: bool

    def with_(self, **kw: Any) -> State:
        return replace(self, **kw)


def spatial_diagonal(a: Array, nb: int, ndim: int) -> Array:
    """``B + (S1, S1', ..., Sd, Sd')`` -> ``B + (S1, ..., Sd)`` taking p == p'."""
    for _ in range(ndim):
        a = a.diagonal(axis1=nb, axis2=nb + 1)  # appends the diagonal as the last axis
    return a


def full_axes(nb: int, ndim: int, side: int) -> tuple[int, ...]:
    """Axes of the full layout that belong to x (side 0) or x' (side 1)."""
    return tuple(nb + 2 * k + side for k in range(ndim))


def expand_var(var: Array, state_nb: int, side: int, full: bool) -> Array:
    """Broadcast per-input variances ``(b, *spatial)`` against a state's layout.

    ``side`` 0 means the variances of the first input of each pair, 1 of the second. In the
    self pass (``state_nb == 1``) both sides are the same inputs.
    """
    ndim = var.ndim - 1
    shape = list(var.shape[:1])
    if state_nb == 2:
        shape = [var.shape[0], 1] if side == 0 else [1, var.shape[0]]
    if full:
        for k in range(ndim):
            s = var.shape[1 + k]
            shape += [s, 1] if side == 0 else [1, s]
    else:
        shape += list(var.shape[1:])
    return var.reshape(shape)

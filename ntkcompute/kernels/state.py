"""The kernel state a layer rule maps to the next one.

A state holds, for a batch of input pairs, the NNGP covariance and the NTK of the current
layer's pre-activations, in one of three layouts (``B`` = batch axes, always last):

* vectors: ``B``
* spatial diagonal: ``(S1, ..., Sd) + B``: covariance of position p of x with p of x'
* full spatial: ``(S1, S1', ..., Sd, Sd') + B``: position p of x with every p' of x'

Pair blocks have ``B = (n1, n2)``; the self-covariance pass has ``B = (n,)`` (x paired with
itself), and so has a list of m pairs (x1[k], x2[k]) given both inputs' self statistics
(``propagate.refine``). The same rules serve all three. Batch axes come last so that every
spatial shift or slice moves whole contiguous runs of pairs (3x faster window sums than
batch-first, measured on 8x8 images), and the per-input variances broadcast against them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

Array = Any  # numpy.ndarray or cupy.ndarray


@dataclass(frozen=True)
class Refine:
    """Pairs of a float32 pair block that ``propagate.run`` recomputes in float64.

    ``rows[k]``, ``cols[k]`` index the k-th pair's inputs in ``x1`` ``(n1, *S, C)`` and ``x2``
    ``(n2, *S, C)``, the block's float32 inputs. Which pairs depends on the pair alone (see
    ``inputs.near_pairs``), so every tiling of a Gram matrix refines the same entries.
    """

    rows: Array
    cols: Array
    x1: Array
    x2: Array


@dataclass(frozen=True)
class State:
    nngp: Array
    ntk: Array | None
    nb: int  # number of trailing batch axes: 2 for pair blocks, 1 for the self pass
    spatial: tuple[int, ...]
    full: bool
    refine: Refine | None = None  # set by inputs.pair_input, consumed by propagate.run
    # which pairs are one input twice: True (the self pass: all), False (none, or not asked
    # for: no layer of the plan needs it), or a bool array of the batch shape
    same: Array | bool = False
    # each input's graph (aggregate layers): ``(A1, A2)``, ``(n1, V, V)`` and ``(n2, V, V)``
    # for pair blocks, both ``(m, V, V)`` for the self pass and pair lists; None without one
    pattern: tuple[Array, Array] | None = None

    def with_(self, **kw: Any) -> State:
        return replace(self, **kw)


def reduce64(xp: Any, a: Array, op: str, axes: tuple[int, ...],
             keepdims: bool = False) -> Array:
    """``a.sum`` / ``a.mean`` over ``axes`` accumulated in float64, returned in ``a``'s dtype
    (long float32 reductions: see ``pooling``)."""
    out = getattr(a, op)(axis=axes, dtype=xp.float64, keepdims=keepdims)
    return out.astype(a.dtype, copy=False)


def spatial_diagonal(xp: Any, a: Array, ndim: int) -> Array:
    """``(S1, S1', ..., Sd, Sd') + B`` -> ``(S1, ..., Sd) + B`` taking p == p' (a view)."""
    for _ in range(ndim):
        a = a.diagonal(axis1=0, axis2=1)  # appends the diagonal as the last axis
    return xp.moveaxis(a, tuple(range(a.ndim - ndim, a.ndim)), tuple(range(ndim)))


def expand_var(xp: Any, var: Array, state_nb: int, side: int, full: bool) -> Array:
    """Broadcast per-input variances ``(b, *spatial)`` against a state's layout.

    ``side`` 0 means the variances of the first input of each pair, 1 of the second. In the
    self pass (``state_nb == 1``) both sides are the same inputs.
    """
    ndim = var.ndim - 1
    var = xp.moveaxis(var, 0, -1)  # (*spatial, b)
    shape: list[int] = []
    if full:
        for k in range(ndim):
            s = var.shape[k]
            shape += [s, 1] if side == 0 else [1, s]
    else:
        shape += list(var.shape[:ndim])
    b = var.shape[-1]
    if state_nb == 2:
        shape += [b, 1] if side == 0 else [1, b]
    else:
        shape.append(b)
    return var.reshape(shape)

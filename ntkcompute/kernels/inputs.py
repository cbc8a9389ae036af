"""Input covariances ``<x, x'> / C`` (C = channel count, the last axis), as in stax.

The sums over channels (or features) accumulate in float64 whatever the dtype, in both the
pair and the self pass: for float32 inputs the products are exact in float64, so both passes
round the same (near-exact) sum to float32 and agree bit for bit wherever the true
covariances agree (x with itself, duplicates). The angle of the arc-cosine rules depends on
``k11 k22 - k12^2`` and so on that agreement (see ``activations._angle``).

float32 pair blocks also mark near pairs (``near_pairs``) for ``propagate.run`` to recompute
in float64. Where a layer needs it (``LayerRule.pair_identity``), the pair states also say
which pairs are one input twice (``State.same``, from ``same_pairs``).
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

from ..layers.graph import split_pattern
from .state import Array, Refine, State, spatial_diagonal

#: float32 pair blocks recompute in float64 the pairs of distinct inputs with
#: ``|x1 - x2|² < NEAR (|x1|² + |x2|²)``. Their kernels are ill-conditioned in float32: the
#: arc-cosine angle θ between their features is small (or 0) at every position, and θ from float32
#: covariances errs by ~eps/θ (the NTK factor c0 - c1 θ with it), so the NTK of CNTK-V-8 on
#: MNIST errs by ~4e-8 / η, η² = |x1 - x2|² / (|x1|² + |x2|²): 1e-4 for near-duplicates (η ~ 1e-3),
#: 2e-7 at η² = NEAR. Among the first 1000 MNIST or CIFAR-10 training images (standardised,
#: full and half resolution) 3e-4 of the pairs or fewer have η² < NEAR, so the float64 work
#: is a small fraction of a block.
NEAR = 0.05


def _f64(xp: ModuleType, a: Array) -> Array:
    return a.astype(xp.float64, copy=False)


def _finish(xp: ModuleType, k: Array, c: int, dtype: object) -> Array:
    """float64 sums (a fresh array or a view of one) -> ``sums / c`` in the computation's
    dtype, contiguous."""
    k = xp.ascontiguousarray(k)
    k /= c
    return k.astype(dtype, copy=False)


def near_pairs(xp: ModuleType, x1: Array, x2: Array, g: Array) -> Refine | None:
    """The pairs of distinct rows of ``x1`` (n1, ...) and ``x2`` (n2, ...) with
    ``|x1 - x2|² < NEAR (|x1|² + |x2|²)``; ``g`` (n1, n2) holds ``<x1, x2>``, all float64.
    ``None`` if there are none."""
    n1, n2 = x1.shape[0], x2.shape[0]
    a = x1.reshape(n1, -1)
    b = x2.reshape(n2, -1)
    # |x1 - x2|² < NEAR (|x1|² + |x2|²)  <=>  <x1, x2> > (1 - NEAR) (|x1|² + |x2|²) / 2
    bound = xp.einsum("ij,ij->i", a, a)[:, None] + xp.einsum("ij,ij->i", b, b)[None, :]
    bound *= (1 - NEAR) / 2
    rows, cols = xp.nonzero(g > bound)
    if rows.size == 0:
        return None
    # Identical rows (the diagonal of a symmetric block, exact duplicates) are exact in
    # float32 already: both passes compute their covariances by the same operations. Compared
    # n1 candidate pairs at a time (twice x1's memory).
    differ = xp.concatenate([(a[rows[i:i + n1]] != b[cols[i:i + n1]]).any(axis=1)
                             for i in range(0, rows.size, n1)])
    if not bool(differ.any()):
        return None
    return Refine(rows[differ], cols[differ], x1, x2)


def same_pairs(xp: ModuleType, x1: Array, x2: Array) -> Array | bool:
    """``(n1, n2)`` bool: whether ``x1[i]`` and ``x2[j]`` are the same input (equal bit for
    bit), or ``False`` when no pair is. Candidates have equal float64 sums and sums of squares;
    they are compared n1 pairs at a time (twice x1's memory)."""
    n1, n2 = x1.shape[0], x2.shape[0]
    a = x1.reshape(n1, -1)
    b = x2.reshape(n2, -1)

    def key(v: Array) -> tuple[Array, Array]:
        v = _f64(xp, v)
        return v.sum(axis=1), xp.einsum("ij,ij->i", v, v)

    (sa, qa), (sb, qb) = key(a), key(b)
    rows, cols = xp.nonzero((sa[:, None] == sb[None, :]) & (qa[:, None] == qb[None, :]))
    if rows.size == 0:
        return False
    equal = xp.concatenate([(a[rows[i:i + n1]] == b[cols[i:i + n1]]).all(axis=1)
                            for i in range(0, rows.size, n1)])
    if not bool(equal.any()):
        return False
    same = xp.zeros((n1, n2), dtype=bool)
    same[rows[equal], cols[equal]] = True
    return same


def _graphs(xp: ModuleType, x1: Array, x2: Array, pattern: tuple | None
            ) -> tuple[Array, Array, tuple[Array, Array] | None]:
    """The features of ``x1``, ``x2`` and their graphs (``pattern``: the plan's, see
    ``layers.graph``), or the inputs as they are and None."""
    if pattern is None:
        return x1, x2, None
    f1, g1 = split_pattern(xp, x1, pattern)
    f2, g2 = (f1, g1) if x2 is x1 else split_pattern(xp, x2, pattern)
    return f1, f2, (g1, g2)


def pair_input(xp: ModuleType, x1: Array, x2: Array, full: bool, want_ntk: bool,
               identity: bool = False, pattern: tuple | None = None) -> State:
    """State for all pairs of rows of ``x1`` (n1, *S, C) and ``x2`` (n2, *S, C); with
    ``identity``, its ``same`` marks the pairs of equal rows. With ``pattern`` (the plan's)
    the last channels are each input's graph, kept apart in ``State.pattern``."""
    packed1, packed2 = x1, x2
    x1, x2, graphs = _graphs(xp, x1, x2, pattern)
    n1, n2, c = x1.shape[0], x2.shape[0], x1.shape[-1]
    spatial = tuple(x1.shape[1:-1])
    d = len(spatial)
    dtype = x1.dtype
    a, b = _f64(xp, x1), _f64(xp, x2)
    if d == 0:
        k = a @ b.T
    elif full:
        k = a.reshape(-1, c) @ b.reshape(-1, c).T  # (n1 P, n2 P)
        k = k.reshape((n1, *spatial, n2, *spatial))
        perm = [ax for j in range(d) for ax in (1 + j, d + 2 + j)] + [0, d + 1]
        k = k.transpose(perm)
    else:
        k = (a.reshape(n1, -1, c).transpose(1, 0, 2)  # (P, n1, C)
             @ b.reshape(n2, -1, c).transpose(1, 2, 0))  # (P, C, n2)
        k = k.reshape((*spatial, n1, n2))
    refine = None
    if dtype.itemsize < 8:  # <x1, x2>: the sum of k over the positions p == p'
        g = spatial_diagonal(xp, k, d) if full else k
        refine = near_pairs(xp, a, b, g.sum(axis=tuple(range(d))) if d else g)
        if refine is not None:
            refine = replace(refine, x1=packed1, x2=packed2)
    k = _finish(xp, k, c, dtype)
    return State(nngp=k, ntk=xp.zeros_like(k) if want_ntk else None, nb=2, spatial=spatial,
                 full=full and d > 0, refine=refine,
                 same=same_pairs(xp, packed1, packed2) if identity else False,
                 pattern=graphs)


def pairs_input(xp: ModuleType, xa: Array, xb: Array, full: bool, want_ntk: bool,
                identity: bool = False, pattern: tuple | None = None) -> State:
    """State for the m pairs ``(xa[k], xb[k])``, both ``(m, *S, C)``: batch shape ``(m,)``.
    With ``xb is xa`` the self pass (``same`` is True); else, with ``identity``, ``same``
    marks the pairs of equal rows. ``pattern`` as for :func:`pair_input`."""
    same: Array | bool = xb is xa
    if identity and not same:
        same = (xa.reshape(xa.shape[0], -1) == xb.reshape(xa.shape[0], -1)).all(axis=1)
    xa, xb, graphs = _graphs(xp, xa, xb, pattern)  # (one array twice in the self pass)
    m, c = xa.shape[0], xa.shape[-1]
    spatial = tuple(xa.shape[1:-1])
    d = len(spatial)
    dtype = xa.dtype
    a = _f64(xp, xa)
    b = a if xb is xa else _f64(xp, xb)
    if d == 0:
        k = (a * b).sum(axis=-1)
    elif full:
        k = a.reshape(m, -1, c) @ b.reshape(m, -1, c).transpose(0, 2, 1)
        k = k.reshape((m, *spatial, *spatial))
        k = k.transpose([ax for j in range(d) for ax in (1 + j, 1 + d + j)] + [0])
    else:
        k = xp.moveaxis((a * b).sum(axis=-1), 0, -1)
    k = _finish(xp, k, c, dtype)
    return State(nngp=k, ntk=xp.zeros_like(k) if want_ntk else None, nb=1, spatial=spatial,
                 full=full and d > 0, same=same, pattern=graphs)


def self_input(xp: ModuleType, x: Array, full: bool, want_ntk: bool,
               pattern: tuple | None = None) -> State:
    """State for the pairs (x_i, x_i): batch shape ``(n,)``."""
    return pairs_input(xp, x, x, full, want_ntk, pattern=pattern)

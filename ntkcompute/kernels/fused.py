"""Compiled one-pass layer kernels for the CPU (numba): the fast path of the layer rules.

The NumPy rules (``spatial``, ``activations``, the layer families) stay the reference and the
fallback. A fused kernel does, in one pass over a block's state and without temporaries, what
a rule does in a chain of NumPy passes:

* :func:`affine` — Dense or a stride-1 zero-padded Conv (window sum of K and Θ, the affine
  map of both parameterizations), optionally followed by a ReLU-family nonlinearity on the
  window's result (``act``): the conv + ReLU step of a CNTK in one pass;
* :func:`activation` — a ReLU-family nonlinearity (K into a new array, Θ in place);
* :func:`pool` — average / sum pooling of a full-layout state.

Conv windows and the per-entry math run in the state's dtype (float32 states compute in
float32, the NumPy float32 rules' arithmetic); pooling sums over its many positions in
float64. Every value is computed from the same operations in the same order whatever the
block's batch shape, so the self pass and the pair pass agree bit for bit on the diagonal
(the float32 det = 0 argument of ``activations._SNAP_ULPS``).

Layouts (see ``state``): the batch axes are flattened to one axis ``B`` of size ``nb1 * nb2``
(pair blocks) or ``m`` (the self pass, pair lists); vectors are the diagonal layout with one
position. Two spatial dimensions at most (one is the first of length 1).

``NTK_FUSED=0`` turns the compiled path off (as does a missing numba); :func:`enabled` is the
switch the rules read, :func:`use` sets it for a block of code (tests, benchmarks).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

try:  # numba is a dependency, but a broken LLVM must not take the NumPy path down with it
    import numba
    from numba import uint64
except Exception:  # pragma: no cover - exercised only where numba is missing
    numba = None
    uint64 = int

_on = numba is not None and os.environ.get("NTK_FUSED", "1") != "0"
#: ``NTK_FUSED=cuda``: NumPy arrays too go through the CUDA kernels, which only the CUDA
#: simulator can run on them (``NUMBA_ENABLE_CUDASIM=1``): the GPU path tested on a CPU.
_host_on_device = os.environ.get("NTK_FUSED") == "cuda"


def enabled(xp: Any) -> bool:
    """True when compiled kernels serve arrays of module ``xp``: NumPy (the CPU kernels
    here) or CuPy (``fused_cuda``, where numba's CUDA target sees a device)."""
    if not _on:
        return False
    if xp is np:
        return True
    from . import fused_cuda

    return fused_cuda.available()


def _device(a: Any) -> Any:
    """The array module whose CUDA kernels take ``a``, or None for the CPU kernels."""
    if isinstance(a, np.ndarray) and not _host_on_device:
        return None
    from ..backend import array_module

    return array_module(a)


@contextmanager
def use(flag: bool) -> Iterator[None]:
    """Run the enclosed code with the compiled path on (``True``) or off; not thread-safe."""
    global _on
    old = _on
    _on = bool(flag) and numba is not None
    try:
        yield
    finally:
        _on = old


def _jit(fn: Any) -> Any:
    if numba is None:  # pragma: no cover
        return fn
    # error_model="numpy": a division by zero gives inf / nan, no Python exception path, so
    # the loops vectorize; boundscheck off (the default); no fastmath: IEEE order is kept.
    return numba.njit(nogil=True, cache=True, error_model="numpy")(fn)


def _inline(fn: Any) -> Any:
    if numba is None:  # pragma: no cover
        return fn
    return numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")(fn)


# --- θ = atan2(r, k) for r >= 0, vectorizable -------------------------------------------------
# NumPy's arctan2 is a SIMD library call (2.2-3.5 ns per float64 here); numba's is libm's
# scalar one (31 ns). This is Cephes' atan (Moshier 1989: rational P(x²)/Q(x²) on
# |x| <= 0.66, and π/4 + atan((t - 1)/(t + 1)) above) after folding the octant, written with
# selects only: 2.6 ns per element, max error 4.4e-16 absolute against np.arctan2 in float64.
# The per-entry functions take their constants as a tuple ``C`` of the state's dtype, so one
# source computes in float64 (``C64``) or entirely in float32 (``C32``: 2.4e-7 absolute,
# the NumPy float32 rules' own arithmetic class) without a conversion.
_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
      -1.228866684490136173410e2, -6.485021904942025371773e1)
_Q = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
      4.853903996359136964868e2, 1.945506571482613964425e2)
_MOREBITS = 6.123233995736765886130e-17  # π/2 - fl(π/2)
# zero, one, 0.66, π/4, π/2, π, P0..P4, Q0..Q4
_CONSTANTS = (0.0, 1.0, 0.66, math.pi / 4 + 0.5 * _MOREBITS, math.pi / 2 + _MOREBITS,
              math.pi + 2 * _MOREBITS, *_P, *_Q)
C64 = tuple(np.float64(c) for c in _CONSTANTS)
C32 = tuple(np.float32(c) for c in _CONSTANTS)


@_inline
def _atan2(r, k, C):
    zero, one = C[0], C[1]
    a = abs(k)
    swap = r > a
    num = min(r, a)
    den = max(r, a)
    den = den if den > zero else one  # atan2(0, 0) = 0
    c = one if num > C[2] * den else zero
    x = (num - c * den) / (den + c * num)  # t = num/den, or (t - 1)/(t + 1) when t > 0.66
    z = x * x
    p = (((C[6] * z + C[7]) * z + C[8]) * z + C[9]) * z + C[10]
    q = ((((z + C[11]) * z + C[12]) * z + C[13]) * z + C[14]) * z + C[15]
    y = x + x * z * p / q + c * C[3]
    y = (C[4] - y) if swap else y
    return (C[5] - y) if k < zero else y


@_inline
def _ab(k12, k11, k22, snap, c0, c1, C):
    """``(K', dot)`` of ``a min(x, 0) + b max(x, 0)``: ``activations.ab_relu`` for one entry
    (``c0 = (a² + b²)/2``, ``c1 = (a - b)²/2π``; ``snap``: its ulps times ε), in the dtype of
    its arguments. The diagonal and duplicates give det = 0 exactly: k12, k11, k22 are then
    the same number, stored by the same operations in both passes."""
    zero = C[0]
    prod = k11 * k22
    r2 = prod - k12 * k12
    r2 = zero if r2 <= prod * snap else r2  # snap = 0: max(r2, 0)
    r = np.sqrt(r2)
    theta = _atan2(r, k12, C) if prod != zero else C[4]
    dot = c0 - c1 * theta
    return c1 * r + dot * k12, dot


# --- affine (Dense, stride-1 Conv), optionally followed by a ReLU-family nonlinearity ----------
# Written for LLVM's vectorizer: long branch-free innermost loops over contiguous memory. On
# the full layout the Conv rule shifts p and p' together, so along the (S2, S2') axis pair a
# tap d2 is one constant offset, (d2 - lo2)(W2 + 1) nb, into the flattened slab once that slab
# is zero-padded to W2 = O2 + k2 - 1 along both axes: every (i1, j1) slab of the input is padded
# once into a small ring buffer (``_window_slab``) and each output slab (o1, q1) is then k1
# passes of k2 taps each over
# ~W2² nb contiguous values; a 3x3 window is one pass of 9 loads. Per-row runs of 32 with
# edge checks cost 9 ns per value for 9 taps here, padding the whole array first 7 ns.

@_inline
def _taps(acc, src, n, step, k2):
    """``acc[f] += sum_{d < k2} src[f + d step]`` for ``f < n``, three taps per pass. (Every
    loop here indexes views with its own counter: an index LLVM cannot prove >= 0 gets a
    negative-index wrap-around select per load, 5x slower.)"""
    ac = acc[:n]
    d = 0
    while d < k2:
        g = min(3, k2 - d)
        x0 = src[d * step:d * step + n]
        if g == 3:
            x1 = src[(d + 1) * step:(d + 1) * step + n]
            x2 = src[(d + 2) * step:(d + 2) * step + n]
            for f in range(n):
                ac[f] += x0[f] + x1[f] + x2[f]
        elif g == 2:
            x1 = src[(d + 1) * step:(d + 1) * step + n]
            for f in range(n):
                ac[f] += x0[f] + x1[f]
        else:
            for f in range(n):
                ac[f] += x0[f]
        d += g


@_inline
def _finish(acck, acct, fa, k11, k22, f1, f2, outk, outt, fo, n, ck, cb, ct, cn, cs, c1, act,
            want_t, snap, a0, a1, C):
    """``outk[fo + e], outt[fo + e]`` for ``e < n`` from the window sums ``acck[fa + e]``,
    ``acct[fa + e]``: the affine map, then (``act``) the nonlinearity with variances
    ``k11[f1 + e]``, ``k22[f2 + e]``; coefficients and arithmetic in the state's dtype. Flat
    arrays and unsigned offsets: no view per call and no negative-index check per load."""
    fa, f1, f2, fo = uint64(fa), uint64(f1), uint64(f2), uint64(fo)
    if act and want_t:
        for e0 in range(n):
            e = uint64(e0)
            sk = acck[fa + e]
            k = ck * sk + cb
            t = ct * acct[fa + e] + cn * k + cs * sk + c1
            kk, dot = _ab(k, k11[f1 + e], k22[f2 + e], snap, a0, a1, C)
            outk[fo + e] = kk
            outt[fo + e] = t * dot
    elif act:
        for e0 in range(n):
            e = uint64(e0)
            kk, dot = _ab(ck * acck[fa + e] + cb, k11[f1 + e], k22[f2 + e], snap, a0, a1, C)
            outk[fo + e] = kk
    elif want_t:
        for e0 in range(n):
            e = uint64(e0)
            sk = acck[fa + e]
            k = ck * sk + cb
            outk[fo + e] = k
            outt[fo + e] = ct * acct[fa + e] + cn * k + cs * sk + c1
    else:
        for e0 in range(n):
            e = uint64(e0)
            outk[fo + e] = ck * acck[fa + e] + cb


@_jit
def _variance_runs(va, vb, n1, n2, pairlist, o1n, o2n):
    """For a full layout, the variances each run entry ``e = (q2, b1, b2)`` needs:
    ``k11[o1, o2, e] = va[b1, o1, o2]``, ``k22[q1, e] = vb[b1 or b2, q1, q2]``."""
    run = o2n * n1 * n2
    k11 = np.empty((o1n, o2n, run), va.dtype)
    k22 = np.empty((o1n, run), va.dtype)
    for o1 in range(o1n):
        for o2 in range(o2n):
            for q2 in range(o2n):
                for b1 in range(n1):
                    for b2 in range(n2):
                        e = (q2 * n1 + b1) * n2 + b2
                        k11[o1, o2, e] = va[b1, o1, o2]
                        k22[o1, e] = vb[b1 if pairlist else b2, o1, q2]
    return k11, k22


@_inline
def _taps9(acc, r0, r1, r2, n, step):
    """``acc[f] = sum_{d1, d2 < 3} r_{d1}[f + d2 step]``: the 3x3 window in one pass."""
    a0, a1, a2 = r0[:n], r0[step:step + n], r0[2 * step:2 * step + n]
    b0, b1, b2 = r1[:n], r1[step:step + n], r1[2 * step:2 * step + n]
    c0, c1, c2 = r2[:n], r2[step:step + n], r2[2 * step:2 * step + n]
    ac = acc[:n]
    for f in range(n):
        ac[f] = (a0[f] + a1[f] + a2[f]) + (b0[f] + b1[f] + b2[f]) + (c0[f] + c1[f] + c2[f])


@_inline
def _load_slab(ring, slot, a, i1, j1, row, lo2, nb):
    """Slab ``a[i1, j1]`` ``(S2, S2 nb)`` into ``ring[slot]``'s interior (its border stays 0)."""
    s2 = a.shape[2]
    m = s2 * nb
    dst = ring[slot]
    src = a[i1, j1]
    for i2 in range(s2):
        d0 = uint64((i2 + lo2) * row + lo2 * nb)
        for e0 in range(m):
            e = uint64(e0)
            dst[d0 + e] = src[i2, e]


@_inline
def _window_slab(acc, ring, have, a, o1, q1, k1, k2, lo1, lo2, row, nb, n):
    """``acc`` = the window sum of output slab (o1, q1) in padded-width rows. Input slabs come
    through ``ring`` (padded copies, slot ``i1 % k1``; ``have`` says which ``i1`` each slot
    holds): walking a diagonal o1 - q1 = const, each input slab is copied once."""
    s1 = a.shape[0]
    step = row + nb
    full = True
    for d1 in range(k1):
        i1 = o1 + d1 - lo1
        j1 = q1 + d1 - lo1
        if 0 <= i1 < s1 and 0 <= j1 < s1:
            slot = i1 % k1
            if have[slot] != i1:
                _load_slab(ring, slot, a, i1, j1, row, lo2, nb)
                have[slot] = i1
        else:
            full = False
    if full and k1 == 3 and k2 == 3:
        _taps9(acc, ring[(o1 - lo1) % 3], ring[(o1 - lo1 + 1) % 3], ring[(o1 - lo1 + 2) % 3],
               n, step)
        return
    acc[:n] = 0.0
    for d1 in range(k1):
        i1 = o1 + d1 - lo1
        j1 = q1 + d1 - lo1
        if 0 <= i1 < s1 and 0 <= j1 < s1:
            _taps(acc, ring[i1 % k1], n, step, k2)


@_jit
def _affine_full(ak, at, ok, ot, k1, k2, lo1, lo2, n1, n2, ck, cb, ct, cn, cs, c1,
                 act, want_t, va, vb, pairlist, snap, a0, a1, C):
    """Full layout: ``a*`` ``(S1, S1, S2, S2 * nb)``, ``o*`` ``(O1, O1, O2, O2 * nb)`` with
    ``nb = n1 * n2`` (a pair list: ``n2 = 1``); ``at``/``ot`` of size 0 unless ``want_t``
    (the NTK); ``va`` ``(n1, O1, O2)``, ``vb`` ``(n2 or n1, O1, O2)`` the nonlinearity's self
    statistics (when ``act``). Called through ``AFFINE``, one kernel per value of the flags."""
    o1n, o2n = ok.shape[0], ok.shape[2]
    nb = n1 * n2
    w2 = o2n + k2 - 1
    row = w2 * nb
    run = o2n * nb  # one output row (o1, q1, o2): all q2 and pairs
    n = o2n * row  # output slab in padded-width rows; columns past O2 are never read
    size = (w2 + 1) * row  # one row of slack: the last taps read past the last full row
    # window sums in the state's dtype: nine terms lose nothing float32 cares about
    # (the long sums, pooling and GAP, accumulate in float64)
    ringk = np.zeros((k1, size), ak.dtype)
    ringt = np.zeros((k1, size) if want_t else (1, 1), ak.dtype)
    havek = np.empty(k1, np.int64)
    havet = np.empty(k1, np.int64)
    acck = np.empty(n, ak.dtype)
    acct = np.empty(n, ak.dtype)
    if act:
        k11, k22 = _variance_runs(va, vb, n1, n2, pairlist, o1n, o2n)
    else:
        k11, k22 = np.empty((1, 1, 0), va.dtype), np.empty((1, 0), va.dtype)
    k11f, k22f = k11.reshape(k11.size), k22.reshape(k22.size)
    okf = ok.reshape(ok.size)
    otf = ot.reshape(ot.size) if want_t else okf
    for delta in range(1 - o1n, o1n):  # diagonals q1 - o1 = delta
        havek[:] = -1
        havet[:] = -1
        for o1 in range(max(0, -delta), min(o1n, o1n - delta)):
            q1 = o1 + delta
            _window_slab(acck, ringk, havek, ak, o1, q1, k1, k2, lo1, lo2, row, nb, n)
            if want_t:
                _window_slab(acct, ringt, havet, at, o1, q1, k1, k2, lo1, lo2, row, nb, n)
            for o2 in range(o2n):
                _finish(acck, acct, o2 * row, k11f, k22f,
                        (o1 * o2n + o2) * run if act else 0, q1 * run if act else 0,
                        okf, otf, ((o1 * o1n + q1) * o2n + o2) * run, run,
                        ck, cb, ct, cn, cs, c1, act, want_t, snap, a0, a1, C)


@_jit
def _transposed(v, o1n, o2n):
    """``(n, O1, O2)`` -> contiguous ``(O1, O2, n)``: a position's variances side by side."""
    n = v.shape[0]
    out = np.empty((o1n, o2n, n), v.dtype)
    for i in range(n):
        for o1 in range(o1n):
            for o2 in range(o2n):
                out[o1, o2, i] = v[i, o1, o2]
    return out


@_inline
def _nine(acc, a, i, j, nb):
    """``acc[b] = sum_{d1, d2 < 3} a[i + d1, j + d2, b]`` (diagonal layout, all in range)."""
    r0, r1, r2 = a[i, j], a[i, j + 1], a[i, j + 2]
    r3, r4, r5 = a[i + 1, j], a[i + 1, j + 1], a[i + 1, j + 2]
    r6, r7, r8 = a[i + 2, j], a[i + 2, j + 1], a[i + 2, j + 2]
    for b in range(nb):
        acc[b] = (r0[b] + r1[b] + r2[b]) + (r3[b] + r4[b] + r5[b]) + (r6[b] + r7[b] + r8[b])


@_jit
def _affine_diag(ak, at, ok, ot, k1, k2, lo1, lo2, n1, n2, ck, cb, ct, cn, cs, c1,
                 act, want_t, va, vb, pairlist, snap, a0, a1, C):
    """Diagonal layout: ``a*`` ``(S1, S2, nb)``, ``o*`` ``(O1, O2, nb)``; as ``_affine_full``.
    Vectors are one position and a 1x1 window: the input is read in place, no sums."""
    s1, s2 = ak.shape[0], ak.shape[1]
    o1n, o2n = ok.shape[0], ok.shape[1]
    nb = n1 * n2
    acck = np.empty(nb, ak.dtype)
    acct = np.empty(nb, ak.dtype)
    k11 = np.empty(nb, va.dtype)
    k22 = np.empty(nb, va.dtype)
    vat = _transposed(va, o1n, o2n) if act else va
    vbt = _transposed(vb, o1n, o2n) if act else vb
    single = k1 == 1 and k2 == 1 and lo1 == 0 and lo2 == 0
    for o1 in range(o1n):
        for o2 in range(o2n):
            inner = k1 == 3 and k2 == 3 and 1 <= o1 + 1 - lo1 < s1 - 1 and \
                1 <= o2 + 1 - lo2 < s2 - 1
            if single:
                sk = ak[o1, o2]
                st = at[o1, o2] if want_t else sk
            elif inner:  # all nine taps in range: one pass of nine loads per array
                _nine(acck, ak, o1 - lo1, o2 - lo2, nb)
                if want_t:
                    _nine(acct, at, o1 - lo1, o2 - lo2, nb)
                sk = acck
                st = acct
            else:
                acck[:] = 0.0
                acct[:] = 0.0
                for d1 in range(k1):
                    i1 = o1 + d1 - lo1
                    if i1 < 0 or i1 >= s1:
                        continue
                    for d2 in range(k2):
                        i2 = o2 + d2 - lo2
                        if i2 < 0 or i2 >= s2:
                            continue
                        rk = ak[i1, i2]
                        for e in range(nb):
                            acck[e] += rk[e]
                        if want_t:
                            rt = at[i1, i2]
                            for e in range(nb):
                                acct[e] += rt[e]
                sk = acck
                st = acct
            outk = ok[o1, o2]
            outt = ot[o1, o2] if want_t else outk
            if not act:
                _finish(sk, st, 0, sk, sk, 0, 0, outk, outt, 0, nb, ck, cb, ct, cn, cs, c1, act,
                        want_t, snap, a0, a1, C)
            elif pairlist:
                _finish(sk, st, 0, vat[o1, o2], vbt[o1, o2], 0, 0, outk, outt, 0, nb, ck, cb,
                        ct, cn, cs, c1, act, want_t, snap, a0, a1, C)
            else:  # the variances laid out like the batch: one long loop, not n1 short ones
                for b1 in range(n1):
                    k11[b1 * n2:(b1 + 1) * n2] = vat[o1, o2, b1]
                    k22[b1 * n2:(b1 + 1) * n2] = vbt[o1, o2]
                _finish(sk, st, 0, k11, k22, 0, 0, outk, outt, 0, nb, ck, cb, ct, cn, cs, c1,
                        act, want_t, snap, a0, a1, C)


@_inline
def _act_run(kin, kout, t, fk, k11, k22, f1, f2, n, want_t, snap, a0, a1, C):
    """The nonlinearity over a run of flat arrays: ``kout[fk + e]`` from ``kin[fk + e]``,
    ``t[fk + e] *= dot``, variances ``k11[f1 + e]``, ``k22[f2 + e]``."""
    fk, f1, f2 = uint64(fk), uint64(f1), uint64(f2)
    if want_t:
        for e0 in range(n):
            e = uint64(e0)
            kk, dot = _ab(kin[fk + e], k11[f1 + e], k22[f2 + e], snap, a0, a1, C)
            kout[fk + e] = kk
            t[fk + e] *= dot
    else:
        for e0 in range(n):
            e = uint64(e0)
            kk, dot = _ab(kin[fk + e], k11[f1 + e], k22[f2 + e], snap, a0, a1, C)
            kout[fk + e] = kk


@_jit
def _act_full(k_, ko, t_, want_t, va, vb, n1, n2, pairlist, snap, a0, a1, C):
    """A ReLU-family nonlinearity of a full layout ``(S1, S1, S2, S2 * nb)``: K into ``ko``
    (``k_`` may be a self statistic's memory), Θ in place (``want_t``)."""
    s1, s2 = k_.shape[0], k_.shape[2]
    k11, k22 = _variance_runs(va, vb, n1, n2, pairlist, s1, s2)
    run = k_.shape[3]
    kf, kof = k_.reshape(k_.size), ko.reshape(ko.size)
    tf = t_.reshape(t_.size) if want_t else kof
    k11f, k22f = k11.reshape(k11.size), k22.reshape(k22.size)
    for o1 in range(s1):
        for q1 in range(s1):
            for o2 in range(s2):
                _act_run(kf, kof, tf, ((o1 * s1 + q1) * s2 + o2) * run, k11f, k22f,
                         (o1 * s2 + o2) * run, q1 * run, run, want_t, snap, a0, a1, C)


@_jit
def _act_diag(k_, ko, t_, want_t, va, vb, n1, n2, pairlist, snap, a0, a1, C):
    """A ReLU-family nonlinearity of a diagonal layout ``(S1, S2, nb)``: as ``_act_full``."""
    s1, s2 = k_.shape[0], k_.shape[1]
    k11 = np.empty(n1 * n2, va.dtype)
    k22 = np.empty(n1 * n2, va.dtype)
    vat = _transposed(va, s1, s2)
    vbt = _transposed(vb, s1, s2)
    for o1 in range(s1):
        for o2 in range(s2):
            kin, kout = k_[o1, o2], ko[o1, o2]
            t = t_[o1, o2] if want_t else kout
            if pairlist:
                _act_run(kin, kout, t, 0, vat[o1, o2], vbt[o1, o2], 0, 0, n1, want_t, snap,
                         a0, a1, C)
            else:
                for b1 in range(n1):
                    k11[b1 * n2:(b1 + 1) * n2] = vat[o1, o2, b1]
                    k22[b1 * n2:(b1 + 1) * n2] = vbt[o1, o2]
                _act_run(kin, kout, t, 0, k11, k22, 0, 0, n1 * n2, want_t, snap, a0, a1, C)


# --- one compiled kernel per value of the flags ---------------------------------------------
# ``act`` and ``want_t`` select whole loops. Passed at run time they cost the per-entry loops
# their vectorization (measured on a 32x32 conv + ReLU step with the NTK, per entry: 13.8 ->
# 7.9 ns float64, 9.1 -> 4.5 ns float32), so each value gets its own kernel: a wrapper with
# the flags as closure constants, which numba types as literals, so the body compiles once
# per value with the flags folded (and a cold cache takes ~90 s of CPU, not ~45). (The
# bodies are referenced as globals: numba's cache ignores closures over compiled functions.)

def _affine_kernels(full: bool, act: bool, want_t: bool) -> Any:
    if full:
        def kernel(ak, at, ok, ot, k1, k2, lo1, lo2, n1, n2, ck, cb, ct, cn, cs, c1, va, vb,
                   pairlist, snap, a0, a1, C):
            _affine_full(ak, at, ok, ot, k1, k2, lo1, lo2, n1, n2, ck, cb, ct, cn, cs, c1,
                         act, want_t, va, vb, pairlist, snap, a0, a1, C)
    else:
        def kernel(ak, at, ok, ot, k1, k2, lo1, lo2, n1, n2, ck, cb, ct, cn, cs, c1, va, vb,
                   pairlist, snap, a0, a1, C):
            _affine_diag(ak, at, ok, ot, k1, k2, lo1, lo2, n1, n2, ck, cb, ct, cn, cs, c1,
                         act, want_t, va, vb, pairlist, snap, a0, a1, C)
    return _jit(kernel)


def _act_kernels(full: bool, want_t: bool) -> Any:
    if full:
        def kernel(k_, ko, t_, va, vb, n1, n2, pairlist, snap, a0, a1, C):
            _act_full(k_, ko, t_, want_t, va, vb, n1, n2, pairlist, snap, a0, a1, C)
    else:
        def kernel(k_, ko, t_, va, vb, n1, n2, pairlist, snap, a0, a1, C):
            _act_diag(k_, ko, t_, want_t, va, vb, n1, n2, pairlist, snap, a0, a1, C)
    return _jit(kernel)


_B = (False, True)
#: ``AFFINE[full, act, want_t]``, ``ACTIVATION[full, want_t]``: the compiled kernels.
AFFINE = {(f, a, t): _affine_kernels(f, a, t) for f in _B for a in _B for t in _B}
ACTIVATION = {(f, t): _act_kernels(f, t) for f in _B for t in _B}


@_jit
def _pool_full(a, o, k1, k2, s1, s2, lo1, lo2, nb, scale):
    """Pooling of ``(S1, S1, S2, S2, nb)`` into ``(O1, O1, O2, O2, nb)``: p and p' each over
    their own window (zero padding), times ``scale``, summed in float64. Per output slab
    (o1, q1): the k1² input slabs it pools are added whole (long contiguous passes), then
    that sum is pooled along (S2, S2')."""
    n1, n2_ = a.shape[0], a.shape[2]
    o1n, o2n = o.shape[0], o.shape[2]
    m = n2_ * n2_ * nb
    flat = a.reshape(n1, n1, m)
    acc = np.empty(m)
    for o1 in range(o1n):
        for q1 in range(o1n):
            acc[:] = 0.0
            for d1 in range(k1):
                i1 = s1 * o1 + d1 - lo1
                if i1 < 0 or i1 >= n1:
                    continue
                for e1 in range(k1):
                    j1 = s1 * q1 + e1 - lo1
                    if j1 < 0 or j1 >= n1:
                        continue
                    src = flat[i1, j1]
                    for f in range(m):
                        acc[f] += src[f]
            for o2 in range(o2n):
                for q2 in range(o2n):
                    for b in range(nb):
                        t = 0.0
                        for d2 in range(k2):
                            i2 = s2 * o2 + d2 - lo2
                            if i2 < 0 or i2 >= n2_:
                                continue
                            for e2 in range(k2):
                                j2 = s2 * q2 + e2 - lo2
                                if 0 <= j2 < n2_:
                                    t += acc[(i2 * n2_ + j2) * nb + b]
                        o[o1, q1, o2, q2, b] = t * scale


# --- entry points the layer rules call ----------------------------------------------------------

def _spatial2(spatial: tuple[int, ...]) -> tuple[int, int] | None:
    """Spatial shape as two axes (vectors and 1-D get leading 1s); None past 2-D."""
    if len(spatial) > 2:
        return None
    return (1,) * (2 - len(spatial)) + tuple(spatial)  # type: ignore[return-value]


def _window2(win: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """``(sizes, strides, pad_lo)`` padded to two axes; None for a window the kernels do
    not cover (circular, or more than two spatial axes)."""
    if win is None:
        return (1, 1), (1, 1), (0, 0)
    if win.circular or len(win.size) > 2:
        return None
    one, zero = (1,) * (2 - len(win.size)), (0,) * (2 - len(win.size))
    return (one + tuple(win.size), one + tuple(win.strides),  # type: ignore[return-value]
            zero + tuple(p[0] for p in win.pad))


def _nbatch(st: Any) -> tuple[int, int, bool]:
    """``(n1, n2, pair list?)`` of a state's batch: ``(n1, n2)`` pairs or a list of ``n1``."""
    shape = st.nngp.shape[st.nngp.ndim - st.nb:]
    if st.nb == 1:
        return shape[0], 1, True
    return shape[0], shape[1], False


def _as_var(v: Any, dtype: Any, spatial: tuple[int, int]) -> np.ndarray:
    """Self statistics ``(n, *spatial)`` as a contiguous ``(n, S1, S2)`` array of ``dtype``."""
    return np.ascontiguousarray(v, dtype=dtype).reshape(v.shape[0], *spatial)


def affine_geometry(st: Any, win: Any, out_spatial: tuple[int, ...]
                    ) -> tuple[tuple, tuple[int, int], tuple[int, int]] | None:
    """``(window, spatial in, spatial out)`` as two axes when the fused affine kernels cover
    this layer and state (stride 1, zero padding, two spatial axes, float32/64); else None.
    Shared by the CPU and the CUDA kernels."""
    w = _window2(win)
    sp_in, sp_out = _spatial2(st.spatial), _spatial2(out_spatial)
    if w is None or sp_in is None or sp_out is None or w[1] != (1, 1) or \
            np.dtype(st.nngp.dtype) not in _EMPTY:
        return None
    return w, sp_in, sp_out


def pool_geometry(a: Any, win: Any, nb_axes: int
                  ) -> tuple[tuple, tuple[int, ...], int, tuple[int, int], tuple[int, int]] | None:
    """``(window, batch shape, batch size, spatial in, spatial out)`` when the fused pooling
    kernels cover ``a`` (full layout, ``nb_axes`` batch axes); else None."""
    w = _window2(win)
    sp_in = _spatial2(tuple(a.shape[0:a.ndim - nb_axes:2]))
    sp_out = _spatial2(tuple(win.out))
    if w is None or sp_in is None or sp_out is None or np.dtype(a.dtype) not in _EMPTY:
        return None
    batch = a.shape[a.ndim - nb_axes:]
    return w, batch, math.prod(batch), sp_in, sp_out


def _layout_shape(spatial: tuple[int, ...], batch: tuple[int, ...], full: bool
                  ) -> tuple[int, ...]:
    """A state array's shape: ``(S1, S1', .., Sd, Sd') + B`` (full) or ``(S1, .., Sd) + B``."""
    return (*sum(((s, s) for s in spatial), ()), *batch) if full else (*spatial, *batch)


def _view(a: np.ndarray, spatial: tuple[int, int], full: bool, nb: int) -> np.ndarray:
    s1, s2 = spatial
    return a.reshape((s1, s1, s2, s2 * nb) if full else (s1, s2, nb))


_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32),
          np.dtype(np.float64): np.empty(0, np.float64)}


def _empty4(dt: Any, full: bool) -> np.ndarray:
    return _EMPTY[np.dtype(dt)].reshape((0, 0, 0, 0) if full else (0, 0, 0))


def affine(st: Any, win: Any, out_spatial: tuple[int, ...], coef: tuple[float, ...],
           act: tuple[float, float, float, Any, Any] | None = None) -> Any | None:
    """``st`` through an affine layer, and through ``act`` after it; None when not covered.

    ``coef = (ck, cb, ct, cn, cs, c1)``: with window sums ``ΣK``, ``ΣΘ``,
    ``K' = ck ΣK + cb`` and ``Θ' = ct ΣΘ + cn K' + cs ΣK + c1`` (both parameterizations of
    ``linear._affine_kernel``). ``act = (snap, c0, c1, va, vb)``: a ReLU-family nonlinearity
    (``_ab``) with the self statistics ``va`` ``(n1, *out_spatial)``, ``vb`` ``(n2, ...)``.
    Only stride-1 zero-padded windows, two spatial axes at most, contiguous float arrays.
    """
    xp = _device(st.nngp)
    if xp is not None:
        from . import fused_cuda

        return fused_cuda.affine(xp, st, win, out_spatial, coef, act)
    geometry = affine_geometry(st, win, out_spatial)
    if geometry is None or not st.nngp.flags.c_contiguous or (
            st.ntk is not None and not st.ntk.flags.c_contiguous):
        return None
    w, sp_in, sp_out = geometry
    dt = st.nngp.dtype
    n1, n2, pairlist = _nbatch(st)
    nb = n1 * n2
    full = st.full
    batch = st.nngp.shape[st.nngp.ndim - st.nb:]
    out_shape = _layout_shape(out_spatial, batch, full)
    ok = np.empty(out_shape, dt)
    ot = np.empty(out_shape, dt) if st.ntk is not None else None
    empty = _empty4(dt, full)
    if act is None:
        snap, a0, a1, on = 0.0, 0.0, 0.0, False
        va = vb = np.empty((0, 0, 0), dt)
    else:
        snap, a0, a1, va, vb = act
        va, vb, on = _as_var(va, dt, sp_out), _as_var(vb, dt, sp_out), True
    tp = dt.type  # coefficients in the state's dtype: float32 states compute in float32
    ck, cb, ct, cn, cs, c1 = (tp(c) for c in coef)
    fn = AFFINE[full, on, ot is not None]
    fn(_view(st.nngp, sp_in, full, nb),
       empty if st.ntk is None else _view(st.ntk, sp_in, full, nb),
       _view(ok, sp_out, full, nb), empty if ot is None else _view(ot, sp_out, full, nb),
       w[0][0], w[0][1], w[2][0], w[2][1], n1, n2, ck, cb, ct, cn, cs, c1,
       va, vb, pairlist, tp(snap), tp(a0), tp(a1), C32 if dt == np.float32 else C64)
    return st.with_(nngp=ok, ntk=ot, spatial=tuple(out_spatial))


def activation(st: Any, snap: float, c0: float, c1: float, va: Any, vb: Any) -> Any | None:
    """``st`` through a ReLU-family nonlinearity (``_ab``) with the self statistics ``va``
    ``(n1, *spatial)``, ``vb`` ``(n2, ...)`` (Θ updated in place, as the NumPy rule does);
    None when not covered."""
    xp = _device(st.nngp)
    if xp is not None:
        from . import fused_cuda

        return fused_cuda.activation(xp, st, snap, c0, c1, va, vb)
    sp = _spatial2(st.spatial)
    dt = st.nngp.dtype
    if sp is None or dt not in _EMPTY or not st.nngp.flags.c_contiguous or (
            st.ntk is not None and not st.ntk.flags.c_contiguous):
        return None
    n1, n2, pairlist = _nbatch(st)
    nb = n1 * n2
    out = np.empty_like(st.nngp)
    fn = ACTIVATION[st.full, st.ntk is not None]
    fn(_view(st.nngp, sp, st.full, nb), _view(out, sp, st.full, nb),
       _empty4(dt, st.full) if st.ntk is None else _view(st.ntk, sp, st.full, nb),
       _as_var(va, dt, sp), _as_var(vb, dt, sp), n1, n2, pairlist, dt.type(snap),
       dt.type(c0), dt.type(c1), C32 if dt == np.float32 else C64)
    return st.with_(nngp=out)


def pool(a: np.ndarray, win: Any, nb_axes: int, scale: float) -> np.ndarray | None:
    """A full-layout array ``(S1, S1', S2, S2') + B`` pooled by ``win`` (p and p' each over
    their window, zero padding) times ``scale``; None when not covered."""
    xp = _device(a)
    if xp is not None:
        from . import fused_cuda

        return fused_cuda.pool(xp, a, win, nb_axes, scale)
    geometry = pool_geometry(a, win, nb_axes)
    if geometry is None or not a.flags.c_contiguous:
        return None
    w, batch, nb, sp_in, sp_out = geometry
    out = np.empty(_layout_shape(win.out, batch, True), a.dtype)
    (k1, k2), (s1, s2), (lo1, lo2) = w
    _pool_full(a.reshape(sp_in[0], sp_in[0], sp_in[1], sp_in[1], nb),
               out.reshape(sp_out[0], sp_out[0], sp_out[1], sp_out[1], nb),
               k1, k2, s1, s2, lo1, lo2, nb, scale)
    return out


def warm(parallel: bool = False) -> float:
    """Compile (or load from numba's cache) the CPU kernels of NTK + NNGP and NNGP-only
    jobs, for float32 and float64: tiny Grams of a CNTK with pooling, a ResNet and an FC
    net. Processes started after it (workers, a test session's subprocesses) load compiled
    code instead of each compiling its own (~90 s of CPU for both dtypes on a cold cache).
    ``parallel`` compiles float32 in a second process meanwhile (numba compiles under the
    GIL), so two cores take half the time. Returns the seconds it took."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    if not _on:
        return 0.0
    child = None
    if parallel:
        code = "from ntkcompute.kernels import fused; fused._warm('float32')"
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
    try:
        _warm("float64")
    finally:  # communicate: a child writing more than a pipe holds must not block on it
        err = child.communicate()[1] if child is not None else b""
    if child is None:
        _warm("float32")
    elif child.returncode != 0:
        raise RuntimeError(f"compiling the float32 kernels failed: {err.decode()[-2000:]}")
    return time.perf_counter() - t0


def _warm(dtype: str) -> None:
    from .. import architectures as A
    from ..infinite import kernel

    conv = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME"}
    pooled = {"layers": [conv, {"type": "relu"}, {"type": "avg_pool", "window_shape": [2, 2]},
                         conv, {"type": "relu"}, {"type": "global_avg_pool"}, {"type": "dense"}]}
    x = np.random.default_rng(0).standard_normal((3, 5, 5, 2))
    for get in (("ntk", "nngp"), "nngp"):
        for arch in (pooled, A.resnet(1)):  # conv + ReLU fused, pooling, a ReLU alone
            kernel(arch, x, get=get, dtype=dtype, threads=1)
        kernel(A.fc(1), x.reshape(3, -1), get=get, dtype=dtype, threads=1)

"""The fused layer kernels for CUDA devices (numba's CUDA target, on CuPy arrays).

The same rules as :mod:`ntkcompute.kernels.fused`, one launch per layer per block and one
thread per output entry: the thread sums its window of K and Θ, applies the affine map and,
when asked, the ReLU-family nonlinearity, and writes both outputs. The per-entry math
(``fused._ab``: the arc-cosine kernel and its angle) is the CPU path's own source, compiled
for the device by numba; so the CPU kernels and these share one definition of the rule.
On the device the per-entry math is float64 for both dtypes (``fused.C64``; the H200's
float64 rate is half its float32 one, and these kernels are memory bound), sums accumulate
in float64, and a float32 state is rounded where the self pass stores it.

Without a GPU these kernels run on NumPy arrays under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported): ``tests/kernels/test_fused_cuda.py``
runs them there against the CPU path, and ``bench/gpu.sh`` on a real device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import fused

try:
    from numba import cuda
except Exception:  # pragma: no cover - numba without its CUDA target
    cuda = None

THREADS = 256  # threads per block


_broken: list[str] = []  # why the CUDA kernels could not be built here, once known


def available() -> bool:
    """True when numba's CUDA target has a device (or the simulator) to launch on, and the
    kernels have not failed to build (no NVVM in the image, say): then the rules fall back
    to their CuPy code."""
    if cuda is None or _broken:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - a broken driver
        return False


def _kernels() -> dict[str, Any]:
    """Compile (lazily: importing this module must not need a device) the four kernels."""
    if "affine_full" in _CACHE:
        return _CACHE
    ab = fused._ab

    @cuda.jit(device=True)
    def unravel(i, n1, m1, n2, m2, nb):
        """Entry ``i`` of a C-ordered ``(n1, m1, n2, m2, nb)`` array as its five indices."""
        b = i % nb
        r = i // nb
        q2 = r % m2
        r //= m2
        o2 = r % n2
        r //= n2
        return r // m1, r % m1, o2, q2, b

    @cuda.jit(device=True)
    def finish(sk, st, ck, cb, ct, cn, cs, c1, act, rnd, k11, k22, snap, a0, a1, C):
        """The affine map of the window sums, then (``act``) the nonlinearity, in float64;
        a float32 state's K rounded first, as the self pass stored it."""
        k = ck * sk + cb
        t = ct * st + cn * k + cs * sk + c1
        if act:
            if rnd:
                k = np.float64(np.float32(k))
            k, dot = ab(k, k11, k22, snap, a0, a1, C)
            t *= dot
        return k, t

    @cuda.jit
    def affine_full(ak, at, ok, ot, k1, k2, lo1, lo2, n1, n2, ck, cb, ct, cn, cs, c1,
                    act, va, vb, pairlist, snap, a0, a1, rnd, C):
        # ak (S1, S1, S2, S2, nb), ok (O1, O1, O2, O2, nb); one thread per entry of ok
        i = cuda.grid(1)
        o1n, o2n = ok.shape[0], ok.shape[2]
        s1, s2 = ak.shape[0], ak.shape[2]
        nb = n1 * n2
        if i >= o1n * o1n * o2n * o2n * nb:
            return
        o1, q1, o2, q2, b = unravel(i, o1n, o1n, o2n, o2n, nb)
        want_t = at.shape[0] > 0
        sk = 0.0
        st = 0.0
        for d1 in range(k1):
            i1 = o1 + d1 - lo1
            j1 = q1 + d1 - lo1
            if i1 < 0 or i1 >= s1 or j1 < 0 or j1 >= s1:
                continue
            for d2 in range(k2):
                i2 = o2 + d2 - lo2
                j2 = q2 + d2 - lo2
                if i2 < 0 or i2 >= s2 or j2 < 0 or j2 >= s2:
                    continue
                sk += ak[i1, j1, i2, j2, b]
                if want_t:
                    st += at[i1, j1, i2, j2, b]
        k11 = k22 = 0.0
        if act:
            b1 = b // n2
            k11 = np.float64(va[b1, o1, o2])
            k22 = np.float64(vb[b1 if pairlist else b - b1 * n2, q1, q2])
        k, t = finish(sk, st, ck, cb, ct, cn, cs, c1, act, rnd, k11, k22, snap, a0, a1, C)
        ok[o1, q1, o2, q2, b] = k
        if want_t:
            ot[o1, q1, o2, q2, b] = t

    @cuda.jit
    def affine_diag(ak, at, ok, ot, k1, k2, lo1, lo2, n1, n2, ck, cb, ct, cn, cs, c1,
                    act, va, vb, pairlist, snap, a0, a1, rnd, C):
        # ak (S1, S2, nb), ok (O1, O2, nb)
        i = cuda.grid(1)
        o1n, o2n = ok.shape[0], ok.shape[1]
        s1, s2 = ak.shape[0], ak.shape[1]
        nb = n1 * n2
        if i >= o1n * o2n * nb:
            return
        b = i % nb
        r = i // nb
        o2 = r % o2n
        o1 = r // o2n
        want_t = at.shape[0] > 0
        sk = 0.0
        st = 0.0
        for d1 in range(k1):
            i1 = o1 + d1 - lo1
            if i1 < 0 or i1 >= s1:
                continue
            for d2 in range(k2):
                i2 = o2 + d2 - lo2
                if i2 < 0 or i2 >= s2:
                    continue
                sk += ak[i1, i2, b]
                if want_t:
                    st += at[i1, i2, b]
        k11 = k22 = 0.0
        if act:
            b1 = b // n2
            k11 = np.float64(va[b1, o1, o2])
            k22 = np.float64(vb[b1 if pairlist else b - b1 * n2, o1, o2])
        k, t = finish(sk, st, ck, cb, ct, cn, cs, c1, act, rnd, k11, k22, snap, a0, a1, C)
        ok[o1, o2, b] = k
        if want_t:
            ot[o1, o2, b] = t

    @cuda.jit
    def activation(k_, ko, t_, va, vb, n1, n2, full, pairlist, snap, a0, a1, C):
        # k_ (P1, P1', P2, P2', nb) full, or (P1, 1, P2, 1, nb) for the diagonal layout
        i = cuda.grid(1)
        p1, q1n, p2, q2n = k_.shape[0], k_.shape[1], k_.shape[2], k_.shape[3]
        nb = n1 * n2
        if i >= p1 * q1n * p2 * q2n * nb:
            return
        o1, q1, o2, q2, b = unravel(i, p1, q1n, p2, q2n, nb)
        if not full:
            q1, q2 = o1, o2
        b1 = b // n2
        b2 = b - b1 * n2
        kk, dot = ab(np.float64(k_[o1, q1 if full else 0, o2, q2 if full else 0, b]),
                     np.float64(va[b1, o1, o2]), np.float64(vb[b1 if pairlist else b2, q1, q2]),
                     snap, a0, a1, C)
        ko[o1, q1 if full else 0, o2, q2 if full else 0, b] = kk
        if t_.shape[0] > 0:
            t_[o1, q1 if full else 0, o2, q2 if full else 0, b] *= dot

    @cuda.jit
    def pool_full(a, o, k1, k2, s1, s2, lo1, lo2, scale):
        # a (S1, S1, S2, S2, nb) -> o (O1, O1, O2, O2, nb)
        i = cuda.grid(1)
        o1n, o2n, nb = o.shape[0], o.shape[2], o.shape[4]
        n1, n2 = a.shape[0], a.shape[2]
        if i >= o1n * o1n * o2n * o2n * nb:
            return
        o1, q1, o2, q2, b = unravel(i, o1n, o1n, o2n, o2n, nb)
        acc = 0.0
        for d1 in range(k1):
            i1 = s1 * o1 + d1 - lo1
            for e1 in range(k1):
                j1 = s1 * q1 + e1 - lo1
                if i1 < 0 or i1 >= n1 or j1 < 0 or j1 >= n1:
                    continue
                for d2 in range(k2):
                    i2 = s2 * o2 + d2 - lo2
                    for e2 in range(k2):
                        j2 = s2 * q2 + e2 - lo2
                        if i2 < 0 or i2 >= n2 or j2 < 0 or j2 >= n2:
                            continue
                        acc += a[i1, j1, i2, j2, b]
        o[o1, q1, o2, q2, b] = acc * scale

    _CACHE.update(affine_full=affine_full, affine_diag=affine_diag, activation=activation,
                  pool_full=pool_full)
    return _CACHE


_CACHE: dict[str, Any] = {}


def _launch(name: str, n: int, *args: Any) -> bool:
    """Launch kernel ``name`` over ``n`` threads; False (and the CuPy rules from then on, with
    one warning) when numba cannot build it for this device."""
    try:
        kernel = _kernels()[name]
        kernel[max(1, math.ceil(n / THREADS)), THREADS](*args)
    except Exception as e:  # the compiler's failure (NVVM, PTX, driver), not the math
        if not _broken:
            import warnings

            warnings.warn(f"fused CUDA kernels unavailable, using the CuPy rules: {e!r}",
                          RuntimeWarning, stacklevel=3)
        _broken.append(repr(e))
        return False
    return True


def _empty(xp: Any, dt: Any, ndim: int) -> Any:
    return xp.empty((0,) * ndim, dt)


def affine(xp: Any, st: Any, win: Any, out_spatial: tuple[int, ...], coef: tuple[float, ...],
           act: tuple[float, float, float, Any, Any] | None = None) -> Any | None:
    """:func:`fused.affine` on the device: arguments, coverage and results the same."""
    geometry = fused.affine_geometry(st, win, out_spatial)
    if geometry is None:
        return None
    w, sp_in, sp_out = geometry
    dt = st.nngp.dtype
    n1, n2, pairlist = fused._nbatch(st)
    nb = n1 * n2
    full = st.full
    batch = st.nngp.shape[st.nngp.ndim - st.nb:]
    out_shape = fused._layout_shape(out_spatial, batch, full)
    ok = xp.empty(out_shape, dt)
    ot = xp.empty(out_shape, dt) if st.ntk is not None else None

    def view(a: Any, sp: tuple[int, int]) -> Any:
        return xp.ascontiguousarray(a).reshape((sp[0], sp[0], sp[1], sp[1], nb) if full
                                               else (sp[0], sp[1], nb))

    nd = 5 if full else 3
    if act is None:
        snap, a0, a1, on = 0.0, 0.0, 0.0, False
        va = vb = _empty(xp, dt, 3)
    else:
        snap, a0, a1, va, vb = act
        va = xp.ascontiguousarray(va, dtype=dt).reshape(va.shape[0], *sp_out)
        vb = xp.ascontiguousarray(vb, dtype=dt).reshape(vb.shape[0], *sp_out)
        on = True
    ck, cb, ct, cn, cs, c1 = coef
    if not _launch("affine_full" if full else "affine_diag", ok.size, view(st.nngp, sp_in),
            _empty(xp, dt, nd) if st.ntk is None else view(st.ntk, sp_in),
            view(ok, sp_out), _empty(xp, dt, nd) if ot is None else view(ot, sp_out),
            w[0][0], w[0][1], w[2][0], w[2][1], n1, n2, ck, cb, ct, cn, cs, c1,
            on, va, vb, pairlist, snap, a0, a1, np.dtype(dt) == np.float32, fused.C64):
        return None
    return st.with_(nngp=ok, ntk=ot, spatial=tuple(out_spatial))


def activation(xp: Any, st: Any, snap: float, c0: float, c1: float, va: Any, vb: Any
               ) -> Any | None:
    """:func:`fused.activation` on the device."""
    sp = fused._spatial2(st.spatial)
    dt = st.nngp.dtype
    if sp is None or np.dtype(dt) not in fused._EMPTY:
        return None
    n1, n2, pairlist = fused._nbatch(st)
    nb = n1 * n2
    shape = (sp[0], sp[0], sp[1], sp[1], nb) if st.full else (sp[0], 1, sp[1], 1, nb)
    out = xp.empty_like(st.nngp)
    t = (_empty(xp, dt, 5) if st.ntk is None
         else xp.ascontiguousarray(st.ntk).reshape(shape))
    if not _launch("activation", out.size, xp.ascontiguousarray(st.nngp).reshape(shape),
            out.reshape(shape), t,
            xp.ascontiguousarray(va, dtype=dt).reshape(va.shape[0], *sp),
            xp.ascontiguousarray(vb, dtype=dt).reshape(vb.shape[0], *sp),
            n1, n2, st.full, pairlist, snap, c0, c1, fused.C64):
        return None
    ntk = None if st.ntk is None else t.reshape(st.ntk.shape)
    return st.with_(nngp=out, ntk=ntk)


def pool(xp: Any, a: Any, win: Any, nb_axes: int, scale: float) -> Any | None:
    """:func:`fused.pool` on the device."""
    geometry = fused.pool_geometry(a, win, nb_axes)
    if geometry is None:
        return None
    w, batch, nb, sp_in, sp_out = geometry
    out = xp.empty(fused._layout_shape(win.out, batch, True), a.dtype)
    (k1, k2), (s1, s2), (lo1, lo2) = w
    if not _launch("pool_full", out.size,
                   xp.ascontiguousarray(a).reshape(sp_in[0], sp_in[0], sp_in[1], sp_in[1], nb),
                   out.reshape(sp_out[0], sp_out[0], sp_out[1], sp_out[1], nb),
                   k1, k2, s1, s2, lo1, lo2, scale):
        return None
    return out

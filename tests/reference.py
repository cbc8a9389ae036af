"""Slow, independent reference kernels for the tests: one pair at a time, explicit loops.

Written from the stax formulas directly (window sums term by term, the ReLU angle by
arccos), sharing no code with ``ntkcompute.kernels``. Inputs are small images (n, H, W, C)
or vectors (n, d).
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _positions(shape):
    return list(itertools.product(*[range(s) for s in shape]))


def _pads(n, f, s, padding):
    if padding == "VALID":
        return 0, (n - f) // s + 1
    out = -(-n // s)
    total = max((out - 1) * s + f - n, 0)
    return total // 2, out


def _window_terms(shape, size, strides, padding):
    """For each output position: list of input positions (None = zero padding)."""
    lo_out = [_pads(n, f, s, padding) for n, f, s in zip(shape, size, strides, strict=True)]
    out_shape = tuple(o for _, o in lo_out)
    terms = {}
    for o in _positions(out_shape):
        lst = []
        for d in _positions(size):
            p = []
            for k in range(len(shape)):
                q = strides[k] * o[k] + d[k] - lo_out[k][0]
                if padding == "CIRCULAR":
                    q %= shape[k]
                elif not 0 <= q < shape[k]:
                    p = None
                    break
                p.append(q)
            lst.append(None if p is None else tuple(p))
        terms[o] = lst
    return out_shape, terms


def _relu(k12, k11, k22):
    if k11 * k22 == 0:
        return 0.0, 0.25
    c = min(1.0, max(-1.0, k12 / math.sqrt(k11 * k22)))
    th = 0.0 if c == 1.0 else math.acos(c)
    return (math.sqrt(k11 * k22) * (math.sin(th) + (math.pi - th) * c) / (2 * math.pi),
            (math.pi - th) / (2 * math.pi))


def _erf(k12, k11, k22):
    den = math.sqrt((1 + 2 * k11) * (1 + 2 * k22))
    return (2 / math.pi * math.asin(2 * k12 / den),
            4 / math.pi / math.sqrt((1 + 2 * k11) * (1 + 2 * k22) - 4 * k12**2))


ACTS = {"relu": _relu, "erf": _erf}


def pair_kernel(layers, x, y):
    """(nngp, ntk) of one pair under a list of layer dicts (stax NTK parameterization).

    The state is three dicts over position pairs: K(x,x), K(x,y), K(y,y), and Θ(x,y).
    """
    if x.ndim == 1:
        x, y = x[None, :], y[None, :]  # one position
        shape = ()
    else:
        shape = x.shape[:-1]
    c = x.shape[-1]
    xs = x.reshape(-1, c)
    ys = y.reshape(-1, c)
    pos = _positions(shape)
    idx = {p: i for i, p in enumerate(pos)}

    def cov(a, b):
        return {(p, q): float(a[idx[p]] @ b[idx[q]]) / c for p in pos for q in pos}

    K = [cov(xs, xs), cov(xs, ys), cov(ys, ys)]
    T = {k: 0.0 for k in K[1]}
    for L in layers:
        t = L["type"]
        if t in ("dense", "conv"):
            w2 = L.get("W_std", 1.0) ** 2
            b2 = (L.get("b_std") or 0.0) ** 2
            if t == "conv":
                strides = L.get("strides") or [1] * len(shape)
                out_shape, terms = _window_terms(shape, L["filter_shape"], strides,
                                                 L.get("padding", "VALID"))
                fs = math.prod(L["filter_shape"])

                def conv(M, terms=terms, fs=fs, out_shape=out_shape):
                    res = {}
                    for o in _positions(out_shape):
                        for o2 in _positions(out_shape):
                            s = 0.0
                            for a, b in zip(terms[o], terms[o2], strict=True):  # same offset
                                if a is not None and b is not None:
                                    s += M[(a, b)]
                            res[(o, o2)] = s / fs
                    return res

                K = [conv(M) for M in K]
                T = conv(T)
                shape = out_shape
                pos = _positions(shape)
            K = [{k: w2 * v + b2 for k, v in M.items()} for M in K]
            T = {k: w2 * v + K[1][k] for k, v in T.items()}
        elif t in ACTS:
            f = ACTS[t]
            new = [{}, {}, {}]
            dots = {}
            for (p, q) in K[1]:
                for j, (A, B) in enumerate(((0, 0), (0, 1), (1, 1))):
                    va = K[0][(p, p)] if A == 0 else K[2][(p, p)]
                    vb = K[0][(q, q)] if B == 0 else K[2][(q, q)]
                    val, dot = f(K[j][(p, q)], va, vb)
                    new[j][(p, q)] = val
                    if j == 1:
                        dots[(p, q)] = dot
            K = new
            T = {k: T[k] * dots[k] for k in T}
        elif t == "avg_pool":
            strides = L.get("strides") or [1] * len(shape)
            out_shape, terms = _window_terms(shape, L["window_shape"], strides,
                                             L.get("padding", "VALID"))
            ws = math.prod(L["window_shape"])

            def pool(M, terms=terms, ws=ws, out_shape=out_shape):
                res = {}
                for o in _positions(out_shape):
                    for o2 in _positions(out_shape):
                        s = 0.0
                        for a in terms[o]:  # independent offsets
                            for b in terms[o2]:
                                if a is not None and b is not None:
                                    s += M[(a, b)]
                        res[(o, o2)] = s / ws**2
                return res

            K = [pool(M) for M in K]
            T = pool(T)
            shape = out_shape
            pos = _positions(shape)
        elif t == "global_avg_pool":
            K = [{((), ()): float(np.mean(list(M.values())))} for M in K]
            T = {((), ()): float(np.mean(list(T.values())))}
            shape, pos = (), [()]
        elif t == "flatten":
            K = [{((), ()): float(np.mean([M[(p, p)] for p in pos]))} for M in K]
            T = {((), ()): float(np.mean([T[(p, p)] for p in pos]))}
            shape, pos = (), [()]
        else:
            raise ValueError(t)
    return K[1][((), ())], T[((), ())]


def gram(layers, x1, x2=None):
    x2 = x1 if x2 is None else x2
    nngp = np.zeros((len(x1), len(x2)))
    ntk = np.zeros_like(nngp)
    for i in range(len(x1)):
        for j in range(len(x2)):
            nngp[i, j], ntk[i, j] = pair_kernel(layers, x1[i], x2[j])
    return nngp, ntk


def finite_difference_ntk(forward, plan, params, x, h=1e-6):
    """The empirical NTK ``J Jᵀ / K`` (n, n) of a finite net from central differences of
    ``forward(plan, params, x)[0]`` (n, K) in every weight: what the analytic backward pass
    must reproduce."""
    cols = []
    for arr in [a for p in params for a in p if isinstance(a, np.ndarray)]:
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + h
            up = forward(plan, params, x)[0]
            arr[idx] = old - h
            dn = forward(plan, params, x)[0]
            arr[idx] = old
            cols.append((up - dn) / (2 * h))  # (n, K)
    J = np.stack(cols, axis=-1)  # (n, K, #params)
    return np.einsum("ikp,jkp->ij", J, J) / J.shape[1]

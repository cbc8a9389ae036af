"""Finite-width empirical NTK: ``Θ(x, x') = (1/K) sum_k J_k(x) J_k(x')^T`` of one random network.

The network is the spec's stax network at a finite width, randomly initialised with ``seed``,
in the spec's parameterization. The Jacobian contraction is done exactly, layer by layer,
without materialising per-example gradients: for an affine layer with inputs ``a`` and
backpropagated output cotangents ``δ_k`` (one per output unit k),

    <∂f_k(x)/∂W, ∂f_k(x')/∂W> = c^2 sum_{p, p'} <a(x)_p, a(x')_p'> <δ_k(x)_p, δ_k(x')_p'>

(positions p index the patches of a Conv, or are absent for a vector Dense), plus
``b^2 sum_{p,p'} <δ_k(x)_p, δ_k(x')_p'>`` for the bias. Attention's four weight matrices
(query, key, value, out) each act on channels at every position, so each adds the same
sum. Branches run on slots as in :mod:`ntkcompute.plan`; a fan_out's cotangent is the sum of
its branches'. Two Gram matrices per weight replace
``n x (#params)`` Jacobians, so widths of several thousand run on a laptop. Written by hand in
NumPy rather than through an autodiff framework: it needs no JAX/PyTorch install (the very
thing our users' environments break on) and every rule is a few lines next to its kernel rule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import spec
from .errors import InputError
from .kernels import attention
from .kernels.quadrature import FUNCTIONS
from .plan import LayerPlan, Plan, Window, layer_norm_axes, make_plan
from .spec import Architecture, parse_arch
from .validate import as_input, check_get, check_pair, resolve_dtype


def _window_index(spatial: tuple[int, ...], win: Window) -> np.ndarray:
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


def _gather(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a`` (n, P, C) -> patches (n, P_out, |W|, C), zeros where idx points past the end."""
    ext = np.concatenate([a, np.zeros_like(a[:, :1])], axis=1)
    return ext[:, idx, :]


def _scatter(g: np.ndarray, idx: np.ndarray, p_in: int) -> np.ndarray:
    """Adjoint of ``_gather``: (..., P_out, |W|, C) -> (..., P_in, C)."""
    out = np.zeros((*g.shape[:-3], p_in + 1, g.shape[-1]), dtype=g.dtype)
    for f in range(idx.shape[1]):  # for a fixed offset the positions are distinct
        out[..., idx[:, f], :] += g[..., f, :]
    return out[..., :p_in, :]


def _ab(a: float, b: float) -> tuple[Any, Any]:
    return (lambda z: np.where(z > 0, b * z, a * z),
            lambda z: np.where(z > 0, b, a).astype(z.dtype))


def _act(layer: Any) -> tuple[Any, Any]:
    """(φ, φ') of a nonlinearity spec, on NumPy arrays."""
    if isinstance(layer, spec.Relu):
        return _ab(0.0, 1.0)
    if isinstance(layer, spec.LeakyRelu):
        return _ab(layer.alpha, 1.0)
    if isinstance(layer, spec.ABRelu):
        return _ab(layer.a, layer.b)
    if isinstance(layer, spec.Abs):
        return _ab(-1.0, 1.0)
    if isinstance(layer, spec.Erf):
        f, df = FUNCTIONS["erf"]
        return (lambda z: layer.a * f(np, layer.b * z) + layer.c,
                lambda z: layer.a * layer.b * df(np, layer.b * z))
    if isinstance(layer, spec.Sin):
        return (lambda z: layer.a * np.sin(layer.b * z + layer.c),
                lambda z: layer.a * layer.b * np.cos(layer.b * z + layer.c))
    if isinstance(layer, spec.Cos):
        return (lambda z: layer.a * np.cos(layer.b * z + layer.c),
                lambda z: -layer.a * layer.b * np.sin(layer.b * z + layer.c))
    if isinstance(layer, spec.Rbf):
        w = np.sqrt(2 * layer.gamma)
        return (lambda z: np.sqrt(2) * np.sin(w * z + np.pi / 4),
                lambda z: np.sqrt(2) * w * np.cos(w * z + np.pi / 4))
    if isinstance(layer, spec.Exp):
        return (lambda z: layer.a * np.exp(layer.b * z),
                lambda z: layer.a * layer.b * np.exp(layer.b * z))
    if isinstance(layer, spec.Gaussian):
        return (lambda z: layer.a * np.exp(layer.b * z * z),
                lambda z: 2 * layer.a * layer.b * z * np.exp(layer.b * z * z))
    if isinstance(layer, spec.Sign):
        return np.sign, np.zeros_like
    f, df = FUNCTIONS["gelu" if isinstance(layer, spec.Gelu) else layer.fn]
    return (lambda z: f(np, z), lambda z: df(np, z))


def readout_default(arch: Architecture) -> Architecture:
    """The last top-level Dense/Conv gets one output unit unless its width is set."""
    affine = [i for i, layer in enumerate(arch.layers)
              if isinstance(layer, (spec.Dense, spec.Conv))]
    if affine:
        last = arch.layers[affine[-1]]
        key = "out_dim" if isinstance(last, spec.Dense) else "out_chan"
        if getattr(last, key) is None:
            layers = list(arch.layers)
            layers[affine[-1]] = last.model_copy(update={key: 1})
            arch = arch.model_copy(update={"layers": layers})
    return arch


def _heads(layer: spec.GlobalSelfAttention, width: int) -> tuple[int, int, int]:
    """(n_heads, key channels, value channels) per head, ``width`` where unset."""
    return layer.n_heads, layer.n_chan_key or width, layer.n_chan_val or width


def init_params(plan: Plan, seed: int, dtype: Any) -> list[tuple[np.ndarray | None, ...]]:
    """Trainable parameters of each weighted layer in plan order, standard normal (NTK
    parameterization) or scaled by ``W_std / sqrt(fan_in)`` and ``b_std`` (standard).

    Dense/Conv: ``(W, b)``, ``W`` of shape ``(fan_in, out)`` with ``fan_in = |F| * C_in`` for a
    Conv. Attention: ``(W_query, W_key, W_value, W_out, b)``, the first three
    ``(C_in, heads * chan)``, ``W_out`` ``(heads * n_chan_val, n_chan_out)``; under
    ``linear_scaling`` the key weights are the query weights (``W_key`` is ``None``), as in
    stax: with independent ones the logits would converge to 0.
    """
    rng = np.random.default_rng(seed)
    params: list[tuple[np.ndarray | None, ...]] = []
    for lp in plan.layers:
        layer = lp.layer
        if isinstance(layer, spec.GlobalSelfAttention):
            h, dk, dv = _heads(layer, lp.out_channels)
            c = lp.in_channels
            shapes = [(c, h * dk), (c, h * dk), (c, h * dv), (h * dv, lp.out_channels)]
            ws = [rng.standard_normal(sh).astype(dtype) for sh in shapes]
            if layer.linear_scaling:
                ws[1] = None
            b = rng.standard_normal(lp.out_channels).astype(dtype) \
                if layer.b_std is not None else None
            params.append((*ws, b))
            continue
        if not isinstance(layer, (spec.Dense, spec.Conv)):
            continue
        fan_in = lp.in_channels * (math.prod(lp.window.size) if lp.window else 1)
        W = rng.standard_normal((fan_in, lp.out_channels)).astype(dtype)
        b = rng.standard_normal(lp.out_channels).astype(dtype) \
            if layer.b_std is not None else None
        if plan.parameterization == "standard":
            W *= layer.W_std / math.sqrt(fan_in)
            if b is not None:
                b *= layer.b_std
        params.append((W, b))
    return params


def forward(plan: Plan, params: list, x: np.ndarray) -> tuple[np.ndarray, list]:
    """Network outputs ``(n, K)`` for inputs ``x`` and the tape the backward pass reads.

    Activations are ``(n, P, C)`` with positions flattened (``(n, C)`` for vectors), one per
    open branch slot; the tape holds ``(LayerPlan, data)`` per layer.
    """
    slots = [x.reshape(x.shape[0], -1, x.shape[-1]) if plan.input_spatial else x]
    tape: list[tuple[LayerPlan, Any]] = []
    weights = iter(params)
    ntk_param = plan.parameterization == "ntk"
    for lp in plan.layers:
        layer, s = lp.layer, lp.slot
        a = slots[s]
        data: Any = None
        if isinstance(layer, spec.FanOut):
            slots[s:s + 1] = [a] * lp.arity
            tape.append((lp, None))
            continue
        if isinstance(layer, spec.FAN_IN):
            ins = slots[s:s + lp.arity]
            if isinstance(layer, spec.FanInSum):
                out = sum(ins[1:], ins[0])
            elif isinstance(layer, spec.FanInProd):
                out, data = math.prod(ins[1:], start=ins[0]), ins
            else:
                out, data = np.concatenate(ins, axis=-1), [i.shape[-1] for i in ins]
            slots[s:s + lp.arity] = [out]
            tape.append((lp, data))
            continue
        if isinstance(layer, (spec.Dense, spec.Conv)):
            W, b = next(weights)
            idx = None
            if isinstance(layer, spec.Conv):
                idx = _window_index(lp.in_spatial, lp.window)
                inp = _gather(a, idx).reshape(a.shape[0], idx.shape[0], -1)
            else:
                inp = a
            if ntk_param:
                scale = layer.W_std / math.sqrt(inp.shape[-1])
                b_scale = layer.b_std or 0.0
            else:  # standard: the stds live in the initial values, gradients are unscaled
                scale, b_scale = 1.0, 1.0
            data = (W, b, scale, b_scale, idx, inp)
            a = scale * (inp @ W)
            if b is not None:
                a = a + b_scale * b
        elif isinstance(layer, spec.GlobalSelfAttention):
            wq, wk, wv, wo, b = next(weights)
            wk = wq if wk is None else wk
            h, dk, dv = _heads(layer, lp.out_channels)
            n, t, c = a.shape
            sq, sk, sv = (std / math.sqrt(c) for std in
                          (layer.W_query_std, layer.W_key_std, layer.W_value_std))
            so = layer.W_out_std / math.sqrt(h * dv)
            q = (sq * (a @ wq)).reshape(n, t, h, dk)
            k = (sk * (a @ wk)).reshape(n, t, h, dk)
            v = (sv * (a @ wv)).reshape(n, t, h, dv)
            norm = dk if layer.linear_scaling else math.sqrt(dk)
            logits = np.einsum("nthd,nshd->nhts", q, k) / norm
            g = attention.mechanism(np, layer.attention_mechanism, logits)
            heads = np.einsum("nhts,nshd->nthd", g, v).reshape(n, t, h * dv)
            a_in = a
            a = so * (heads @ wo)
            if b is not None:
                a = a + (layer.b_std or 0.0) * b
            data = dict(x=a_in, q=q, k=k, v=v, logits=logits, g=g, heads=heads, norm=norm,
                        scales=(sq, sk, sv, so), w=(wq, wk, wv, wo), b=b,
                        tied=layer.linear_scaling)
        elif isinstance(layer, spec.NONLINEAR):
            f, df = _act(layer)
            data = df(a)
            a = f(a)
        elif isinstance(layer, spec.LayerNorm):
            full = a.reshape(a.shape[0], *lp.in_spatial, a.shape[-1])
            axes = layer_norm_axes(layer.axis, lp.in_spatial)
            y = full - full.mean(axis=axes, keepdims=True)
            sigma = np.sqrt(layer.eps + (y * y).mean(axis=axes, keepdims=True))
            y = y / sigma
            data = (y, sigma, axes)
            a = y.reshape(a.shape)
        elif isinstance(layer, spec.AvgPool):  # and SumPool
            idx = _window_index(lp.in_spatial, lp.window)
            div = 1 if isinstance(layer, spec.SumPool) else idx.shape[1]
            data = (idx, a.shape[1], div)
            a = _gather(a, idx).sum(axis=2) / div
        elif isinstance(layer, (spec.GlobalAvgPool, spec.GlobalSumPool)):
            div = 1 if isinstance(layer, spec.GlobalSumPool) else a.shape[1]
            data = (a.shape[1], div)
            a = a.sum(axis=1) / div
        elif isinstance(layer, spec.Flatten):
            data = a.shape
            a = a.reshape(a.shape[0], -1)
        slots[s] = a
        tape.append((lp, data))
    return slots[0], tape  # (n, K): make_plan has checked that the output is not spatial


class _Gram:
    """Parameter-gradient inner products summed over output units, for pairs (x1 rows, x2 rows)
    of the stacked batch: ``n1`` first rows, the rest x2 (or all rows, symmetric)."""

    def __init__(self, n1: int, symmetric: bool, dtype: Any) -> None:
        self.n1, self.symmetric, self.dtype = n1, symmetric, dtype
        self.ntk: np.ndarray | None = None

    def _split(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return a[: self.n1], (a if self.symmetric else a[self.n1:])

    def add(self, inp: np.ndarray, delta: np.ndarray, scale: float) -> None:
        """``scale² sum_k sum_{p,p'} <inp_p, inp'_p'> <δ_kp, δ'_kp'>`` for a weight acting on
        the channels of ``inp`` (n, [P,] fan_in) with output cotangents δ (K, n, [P,] out)."""
        i3 = inp if inp.ndim == 3 else inp[:, None, :]
        d = delta if delta.ndim == 4 else delta[:, :, None, :]
        ia, ib = self._split(i3)
        P = i3.shape[1]
        ga = (ia.reshape(-1, i3.shape[-1]) @ ib.reshape(-1, i3.shape[-1]).T)
        n1, n2 = ia.shape[0], ib.shape[0]
        ga = ga.reshape(n1, P, n2, P)
        gd = np.zeros_like(ga)
        for dk in d:
            da, db = self._split(dk)
            gd += (da.reshape(-1, dk.shape[-1]) @ db.reshape(-1, dk.shape[-1]).T
                   ).reshape(n1, P, n2, P)
        self._acc(scale**2 * np.einsum("ipjq,ipjq->ij", ga, gd))

    def add_bias(self, delta: np.ndarray, scale: float) -> None:
        """``scale² sum_k <sum_p δ_kp, sum_p' δ'_kp'>`` for a bias on the output channels."""
        d = delta if delta.ndim == 4 else delta[:, :, None, :]
        tot = np.zeros((self.n1, d.shape[1] - (0 if self.symmetric else self.n1)),
                       dtype=self.dtype)
        for dk in d:
            da, db = self._split(dk.sum(axis=1))
            tot += da @ db.T
        self._acc(scale**2 * tot)

    def _acc(self, v: np.ndarray) -> None:
        self.ntk = v if self.ntk is None else self.ntk + v


def _attention_backward(lp: LayerPlan, data: dict, delta: np.ndarray, gram: _Gram
                        ) -> np.ndarray:
    """Gradient contributions of W_query, W_key, W_value, W_out, b and the input cotangent."""
    layer = lp.layer
    sq, sk, sv, so = data["scales"]
    wq, wk, wv, wo = data["w"]
    q, k, v, g, x = data["q"], data["k"], data["v"], data["g"], data["x"]
    kk, n, t, _ = delta.shape
    h, dv = v.shape[2], v.shape[3]
    gram.add(data["heads"], delta, so)
    if data["b"] is not None:
        gram.add_bias(delta, layer.b_std or 0.0)
    d_heads = (so * (delta @ wo.T)).reshape(kk, n, t, h, dv)
    d_g = np.einsum("knthd,nshd->knhts", d_heads, v)
    d_v = np.einsum("nhts,knthd->knshd", g, d_heads)
    mech = layer.attention_mechanism
    if mech == "SOFTMAX":
        d_l = g * (d_g - (g * d_g).sum(axis=-1, keepdims=True))
    elif mech == "ABS":
        d_l = np.sign(data["logits"]) * d_g
    elif mech == "RELU":
        d_l = (data["logits"] > 0) * d_g
    else:
        d_l = d_g
    d_l /= data["norm"]
    d_q = np.einsum("knhts,nshd->knthd", d_l, k).reshape(kk, n, t, -1)
    d_k = np.einsum("knhts,nthd->knshd", d_l, q).reshape(kk, n, t, -1)
    d_v = d_v.reshape(kk, n, t, -1)
    dx = np.zeros((kk, *x.shape), dtype=x.dtype)
    for d, w, sc in ((d_q, wq, sq), (d_k, wk, sk), (d_v, wv, sv)):
        dx += sc * (d @ w.T)
    gram.add(x, d_v, sv)
    if data["tied"]:  # one matrix on both paths: its gradient is their sum
        gram.add(x, sq * d_q + sk * d_k, 1.0)
    else:
        gram.add(x, d_q, sq)
        gram.add(x, d_k, sk)
    return dx


def _backward(plan: Plan, tape: list, delta: np.ndarray, gram: _Gram) -> None:
    """Reverse pass with one cotangent per output unit, ``(K, n, [P,] C)``, per open slot."""
    cts = [delta]
    for lp, data in reversed(tape):
        layer, s = lp.layer, lp.slot
        if isinstance(layer, spec.FanOut):
            cts[s:s + lp.arity] = [sum(cts[s + 1:s + lp.arity], cts[s])]
            continue
        if isinstance(layer, spec.FAN_IN):
            d = cts[s]
            if isinstance(layer, spec.FanInSum):
                new = [d] * lp.arity
            elif isinstance(layer, spec.FanInProd):
                new = [d * math.prod(data[:i] + data[i + 1:]) for i in range(lp.arity)]
            else:
                new = np.split(d, np.cumsum(data)[:-1], axis=-1)
            cts[s:s + 1] = new
            continue
        d = cts[s]
        if isinstance(layer, (spec.Dense, spec.Conv)):
            W, b, scale, b_scale, idx, inp = data
            gram.add(inp, d, scale)
            if b is not None:
                gram.add_bias(d, b_scale)
            dinp = scale * (d @ W.T)
            if idx is not None:
                kk, nn, po, _ = dinp.shape
                dinp = dinp.reshape(kk, nn, po, idx.shape[1], -1)
                d = _scatter(dinp, idx, math.prod(lp.in_spatial))
            else:
                d = dinp
        elif isinstance(layer, spec.GlobalSelfAttention):
            d = _attention_backward(lp, data, d, gram)
        elif isinstance(layer, spec.NONLINEAR):
            d = d * data
        elif isinstance(layer, spec.LayerNorm):
            y, sigma, axes = data
            shape = d.shape
            dy = d.reshape(shape[0], *y.shape)
            ax = tuple(a + 1 for a in axes)
            dx = dy - dy.mean(axis=ax, keepdims=True) \
                - y * (dy * y).mean(axis=ax, keepdims=True)
            d = (dx / sigma).reshape(shape)
        elif isinstance(layer, spec.AvgPool):
            idx, p_in, div = data
            g = np.broadcast_to(d[..., :, None, :] / div,
                                (*d.shape[:-1], idx.shape[1], d.shape[-1]))
            d = _scatter(g, idx, p_in)
        elif isinstance(layer, (spec.GlobalAvgPool, spec.GlobalSumPool)):
            p, div = data
            d = np.broadcast_to(d[:, :, None, :] / div, (d.shape[0], d.shape[1], p, d.shape[-1]))
        elif isinstance(layer, spec.Flatten):
            d = d.reshape(d.shape[0], *data)
        cts[s] = d


def empirical_kernel(arch: Architecture | dict | str, x1: Any, x2: Any | None = None, *,
                     width: int, seed: int = 0, get: tuple[str, ...] | str = ("ntk",),
                     dtype: Any = np.float64) -> dict[str, np.ndarray]:
    """Empirical NTK (and NNGP) of one randomly initialised finite-width network.

    Args:
        arch: the architecture; each Dense/Conv without ``out_dim``/``out_chan`` gets ``width``
            channels, except the last one, the readout, which gets 1 output unless set.
        x1, x2: inputs as for :func:`ntkcompute.kernel` (NumPy).
        width: hidden width (channels of Conv layers, units of Dense layers).
        seed: seed of the weights (see :func:`init_params`).
        get: ``"ntk"`` = mean over outputs of ``J_k(x1) J_k(x2)^T``; ``"nngp"`` = mean over
            outputs of ``f_k(x1) f_k(x2)``.

    Returns:
        ``{"ntk": (n1, n2), "nngp": (n1, n2)}`` restricted to ``get``.
    """
    arch = parse_arch(arch)
    get = check_get(get)
    if not isinstance(width, (int, np.integer)) or width <= 0:
        raise InputError(f"must be a positive integer, got {width!r}", field="width")
    dt = resolve_dtype(dtype, x1)
    x1 = as_input(x1, "x1", dt)
    x2n = x1 if x2 is None else as_input(x2, "x2", dt)
    check_pair(x1, x2n)
    plan = make_plan(readout_default(arch), tuple(x1.shape), width=int(width))
    x = np.concatenate([x1, x2n]) if x2 is not None else x1
    n1 = x1.shape[0]
    out, tape = forward(plan, init_params(plan, seed, dt), x)
    k_out = out.shape[-1]
    res: dict[str, np.ndarray] = {}
    if "nngp" in get:
        res["nngp"] = (out[:n1] @ out[n1:].T if x2 is not None else out @ out.T) / k_out
    if "ntk" not in get:
        return res

    n = out.shape[0]
    delta = np.broadcast_to(np.eye(k_out, dtype=dt)[:, None, :], (k_out, n, k_out)).copy()
    gram = _Gram(n1, x2 is None, dt)
    _backward(plan, tape, delta, gram)
    res["ntk"] = gram.ntk / k_out
    return res

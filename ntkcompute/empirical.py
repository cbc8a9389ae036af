"""Finite-width empirical NTK: ``Θ(x, x') = (1/K) sum_k J_k(x) J_k(x')^T`` of one random network.

The network is the spec's stax network at a finite width, randomly initialised with ``seed``,
in the spec's parameterization. The Jacobian contraction is done exactly, layer by layer,
without materialising per-example gradients: for an affine layer with inputs ``a`` and
backpropagated output cotangents ``δ_k`` (one per output unit k),

    <∂f_k(x)/∂W, ∂f_k(x')/∂W> = c^2 sum_{p, p'} <a(x)_p, a(x')_p'> <δ_k(x)_p, δ_k(x')_p'>

(positions p index the patches of a Conv, or are absent for a vector Dense), plus
``b^2 sum_{p,p'} <δ_k(x)_p, δ_k(x')_p'>`` for the bias. Two Gram matrices per layer replace
``n x (#params)`` Jacobians, so widths of several thousand run on a laptop. Written by hand in
NumPy rather than through an autodiff framework: it needs no JAX/PyTorch install (the very
thing our users' environments break on) and every rule is a few lines next to its kernel rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import spec
from .errors import InputError
from .kernels.quadrature import FUNCTIONS
from .plan import LayerPlan, Plan, Window, make_plan
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


@dataclass
class _Affine:
    lp: LayerPlan
    W: np.ndarray  # (fan_in, out)
    b: np.ndarray | None
    scale: float  # multiplies the weights in the forward pass
    b_scale: float
    idx: np.ndarray | None  # conv patches


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
    """The last Dense/Conv gets one output unit unless its width is set."""
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


def init_params(plan: Plan, seed: int, dtype: Any) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Trainable parameters ``(W, b)`` of each Dense/Conv layer in order, standard normal
    (NTK parameterization) or scaled by ``W_std / sqrt(fan_in)`` and ``b_std`` (standard).

    ``W`` has shape ``(fan_in, out)`` with ``fan_in = |F| * C_in`` for a Conv.
    """
    rng = np.random.default_rng(seed)
    params = []
    for lp in plan.layers:
        layer = lp.layer
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
    """Network outputs ``(n, K)`` for inputs ``x`` and the tape the backward pass reads."""
    a = x.reshape(x.shape[0], -1, x.shape[-1]) if plan.input_spatial else x
    tape: list[tuple[str, Any]] = []
    j = 0
    for lp in plan.layers:
        layer = lp.layer
        if isinstance(layer, (spec.Dense, spec.Conv)):
            W, b = params[j]
            j += 1
            idx = None
            if isinstance(layer, spec.Conv):
                idx = _window_index(lp.in_spatial, lp.window)
                inp = _gather(a, idx).reshape(a.shape[0], idx.shape[0], -1)
            else:
                inp = a
            if plan.parameterization == "ntk":
                scale = layer.W_std / math.sqrt(inp.shape[-1])
                b_scale = layer.b_std or 0.0
            else:  # standard: the stds live in the initial values, gradients are unscaled
                scale, b_scale = 1.0, 1.0
            aff = _Affine(lp, W, b, scale, b_scale, idx)
            tape.append(("affine", (aff, inp)))
            a = scale * (inp @ W)
            if b is not None:
                a = a + b_scale * b
        elif isinstance(layer, spec.NONLINEAR):
            f, df = _act(layer)
            tape.append(("act", df(a)))
            a = f(a)
        elif isinstance(layer, spec.AvgPool):
            idx = _window_index(lp.in_spatial, lp.window)
            tape.append(("pool", (idx, a.shape[1])))
            a = _gather(a, idx).sum(axis=2) / idx.shape[1]
        elif isinstance(layer, spec.GlobalAvgPool):
            tape.append(("gap", a.shape[1]))
            a = a.mean(axis=1)
        elif isinstance(layer, spec.Flatten):
            tape.append(("flatten", a.shape))
            a = a.reshape(a.shape[0], -1)
        else:  # identity
            tape.append(("identity", None))
    return a, tape  # (n, K): make_plan has checked that the output is not spatial


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

    # Backward pass with one cotangent per output unit: delta (K, n, ..., C).
    n = out.shape[0]
    delta = np.broadcast_to(np.eye(k_out, dtype=dt)[:, None, :], (k_out, n, k_out)).copy()
    ntk = np.zeros((n1, n - n1 if x2 is not None else n), dtype=dt)

    for kind, data in reversed(tape):
        if kind == "affine":
            aff, inp = data
            # Sum over positions p, p' of <inp_p, inp'_p'> <δ_p, δ'_p'>; vectors have one p.
            d = delta if delta.ndim == 4 else delta[:, :, None, :]
            i3 = inp if inp.ndim == 3 else inp[:, None, :]
            P = i3.shape[1]
            ga = (i3[:n1].reshape(-1, i3.shape[-1]) @
                  (i3[n1:] if x2 is not None else i3).reshape(-1, i3.shape[-1]).T)
            n2 = ga.shape[1] // P
            ga = ga.reshape(n1, P, n2, P)
            gd = np.zeros_like(ga)
            db = np.zeros((n1, n2), dtype=dt) if aff.b is not None else None
            for k in range(k_out):
                dk = d[k]
                dk2 = dk[n1:] if x2 is not None else dk
                gd += (dk[:n1].reshape(-1, dk.shape[-1]) @
                       dk2.reshape(-1, dk.shape[-1]).T).reshape(n1, P, n2, P)
                if db is not None:
                    db += dk[:n1].sum(axis=1) @ dk2.sum(axis=1).T
            ntk += aff.scale**2 * np.einsum("ipjq,ipjq->ij", ga, gd)
            if db is not None:
                ntk += aff.b_scale**2 * db
            # Backpropagate to the layer's input.
            dinp = aff.scale * (delta @ aff.W.T)
            if aff.idx is not None:
                kk, nn, po, _ = dinp.shape
                dinp = dinp.reshape(kk, nn, po, aff.idx.shape[1], -1)
                delta = _scatter(dinp, aff.idx, math.prod(aff.lp.in_spatial))
            else:
                delta = dinp
        elif kind == "act":
            delta = delta * data
        elif kind == "pool":
            idx, p_in = data
            g = np.broadcast_to(delta[..., :, None, :] / idx.shape[1],
                                (*delta.shape[:-1], idx.shape[1], delta.shape[-1]))
            delta = _scatter(g, idx, p_in)
        elif kind == "gap":
            p = data
            delta = np.broadcast_to(delta[:, :, None, :] / p,
                                    (delta.shape[0], delta.shape[1], p, delta.shape[-1]))
        elif kind == "flatten":
            delta = delta.reshape(delta.shape[0], *data)
    res["ntk"] = ntk / k_out
    return res

"""Finite-width empirical NTK: ``Θ(x, x') = (1/K) sum_k J_k(x) J_k(x')^T`` of one random network.

The network is the spec's stax network at a finite width, randomly initialised with ``seed``,
in the spec's parameterization. The Jacobian contraction is done exactly, layer by layer,
without materialising per-example gradients: for an affine layer with inputs ``a`` and
backpropagated output cotangents ``δ_k`` (one per output unit k),

    <∂f_k(x)/∂W, ∂f_k(x')/∂W> = c^2 sum_{p, p'} <a(x)_p, a(x')_p'> <δ_k(x)_p, δ_k(x')_p'>

(positions p index the patches of a Conv, or are absent for a vector Dense), plus
``b^2 sum_{p,p'} <δ_k(x)_p, δ_k(x')_p'>`` for the bias. Attention's four weight matrices
(query, key, value, out) each act on channels at every position, so each adds the same
sum. Each layer's forward and backward are its registered rule's (:mod:`ntkcompute.layers`).
Branches run on slots as in :mod:`ntkcompute.plan`; a fan_out's cotangent is the sum of
its branches'. Two Gram matrices per weight replace
``n x (#params)`` Jacobians, so widths of several thousand run on a laptop. Written by hand in
NumPy rather than through an autodiff framework: it needs no JAX/PyTorch install (the very
thing our users' environments break on) and every rule is a few lines next to its kernel
rule, in the layer's family module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError
from .layers import rule_of
from .layers.activations import Activation
from .layers.finite import gather as _gather
from .layers.finite import scatter as _scatter
from .layers.finite import window_index as _window_index
from .layers.graph import split_pattern
from .plan import LayerPlan, Plan, make_plan
from .spec import Architecture, parse_arch
from .validate import as_input, check_get, check_pair, resolve_dtype

__all__ = ["_act", "_gather", "_scatter", "_window_index", "empirical_kernel", "forward",
           "init_params", "readout_default"]


def _act(layer: Any) -> tuple[Any, Any]:
    """(φ, φ') of a nonlinearity spec, on NumPy arrays."""
    rule = rule_of(layer)
    if not isinstance(rule, Activation):
        raise TypeError(f"not a nonlinearity: {layer!r}")
    return rule.fn(layer)


def readout_default(arch: Architecture) -> Architecture:
    """The last top-level Dense/Conv gets one output unit unless its width is set."""
    readouts = [i for i, layer in enumerate(arch.layers) if rule_of(layer).readout_width]
    if readouts:
        last = arch.layers[readouts[-1]]
        key = rule_of(last).readout_width
        if getattr(last, key) is None:
            layers = list(arch.layers)
            layers[readouts[-1]] = last.model_copy(update={key: 1})
            arch = arch.model_copy(update={"layers": layers})
    return arch


def init_params(plan: Plan, seed: int, dtype: Any) -> list[tuple[np.ndarray | None, ...]]:
    """Parameters of each layer that has some (its rule's ``has_params``) in plan order: the
    trainable ones, standard normal (NTK parameterization) or scaled by ``W_std / sqrt(fan_in)``
    and ``b_std`` (standard), or what else its rule's ``init`` draws (a seed).

    Dense/Conv: ``(W, b)``, ``W`` of shape ``(fan_in, out)`` with ``fan_in = |F| * C_in`` for a
    Conv. Attention: ``(W_query, W_key, W_value, W_out, b)``, the first three
    ``(C_in, heads * chan)``, ``W_out`` ``(heads * n_chan_val, n_chan_out)``; under
    ``linear_scaling`` the key weights are the query weights (``W_key`` is ``None``), as in
    stax: with independent ones the logits would converge to 0.
    """
    rng = np.random.default_rng(seed)
    params: list[tuple[np.ndarray | None, ...]] = []
    for lp in plan.layers:
        rule = rule_of(lp.layer)
        if rule.has_params(lp.layer):
            params.append(rule.init(lp, rng, dtype, plan.parameterization))
    return params


def forward(plan: Plan, params: list, x: np.ndarray) -> tuple[np.ndarray, list]:
    """Network outputs ``(n, K)`` for inputs ``x`` and the tape the backward pass reads.

    Activations are ``(n, P, C)`` with positions flattened (``(n, C)`` for vectors), one per
    open branch slot; the tape holds ``(LayerPlan, data)`` per layer. With ``plan.pattern``
    the inputs' last channels are their graphs (``layers.graph``).
    """
    graphs = None
    if plan.pattern is not None:
        x, graphs = split_pattern(np, x, plan.pattern)
    slots = [x.reshape(x.shape[0], -1, x.shape[-1]) if plan.input_spatial else x]
    tape: list[tuple[LayerPlan, Any]] = []
    weights = iter(params)
    for lp in plan.layers:
        rule, s = rule_of(lp.layer), lp.slot
        if rule.structure == "fan_out":
            slots[s:s + 1] = [slots[s]] * lp.arity
            tape.append((lp, None))
            continue
        if rule.structure == "fan_in":
            out, data = rule.merge_forward(lp, slots[s:s + lp.arity])
            slots[s:s + lp.arity] = [out]
            tape.append((lp, data))
            continue
        p = next(weights) if rule.has_params(lp.layer) else None
        if rule.uses_pattern:
            slots[s], data = rule.forward(lp, p, slots[s], pattern=graphs)
        else:
            slots[s], data = rule.forward(lp, p, slots[s])
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

    def add_local(self, inp: np.ndarray | None, delta: np.ndarray, scale: float) -> None:
        """The same for a weight of its own at each position p (ConvLocal): only ``p == p'``
        pairs, ``scale² sum_k sum_p <inp_p, inp'_p> <δ_kp, δ'_kp>``; ``inp`` None: a bias
        per position (``<inp_p, inp'_p> = 1``)."""
        gd = None
        for dk in delta:  # (n, P, out)
            da, db = self._split(dk)
            g = np.einsum("ipc,jpc->ijp", da, db)
            gd = g if gd is None else gd + g
        if inp is not None:
            ia, ib = self._split(inp)
            gd = gd * np.einsum("ipc,jpc->ijp", ia, ib)
        self._acc(scale**2 * gd.sum(axis=-1))

    def _acc(self, v: np.ndarray) -> None:
        self.ntk = v if self.ntk is None else self.ntk + v


def _backward(plan: Plan, tape: list, delta: np.ndarray, gram: _Gram) -> None:
    """Reverse pass with one cotangent per output unit, ``(K, n, [P,] C)``, per open slot."""
    cts = [delta]
    for lp, data in reversed(tape):
        rule, s = rule_of(lp.layer), lp.slot
        if rule.structure == "fan_out":
            cts[s:s + lp.arity] = [sum(cts[s + 1:s + lp.arity], cts[s])]
        elif rule.structure == "fan_in":
            cts[s:s + 1] = rule.merge_backward(lp, data, cts[s])
        else:
            cts[s] = rule.backward(lp, data, cts[s], gram)


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

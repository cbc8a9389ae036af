"""Runs inside the neural-tangents venv (``make conformance`` builds it): translate our specs
to ``neural_tangents.stax``, compute float64 kernels, time them, and save them.

Usage: ``python bench/nt_reference.py CASES.npz OUT.npz``. CASES holds, per case ``i``,
``arch_i`` (spec JSON), ``x1_i`` and ``x2_i``. OUT gets ``ntk_i``, ``nngp_i``, ``sec_i``
(seconds per call of the jitted kernel function, after a warm-up call).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

FNS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus,
       "silu": jax.nn.silu, "elu": jax.nn.elu,
       "gelu": lambda x: jax.nn.gelu(x, approximate=False),
       "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu,
       "erf": jax.scipy.special.erf, "sin": jnp.sin}


_JNP = {"sin": jnp.sin, "cos": jnp.cos, "tan": jnp.tan, "exp": jnp.exp, "log": jnp.log,
        "sqrt": jnp.sqrt, "abs": jnp.abs, "tanh": jnp.tanh, "sinh": jnp.sinh,
        "cosh": jnp.cosh, "arctan": jnp.arctan, "arcsinh": jnp.arcsinh, "log1p": jnp.log1p,
        "expm1": jnp.expm1, "erf": jax.scipy.special.erf, "sigmoid": jax.nn.sigmoid,
        "softplus": jax.nn.softplus, "sign": jnp.sign, "relu": jax.nn.relu,
        "step": lambda a: jnp.where(a > 0, 1.0, 0.0), "maximum": jnp.maximum,
        "max": jnp.maximum, "minimum": jnp.minimum, "min": jnp.minimum}


def _expr_fn(text: str):
    """An ``elementwise`` layer's ``expr`` as a JAX function (our own catalogue's
    expressions: numbers, x, pi, e, + - * / **, calls of the names above), walking its
    syntax tree; nothing is eval'd."""
    import ast
    import math

    ops = {ast.Add: jnp.add, ast.Sub: jnp.subtract, ast.Mult: jnp.multiply,
           ast.Div: jnp.divide, ast.Pow: jnp.power}

    def ev(n, x):
        if isinstance(n, ast.Constant):
            return float(n.value)
        if isinstance(n, ast.Name):
            return x if n.id == "x" else {"pi": math.pi, "e": math.e}[n.id]
        if isinstance(n, ast.BinOp):
            return ops[type(n.op)](ev(n.left, x), ev(n.right, x))
        if isinstance(n, ast.UnaryOp):
            v = ev(n.operand, x)
            return -v if isinstance(n.op, ast.USub) else v
        if isinstance(n, ast.Call):
            return _JNP[n.func.id](*(ev(a, x) for a in n.args))
        raise ValueError(ast.dump(n))

    tree = ast.parse(text, mode="eval").body
    return lambda x: ev(tree, x)


def _pool_args(L: dict) -> tuple:
    return (tuple(L["window_shape"]), tuple(L["strides"]) if L.get("strides") else None,
            L.get("padding", "VALID"))


def _layer(L: dict, p: str):
    """One spec layer (composites recursively) as a stax layer."""
    t = L["type"]
    if t == "dense":
        return stax.Dense(L.get("out_dim") or 1, L.get("W_std", 1.0), L.get("b_std"),
                          parameterization=p)
    if t == "conv":
        return stax.Conv(L.get("out_chan") or 1, tuple(L["filter_shape"]),
                         tuple(L["strides"]) if L.get("strides") else None,
                         L.get("padding", "VALID"), L.get("W_std", 1.0), L.get("b_std"),
                         parameterization=p)
    if t in ("conv_transpose", "conv_local"):
        fn = stax.ConvTranspose if t == "conv_transpose" else stax.ConvLocal
        return fn(L.get("out_chan") or 1, tuple(L["filter_shape"]),
                  tuple(L["strides"]) if L.get("strides") else None,
                  L.get("padding", "VALID"), L.get("W_std", 1.0), L.get("b_std"),
                  parameterization=p)
    if t == "image_resize":
        return stax.ImageResize(tuple(L["shape"]), L["method"], L.get("antialias", True))
    if t == "dot_general":
        dn = L.get("dimension_numbers", (((), ()), ((), ())))
        const = {k: (jnp.asarray(L[k], dtype=jnp.float64) if isinstance(L[k], list) else L[k])
                 for k in ("lhs", "rhs") if L.get(k) is not None}
        return stax.DotGeneral(**const, dimension_numbers=tuple(
            tuple(tuple(a) for a in pair) for pair in dn))
    simple = {"relu": stax.Relu, "abs": stax.Abs, "gelu": stax.Gelu, "sign": stax.Sign,
              "identity": stax.Identity, "global_avg_pool": stax.GlobalAvgPool,
              "global_sum_pool": stax.GlobalSumPool, "flatten": stax.Flatten,
              "fan_in_sum": stax.FanInSum, "fan_in_prod": stax.FanInProd}
    if t in simple:
        return simple[t]()
    if t == "leaky_relu":
        return stax.LeakyRelu(L.get("alpha", 0.01))
    if t in ("ab_relu", "abrelu"):
        return stax.ABRelu(L["a"], L["b"])
    if t in ("erf", "sin", "cos"):
        fn = {"erf": stax.Erf, "sin": stax.Sin, "cos": stax.Cos}[t]
        return fn(L.get("a", 1.0), L.get("b", 1.0), L.get("c", 0.0))
    if t == "rbf":
        return stax.Rbf(L.get("gamma", 1.0))
    if t == "exp":
        return stax.Exp(L.get("a", 1.0), L.get("b", 1.0))
    if t == "gaussian":
        return stax.Gaussian(L.get("a", 1.0), L.get("b", -1.0))
    if t == "elementwise":
        fn = FNS[L["fn"]] if L.get("fn") else _expr_fn(L["expr"])
        return stax.ElementwiseNumerical(fn, L.get("deg", 25))
    if t == "avg_pool":
        return stax.AvgPool(*_pool_args(L))
    if t == "sum_pool":
        return stax.SumPool(*_pool_args(L))
    if t == "layer_norm":
        axis = L.get("axis", -1)
        return stax.LayerNorm(tuple(axis) if isinstance(axis, list) else axis,
                              L.get("eps", 1e-12))
    if t == "global_self_attention":
        return stax.GlobalSelfAttention(
            L.get("n_chan_out") or 1, L.get("n_chan_key") or 1, L.get("n_chan_val") or 1,
            L.get("n_heads", 1), L.get("linear_scaling", True), L.get("W_key_std", 1.0),
            L.get("W_value_std", 1.0), L.get("W_query_std", 1.0), L.get("W_out_std", 1.0),
            L.get("b_std"), L.get("attention_mechanism", "SOFTMAX"))
    if t == "dropout":
        return stax.Dropout(L["rate"], L.get("mode", "train"))
    if t == "fan_out":
        return stax.FanOut(L["num"])
    if t == "fan_in_concat":
        return stax.FanInConcat(L.get("axis", -1))
    if t == "parallel":
        return stax.parallel(*[stax.serial(*[_layer(x, p) for x in br])
                               for br in L["branches"]])
    if t == "serial":
        return stax.serial(*[_layer(x, p) for x in L["layers"]])
    if t == "repeat":
        return stax.serial(*[_layer(L["layer"], p) for _ in range(L["n"])])
    raise ValueError(t)


def to_stax(spec: dict):
    p = spec.get("parameterization", "ntk")
    return stax.serial(*[_layer(L, p) for L in spec["layers"]])


def main() -> None:
    """A case without ``x2_i`` is symmetric (``kernel_fn(x1, None)``). Inputs are used in
    their stored dtype (float32 cases compute in float32). ``cpu_i`` is the process CPU time
    of the timed call, ``rss`` the process's peak resident set (bytes) after all cases."""
    import resource

    cases = np.load(sys.argv[1])
    res = {}
    i = 0
    while f"arch_{i}" in cases:
        spec = json.loads(str(cases[f"arch_{i}"]))
        _, _, kernel_fn = to_stax(spec)
        fn = jax.jit(kernel_fn, static_argnames="get")
        x1 = jnp.asarray(cases[f"x1_{i}"])
        x2 = jnp.asarray(cases[f"x2_{i}"]) if f"x2_{i}" in cases else None
        k = fn(x1, x2, get=("nngp", "ntk"))
        jax.block_until_ready(k)
        secs, cpus = [], []
        for _ in range(int(os.environ.get("NT_REPS", "1"))):  # the fastest of NT_REPS calls
            k = None
            t, c = time.perf_counter(), time.process_time()
            k = fn(x1, x2, get=("nngp", "ntk"))
            jax.block_until_ready(k)
            secs.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        res[f"sec_{i}"], res[f"cpu_{i}"] = min(secs), min(cpus)
        res[f"nngp_{i}"] = np.asarray(k.nngp)
        res[f"ntk_{i}"] = np.asarray(k.ntk)
        print(f"case {i}: {res[f'sec_{i}']:.3f}s", flush=True)
        i += 1
    res["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.savez(sys.argv[2], **res)


if __name__ == "__main__":
    main()

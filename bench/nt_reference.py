"""Runs inside the neural-tangents venv (``make conformance`` builds it): translate our specs
to ``neural_tangents.stax``, compute float64 kernels, time them, and save them.

Usage: ``python bench/nt_reference.py CASES.npz OUT.npz``. CASES holds, per case ``i``,
``arch_i`` (spec JSON), ``x1_i`` and ``x2_i``. OUT gets ``ntk_i``, ``nngp_i``, ``sec_i``
(seconds per call of the jitted kernel function, after a warm-up call).
"""

from __future__ import annotations

import json
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


def to_stax(spec: dict):
    p = spec.get("parameterization", "ntk")
    out = []
    for L in spec["layers"]:
        t = L["type"]
        if t == "dense":
            out.append(stax.Dense(L.get("out_dim") or 1, L.get("W_std", 1.0), L.get("b_std"),
                                  parameterization=p))
        elif t == "conv":
            out.append(stax.Conv(L.get("out_chan") or 1, tuple(L["filter_shape"]),
                                 tuple(L["strides"]) if L.get("strides") else None,
                                 L.get("padding", "VALID"), L.get("W_std", 1.0),
                                 L.get("b_std"), parameterization=p))
        elif t == "relu":
            out.append(stax.Relu())
        elif t == "leaky_relu":
            out.append(stax.LeakyRelu(L.get("alpha", 0.01)))
        elif t == "ab_relu":
            out.append(stax.ABRelu(L["a"], L["b"]))
        elif t == "abs":
            out.append(stax.Abs())
        elif t == "erf":
            out.append(stax.Erf(L.get("a", 1.0), L.get("b", 1.0), L.get("c", 0.0)))
        elif t == "gelu":
            out.append(stax.Gelu())
        elif t == "sin":
            out.append(stax.Sin(L.get("a", 1.0), L.get("b", 1.0), L.get("c", 0.0)))
        elif t == "sign":
            out.append(stax.Sign())
        elif t == "elementwise":
            out.append(stax.ElementwiseNumerical(FNS[L["fn"]], L.get("deg", 25)))
        elif t == "avg_pool":
            out.append(stax.AvgPool(tuple(L["window_shape"]),
                                    tuple(L["strides"]) if L.get("strides") else None,
                                    L.get("padding", "VALID")))
        elif t == "global_avg_pool":
            out.append(stax.GlobalAvgPool())
        elif t == "flatten":
            out.append(stax.Flatten())
        elif t == "identity":
            out.append(stax.Identity())
        else:
            raise ValueError(t)
    return stax.serial(*out)


def main() -> None:
    cases = np.load(sys.argv[1])
    res = {}
    i = 0
    while f"arch_{i}" in cases:
        spec = json.loads(str(cases[f"arch_{i}"]))
        _, _, kernel_fn = to_stax(spec)
        fn = jax.jit(kernel_fn, static_argnames="get")
        x1, x2 = jnp.asarray(cases[f"x1_{i}"]), jnp.asarray(cases[f"x2_{i}"])
        k = fn(x1, x2, get=("nngp", "ntk"))
        jax.block_until_ready(k)
        t = time.perf_counter()
        k = fn(x1, x2, get=("nngp", "ntk"))
        jax.block_until_ready(k)
        res[f"sec_{i}"] = time.perf_counter() - t
        res[f"nngp_{i}"] = np.asarray(k.nngp)
        res[f"ntk_{i}"] = np.asarray(k.ntk)
        print(f"case {i}: {res[f'sec_{i}']:.3f}s", flush=True)
        i += 1
    np.savez(sys.argv[2], **res)


if __name__ == "__main__":
    main()

"""neural-tangents' own stax examples, run as written with either ``stax``.

Each example is a script from nt 0.6.5's README or notebooks, its first line ``from
neural_tangents import stax``; the only edits are inputs drawn from NumPy (``rng``, given)
instead of ``jax.random``, smaller batches, and no ``jit`` / ``nt.batch`` around
``kernel_fn``. A script leaves ``kernel_fn``, ``x1`` and ``x2`` (and, where the net takes more,
such as Aggregate's ``pattern``, the keywords ``kw`` of the cross call and ``sym_kw`` of the
symmetric one).

``python bench/stax_examples.py nt|ntkcompute OUT.npz`` runs every example with that
library's ``stax`` (for nt, inside its venv, float64 enabled): the one import line is the
only change. It saves ``name_i``, ``nngp_i``, ``ntk_i`` (cross, ``kernel_fn(x1, x2,
('nngp', 'ntk'))``) and ``sym_nngp_i``, ``sym_ntk_i`` (``kernel_fn(x1, None, ...)``).
``make conformance`` compares the two (``bench/conformance.py``); ``tests/test_stax.py`` runs
them here against a stored copy of nt's.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

NT_IMPORT = "from neural_tangents import stax"
OUR_IMPORT = "from ntkcompute import stax"

EXAMPLES: dict[str, str] = {
    # README, "Infinitely Wide Networks"
    "README: FC kernel_fn": """
from neural_tangents import stax

init_fn, apply_fn, kernel_fn = stax.serial(
    stax.Dense(512), stax.Relu(),
    stax.Dense(512), stax.Relu(),
    stax.Dense(1)
)

x1 = rng.standard_normal((10, 100))
x2 = rng.standard_normal((20, 100))
""",
    # README, "Infinitely Wide Networks": the WideResNet, block_size 1
    "README: WideResnet": """
from neural_tangents import stax

def WideResnetBlock(channels, strides=(1, 1), channel_mismatch=False):
  Main = stax.serial(
      stax.Relu(), stax.Conv(channels, (3, 3), strides, padding='SAME'),
      stax.Relu(), stax.Conv(channels, (3, 3), padding='SAME'))
  Shortcut = stax.Identity() if not channel_mismatch else stax.Conv(
      channels, (3, 3), strides, padding='SAME')
  return stax.serial(stax.FanOut(2),
                     stax.parallel(Main, Shortcut),
                     stax.FanInSum())

def WideResnetGroup(n, channels, strides=(1, 1)):
  blocks = []
  blocks += [WideResnetBlock(channels, strides, channel_mismatch=True)]
  for _ in range(n - 1):
    blocks += [WideResnetBlock(channels, (1, 1))]
  return stax.serial(*blocks)

def WideResnet(block_size, k, num_classes):
  return stax.serial(
      stax.Conv(16, (3, 3), padding='SAME'),
      WideResnetGroup(block_size, int(16 * k)),
      WideResnetGroup(block_size, int(32 * k), (2, 2)),
      WideResnetGroup(block_size, int(64 * k), (2, 2)),
      stax.AvgPool((8, 8)),
      stax.Flatten(),
      stax.Dense(num_classes, 1., 0.))

init_fn, apply_fn, kernel_fn = WideResnet(block_size=1, k=1, num_classes=10)

x1 = rng.standard_normal((2, 32, 32, 3))
x2 = rng.standard_normal((3, 32, 32, 3))
""",
    # README, "Performance": the 21-layer CNN, both readouts (on 8x8 inputs here)
    "README: CNN-21 GlobalAvgPool": """
from neural_tangents import stax

layers = []
for _ in range(21):
  layers += [stax.Conv(1, (3, 3), (1, 1), 'SAME'), stax.Relu()]

_, _, kernel_fn = stax.serial(*(layers + [stax.GlobalAvgPool()]))

x1 = rng.standard_normal((3, 8, 8, 3))
x2 = rng.standard_normal((2, 8, 8, 3))
""",
    "README: CNN-21 Flatten": """
from neural_tangents import stax

layers = []
for _ in range(21):
  layers += [stax.Conv(1, (3, 3), (1, 1), 'SAME'), stax.Relu()]

_, _, kernel_fn = stax.serial(*(layers + [stax.Flatten()]))

x1 = rng.standard_normal((6, 8, 8, 3))
x2 = rng.standard_normal((4, 8, 8, 3))
""",
    # notebooks/neural_tangents_cookbook.ipynb
    "cookbook: Erf FC": """
from neural_tangents import stax

init_fn, apply_fn, kernel_fn = stax.serial(
    stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(),
    stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf(),
    stax.Dense(1, W_std=1.5, b_std=0.05)
)

x1 = rng.uniform(-1, 1, (12, 1))
x2 = rng.uniform(-1, 1, (8, 1))
""",
    # notebooks/myrtle_kernel_with_neural_tangents.ipynb
    "Myrtle notebook: MyrtleNetwork(5)": """
import functools
from neural_tangents import stax

def MyrtleNetwork(depth, W_std=2**0.5, b_std=0.):
  layer_factor = {5: [2, 1, 1], 7: [2, 2, 2], 10: [3, 3, 3]}
  width = 1
  activation_fn = stax.Relu()
  layers = []
  conv = functools.partial(stax.Conv, W_std=W_std, b_std=b_std, padding='SAME')

  layers += [conv(width, (3, 3)), activation_fn] * layer_factor[depth][0]
  layers += [stax.AvgPool((2, 2), strides=(2, 2))]
  layers += [conv(width, (3, 3)), activation_fn] * layer_factor[depth][1]
  layers += [stax.AvgPool((2, 2), strides=(2, 2))]
  layers += [conv(width, (3, 3)), activation_fn] * layer_factor[depth][2]
  layers += [stax.AvgPool((2, 2), strides=(2, 2))] * 3

  layers += [stax.Flatten(), stax.Dense(10, W_std, b_std)]

  return stax.serial(*layers)

_, _, kernel_fn = MyrtleNetwork(5)

x1 = rng.standard_normal((3, 32, 32, 3))
x2 = rng.standard_normal((2, 32, 32, 3))
""",
    # The exact CNTK of Arora et al. 2019 as nt users write it: CNTK-GAP and CNTK-V
    "Arora et al.: CNTK-GAP-4": """
from neural_tangents import stax

layers = []
for _ in range(4):
  layers += [stax.Conv(1, (3, 3), padding='SAME', W_std=2**0.5), stax.Relu()]
_, _, kernel_fn = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(10, W_std=2**0.5))

x1 = rng.standard_normal((3, 12, 12, 3))
x2 = rng.standard_normal((2, 12, 12, 3))
""",
    "Arora et al.: CNTK-V-4": """
from neural_tangents import stax

layers = []
for _ in range(4):
  layers += [stax.Conv(1, (3, 3), padding='SAME', W_std=2**0.5, b_std=0.1), stax.Relu()]
_, _, kernel_fn = stax.serial(*layers, stax.Flatten(), stax.Dense(10, W_std=2**0.5))

x1 = rng.standard_normal((6, 12, 12, 3))
x2 = rng.standard_normal((4, 12, 12, 3))
""",
    # stax's composite layers: LayerNorm, attention, Dropout, the fan-ins
    "composite: attention, LayerNorm, Dropout": """
from neural_tangents import stax

_, _, kernel_fn = stax.serial(
    stax.Conv(8, (3,), padding='SAME', W_std=1.4, b_std=0.1),
    stax.GlobalSelfAttention(8, 8, 8, 2, W_query_std=1.5, b_std=0.3),
    stax.LayerNorm(), stax.Gelu(),
    stax.FanOut(2),
    stax.parallel(stax.Dense(8, 1.3, 0.2),
                  stax.serial(stax.Dense(8, 1.1), stax.Erf(), stax.Dense(8, 1.2))),
    stax.FanInProd(),
    stax.Dropout(0.8), stax.GlobalAvgPool(), stax.Dense(1, 1.2, 0.1))

x1 = rng.standard_normal((5, 7, 3))
x2 = rng.standard_normal((4, 7, 3))
""",
    # stax.Aggregate's docstring, "Infinite width example", as a graph network (GNTK):
    # aggregate, a dense layer per vertex, twice, then the sum over vertices
    "Aggregate docs: GNTK, binary adjacency": """
from neural_tangents import stax

_, _, kernel_fn = stax.serial(
    stax.Conv(256, (1,), W_std=1.4, b_std=0.1), stax.Relu(),
    stax.Aggregate(aggregate_axis=1),
    stax.Conv(256, (1,), W_std=1.4, b_std=0.1), stax.Relu(),
    stax.Aggregate(aggregate_axis=1),
    stax.GlobalSumPool(), stax.Dense(1))

x1 = rng.standard_normal((5, 10, 3))
x2 = rng.standard_normal((3, 10, 3))
A1 = rng.random((5, 10, 10)) < 0.3
A2 = rng.random((3, 10, 10)) < 0.3
kw, sym_kw = {"pattern": (A1, A2)}, {"pattern": (A1, A1)}
""",
    "Aggregate: weighted, over W of NHWC images": """
from neural_tangents import stax

_, _, kernel_fn = stax.serial(
    stax.Conv(16, (2, 2), padding='SAME', W_std=1.3, b_std=0.2), stax.Relu(),
    stax.Aggregate(aggregate_axis=2),
    stax.Conv(16, (3, 1), padding='SAME'), stax.Erf(),
    stax.Aggregate(aggregate_axis=2),
    stax.Flatten(), stax.Dense(1))

x1 = rng.standard_normal((4, 3, 5, 2))
x2 = rng.standard_normal((3, 3, 5, 2))
A1 = rng.standard_normal((4, 5, 5))
A2 = rng.standard_normal((3, 5, 5))
kw, sym_kw = {"pattern": (A1, A2)}, {"pattern": (A1, A1)}
""",
    # (nt 0.6.5's SPARSE kernel_fn over two or more axes disagrees with its own DENSE one
    # and with its apply_fn; over one axis all agree)
    "Aggregate: SPARSE edge lists, padded": """
from neural_tangents import stax

_, _, kernel_fn = stax.serial(
    stax.Aggregate(implementation='SPARSE'),
    stax.Conv(16, (1,), W_std=1.2, b_std=0.1), stax.Relu(),
    stax.Aggregate(implementation='SPARSE'),
    stax.GlobalAvgPool(), stax.Dense(1))

x1 = rng.standard_normal((4, 8, 2))
x2 = rng.standard_normal((2, 8, 2))
E1 = rng.integers(-1, 8, size=(4, 12, 2))  # (tail, head) per edge; head -1: padding
E2 = rng.integers(-1, 8, size=(2, 12, 2))
kw, sym_kw = {"pattern": (E1, E2)}, {"pattern": (E1, E1)}
""",
}


def run(source: str, ours: bool = True) -> dict[str, Any]:
    """Execute one example with ntkcompute's ``stax`` (``ours``) or nt's; its namespace."""
    if not source.lstrip().startswith(NT_IMPORT) and "\n" + NT_IMPORT not in source:
        raise ValueError("an example imports neural_tangents' stax")
    code = source.replace(NT_IMPORT, OUR_IMPORT) if ours else source
    ns: dict[str, Any] = {"rng": np.random.default_rng(0)}
    exec(compile(code, "<stax example>", "exec"), ns)
    return ns


def cross_and_symmetric(ns: dict[str, Any]) -> tuple[Any, Any]:
    """``kernel_fn(x1, x2, ('nngp', 'ntk'), **kw)`` and ``kernel_fn(x1, None, ...,
    **sym_kw)`` of an example's namespace (``kw``: e.g. Aggregate's ``pattern``)."""
    kernel_fn, x1, x2 = ns["kernel_fn"], ns["x1"], ns["x2"]
    get = ("nngp", "ntk")
    return (kernel_fn(x1, x2, get, **ns.get("kw", {})),
            kernel_fn(x1, None, get, **ns.get("sym_kw", {})))


def main() -> None:
    lib, out = sys.argv[1], sys.argv[2]
    if lib == "nt":
        import jax

        jax.config.update("jax_enable_x64", True)
    res = {}
    for i, (name, source) in enumerate(EXAMPLES.items()):
        ns = run(source, ours=lib != "nt")
        res[f"name_{i}"] = name
        k, ks = cross_and_symmetric(ns)
        res[f"nngp_{i}"], res[f"ntk_{i}"] = np.asarray(k.nngp), np.asarray(k.ntk)
        res[f"sym_nngp_{i}"], res[f"sym_ntk_{i}"] = np.asarray(ks.nngp), np.asarray(ks.ntk)
        print(f"example {i} done", flush=True)
    np.savez(out, **res)


if __name__ == "__main__":
    main()

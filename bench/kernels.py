"""Kernel throughput: Gram entries per second for the configurations of issue 2.

Run: ``make bench`` (or ``.venv/bin/python bench/kernels.py [--quick] [--only NAME]``).

For each configuration and dtype it prints
* ``entries/s``: n1 * n2 Gram entries delivered per second by ``ntkcompute.kernel``
  (symmetric jobs compute the upper triangle of blocks and mirror it);
* ``1-pair/s``: the baseline, measured in the same run on a sample of pairs: the same layer
  rules fed one pair at a time on one thread (no blocking, threads or symmetry);
  ``speedup`` = entries/s / 1-pair/s.

Against neural-tangents, and the fused kernels against the NumPy rules, both measured in one
run: ``bench/speed.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.datasets import cifar10, digits, standardize


def configs(quick: bool):
    rng = np.random.default_rng(0)
    cif = standardize(cifar10(256)[0])[0]
    dig = digits()[0]
    s = 4 if quick else 1
    return [
        ("fc-relu-3 d=64", A.fc(3), rng.standard_normal((4000 // s, 64))),
        ("cntk-gap-4 8x8x1", A.cntk(4), dig[: 300 // s]),
        ("cntk-gap-4 32x32x3", A.cntk(4), cif[: 32 // s]),
        ("cntk-flatten-4 32x32x3", A.cntk(4, "flatten"), cif[: 256 // s]),
        ("myrtle-5 32x32x3", A.myrtle(5), cif[: 64 // s]),
    ]


def one_pair_rate(arch, x, dtype, samples: int) -> float:
    """Pairs per second of the same layer rules fed one pair at a time on one thread, the
    per-input self-covariances precomputed (not timed): no blocking, threads or symmetry."""
    x = x.astype(dtype)
    plan = nc.plan.make_plan(nc.parse_arch(arch), x.shape)
    selfcov = nc.infinite.self_pass(plan, x)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(x), size=(samples + 1, 2))
    t = 0.0
    for k, (i, j) in enumerate(idx):
        t0 = time.perf_counter()
        nc.infinite.pair_block(plan, x[i:i + 1], x[j:j + 1], selfcov.rows(slice(i, i + 1)),
                               selfcov.rows(slice(j, j + 1)))
        if k:  # the first call warms up
            t += time.perf_counter() - t0
    return samples / t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="n divided by 4")
    ap.add_argument("--only", default=None, help="substring of a configuration name")
    args = ap.parse_args()
    print(f"cores={os.cpu_count()}  numpy={np.__version__}")
    hdr = (f"{'config':24s} {'dtype':8s} {'n':>5s} {'seconds':>8s} {'entries/s':>11s} "
           f"{'ms/entry':>9s} {'1-pair/s':>9s} {'speedup':>8s}")
    print(hdr)
    for name, arch, x in configs(args.quick):
        if args.only and args.only not in name:
            continue
        for dtype in ("float64", "float32"):
            n = len(x)
            nc.kernel(arch, x[:2], dtype=dtype)  # warm-up
            t = time.perf_counter()
            nc.kernel(arch, x, dtype=dtype)
            sec = time.perf_counter() - t
            rate = n * n / sec
            samples = max(3, min(200, int(2.0 * rate / 50)))
            base = one_pair_rate(arch, x, dtype, samples)
            print(f"{name:24s} {dtype:8s} {n:5d} {sec:8.2f} {rate:11.0f} {1e3 / rate:9.4f} "
                  f"{base:9.1f} {rate / base:7.1f}x", flush=True)


if __name__ == "__main__":
    main()

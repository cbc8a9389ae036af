"""``make demo``: CNTK kernel regression on scikit-learn digits, end to end on this machine.

Computes the exact CNTK-GAP (depth 4) NTK and NNGP between all train and test digits with
``ntkcompute.kernel``, solves kernel regression directly, and prints test accuracy, timings
and peak memory, next to an FC ReLU NTK on the same split.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.datasets import digits
from ntkcompute.regression import kernel_ridge, one_hot


def run(n_train: int, n_test: int, depth: int, seed: int = 0) -> None:
    x, y = digits()
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    targets = one_hot(y[tr], 10)
    print(f"digits: {n_train} train / {n_test} test images 8x8x1; "
          f"{nc.__name__} {nc.__version__}")
    for name, arch, xs in [
        (f"CNTK-GAP depth {depth}", A.cntk(depth), x),
        ("FC ReLU depth 3", A.fc(3), x.reshape(len(x), -1)),
    ]:
        t0 = time.perf_counter()
        k_train = nc.kernel(arch, xs[tr])
        t1 = time.perf_counter()
        k_cross = nc.kernel(arch, xs[te], xs[tr])
        t2 = time.perf_counter()
        entries = n_train**2 + n_test * n_train
        line = (f"{name:18s} kernels {t2 - t0:6.1f}s (train {t1 - t0:.1f}s + test x train "
                f"{t2 - t1:.1f}s, {entries / (t2 - t0):,.0f} entries/s)")
        for kind in ("ntk", "nngp"):
            t3 = time.perf_counter()
            pred = kernel_ridge(k_train[kind], targets, k_cross[kind])
            acc = float(np.mean(pred.argmax(1) == y[te]))
            line += f"  {kind.upper()} acc {acc:.4f} (solve {time.perf_counter() - t3:.2f}s)"
        print(line, flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"peak RSS {rss:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--depth", type=int, default=4)
    args = ap.parse_args()
    run(args.train, args.test, args.depth)


if __name__ == "__main__":
    main()

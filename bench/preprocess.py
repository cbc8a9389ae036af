"""Flip-symmetrised and ZCA-whitened CNTK kernels on the CIFAR-10 subset: test accuracy of
kernel ridge regression against the plain kernel, same split.

Data: the 4000 CIFAR-10 training images of ``../shared/data``, averaged down to ``--size``
(16: 2x2 blocks; 8: 4x4; the 32x32 CNTK-GAP costs ~34 ms per entry here, 16x16 ~5 ms, 8x8
~0.3 ms), /255. Test: the last ``--test`` images; train:
the first ``--train``. Preprocessing: per-channel standardisation (Arora et al. 2019), fit on
the train part, for every row; ZCA rows whiten whole images with strength 0.1 (Shankar et
al. 2020), fit without labels on every image outside the test part (the unlabelled pool,
as Shankar et al. fit on the whole training set), then standardise per channel.
Kernel: CNTK-GAP-``depth`` (3x3 SAME convs, ReLU, global average pooling; NTK). The ridge λ
and the readout are the same for every row: λ = 1e-3 · mean diag K (relative), one-hot codes
0.9 / -0.1, argmax. Each plain kernel is computed once and reused by its flip-symmetrised row.
Differences are paired (same test images): mean of the per-image correctness difference
± its standard error.

    python bench/preprocess.py [--train 400] [--test 200] [--depth 3] [--size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.datasets import cifar10
from ntkcompute.preprocess import ZCA, Standardize, flip_symmetrized
from ntkcompute.regression import kernel_ridge, one_hot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--lam", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--size", type=int, default=16, choices=[8, 16, 32])
    args = ap.parse_args()
    x, y = cifar10()
    n = len(x)
    if args.train + args.test > n:
        ap.error(f"--train + --test must be at most {n}")
    f = 32 // args.size
    x = x.reshape(n, args.size, f, args.size, f, 3).mean(axis=(2, 4)) / 255.0
    tr, te, pool = slice(0, args.train), slice(n - args.test, n), slice(0, n - args.test)
    arch = A.cntk(args.depth, "global_avg_pool")
    kern = functools.partial(nc.kernel, arch, get=("ntk",), threads=args.threads)
    codes = one_hot(y[tr], 10)
    std = Standardize.fit(x[tr])
    zca = ZCA.fit(x[pool], 0.1)
    zstd = Standardize.fit(zca(x[tr]))
    inputs = {"standardised": std(x), "ZCA 0.1 + std": zstd(zca(x))}
    print(f"CNTK-GAP-{args.depth}, {args.size}x{args.size} CIFAR-10, {args.train} train / "
          f"{args.test} test, "
          f"ZCA fit on {n - args.test} images, λ = {args.lam:g} mean diag")
    print(f"{'inputs':16s} {'kernel':10s} {'test acc':>9s} {'seconds':>8s}")
    right = {}
    for name, z in inputs.items():
        t = time.perf_counter()
        plain = kern(z[tr]), kern(z[te], z[tr])
        rows = {"plain": (plain, time.perf_counter() - t)}
        t = time.perf_counter()
        flip = (flip_symmetrized(kern, z[tr], plain=plain[0]),
                flip_symmetrized(kern, z[te], z[tr], plain=plain[1]))
        rows["flip-sym"] = (flip, time.perf_counter() - t)
        for how, ((ktr, kte), sec) in rows.items():
            pred = kernel_ridge(ktr["ntk"], codes, kte["ntk"], lam=args.lam, relative=True)
            right[name, how] = np.argmax(pred, axis=1) == y[te]
            print(f"{name:16s} {how:10s} {right[name, how].mean():9.4f} {sec:8.1f}",
                  flush=True)
    print("paired differences (same test images), ± standard error:")
    for a, b in ((("standardised", "flip-sym"), ("standardised", "plain")),
                 (("ZCA 0.1 + std", "flip-sym"), ("ZCA 0.1 + std", "plain")),
                 (("ZCA 0.1 + std", "plain"), ("standardised", "plain")),
                 (("ZCA 0.1 + std", "flip-sym"), ("standardised", "flip-sym"))):
        d = right[a].astype(float) - right[b]
        se = d.std(ddof=1) / np.sqrt(len(d))
        print(f"  {' '.join(a):26s} - {' '.join(b):26s} {d.mean():+.4f} ± {se:.4f}")


if __name__ == "__main__":
    main()

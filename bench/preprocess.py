"""Flip-symmetrised and ZCA-whitened CNTK kernels on the CIFAR-10 subset: test accuracy of
kernel ridge regression against the plain kernel, same split.

Data: the first n_train + n_test CIFAR-10 training images of ``../shared/data``, 2x2-averaged
to 16x16 (the 32x32 CNTK-GAP costs ~34 ms per entry here), /255. Preprocessing, fit on the
train part only: per-channel standardisation (Arora et al. 2019) for every row; ZCA rows
whiten whole images with strength 0.1 (Shankar et al. 2020), then standardise per channel.
Kernel: CNTK-GAP-``depth`` (3x3 SAME convs, ReLU, global average pooling; NTK). The ridge λ
and the readout are the same for every row: λ = 1e-3 · mean diag K (relative), one-hot codes
0.9 / -0.1, argmax.

    python bench/preprocess.py [--train 400] [--test 200] [--depth 3]
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
    args = ap.parse_args()
    n = args.train + args.test
    x, y = cifar10(n)
    x = x.reshape(n, 16, 2, 16, 2, 3).mean(axis=(2, 4)) / 255.0
    tr, te = slice(0, args.train), slice(args.train, n)
    arch = A.cntk(args.depth, "global_avg_pool")
    kern = functools.partial(nc.kernel, arch, get=("ntk",))
    codes = one_hot(y[tr], 10)
    std = Standardize.fit(x[tr])
    zca = ZCA.fit(x[tr], 0.1)
    zstd = Standardize.fit(zca(x[tr]))
    inputs = {"standardised": std(x), "ZCA 0.1 + std": zstd(zca(x))}
    print(f"CNTK-GAP-{args.depth}, 16x16 CIFAR-10, {args.train} train / {args.test} test, "
          f"λ = {args.lam:g} mean diag")
    print(f"{'inputs':16s} {'kernel':10s} {'test acc':>9s} {'seconds':>8s}")
    for name, z in inputs.items():
        for how in ("plain", "flip-sym"):
            t = time.perf_counter()
            if how == "plain":
                ktr, kte = kern(z[tr])["ntk"], kern(z[te], z[tr])["ntk"]
            else:
                ktr = flip_symmetrized(kern, z[tr])["ntk"]
                kte = flip_symmetrized(kern, z[te], z[tr])["ntk"]
            pred = kernel_ridge(ktr, codes, kte, lam=args.lam, relative=True)
            acc = float(np.mean(np.argmax(pred, axis=1) == y[te]))
            print(f"{name:16s} {how:10s} {acc:9.4f} {time.perf_counter() - t:8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()

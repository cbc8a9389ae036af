"""Model selection on scikit-learn's bundled small-data sets: does ``select`` choose well,
and does a wider family help or overfit?

Protocol (stated in the README): for each data set, 8 random stratified splits into half
train / half test (features standardised on the train half); on the train half only,
``ntkcompute.select`` ranks every candidate by its closed-form leave-one-out accuracy (ties:
leave-one-out squared error), and the chosen (kernel, depth, b_std, variant, λ) is refit on
the whole
train half and scored on the test half. The test half never enters the choice. Search
spaces, each containing the one before:

- ``NTK d3``: the 3-hidden-layer ReLU NTK, 15 λ from 1e-6 to 10 (relative to mean diag K);
- ``+ depth``: depths 1 to 5 (one family pass);
- ``+ NNGP``: the NNGP of each depth too;
- ``+ b_std``: all of that for b_std 0 and 1 (two passes);
- ``+ fixed``: all of that and each NTK with its first v layers fixed, 1 <= v < depth
  (Arora et al. 2020's "fixed bottom layers", L' < L: the same two passes, ``variants``).

Prints, per data set and space, the mean test accuracy over the splits with its standard
error, and the mean leave-one-out accuracy of the chosen candidate.

    python bench/selection.py [--splits 8]
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.model_selection import StratifiedShuffleSplit

import ntkcompute as nc
from ntkcompute.datasets import digits
from ntkcompute.regression import Eigen, one_hot


def fc_family(b_std: float) -> dict:
    dense = {"type": "dense", "W_std": 2 ** 0.5, "b_std": b_std}
    return {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
        dense, {"type": "relu"}]}}, dense]}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        x, y = digits()
        return x.reshape(len(x), -1).astype(np.float64), y
    loader = {"iris": load_iris, "wine": load_wine, "breast cancer": load_breast_cancer}[name]
    x, y = loader(return_X_y=True)
    return x.astype(np.float64), y


DEPTHS = (1, 2, 3, 4, 5)
#: space -> (depths, kinds, b_stds, variants of the NTK)
SPACES = {"NTK d3": ((3,), ("ntk",), (0.0,), (0,)),
          "+ depth": (DEPTHS, ("ntk",), (0.0,), (0,)),
          "+ NNGP": (DEPTHS, ("ntk", "nngp"), (0.0,), (0,)),
          "+ b_std": (DEPTHS, ("ntk", "nngp"), (0.0, 1.0), (0,)),
          "+ fixed": (DEPTHS, ("ntk", "nngp"), (0.0, 1.0), (0, 1, 2, 3, 4))}


def one_split(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
              ) -> dict[str, tuple[float, float]]:
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
    z = (x - mu) / np.where(sd > 0, sd, 1.0)
    xtr, xte = z[train], z[test]
    kernels: dict[str, np.ndarray] = {}
    cross: dict[str, np.ndarray] = {}
    for b in (0.0, 1.0):
        fam = nc.make_family(fc_family(b), DEPTHS, variants=range(max(DEPTHS)))
        k, kc = nc.kernel_family(fam, xtr), nc.kernel_family(fam, xte, xtr)
        for i, d in enumerate(fam.depths):
            kernels[f"nngp d{d} b{b:g}"] = k["nngp"][i]
            cross[f"nngp d{d} b{b:g}"] = kc["nngp"][i]
            for j, v in enumerate(fam.variants):
                kernels[f"ntk d{d} b{b:g} v{v}"] = k["ntk"][i, j]
                cross[f"ntk d{d} b{b:g} v{v}"] = kc["ntk"][i, j]
    codes = one_hot(y[train], int(y.max()) + 1)
    out = {}
    for space, (depths, kinds, bs, vs) in SPACES.items():
        names = [f"nngp d{d} b{b:g}" if kind == "nngp" else f"ntk d{d} b{b:g} v{v}"
                 for b in bs for kind in kinds for d in depths
                 for v in (vs if kind == "ntk" else (0,)) if v < d or v == 0]
        sel = nc.select({n: kernels[n] for n in names}, y[train])
        best = sel.best["name"]
        coef = Eigen.of(kernels[best]).solve(codes, sel.best["lam_absolute"])
        acc = float(np.mean(np.argmax(cross[best] @ coef, axis=1) == y[test]))
        out[space] = (acc, sel.best["accuracy"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=8)
    args = ap.parse_args()
    print(f"{'data':14s} {'n':>5s} {'space':9s} {'test acc':>9s} {'± se':>6s} "
          f"{'LOO acc':>8s}")
    for name in ("iris", "wine", "breast cancer", "digits"):
        x, y = load(name)
        splits = StratifiedShuffleSplit(args.splits, test_size=0.5, random_state=0)
        res = [one_split(x, y, tr, te) for tr, te in splits.split(x, y)]
        for space in SPACES:
            test = np.array([r[space][0] for r in res])
            loo = np.mean([r[space][1] for r in res])
            print(f"{name:14s} {len(x):5d} {space:9s} {test.mean():9.4f} "
                  f"{test.std(ddof=1) / np.sqrt(len(test)):6.4f} {loo:8.4f}", flush=True)


if __name__ == "__main__":
    main()

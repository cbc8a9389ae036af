"""The README's pictures, from scratch: ``python bench/plots.py [OUT_DIR]`` (docs/img).

Every picture is drawn by :mod:`ntkcompute.plot` from numbers computed here by the library:
scikit-learn's digits (8x8) with a CNTK and an FC NTK; the predictive distribution of one
test output against 256 finite-width networks trained by full-batch gradient descent
(``tests/gd_nets.py``, a NumPy trainer independent of the library). About a minute.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ntkcompute import architectures as A
from ntkcompute import kernel, plot, stax
from ntkcompute.datasets import digits
from ntkcompute.predict import Ensemble
from ntkcompute.regression import Eigen, gd_predictions, learning_curves, one_hot
from tests.gd_nets import train_ensemble


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    x, y = digits()
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:600], perm[600:900]
    archs = {"CNTK-2 (flatten)": A.cntk(2, "flatten"), "FC-3 ReLU": A.fc(3)}
    flat = x.reshape(len(x), -1)
    ks = {name: kernel(arch, (flat if name.startswith("FC") else x)[tr], get="ntk")["ntk"]
          for name, arch in archs.items()}

    ax = None
    for name, k in ks.items():
        ax = plot.spectrum(np.linalg.eigvalsh(k), ax=ax, label=name)
    ax.set_title("NTK spectrum, 600 digits")
    ax.figure.savefig(os.path.join(out, "spectrum.png"), dpi=110)

    k = ks["CNTK-2 (flatten)"]
    eig = Eigen.of(k)
    Y = one_hot(y[tr], 10)
    times = np.geomspace(1e-4, 1e2, 60)
    s, U = eig.s[::-1][:200], eig.U[:, ::-1][:, :200]
    curves = learning_curves(s, U, Y, times.tolist())
    ax = plot.learning_curves(curves, times, s, directions=[0, 4, 19, 49, 99, 199])
    ax.set_title("CNTK-2 on digits: residual per eigendirection")
    ax.figure.savefig(os.path.join(out, "learning_curves.png"), dpi=110)

    kc = kernel(archs["CNTK-2 (flatten)"], x[te], x[tr], get="ntk")["ntk"]
    ts = np.concatenate([[0.0], np.geomspace(1e-4, 1e3, 40)])
    preds = gd_predictions(eig, kc, Y, ts.tolist())
    err = [float(np.mean(p.argmax(1) != y[te])) for p in preds]
    ax = plot.gd_error(ts, err, label="CNTK-2, 600 train / 300 test")
    ax.figure.savefig(os.path.join(out, "gd_error.png"), dpi=110)

    order = np.argsort(y[tr][:200], kind="stable")
    ax = plot.heatmap(k[:200, :200], order=order, title="CNTK-2 NTK, 200 digits by class")
    ax.figure.savefig(os.path.join(out, "heatmap.png"), dpi=110)

    ensemble_figure(out)
    print("wrote", ", ".join(sorted(os.listdir(out))), "to", out)


def ensemble_figure(out: str) -> None:
    """One test output of 256 GD-trained width-512 nets against the NTK Gaussian."""
    rng = np.random.default_rng(1)
    xtr, xte = rng.standard_normal((10, 4)), rng.standard_normal((6, 4))
    ytr = np.sin(xtr[:, 0] + 0.5 * xtr[:, 1])
    w_std, b_std = 1.5, 0.3
    _, _, kernel_fn = stax.serial(stax.Dense(512, w_std, b_std), stax.Relu(),
                                  stax.Dense(1, w_std, b_std))
    kdd, ktd, ktt = kernel_fn(xtr, None), kernel_fn(xte, xtr), kernel_fn(xte, None, "nngp")
    lr = 0.05 / np.linalg.eigvalsh(kdd.ntk)[-1]
    steps = np.unique(np.geomspace(1, 2000, 30).astype(int))
    steps = np.concatenate([[0], steps])
    g = Ensemble(kdd.nngp, kdd.ntk, ytr).predict(steps * lr, ktd, ktt, get="ntk",
                                                 compute_cov=True)["ntk"]
    f = train_ensemble(xtr, ytr, xte, width=512, members=256, lr=lr, steps=list(steps),
                       w_std=w_std, b_std=b_std, seed=512)
    point = 0
    ax = plot.ensemble(steps * lr, g.mean[:, point, 0], g.covariance[:, point, point],
                       samples=f[:, :, point])
    ax.set_title("one test output: 256 GD-trained nets (width 512) vs the NTK ensemble")
    ax.figure.savefig(os.path.join(out, "ensemble.png"), dpi=110)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("docs", "img"))

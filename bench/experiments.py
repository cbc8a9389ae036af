"""The seed papers' analyses as runnable experiments, one command each, each with a plot.

    python bench/experiments.py width [OUT_DIR]   # empirical-NTK error vs width and depth
    python bench/experiments.py bound [OUT_DIR]   # Arora et al. 2019's bound, true vs random labels
    python bench/experiments.py spectral [OUT_DIR]  # spectral bias: exact NTK vs GD-trained nets

``width`` (Jacot et al. 2018, Thm 1): the empirical NTK of one random ReLU net at
initialisation converges to the exact NTK as the width grows. For FC ReLU nets of depth 1, 2
and 4 (NTK parameterization, W_std = √2, b_std = 0.1), on 16 digits images (flattened,
standardised), the relative Frobenius error ``‖Θ_width - Θ‖ / ‖Θ‖`` averaged over 4 seeds at
widths 32 to 4096. Fluctuations fall like width^-1/2 and grow with depth (Hanin & Nica
2019: variance ~ depth / width).

``bound`` (Arora et al. 2019, Fig. 1): the data-dependent complexity ``sqrt(2 yᵀ H⁻¹ y / n)``
of two-layer ReLU nets, H the NTK Gram of inputs on the unit sphere, tells true labels from
random ones. MNIST digits 0 and 1 of ``../shared/data`` (n = 1000 train, 1000 test, labels
±1); a fraction p of the training labels is replaced by fair coin flips; the bound and the
test error of kernel regression with H (λ = 1e-6 mean diag) against p, 5 seeds.

``spectral`` (Jacot et al. 2018 Sec. 5, Lee et al. 2019; the seed's spectral bias): under
gradient descent with step η the training residual along the NTK's i-th eigenvector decays
as ``(1 - η s_i)^k`` after k steps, fast along large eigenvalues. On 100 digits images
(standardised, target: the indicator of the digit 0, centred), the exact prediction against
8 two-layer ReLU nets of width 2048 trained by full-batch GD (``tests/gd_nets.py``, a NumPy
trainer independent of the library, η = 1/s_max): ``E (u_iᵀ r_k)² / E (u_iᵀ r_0)²`` over the
nets for directions 1, 5, 20, 60.

Writes ``OUT_DIR/<name>.png`` (default docs/img) and prints the numbers.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.datasets import digits, mnist
from ntkcompute.preprocess import Standardize
from ntkcompute.regression import Eigen, generalization_bound


def _figure(size=(5.0, 3.6)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def width(out: str) -> None:
    x, _ = digits()
    x = x.reshape(len(x), -1)[:16]
    x = Standardize.fit(x)(x)
    widths = [32, 64, 128, 256, 512, 1024, 2048, 4096]
    fig, ax = _figure()
    print(f"{'depth':>5s} " + " ".join(f"{w:>7d}" for w in widths) + "   slope")
    for depth in (1, 2, 4):
        arch = A.fc(depth, b_std=0.1)
        exact = nc.kernel(arch, x, get="ntk")["ntk"]
        errs = []
        for w in widths:
            e = [np.linalg.norm(nc.empirical_kernel(arch, x, width=w, seed=s)["ntk"] - exact)
                 / np.linalg.norm(exact) for s in range(4)]
            errs.append(float(np.mean(e)))
        slope = float(np.polyfit(np.log(widths), np.log(errs), 1)[0])
        print(f"{depth:5d} " + " ".join(f"{e:7.4f}" for e in errs) + f"   {slope:5.2f}",
              flush=True)
        ax.loglog(widths, errs, "o-", label=f"depth {depth} (slope {slope:.2f})")
    ref = np.array(widths, dtype=float)
    ax.loglog(ref, errs[0] * (ref / ref[0]) ** -0.5, "k:", label="width$^{-1/2}$")
    ax.set_xlabel("width")
    ax.set_ylabel("‖Θ_width - Θ‖ / ‖Θ‖")
    ax.set_title("Empirical NTK → exact NTK (FC ReLU, digits)")
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, "ntk_width.png"), dpi=110)


def bound(out: str) -> None:
    xtr, ytr = mnist("train", 6000)
    xte, yte = mnist("test", 3000)

    def pick(x, y, n):
        keep = np.flatnonzero(y <= 1)[:n]
        z = x[keep].reshape(len(keep), -1).astype(np.float64)
        z /= np.linalg.norm(z, axis=1, keepdims=True)  # the unit sphere (Arora et al.)
        return z * np.sqrt(z.shape[1]), np.where(y[keep] == 1, 1.0, -1.0)  # K₀ = <x,x'>

    xtr, ytr = pick(xtr, ytr, 1000)
    xte, yte = pick(xte, yte, 1000)
    arch = A.fc(1, b_std=None)  # two-layer ReLU net: one hidden layer
    h = nc.kernel(arch, xtr, get="ntk")["ntk"]
    hc = nc.kernel(arch, xte, xtr, get="ntk")["ntk"]
    eig = Eigen.of(h)
    ps = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    rng = np.random.default_rng(0)
    rows = []
    for p in ps:
        b, err = [], []
        for _ in range(5):
            y = ytr.copy()
            flip = rng.random(len(y)) < p
            y[flip] = rng.choice([-1.0, 1.0], size=int(flip.sum()))
            b.append(generalization_bound(eig, y))
            pred = hc @ eig.solve(y, 1e-6 * eig.mean_diag)
            err.append(float(np.mean(np.sign(pred) != yte)))
        rows.append((p, np.mean(b), np.std(b), np.mean(err), np.std(err)))
    print(f"{'p random':>8s} {'bound':>8s} {'± sd':>6s} {'test err':>9s} {'± sd':>6s}")
    for r in rows:
        print(f"{r[0]:8.1f} {r[1]:8.3f} {r[2]:6.3f} {r[3]:9.4f} {r[4]:6.4f}")
    fig, ax = _figure()
    r = np.array(rows)
    ax.errorbar(r[:, 0], r[:, 1], r[:, 2], fmt="o-", label="sqrt(2 yᵀH⁻¹y / n)")
    ax.set_xlabel("fraction of random training labels")
    ax.set_ylabel("complexity")
    ax2 = ax.twinx()
    ax2.errorbar(r[:, 0], r[:, 3], r[:, 4], fmt="s--", color="C1", label="test error")
    ax2.set_ylabel("test error", color="C1")
    ax.set_title("MNIST 0 vs 1, two-layer ReLU NTK, n = 1000")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(os.path.join(out, "bound_random_labels.png"), dpi=110)


def spectral(out: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.gd_nets import train_ensemble

    x, y = digits()
    x = x.reshape(len(x), -1)[:100]
    x = Standardize.fit(x)(x)
    target = (y[:100] == 0).astype(np.float64)
    target -= target.mean()
    w_std, b_std = 1.5, 0.1
    k = nc.kernel(A.fc(1, w_std, b_std), x, get="ntk")["ntk"]
    s, u = np.linalg.eigh(k)
    s, u = s[::-1], u[:, ::-1]
    lr = 1.0 / s[0]
    steps = [0, 3, 10, 30, 100, 300, 1000, 3000]
    f = train_ensemble(x, target, x, width=2048, members=8, lr=lr, steps=steps,
                       w_std=w_std, b_std=b_std, seed=0)  # (len(steps), 8, n)
    proj = np.einsum("tmn,ni->tmi", f - target, u) ** 2  # per net, per direction
    measured = proj.mean(axis=1) / proj[0].mean(axis=0)  # (len(steps), n)
    dirs = [0, 4, 19, 59]
    fig, ax = _figure()
    ks = np.array(steps, dtype=float)
    print(f"{'direction':>9s} {'eigenvalue':>11s} " + " ".join(f"{k:>7d}" for k in steps))
    for c, i in enumerate(dirs):
        exact = (1.0 - lr * s[i]) ** (2 * ks)
        print(f"{i + 1:9d} {s[i]:11.4g} " + " ".join(f"{v:7.3f}" for v in measured[:, i]))
        print(f"{'exact':>21s} " + " ".join(f"{v:7.3f}" for v in exact))
        ax.semilogx(ks[1:], exact[1:], "-", color=f"C{c}",
                    label=f"u{i + 1}: s = {s[i]:.3g}")
        ax.semilogx(ks[1:], measured[1:, i], "o", color=f"C{c}")
    ax.set_xlabel("GD steps (η = 1/s_max)")
    ax.set_ylabel("residual² along u_i, relative")
    ax.set_title("Spectral bias: exact NTK (lines) vs 8 nets of width 2048 (dots)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, "spectral_bias.png"), dpi=110)


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "img")
    run = {"width": width, "bound": bound, "spectral": spectral}
    if what not in run:
        raise SystemExit(f"usage: python bench/experiments.py {{{'|'.join(run)}}} [OUT_DIR]")
    os.makedirs(out, exist_ok=True)
    run[what](out)


if __name__ == "__main__":
    main()

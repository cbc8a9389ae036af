"""Pictures of kernels and of what training on them does (matplotlib, the ``plot`` extra).

Each function draws on an ``Axes`` it is given (or on a new ``Figure``'s) and returns the
``Axes``; nothing here touches pyplot's global state or a display, so it runs on headless
workers. ``fig.savefig(path)`` on ``ax.figure`` writes the picture. Inputs are arrays (from
:func:`ntkcompute.kernel`, :mod:`ntkcompute.regression`, :mod:`ntkcompute.predict` or a
stored solve's analyses), so the same pictures come from in-process results, a store and the
service (``ntk plot``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _axes(ax: Any = None, size: tuple[float, float] = (5.0, 3.6)) -> Any:
    if ax is not None:
        return ax
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - the extra is missing
        raise ImportError("ntkcompute.plot needs matplotlib: pip install "
                          "'ntkcompute[plot]'") from None
    return Figure(figsize=size, layout="constrained").add_subplot()


def spectrum(eigenvalues: Any, *, ax: Any = None, label: str | None = None,
             relative: bool = True) -> Any:
    """Eigenvalues (any order) of a kernel, descending, on log-log axes; ``relative``
    divides by the largest (the decay's shape, comparable across kernels)."""
    s = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    s = s[s > 0]
    ax = _axes(ax)
    ax.loglog(np.arange(1, len(s) + 1), s / s[0] if relative and len(s) else s, label=label)
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("λᵢ / λ₁" if relative else "λᵢ")
    ax.set_title("kernel spectrum")
    if label:
        ax.legend()
    return ax


def learning_curves(curves: Any, times: Sequence[float], eigenvalues: Any | None = None, *,
                    ax: Any = None, directions: Sequence[int] | None = None) -> Any:
    """Per-eigendirection training error ``(uᵢᵀ y)² e^{−2 η λᵢ t}`` against t.

    ``curves``: (T, k) from :func:`ntkcompute.regression.learning_curves` (or a solve's
    ``analyses["learning_curves"]``); each direction's curve, normalised by its value at
    the first time, so they differ only by rate: direction i is learned at a rate ∝ λᵢ
    (the spectral bias). ``directions``: which columns (default up to 6, log-spaced).
    """
    c = np.asarray(curves, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    k = c.shape[1]
    cols = list(directions) if directions is not None else sorted(
        {int(i) for i in np.unique(np.geomspace(1, k, min(k, 6)).round().astype(int) - 1)})
    ax = _axes(ax)
    for i in cols:
        base = c[0, i] if c[0, i] > 0 else 1.0
        lab = f"u{i + 1}" + ("" if eigenvalues is None
                             else f" (λ = {np.asarray(eigenvalues)[i]:.3g})")
        ax.semilogx(np.where(t > 0, t, np.nan), c[:, i] / base, label=lab)
    ax.set_xlabel("training time t")
    ax.set_ylabel("residual along uᵢ (relative)")
    ax.set_title("learning curves per eigendirection")
    ax.legend(fontsize="small")
    return ax


def gd_error(times: Sequence[float], errors: Sequence[float], *, ax: Any = None,
             label: str | None = None, metric: str = "test error") -> Any:
    """Test error (or accuracy, MSE) of the network trained by gradient flow for time t,
    e.g. from a solve's ``analyses["gd"]``; t = 0 drawn at the left edge."""
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    ax = _axes(ax)
    pos = t > 0
    ax.semilogx(t[pos], e[pos], marker="o", ms=3, label=label)
    if (~pos).any():
        ax.axhline(e[~pos][0], ls=":", lw=0.8, color="gray", label="t = 0")
    ax.set_xlabel("training time t")
    ax.set_ylabel(metric)
    ax.set_title(f"gradient flow: {metric} against t")
    if label or (~pos).any():
        ax.legend(fontsize="small")
    return ax


def heatmap(k: Any, *, ax: Any = None, order: Any | None = None,
            title: str = "kernel", normalize: bool = True) -> Any:
    """The Gram matrix as an image; ``order`` permutes rows and columns (e.g. by class, so
    blocks show), ``normalize`` shows ``K_ij / sqrt(K_ii K_jj)`` (the cosine) when the
    matrix is square."""
    a = np.asarray(k, dtype=np.float64)
    if order is not None:
        o = np.asarray(order)
        a = a[np.ix_(o, o)] if a.shape[0] == a.shape[1] else a[o]
    if normalize and a.shape[0] == a.shape[1]:
        d = np.sqrt(np.clip(np.diagonal(a), 1e-300, None))
        a = a / d[:, None] / d[None, :]
    ax = _axes(ax, (4.6, 4.0))
    im = ax.imshow(a, cmap="viridis", interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title + (" (cosine)" if normalize and a.shape[0] == a.shape[1] else ""))
    ax.set_xlabel("j")
    ax.set_ylabel("i")
    return ax


def ensemble(times: Sequence[float], mean: Any, variance: Any, *, ax: Any = None,
             samples: Any | None = None, label: str = "NTK ensemble") -> Any:
    """One test output through training: the ensemble's mean ± 2 sd against t (mean,
    variance: (T,)), over ``samples`` (T, E) of finite networks' outputs if given."""
    t = np.asarray(times, dtype=np.float64)
    mu = np.asarray(mean, dtype=np.float64)
    sd = np.sqrt(np.maximum(np.asarray(variance, dtype=np.float64), 0.0))
    ax = _axes(ax)
    if samples is not None:
        f = np.asarray(samples, dtype=np.float64)
        ax.plot(t, f[:, : min(f.shape[1], 40)], color="gray", lw=0.4, alpha=0.5)
        ax.plot(t, f.mean(1), color="black", lw=1, ls="--", label="finite nets: mean")
        ax.plot(t, f.mean(1) + 2 * f.std(1), color="black", lw=0.8, ls=":",
                label="finite nets: ± 2 sd")
        ax.plot(t, f.mean(1) - 2 * f.std(1), color="black", lw=0.8, ls=":")
    ax.plot(t, mu, color="C0", lw=2, label=f"{label}: mean")
    ax.fill_between(t, mu - 2 * sd, mu + 2 * sd, color="C0", alpha=0.25,
                    label=f"{label}: ± 2 sd")
    ax.set_xlabel("training time t")
    ax.set_ylabel("f(x*)")
    ax.set_title("predictive distribution of one test output")
    ax.legend(fontsize="small")
    return ax

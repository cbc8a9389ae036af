"""ntkcompute.plot: each picture draws exactly the numbers it is given."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from ntkcompute import plot
from ntkcompute.regression import Eigen, learning_curves


def _kernel(n=30, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 5))
    return x @ x.T / 5 + 0.1 * np.eye(n)


def test_spectrum_and_heatmap_draw_the_kernel(tmp_path):
    k = _kernel()
    s = np.linalg.eigvalsh(k)
    ax = plot.spectrum(s, label="k")
    x, y = ax.lines[0].get_data()
    np.testing.assert_allclose(y, np.sort(s)[::-1] / s.max())
    np.testing.assert_array_equal(x, np.arange(1, len(s) + 1))
    order = np.argsort(np.diagonal(k))
    ax = plot.heatmap(k, order=order)
    shown = ax.images[0].get_array()
    d = np.sqrt(np.diagonal(k))[order]
    np.testing.assert_allclose(shown, k[np.ix_(order, order)] / d[:, None] / d[None, :])
    ax.figure.savefig(tmp_path / "h.png")
    img = imread(tmp_path / "h.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img[..., :3].std() > 0.05


def test_learning_curves_gd_error_and_ensemble():
    k = _kernel()
    eig = Eigen.of(k)
    y = np.random.default_rng(1).standard_normal(30)
    times = [0.0, 0.1, 1.0, 10.0]
    curves = learning_curves(eig.s[::-1], eig.U[:, ::-1], y, times)
    ax = plot.learning_curves(curves, times, eig.s[::-1], directions=[0, 5])
    assert len(ax.lines) == 2
    _, c0 = ax.lines[0].get_data()
    np.testing.assert_allclose(c0, curves[:, 0] / curves[0, 0])
    assert "λ =" in ax.get_legend().get_texts()[0].get_text()
    ax = plot.gd_error([0.0, 1.0, 10.0], [0.9, 0.3, 0.1])
    x, y = ax.lines[0].get_data()
    np.testing.assert_array_equal(x, [1.0, 10.0])
    np.testing.assert_array_equal(y, [0.3, 0.1])
    assert ax.lines[1].get_ydata()[0] == 0.9  # t = 0 as a level line
    samples = np.random.default_rng(2).standard_normal((3, 50))
    ax = plot.ensemble([0, 1, 2], [0.0, 0.5, 0.6], [1.0, 0.5, 0.25], samples=samples)
    band = ax.collections[0].get_paths()[0].vertices
    at2 = band[np.isclose(band[:, 0], 2.0), 1]  # mean ± 2 sd: 0.6 ± 2·0.5
    assert np.isclose(at2.max(), 1.6) and np.isclose(at2.min(), -0.4)
    assert np.isclose(band[:, 1].min(), -2.0)

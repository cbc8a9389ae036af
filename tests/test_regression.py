"""Direct solves, λ sweeps, gradient-flow predictions, the bound and the spectrum."""

import numpy as np
import pytest

from ntkcompute.regression import (
    Eigen,
    gd_predictions,
    generalization_bound,
    kernel_ridge,
    learning_curves,
    one_hot,
    solve_direct,
    spectrum,
)


def _psd(rng, n):
    a = rng.standard_normal((n, n + 5))
    return a @ a.T / n


def test_sweep_reuses_one_decomposition_and_matches_direct(rng):
    K = _psd(rng, 40)
    Y = rng.standard_normal((40, 3))
    eig = Eigen.of(K)
    for lam, coef in zip([1e-3, 1e-1, 10.0], eig.sweep(Y, [1e-3, 1e-1, 10.0]), strict=True):
        np.testing.assert_allclose(coef, solve_direct(K, Y, lam), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(eig.solve(Y, lam), coef, rtol=1e-12)


def test_gradient_flow_starts_at_zero_and_converges_to_regression(rng):
    K = _psd(rng, 30) + 0.1 * np.eye(30)
    Kc = rng.standard_normal((7, 30))
    Y = one_hot(rng.integers(0, 4, 30), 4)
    eig = Eigen.of(K)
    f = gd_predictions(eig, Kc, Y, [0.0, 1.0, 10.0, 1e3, 1e6])
    assert np.array_equal(f[0], np.zeros((7, 4)))
    limit = Kc @ np.linalg.solve(K, Y)
    errs = [np.abs(fi - limit).max() for fi in f]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[-1] < 1e-8 * np.abs(limit).max()
    # dense check at a finite time: K⁻¹(I - expm(-ηKt)) Y
    from scipy.linalg import expm

    t, lr = 2.0, 0.3
    dense = Kc @ np.linalg.solve(K, (np.eye(30) - expm(-lr * K * t)) @ Y)
    np.testing.assert_allclose(gd_predictions(eig, Kc, Y, [t], lr)[0], dense, rtol=1e-8,
                               atol=1e-10)


def test_bound_and_spectrum_agree_with_dense_numpy(rng):
    K = _psd(rng, 50) + 0.05 * np.eye(50)
    y = np.sign(rng.standard_normal(50))
    b = generalization_bound(Eigen.of(K), y)
    assert abs(b - np.sqrt(2 * y @ np.linalg.solve(K, y) / 50)) < 1e-10 * b
    s, U = spectrum(K, 5)
    ref = np.sort(np.linalg.eigvalsh(K))[::-1][:5]
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_allclose(np.abs(U.T @ U), np.eye(5), atol=1e-10)
    np.testing.assert_allclose(K @ U, U * s, atol=1e-9)


def test_learning_curves_decay_at_eigenvalue_rates(rng):
    K = _psd(rng, 20)
    y = rng.standard_normal(20)
    s, U = spectrum(K, 20)
    c = learning_curves(s, U, y, [0.0, 1.0])
    np.testing.assert_allclose(c[0].sum(), y @ y, rtol=1e-12)  # all error at t = 0
    np.testing.assert_allclose(c[1] / c[0], np.exp(-2 * s), rtol=1e-10)


def test_kernel_ridge_predicts(rng):
    K = _psd(rng, 25) + np.eye(25)
    Y = rng.standard_normal((25, 2))
    np.testing.assert_allclose(kernel_ridge(K, Y, K, lam=1e-12, relative=True), Y, atol=1e-6)
    for legacy in ({"reg": 1e-3}, {}):  # the old relative reg= fails loudly, never silently
        with pytest.raises(TypeError, match="relative=True"):
            kernel_ridge(K, Y, K, **legacy)
    with pytest.raises(TypeError, match=r"lam=0\.001, relative=True"):
        kernel_ridge(K, Y, K, 1e-3)

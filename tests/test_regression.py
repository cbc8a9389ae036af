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


def test_direct_and_sweep_refuse_an_indefinite_kernel_naming_the_cause():
    from ntkcompute.errors import NotPositiveDefinite
    from ntkcompute.regression import Eigen, generalization_bound
    from tests.indefinite import constructed

    K = constructed(low=-1e-3)
    Y = np.ones((len(K), 2))
    md = float(np.mean(np.diag(K)))
    low = float(np.linalg.eigvalsh(K)[0])
    with pytest.raises(NotPositiveDefinite, match="Cholesky") as e:
        solve_direct(K, Y, 1e-4, relative=True)
    assert e.value.min_eigenvalue == pytest.approx(low, rel=1e-8)
    assert "-0.001·mean(diag K)" in str(e.value)  # how far λ must go, in the user's units
    eig = Eigen.of(K)
    assert eig.negative == 1 and eig.min_eigenvalue == pytest.approx(low, rel=1e-8)
    with pytest.raises(NotPositiveDefinite, match="λ sweep"):
        eig.sweep(Y, [1e-2, 1e-4], relative=True)  # the second λ is too small
    for use in (lambda: generalization_bound(eig, Y), lambda: eig.gd_coefficients(Y, 1.0)):
        with pytest.raises(NotPositiveDefinite):
            use()
    # λ above -λmin: well posed, and the same numbers as Cholesky
    ok = eig.sweep(Y, [2e-3], relative=True)[0]
    np.testing.assert_allclose(ok, solve_direct(K, Y, 2e-3 * md), rtol=1e-8)


def test_eigen_clamps_only_rounding_and_says_so(rng):
    from ntkcompute.regression import Eigen

    a = rng.standard_normal((60, 20))
    K = a @ a.T  # rank 20: 40 eigenvalues are rounding noise around 0
    eig = Eigen.of(K)
    raw = np.linalg.eigh(K)[0]  # the same LAPACK driver as Eigen.of
    assert eig.negative == 0 and eig.clamped == int((raw < 0).sum()) > 0
    assert eig.clamped_by == pytest.approx(-raw.min())
    assert (eig.s >= 0).all() and eig.report()["clamped"] == eig.clamped
    np.testing.assert_allclose(eig.solve(np.ones(60), 1.0), solve_direct(K, np.ones(60), 1.0),
                               rtol=1e-9)


def test_lanczos_min_eigenvalue_matches_eigh():
    from ntkcompute.regression import min_eigenvalue
    from tests.indefinite import constructed

    K = constructed(low=-1e-3)
    md = float(np.mean(np.diag(K)))
    est = min_eigenvalue(lambda V: K @ V, len(K), scale=md)
    assert est["converged"] and est["matvecs"] < len(K)
    assert est["value"] == pytest.approx(np.linalg.eigvalsh(K)[0], rel=1e-4)
    assert est["relative"] == pytest.approx(-1e-3, rel=1e-3)

"""Predictive distributions (ntkcompute.predict): closed forms, limits, the ODE, and an
ensemble of finite-width networks trained by gradient descent (Lee et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

from ntkcompute import predict, stax
from ntkcompute.errors import InputError
from ntkcompute.predict import Ensemble

from .gd_nets import train_ensemble

W_STD, B_STD = 1.5, 0.3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    x_train, x_test = rng.standard_normal((10, 4)), rng.standard_normal((6, 4))
    y_train = np.sin(x_train[:, 0] + 0.5 * x_train[:, 1])
    _, _, kernel_fn = stax.serial(stax.Dense(512, W_STD, B_STD), stax.Relu(),
                                  stax.Dense(1, W_STD, B_STD))
    return dict(x_train=x_train, x_test=x_test, y=y_train, kernel_fn=kernel_fn,
                dd=kernel_fn(x_train, None), td=kernel_fn(x_test, x_train),
                tt=kernel_fn(x_test, None, "nngp"))


def _expm_gain(k, t):
    """Θ⁻¹ (I − e^{−Θ t}) by scipy's matrix exponential (no eigendecomposition)."""
    return np.linalg.solve(k, np.eye(len(k)) - sla.expm(-k * t))


def test_infinite_time_is_the_closed_form_posterior(problem):
    k, kn, kt, tt, y = (problem["dd"].nngp, problem["dd"].ntk, problem["td"], problem["tt"],
                        problem["y"][:, None])
    lam = 1e-3
    ens = Ensemble(k, kn, y, diag_reg=lam, diag_reg_absolute_scale=True)
    out = ens.predict(None, kt, tt, compute_cov=True)
    kr, tr = k + lam * np.eye(len(k)), kn + lam * np.eye(len(k))
    np.testing.assert_allclose(out["nngp"].mean, kt.nngp @ np.linalg.solve(kr, y), atol=1e-12)
    np.testing.assert_allclose(out["nngp"].covariance,
                               tt - kt.nngp @ np.linalg.solve(kr, kt.nngp.T), atol=1e-12)
    a = np.linalg.solve(tr, kt.ntk.T)  # Θ⁻¹ Θ_*ᵀ
    cov = tt + a.T @ k @ a - kt.nngp @ a - (kt.nngp @ a).T
    np.testing.assert_allclose(out["ntk"].mean, kt.ntk @ np.linalg.solve(tr, y), atol=1e-12)
    np.testing.assert_allclose(out["ntk"].covariance, cov, atol=1e-12)
    # the eigendecomposition path at t = ∞ is the same Gaussian, the diagonal alone too
    inf = ens.predict([np.inf], kt, np.diagonal(tt), compute_cov=True)
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(inf[g].mean[0], out[g].mean, atol=1e-10)
        np.testing.assert_allclose(inf[g].covariance[0], np.diagonal(out[g].covariance),
                                   atol=1e-10)


def test_finite_times_equal_matrix_exponential_forms(problem):
    k, kn, kt, tt, y = (problem["dd"].nngp, problem["dd"].ntk, problem["td"], problem["tt"],
                        problem["y"][:, None])
    ens = Ensemble(k, kn, y, learning_rate=0.5)
    times = [0.0, 0.3, 4.0]
    test = ens.predict(times, kt, tt, compute_cov=True)
    train = ens.predict(times, None, compute_cov=True)
    for i, t in enumerate(times):
        a = _expm_gain(kn, 0.5 * t) if t else np.zeros_like(kn)
        np.testing.assert_allclose(test["ntk"].mean[i], kt.ntk @ a @ y, atol=1e-10)
        cov = tt + kt.ntk @ a @ k @ a @ kt.ntk.T - kt.nngp @ a @ kt.ntk.T \
            - kt.ntk @ a @ kt.nngp.T
        np.testing.assert_allclose(test["ntk"].covariance[i], cov, atol=1e-10)
        a2 = _expm_gain(k, t) if t else np.zeros_like(k)  # NNGP: e^{−2 K η t}
        np.testing.assert_allclose(test["nngp"].covariance[i], tt - kt.nngp @ a2 @ kt.nngp.T,
                                   atol=1e-10)
        e = sla.expm(-kn * 0.5 * t)
        np.testing.assert_allclose(train["ntk"].mean[i], (np.eye(len(k)) - e) @ y, atol=1e-10)
        np.testing.assert_allclose(train["ntk"].covariance[i], e @ k @ e, atol=1e-10)
    # t = 0: the prior (mean 0, covariance the NNGP), whatever the kernel that trains
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(test[g].mean[0], 0.0, atol=1e-14)
        np.testing.assert_allclose(test[g].covariance[0], tt, atol=1e-12)


def test_train_outputs_follow_the_gradient_flow_ode(problem):
    """d f/dt = −η Θ (f − y) on the training set, by a central difference in t."""
    kn, y = problem["dd"].ntk, problem["y"]
    ens = Ensemble(problem["dd"].nngp, kn, y, learning_rate=0.7)
    t, h = 0.4, 1e-5
    f = ens.predict([t - h, t, t + h], get="ntk")["ntk"][:, :, 0]
    np.testing.assert_allclose((f[2] - f[0]) / (2 * h), -0.7 * kn @ (f[1] - y), rtol=1e-6)


def test_nt_entry_points_scale_time_by_the_target_size(problem):
    """gradient_descent_mse_ensemble is nt's: loss ½ Σ (f − y)² / y.size, so time t there is
    time t / y.size of the Ensemble; shapes follow y_train (1-d targets: (m,) means)."""
    x, xt, y, kf = problem["x_train"], problem["x_test"], problem["y"], problem["kernel_fn"]
    fn = predict.gradient_descent_mse_ensemble(kf, x, y, learning_rate=2.0)
    got = fn(t=[5.0, 50.0], x_test=xt, get="ntk", compute_cov=True)
    ens = Ensemble(problem["dd"].nngp, problem["dd"].ntk, y, learning_rate=2.0)
    want = ens.predict(np.array([5.0, 50.0]) / y.size, problem["td"], problem["tt"],
                       get="ntk", compute_cov=True)["ntk"]
    assert got.mean.shape == (2, len(xt)) and got.covariance.shape == (2, len(xt), len(xt))
    np.testing.assert_allclose(got.mean, want.mean[..., 0], atol=1e-12)
    np.testing.assert_allclose(got.covariance, want.covariance, atol=1e-12)
    both = fn(t=None, x_test=xt)
    assert both._fields == ("nngp", "ntk") and both.ntk.shape == (len(xt),)
    inf = predict.gp_inference(problem["dd"], y)(get="nngp", k_test_train=problem["td"])
    np.testing.assert_allclose(both.nngp, inf, atol=1e-10)


def test_errors_name_the_field(problem):
    k, kn, y = problem["dd"].nngp, problem["dd"].ntk, problem["y"]
    with pytest.raises(InputError) as e:
        Ensemble(k, kn, y[:-1])
    assert e.value.field == "k_train_train"
    ens = Ensemble(None, kn, y)
    with pytest.raises(InputError) as e:
        ens.predict(1.0, problem["td"], problem["tt"], get="ntk", compute_cov=True)
    assert e.value.field == "k_train_train"  # the NTK covariance needs the NNGP
    with pytest.raises(InputError) as e:
        Ensemble(k, kn, y).predict(1.0, problem["td"], get="ntk", compute_cov=True)
    assert e.value.field == "nngp_test_test"
    with pytest.raises(InputError) as e:
        Ensemble(k, kn, y).predict(-1.0, problem["td"])
    assert e.value.field == "t"
    with pytest.raises(InputError) as e:
        predict.gradient_descent_mse_ensemble(problem["kernel_fn"], problem["x_train"],
                                              y[:, None], trace_axes=())
    assert e.value.field == "trace_axes"
    assert predict.max_learning_rate(kn) == pytest.approx(
        2 * len(kn) / np.linalg.eigvalsh(kn)[-1])


def _whitened(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[float, float]:
    """For E samples (E, m) against N(mean, cov): ``E |L⁻¹(x̄ − μ)|² / m`` (χ²_m / m, ≈ 1)
    and ``|L⁻¹ S L⁻ᵀ − I|_F`` (sampling noise ≈ sqrt(m (m + 1) / E))."""
    li = np.linalg.inv(np.linalg.cholesky(cov))
    z = li @ (samples.mean(0) - mean)
    w = li @ np.cov(samples.T) @ li.T
    return float(len(samples) * z @ z / len(mean)), float(np.linalg.norm(w - np.eye(len(mean))))


def test_gd_trained_finite_nets_match_the_ntk_ensemble(problem):
    """≥ 50 finite networks (here 256 per width), each its own initialisation, trained by
    full-batch GD: their test outputs' mean and covariance at several t are the NTK
    ensemble's Gaussian within sampling noise, and not the NNGP's; each net's deviation
    from its linearisation shrinks with width."""
    x, xt, y = problem["x_train"], problem["x_test"], problem["y"]
    kdd, ktd, tt = problem["dd"], problem["td"], problem["tt"]
    members, steps = 256, [0, 20, 100, 400]
    lr = 0.05 / np.linalg.eigvalsh(kdd.ntk)[-1]  # η λmax = 0.05: GD follows the flow
    times = np.array(steps) * lr
    ens = Ensemble(kdd.nngp, kdd.ntk, y)
    theory = ens.predict(times, ktd, tt, compute_cov=True)
    noise = np.sqrt(len(xt) * (len(xt) + 1) / members)
    linear_error = {}
    for width in (32, 512):
        both = np.concatenate([x, xt])
        f = train_ensemble(x, y, both, width=width, members=members, lr=lr, steps=steps,
                           w_std=W_STD, b_std=B_STD, seed=width)
        f_train0, f_test = f[0][:, :len(x)], f[:, :, len(x):]
        # each net against its own linearisation: f_0 + Θ_* Θ⁻¹ (I − e^{−ηΘt}) (y − f_0)
        gains = [np.zeros_like(kdd.ntk)] + [_expm_gain(kdd.ntk, t) for t in times[1:]]
        lin = np.stack([f_test[0] + (y - f_train0) @ (ktd.ntk @ a).T for a in gains])
        moved = np.abs(f_test[-1] - f_test[0]).mean()
        linear_error[width] = float(np.abs(f_test - lin).mean() / moved)
        if width != 512:
            continue
        for k in range(1, len(steps)):
            chi2, frob = _whitened(f_test[k], theory["ntk"].mean[k, :, 0],
                                   theory["ntk"].covariance[k])
            assert chi2 < 4.0, (times[k], chi2)  # χ²_6 / 6 above 4 has p < 1e-3
            assert frob < 1.6 * noise, (times[k], frob, noise)
        # the same test rejects the wrong dynamics (the NNGP's) once training has moved
        chi2, frob = _whitened(f_test[-1], theory["nngp"].mean[-1, :, 0],
                               theory["nngp"].covariance[-1])
        assert chi2 > 8.0 or frob > 1.6 * noise
    assert linear_error[512] < linear_error[32] / 2, linear_error

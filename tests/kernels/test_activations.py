"""Nonlinearity rules: known values, closed forms vs quadrature, dot = dK/dk12."""

import math

import numpy as np
import pytest

from ntkcompute import spec
from ntkcompute.kernels import activations
from ntkcompute.kernels.quadrature import FUNCTIONS, gauss_hermite


def _apply(layer, k12, k11, k22):
    a = np.asarray
    return activations.apply(np, layer, a(k12, float), a(k11, float), a(k22, float), True)


@pytest.mark.parametrize("theta,nngp,dot", [
    (0.0, 0.5, 0.5),                      # parallel: E[relu(u)^2] = k/2
    (math.pi / 2, 1 / (2 * math.pi), 0.25),  # orthogonal
    (math.pi, 0.0, 0.0),                  # antiparallel
    (math.pi / 3, (math.sin(math.pi / 3) + (2 * math.pi / 3) * 0.5) / (2 * math.pi), 1 / 3),
])
def test_relu_arc_cosine_at_known_angles(theta, nngp, dot):
    s = 2.5  # k11 = k22 = s: values scale with s, dot does not
    k, d = _apply(spec.Relu(), [s * math.cos(theta)], [s], [s])
    assert k[0] == pytest.approx(s * nngp, rel=1e-14, abs=1e-15)
    assert d[0] == pytest.approx(dot, rel=1e-14)


def test_zero_variance_gives_zero_not_nan():
    k, d = _apply(spec.Relu(), [0.0, 0.0], [0.0, 1.0], [2.0, 0.0])
    assert np.array_equal(k, [0.0, 0.0]) and np.isfinite(d).all()


def _random_cov(rng, n):
    a = rng.uniform(0.1, 3.0, n)
    b = rng.uniform(0.1, 3.0, n)
    rho = rng.uniform(-0.99, 0.99, n)
    return rho * np.sqrt(a * b), a, b


@pytest.mark.parametrize("layer,fn", [
    (spec.Erf(), "erf"), (spec.Gelu(), "gelu"), (spec.Sin(), "sin"),
])
def test_closed_forms_match_quadrature(rng, layer, fn):
    k12, k11, k22 = _random_cov(rng, 50)
    k, d = _apply(layer, k12, k11, k22)
    kq, dq = gauss_hermite(np, fn, 80, k12, k11, k22, True)
    assert np.abs(k - kq).max() < 1e-9 * max(1, np.abs(k).max())
    assert np.abs(d - dq).max() < 1e-8 * max(1, np.abs(d).max())


@pytest.mark.parametrize("layer", [
    spec.Relu(), spec.LeakyRelu(alpha=0.2), spec.ABRelu(a=-0.3, b=1.7), spec.Abs(),
    spec.Erf(a=1.3, b=0.7, c=0.2), spec.Gelu(), spec.Sin(a=0.8, b=1.4, c=0.3),
    spec.Elementwise(fn="gelu", deg=60), spec.Elementwise(fn="softplus", deg=60),
    spec.Exp(a=0.7, b=0.6), spec.Gaussian(a=1.3, b=-0.4), spec.Cos(a=0.9, b=1.2, c=0.3),
    spec.Rbf(gamma=0.7),
])
def test_dot_is_derivative_of_nngp(rng, layer):
    """Price's theorem: E[φ'(u)φ'(v)] = dE[φ(u)φ(v)]/dk12."""
    k12, k11, k22 = _random_cov(rng, 20)
    h = 1e-6
    kp, _ = _apply(layer, k12 + h, k11, k22)
    km, _ = _apply(layer, k12 - h, k11, k22)
    _, d = _apply(layer, k12, k11, k22)
    np.testing.assert_allclose(d, (kp - km) / (2 * h), rtol=1e-6, atol=1e-7)


def test_ab_relu_against_monte_carlo(rng):
    k12, k11, k22 = np.array([0.3]), np.array([1.2]), np.array([0.7])
    cov = np.array([[1.2, 0.3], [0.3, 0.7]])
    z = rng.multivariate_normal([0, 0], cov, size=2_000_000)
    a, b = -0.3, 1.7

    def phi(t):
        return np.where(t > 0, b * t, a * t)

    mc = np.mean(phi(z[:, 0]) * phi(z[:, 1]))
    k, _ = _apply(spec.ABRelu(a=a, b=b), k12, k11, k22)
    assert abs(k[0] - mc) < 5e-3


@pytest.mark.parametrize("fn", sorted(FUNCTIONS))
def test_quadrature_derivative_table(fn):
    """Each registered f' is the derivative of its f (central differences)."""
    f, df = FUNCTIONS[fn]
    x = np.linspace(-3, 3, 61) + 0.013  # avoid the kink of relu / elu at 0
    h = 1e-6
    np.testing.assert_allclose(df(np, x), (f(np, x + h) - f(np, x - h)) / (2 * h),
                               rtol=1e-6, atol=1e-7)


def test_sign_kernel():
    k, d = _apply(spec.Sign(), [0.0, 1.0, -1.0, 0.5], [1.0] * 4, [1.0] * 4)
    np.testing.assert_allclose(k, [0.0, 1.0, -1.0, 2 / math.pi * math.asin(0.5)], atol=1e-15)
    assert np.array_equal(d, np.zeros(4))


def _gauss_hermite_2d(f, g, k12, k11, k22, deg=120):
    """E[f(u) g(v)], (u, v) ~ N(0, [[k11, k12], [k12, k22]]), by a tensor Gauss–Hermite rule."""
    t, w = np.polynomial.hermite_e.hermegauss(deg)
    w = w / w.sum()
    out = []
    for c, a, b in zip(k12, k11, k22, strict=True):
        l11, l21 = math.sqrt(a), c / math.sqrt(a)
        l22 = math.sqrt(max(b - l21 * l21, 0.0))
        u = l11 * t[:, None]
        v = l21 * t[:, None] + l22 * t[None, :]
        out.append(float(np.sum(w[:, None] * w[None, :] * f(u) * g(v))))
    return np.array(out)


@pytest.mark.parametrize("layer", [
    spec.Exp(a=0.7, b=0.6), spec.Gaussian(a=1.3, b=-0.4), spec.Gaussian(),
    spec.Cos(a=0.9, b=1.2, c=0.3), spec.Rbf(gamma=0.7),
])
def test_new_closed_forms_match_quadrature(rng, layer):
    from ntkcompute.empirical import _act

    k12, k11, k22 = _random_cov(rng, 12)
    k11, k22, k12 = k11 / 3, k22 / 3, k12 / 3  # keep exp's moments modest for the rule
    k, d = _apply(layer, k12, k11, k22)
    f, df = _act(layer)
    np.testing.assert_allclose(k, _gauss_hermite_2d(f, f, k12, k11, k22), rtol=1e-9)
    np.testing.assert_allclose(d, _gauss_hermite_2d(df, df, k12, k11, k22), rtol=1e-8,
                               atol=1e-12)


def test_rbf_nngp_is_the_rbf_kernel():
    """stax.Rbf on unit-variance inputs: K' = exp(-γ |x - x'|²) = exp(-2γ (1 - k12))."""
    k12 = np.linspace(-0.9, 0.95, 7)
    k, _ = _apply(spec.Rbf(gamma=0.8), k12, np.ones(7), np.ones(7))
    np.testing.assert_allclose(k, np.exp(-2 * 0.8 * (1 - k12)), rtol=1e-13)

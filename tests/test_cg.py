"""Conjugate gradients on a real CNTK of digits: equals Cholesky; preconditioners help."""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.cg import Jacobi, Nystrom, cg, pivoted_cholesky
from ntkcompute.datasets import digits
from ntkcompute.regression import one_hot, solve_direct


@pytest.fixture(scope="module")
def cntk():
    x, y = digits()
    k = nc.kernel(A.cntk(3, "flatten"), x[:500], get="ntk")["ntk"]
    return k, one_hot(y[:500], 10)


def test_cg_equals_cholesky(cntk):
    K, Y = cntk
    lam = 1e-3 * np.mean(np.diag(K))
    ref = solve_direct(K, Y, lam)
    res = cg(lambda V: K @ V, Y, lam, tol=1e-11, maxiter=2000)
    assert res.converged
    assert np.abs(res.x - ref).max() / np.abs(ref).max() < 1e-8
    single = cg(lambda V: K @ V, Y[:, 3], lam, tol=1e-11)  # one right-hand side
    assert single.x.shape == (500,)
    assert np.abs(single.x - ref[:, 3]).max() / np.abs(ref[:, 3]).max() < 1e-8


def test_nystrom_cuts_iterations_3x(cntk):
    K, Y = cntk
    lam = 1e-3 * np.mean(np.diag(K))
    plain = cg(lambda V: K @ V, Y, lam, tol=1e-10, maxiter=2000)
    L, piv = pivoted_cholesky(np.diag(K), lambda j: K[:, j], 100)
    assert L.shape == (500, 100) and len(set(piv)) == 100
    nys = cg(lambda V: K @ V, Y, lam, tol=1e-10, maxiter=2000, precond=Nystrom(L, lam))
    jac = cg(lambda V: K @ V, Y, lam, tol=1e-10, maxiter=2000,
             precond=Jacobi(np.diag(K), lam))
    assert plain.converged and nys.converged and jac.converged
    assert plain.iterations >= 3 * nys.iterations, (plain.iterations, nys.iterations)
    assert np.abs(nys.x - plain.x).max() / np.abs(plain.x).max() < 1e-8


def test_warm_start_float32_kernel_and_true_residual(cntk):
    K, Y = cntk
    lam = 1e-2 * np.mean(np.diag(K))
    first = cg(lambda V: K @ V, Y, lam, tol=1e-4)
    warm = cg(lambda V: K @ V, Y, lam, tol=1e-10, x0=first.x)
    cold = cg(lambda V: K @ V, Y, lam, tol=1e-10)
    assert warm.iterations < cold.iterations
    K32 = K.astype(np.float32)  # a float32 kernel, products accumulated in float64
    res = cg(lambda V: K32 @ V, Y, lam, tol=1e-10, true_residual_every=5)
    ref = solve_direct(K32.astype(np.float64), Y, lam)
    assert res.x.dtype == np.float64 and res.converged
    assert np.abs(res.x - ref).max() / np.abs(ref).max() < 1e-8
    # float32 products cannot reach 1e-10: CG must stop at maxiter without blowing up
    rough = cg(lambda V: K32 @ V.astype(np.float32), Y, lam, tol=1e-12, maxiter=400)
    assert not rough.converged and np.isfinite(rough.x).all()
    assert np.abs(rough.x - ref).max() / np.abs(ref).max() < 1e-3


def test_pivoted_cholesky_is_exact_at_full_rank(rng):
    a = rng.standard_normal((30, 8))
    K = a @ a.T  # rank 8
    L, _ = pivoted_cholesky(np.diag(K), lambda j: K[:, j], 20)
    assert L.shape[1] == 8  # stops at the numerical rank
    np.testing.assert_allclose(L @ L.T, K, atol=1e-10)


SYSTEMS = ["constructed", "float32 fixture"]


def _system(name: str) -> tuple[np.ndarray, float]:
    """``(K, λ)`` with ``K + λI`` indefinite."""
    from tests.indefinite import constructed, fixture

    if name == "constructed":
        return constructed(), 0.0
    return fixture()[0].astype(np.float64), 0.0


@pytest.mark.parametrize("precond", ["none", "jacobi", "nystrom"])
@pytest.mark.parametrize("system", SYSTEMS)
def test_cg_stops_at_the_breakdown_of_an_indefinite_system(system, precond):
    from ntkcompute.errors import NotPositiveDefinite
    from tests.indefinite import breakdown

    K, lam = _system(system)
    b = np.random.default_rng(1).standard_normal(len(K))
    md = float(np.mean(np.diag(K)))
    with pytest.raises(NotPositiveDefinite) as e:
        pre = None
        if precond == "jacobi":
            pre = Jacobi(np.diag(K), lam)
        elif precond == "nystrom":  # the factorisation may see it already (iteration 0)
            L, _ = pivoted_cholesky(np.diag(K), lambda j: K[:, j], 50, lam=lam)
            pre = Nystrom(L, 1e-9 * md)  # λ = 0 has no Woodbury form: a tiny ridge
        cg(lambda V: K @ V, b, lam, precond=pre, maxiter=5000, scale=md)
    err = e.value
    first = breakdown(K, b, lam, pre)
    assert first > 0  # textbook CG does meet pᵀAp <= 0 on this system
    assert (err.iteration or 0) <= first + 3, (err.iteration, first)
    assert err.field == "lambda"
    assert "float64" in str(err) and "raise λ" in str(err)
    if err.min_eigenvalue is not None:  # CG's Rayleigh quotient: a true upper bound
        assert np.linalg.eigvalsh(K)[0] <= err.min_eigenvalue + 1e-12 * md < 0


def test_cg_names_non_finite_kernels_and_a_negative_diagonal(rng):
    from ntkcompute.errors import NotPositiveDefinite

    a = rng.standard_normal((40, 40))
    K = a @ a.T
    K[3, 5] = K[5, 3] = np.nan
    with pytest.raises(NotPositiveDefinite, match="not finite at iteration 1"):
        cg(lambda V: K @ V, np.ones(40), 1.0)
    with pytest.raises(NotPositiveDefinite, match="non-finite"):
        pivoted_cholesky(np.diag(K), lambda j: K[:, j], 40)
    K = a @ a.T
    d = np.diag(K).copy()
    d[7] = -1.0
    for make in (lambda: Jacobi(d, 0.5), lambda: pivoted_cholesky(d, lambda j: K[:, j], 5)):
        with pytest.raises(NotPositiveDefinite, match="diagonal entry 7"):
            make()


def test_nystrom_factorisation_refuses_an_indefinite_kernel():
    from ntkcompute.errors import NotPositiveDefinite
    from tests.indefinite import constructed

    K = constructed(low=-0.2)
    with pytest.raises(NotPositiveDefinite, match="Schur complement"):
        pivoted_cholesky(np.diag(K), lambda j: K[:, j], len(K))
    md = float(np.mean(np.diag(K)))
    L, _ = pivoted_cholesky(np.diag(K), lambda j: K[:, j], len(K), lam=0.3 * md)
    # λ lifts the negative eigenvalue: the factor stops where K turned indefinite, and it
    # is an exact factor of the pivot block (so the preconditioner is positive definite)
    assert 0 < L.shape[1] < len(K)
    pre = Nystrom(L, 0.3 * md)
    b = np.ones(len(K))
    res = cg(lambda V: K @ V, b, 0.3 * md, precond=pre, tol=1e-10)
    assert res.converged
    np.testing.assert_allclose((K + 0.3 * md * np.eye(len(K))) @ res.x, b, atol=1e-7)

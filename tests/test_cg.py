"""Conjugate gradients on a real CNTK of digits: equals Cholesky; preconditioners help."""

from itertools import pairwise

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


@pytest.mark.parametrize("precond", ["none", "jacobi", "nystrom", "randomized"])
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
        elif precond == "randomized":
            from ntkcompute.cg import randomized_nystrom

            pre = randomized_nystrom(lambda V: K @ V, len(K), 1e-9 * md, rank=50,
                                     max_rank=50)
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


@pytest.fixture(scope="module")
def fc_digits():
    """An FC-3 NTK of 500 standardised digits: at λ = 1e-3·mean diag every eigenvalue
    exceeds λ (effective dimension ≈ n), so no fixed small rank preconditions it."""
    x, y = digits()
    x = x[:500].reshape(500, -1)
    K = nc.kernel(A.fc(3), (x - x.mean()) / x.std(), get="ntk")["ntk"]
    return K, one_hot(y[:500], 10)


def test_randomized_nystrom_cuts_iterations_4x_where_every_eigenvalue_exceeds_lambda(
        fc_digits):
    from ntkcompute.cg import RandomizedNystrom, randomized_nystrom

    K, Y = fc_digits
    lam = 1e-3 * np.mean(np.diag(K))
    assert np.linalg.eigvalsh(K)[0] > lam  # the hard case of issue 17
    plain = cg(lambda V: K @ V, Y, lam, tol=1e-10, maxiter=2000)
    calls = []

    def matmat(V):
        calls.append(V.shape[1])
        return K @ V

    pre = randomized_nystrom(matmat, 500, lam, rank=50, target=100, max_rank=500)
    assert isinstance(pre, RandomizedNystrom)
    ranks = [r for r, _ in pre.history]
    assert ranks[0] == 50 and len(ranks) >= 3  # grown adaptively, by doubling
    assert all(b == 2 * a for a, b in pairwise(ranks[:-1]))
    assert calls == [50] + [b - a for a, b in pairwise(ranks)]  # one product each
    conds = [c for _, c in pre.history]
    assert conds == sorted(conds, reverse=True) and pre.condition <= 100
    assert pre.rank < 500
    res = cg(lambda V: K @ V, Y, lam, tol=1e-10, maxiter=2000, precond=pre)
    assert plain.converged and res.converged
    assert plain.iterations >= 4 * res.iterations, (plain.iterations, res.iterations)
    ref = solve_direct(K, Y, lam)
    assert np.abs(res.x - ref).max() / np.abs(ref).max() < 1e-8


def test_randomized_nystrom_grows_only_while_the_iterations_it_saves_cost_more(fc_digits):
    from ntkcompute.cg import randomized_nystrom

    K, _ = fc_digits
    lam = 1e-3 * np.mean(np.diag(K))
    kwargs = dict(rank=25, target=1.0, max_rank=400)  # a target no rank reaches
    free = randomized_nystrom(lambda V: K @ V, 500, lam, **kwargs)
    slow = randomized_nystrom(lambda V: K @ V, 500, lam, iteration_seconds=1e3, **kwargs)
    fast = randomized_nystrom(lambda V: K @ V, 500, lam, iteration_seconds=1e-9, **kwargs)
    assert free.rank == slow.rank == 400  # iterations that cost 1000 s: every doubling pays
    assert fast.rank == 25  # iterations that cost nothing: no doubling pays
    calls = []

    def clock():  # the iteration time may be measured while growing
        calls.append(1)
        return 1e3

    assert randomized_nystrom(lambda V: K @ V, 500, lam, iteration_seconds=clock,
                              **kwargs).rank == 400 and len(calls) == 4  # 25 -> 400


def test_randomized_nystrom_rank_follows_lambda_and_is_exact_on_low_rank(fc_digits, rng):
    from ntkcompute.cg import nystrom_sketch, randomized_nystrom

    K, _ = fc_digits
    md = np.mean(np.diag(K))
    small = randomized_nystrom(lambda V: K @ V, 500, 1e-3 * md, rank=25, target=50)
    big = randomized_nystrom(lambda V: K @ V, 500, 1e-1 * md, rank=25, target=50)
    assert big.rank < small.rank and big.condition <= 50
    a = rng.standard_normal((60, 8))
    low = a @ a.T  # rank 8: a sketch of 12 columns captures it exactly
    om = rng.standard_normal((60, 12))
    U, s = nystrom_sketch(om, low @ om)
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-8)
    np.testing.assert_allclose((U * s) @ U.T, low, atol=1e-9 * np.abs(low).max())


def test_block_cg_over_lambdas_equals_separate_solves(fc_digits):
    from ntkcompute.cg import randomized_nystrom

    K, Y = fc_digits
    md = np.mean(np.diag(K))
    lams = [1e-3 * md, 1e-2 * md, 1e-1 * md]
    lam_col = np.repeat(lams, Y.shape[1])
    products = []

    def matvec(V):
        products.append(V.shape[1])
        return K @ V

    pre = randomized_nystrom(lambda V: K @ V, 500, lam_col, rank=100, target=100)
    block = cg(matvec, Y, lams, tol=1e-11, maxiter=2000, precond=pre)
    assert block.converged and block.x.shape == (3, 500, 10)
    # one (n, k·L) product per iteration; [P X] in one product every 50 iterations
    assert len(products) == block.iterations
    assert products.count(60) == block.iterations // 50
    assert products.count(30) == block.iterations - block.iterations // 50
    for i, lam in enumerate(lams):
        one = cg(lambda V: K @ V, Y, lam, tol=1e-11, maxiter=2000, precond=pre.with_lam(lam))
        ref = solve_direct(K, Y, lam)
        assert np.abs(block.x[i] - one.x).max() / np.abs(one.x).max() < 1e-8
        assert np.abs(block.x[i] - ref).max() / np.abs(ref).max() < 1e-8
    vec = cg(lambda V: K @ V, Y[:, 0], lams, tol=1e-11, maxiter=2000)  # one column, 3 λ
    assert vec.x.shape == (3, 500)
    assert np.abs(vec.x - block.x[:, :, 0]).max() / np.abs(block.x).max() < 1e-8


def test_mixed_precision_converges_on_the_float64_residual(fc_digits):
    K, Y = fc_digits
    lam = 1e-1 * np.mean(np.diag(K))
    K32 = K.astype(np.float32)
    exact_calls = []

    def exact(V):
        exact_calls.append(V.shape[1])
        return K @ V

    res = cg(exact, Y, lam, tol=1e-10, maxiter=2000, true_residual_every=10,
             fast_matvec=lambda V: (K32 @ V.astype(np.float32)).astype(np.float64))
    ref = solve_direct(K, Y, lam)
    assert res.converged and exact_calls  # confirmed by float64 residuals
    assert np.abs(res.x - ref).max() / np.abs(ref).max() < 1e-8
    R = Y - (K @ res.x + lam * res.x)
    assert (np.linalg.norm(R, axis=0) / np.linalg.norm(Y, axis=0)).max() <= 1e-10


def test_randomized_nystrom_refuses_a_sketch_that_proves_k_indefinite():
    from ntkcompute.cg import nystrom_sketch, randomized_nystrom
    from ntkcompute.errors import NotPositiveDefinite
    from tests.indefinite import constructed

    K = constructed(low=-0.2)
    md = float(np.mean(np.diag(K)))
    with pytest.raises(NotPositiveDefinite, match="Cauchy interlacing") as e:
        randomized_nystrom(lambda V: K @ V, len(K), 1e-6 * md, rank=len(K), scale=md)
    # the reported value bounds λmin(K) from above (interlacing), and is negative
    assert np.linalg.eigvalsh(K)[0] <= e.value.min_eigenvalue + 1e-9 * md < 0
    assert e.value.field == "lambda" and "raise λ" in str(e.value)
    # λ lifting the negative eigenvalue: the sketch keeps its positive part, the
    # preconditioner is positive definite, and CG solves K + λI
    om = np.random.default_rng(0).standard_normal((len(K), len(K)))
    _, s = nystrom_sketch(om, K @ om, lam=0.3 * md)
    assert (s >= 0).all()
    pre = randomized_nystrom(lambda V: K @ V, len(K), 0.3 * md, rank=len(K))
    b = np.ones(len(K))
    res = cg(lambda V: K @ V, b, 0.3 * md, precond=pre, tol=1e-10)
    assert res.converged
    np.testing.assert_allclose((K + 0.3 * md * np.eye(len(K))) @ res.x, b, atol=1e-7)
    with pytest.raises(NotPositiveDefinite, match="non-finite"):
        bad = K.copy()
        bad[0, 0] = np.inf
        randomized_nystrom(lambda V: bad @ V, len(K), 1.0, rank=10)

"""The scikit-learn estimators: sklearn's own conventions checks, searches and pipelines,
the closed-form leave-one-out / GCV against their definitions, and the backend protocol."""

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import ntkcompute
from ntkcompute import InputError, kernel, stax
from ntkcompute.architectures import fc
from ntkcompute.errors import NotPositiveDefinite
from ntkcompute.estimators import (
    NTKClassifier,
    NTKRegressor,
    gcv_scores,
    loo_residuals,
    selection_scores,
)
from ntkcompute.regression import Eigen, one_hot

ARCH = fc(2, b_std=0.1)


@pytest.fixture(scope="module")
def digits():
    """400 digits (64 pixels in 0..16) for training, 300 others for testing."""
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    train, test = order[:400], order[400:700]
    return d.data[train], d.target[train], d.data[test], d.target[test]


def _regression_data(rng, n=30, d=5, outputs=None, noise=0.3):
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, outputs or 1))
    y = np.sin(x @ w) + noise * rng.standard_normal((n, outputs or 1))
    return x, (y[:, 0] if outputs is None else y)


def _brute_loo(K, Y, lam):
    """Residual at each i of the fit on the other n - 1 points (K without row/column i)."""
    n = len(K)
    e = np.empty_like(Y, dtype=np.float64)
    for i in range(n):
        m = np.arange(n) != i
        coef = np.linalg.solve(K[np.ix_(m, m)] + lam * np.eye(n - 1), Y[m])
        e[i] = Y[i] - K[i, m] @ coef
    return e


def _gcv_direct(K, Y, lam):
    """``n ‖(I - H) y‖² / tr(I - H)²`` per column, with H = K (K + λI)⁻¹ formed."""
    n = len(K)
    I_H = np.eye(n) - K @ np.linalg.inv(K + lam * np.eye(n))
    return n * np.sum((I_H @ Y) ** 2, axis=0) / np.trace(I_H) ** 2


# -- 1. scikit-learn's estimator checks -------------------------------------------------
# Every check runs and must pass: no expected failures are declared. One check is left out:
# check_array_api_input, which feeds array-API namespaces (array_api_strict, torch) the
# estimators do not take (they compute in NumPy) and which sklearn itself skips unless
# SCIPY_ARRAY_API=1 was set before SciPy was imported.
def _checks():
    import functools

    from sklearn.utils.estimator_checks import estimator_checks_generator

    for est in (NTKRegressor(arch=fc(1)), NTKClassifier(arch=fc(1)),
                NTKClassifier(arch=fc(1), lam="gcv"),
                NTKRegressor(arch=fc, depths=[1, 2], lam=1e-3, kernel="nngp")):
        for e, check in estimator_checks_generator(est):
            name = (check.func if isinstance(check, functools.partial) else check).__name__
            if name != "check_array_api_input":
                yield pytest.param(e, check, id=f"{type(e).__name__}-{name}")


@pytest.mark.parametrize(("estimator", "check"), list(_checks()))
def test_sklearn_conventions(estimator, check):
    check(estimator)


def test_params_round_trip_and_fit_sets_the_documented_attributes(rng):
    est = NTKRegressor(arch=ARCH, lam="gcv", lam_grid=[1e-3, 1e-1], kernel="nngp")
    assert est.get_params()["lam_grid"] == [1e-3, 1e-1]
    assert est.set_params(lam=0.5, relative=False) is est
    assert (est.lam, est.relative) == (0.5, False)
    x, y = _regression_data(rng)
    assert est.fit(x, y) is est
    assert est.n_features_in_ == 5 and est.X_fit_.shape == (30, 5)
    assert est.dual_coef_.shape == (30,) and est.predict(x[:4]).shape == (4,)
    assert est.lam_ == est.lam_absolute_ == 0.5  # fixed, absolute: as given
    assert est.depth_ is None and "depth" not in est.cv_results_
    assert set(est.cv_results_) == {"lam", "lam_absolute", "kernel", "score"}
    assert est.best_score_ == est.cv_results_["score"][0] < 0
    assert est.cv_results_["kernel"].tolist() == ["nngp"]


# -- 2. in searches and pipelines -------------------------------------------------------

def test_classifier_in_grid_search_and_pipeline_on_digits(digits):
    xtr, ytr, xte, yte = digits
    pipe = make_pipeline(StandardScaler(), NTKClassifier(arch=fc(1)))
    grid = {"ntkclassifier__kernel": ["ntk", "nngp"], "ntkclassifier__lam": ["loo", 1e-2]}
    search = GridSearchCV(pipe, grid, cv=3).fit(xtr, ytr)
    assert search.best_score_ > 0.85
    assert len(search.cv_results_["params"]) == 4
    assert np.all(search.cv_results_["mean_test_score"] > 0.8)
    best = search.best_estimator_[-1]
    assert best.kernel in ("ntk", "nngp") and best.classes_.tolist() == list(range(10))
    assert search.score(xte, yte) > 0.85
    pred = search.predict(xte)
    assert pred.shape == (300,) and set(pred) <= set(range(10))
    assert np.mean(pred == yte) == search.score(xte, yte)


def test_classifier_string_labels_decision_function_and_loo_accuracy(digits):
    xtr, ytr, xte, yte = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                      "eight", "nine"])
    clf = NTKClassifier(arch=fc(2)).fit(xtr / 16, names[ytr])
    assert clf.classes_.tolist() == sorted(names)
    f = clf.decision_function(xte / 16)
    assert f.shape == (300, 10)
    assert np.array_equal(clf.predict(xte / 16), clf.classes_[np.argmax(f, axis=1)])
    assert clf.score(xte / 16, names[yte]) > 0.9
    # under "loo" the table has each candidate's leave-one-out accuracy; the chosen one
    # (by squared error on the codes) is close to the most accurate
    acc = clf.cv_results_["loo_accuracy"]
    assert acc.shape == clf.cv_results_["score"].shape
    best = int(np.argmax(clf.cv_results_["score"]))
    assert acc[best] > 0.9 and acc[best] >= acc.max() - 0.03
    # two classes: one decision value, its sign picks classes_[1]
    two = np.isin(ytr, [3, 8])
    binary = NTKClassifier(arch=fc(1)).fit(xtr[two], names[ytr[two]])
    d = binary.decision_function(xte)
    assert d.shape == (300,)
    assert np.array_equal(binary.predict(xte), binary.classes_[(d > 0).astype(int)])


def test_stax_architecture_fits_clones_and_searches(rng):
    net = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1))
    x, y = _regression_data(rng, n=40)
    a = NTKRegressor(arch=net).fit(x, y)
    b = NTKRegressor(arch=net.spec).fit(x, y)
    np.testing.assert_array_equal(a.predict(x[:5]), b.predict(x[:5]))
    c = clone(a)  # a stax layer deep-copies by its spec
    assert c.arch.spec == net.spec and not hasattr(c, "dual_coef_")
    search = GridSearchCV(NTKRegressor(arch=net), {"kernel": ["ntk", "nngp"]}, cv=2).fit(x, y)
    assert search.best_estimator_.arch.spec == net.spec


def test_multi_output_regression_and_pickle(rng):
    x, y = _regression_data(rng, n=40, outputs=3)
    est = NTKRegressor(arch=ARCH).fit(x, y)
    assert est.dual_coef_.shape == (40, 3) and est.predict(x[:7]).shape == (7, 3)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(x[:7]), est.predict(x[:7]))
    # one output column alone selects on that column only; a (n, 1) target stays 2-D
    one = NTKRegressor(arch=ARCH).fit(x, y[:, :1])
    assert one.predict(x[:2]).shape == (2, 1)


def test_images_go_to_a_convolutional_architecture(rng):
    x = rng.standard_normal((24, 6, 6, 1))
    y = rng.integers(0, 2, 24)
    arch = {"layers": [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME"},
                       {"type": "relu"}, {"type": "global_avg_pool"}, {"type": "dense"}]}
    clf = NTKClassifier(arch=arch, lam=1e-3).fit(x, y)
    K = kernel(arch, x, get="ntk")["ntk"]
    coef = np.linalg.solve(K + clf.lam_absolute_ * np.eye(24), one_hot(y, 2))
    f = kernel(arch, x[:5], x, get="ntk")["ntk"] @ coef
    np.testing.assert_allclose(clf.decision_function(x[:5]), f[:, 1] - f[:, 0], atol=1e-10)
    with pytest.raises(ValueError, match="features"):
        clf.predict(rng.standard_normal((3, 5, 6, 1)))


# -- 3. closed forms against their definitions ------------------------------------------

@pytest.mark.parametrize("rel", [1e-4, 1e-2, 1.0])
def test_closed_form_loo_equals_refitting_without_each_point(rng, rel):
    x, y = _regression_data(rng, n=30, outputs=2)
    K = kernel(ARCH, x, get="ntk")["ntk"]
    eig = Eigen.of(K)
    lam = rel * eig.mean_diag
    brute = _brute_loo(K, y, lam)
    assert np.abs(brute).max() > 0.1  # a real residual, not a vanishing one
    np.testing.assert_allclose(loo_residuals(eig, y, lam), brute, rtol=0, atol=1e-10)
    np.testing.assert_allclose(loo_residuals(eig, y[:, 1], lam), brute[:, 1], rtol=0,
                               atol=1e-10)
    table = selection_scores(eig, y, [lam], "loo")
    np.testing.assert_allclose(table["criterion"], [np.mean(brute ** 2)], rtol=1e-10)
    # the classifier's leave-one-out accuracy: argmax of the refitted codes at each point
    labels = rng.integers(0, 3, 30)
    codes = one_hot(labels, 3)
    refit = codes - _brute_loo(K, codes, lam)
    acc = selection_scores(eig, codes, [lam], "loo", labels)["loo_accuracy"]
    assert acc[0] == np.mean(np.argmax(refit, axis=1) == labels)


@pytest.mark.parametrize("rel", [1e-4, 1e-2, 1.0])
def test_gcv_equals_its_definition(rng, rel):
    x, y = _regression_data(rng, n=30, outputs=3)
    K = kernel(ARCH, x, get="nngp")["nngp"]
    eig = Eigen.of(K)
    lam = rel * eig.mean_diag
    direct = _gcv_direct(K, y, lam)
    np.testing.assert_allclose(gcv_scores(eig, y, lam), direct, rtol=1e-10)
    np.testing.assert_allclose(selection_scores(eig, y, [lam], "gcv")["criterion"],
                               [direct.mean()], rtol=1e-10)


def test_a_lambda_with_k_plus_lambda_i_indefinite_scores_minus_inf(rng):
    a = rng.standard_normal((20, 20))
    K = a @ a.T - 5.0 * np.eye(20)  # λmin(K) < -1
    eig = Eigen.of(K)
    assert eig.min_eigenvalue < -1
    table = selection_scores(eig, rng.standard_normal(20), [1e-3, 1e3], "loo")["criterion"]
    assert table[0] == np.inf and np.isfinite(table[1])
    with pytest.raises(NotPositiveDefinite):
        loo_residuals(eig, rng.standard_normal(20), 1e-3)


# -- 4. the choice is the argmin of the brute-force criterion ---------------------------

def test_chosen_lambda_is_the_brute_force_loo_argmin():
    x, y = _regression_data(np.random.default_rng(0), n=30, d=3, noise=0.5)
    grid = np.logspace(-5, 1, 13)
    est = NTKRegressor(arch=ARCH, lam_grid=grid).fit(x, y)
    K = kernel(ARCH, x, get="ntk")["ntk"]
    scale = np.mean(np.diag(K))
    brute = np.array([np.mean(_brute_loo(K, y, r * scale) ** 2) for r in grid])
    best = int(np.argmin(brute))
    assert 0 < best < len(grid) - 1  # an interior minimum: the choice is not a grid edge
    assert est.lam_ == grid[best]
    assert est.lam_absolute_ == pytest.approx(grid[best] * scale, rel=1e-12)
    np.testing.assert_allclose(est.cv_results_["score"], -brute, rtol=1e-8)
    np.testing.assert_allclose(est.cv_results_["lam"], grid)
    assert est.best_score_ == pytest.approx(-brute[best], rel=1e-8)


def test_chosen_lambda_is_the_gcv_argmin_and_absolute_grids_are_absolute():
    x, y = _regression_data(np.random.default_rng(0), n=30, d=3, noise=0.5)
    K = kernel(ARCH, x, get="ntk")["ntk"]
    grid = np.logspace(-4, 1, 11) * np.mean(np.diag(K))
    est = NTKRegressor(arch=ARCH, lam="gcv", lam_grid=grid, relative=False).fit(x, y)
    direct = np.array([_gcv_direct(K, y[:, None], lam)[0] for lam in grid])
    assert 0 < np.argmin(direct) < len(grid) - 1
    assert est.lam_ == est.lam_absolute_ == grid[int(np.argmin(direct))]
    np.testing.assert_allclose(est.cv_results_["score"], -direct, rtol=1e-10)


def test_depth_and_lambda_chosen_together_by_brute_force_loo():
    x, y = _regression_data(np.random.default_rng(0), n=30, d=3, noise=0.5)
    grid = [1e-3, 1e-2, 1e-1, 1.0]
    depths = [1, 3, 6]
    est = NTKRegressor(arch=lambda d: fc(d, b_std=0.1), depths=depths, lam_grid=grid,
                       kernel="nngp").fit(x, y)
    brute = {}
    for d in depths:
        K = kernel(fc(d, b_std=0.1), x, get="nngp")["nngp"]
        for r in grid:
            brute[d, r] = np.mean(_brute_loo(K, y, r * np.mean(np.diag(K))) ** 2)
    assert (est.depth_, est.lam_) == min(brute, key=brute.get)
    assert est.cv_results_["depth"].tolist() == [d for d in depths for _ in grid]
    np.testing.assert_allclose(est.cv_results_["score"], [-brute[k] for k in brute],
                               rtol=1e-8)
    assert est.arch_ == ntkcompute.parse_arch(fc(est.depth_, b_std=0.1))


def test_a_family_spec_chooses_depth_from_one_pass_as_the_callable_does():
    """A spec with one top-level repeat and depths: every depth's kernel from one family
    pass, the same choice, scores and coefficients as one kernel per depth."""
    x, y = _regression_data(np.random.default_rng(3), n=30, d=3, noise=0.5)
    dense = {"type": "dense", "W_std": 1.5, "b_std": 0.1}
    spec = {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
        dense, {"type": "relu"}]}}, {"type": "dense", "W_std": 1.5, "b_std": 0.1}]}

    def build(d):
        return ntkcompute.families.make_family(spec, [d]).members[0]

    grid = [1e-3, 1e-2, 1e-1]
    fam = NTKClassifier(arch=spec, depths=[1, 2, 4], lam_grid=grid).fit(x, y > 0)
    one = NTKClassifier(arch=build, depths=[1, 2, 4], lam_grid=grid).fit(x, y > 0)
    assert (fam.depth_, fam.lam_) == (one.depth_, one.lam_)
    assert fam.arch_ == one.arch_
    for key in ("score", "lam_absolute", "depth"):
        np.testing.assert_allclose(fam.cv_results_[key], one.cv_results_[key], rtol=1e-10)
    np.testing.assert_allclose(fam.dual_coef_, one.dual_coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(fam.predict(x[:7]), one.predict(x[:7]))


class _PerCandidate:
    """A backend without ``family``: the estimator asks ``gram`` once per candidate."""

    def __init__(self):
        self.calls = 0

    def gram(self, arch, x1, x2=None, get="ntk"):
        self.calls += x2 is None
        return kernel(arch, x1, x2, get=get)[get]


def test_variants_choose_depth_and_fixed_bottom_blocks_from_one_pass():
    """``variants``: the (depth, variant) candidates are the networks with bottom blocks
    fixed; one family pass gives the same choice, scores and coefficients as one kernel per
    candidate, and the chosen network's predictions."""
    x, y = _regression_data(np.random.default_rng(4), n=30, d=3, noise=0.5)
    dense = {"type": "dense", "W_std": 1.5, "b_std": 0.1}
    spec = {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
        dense, {"type": "relu"}]}}, {"type": "dense", "W_std": 1.5, "b_std": 0.1}]}
    grid = [1e-3, 1e-2, 1e-1]
    backend = _PerCandidate()
    fam = NTKRegressor(arch=spec, depths=[1, 3], variants=[0, 1, 2], lam_grid=grid).fit(x, y)
    one = NTKRegressor(arch=spec, depths=[1, 3], variants=[0, 1, 2], lam_grid=grid,
                       backend=backend).fit(x.astype(np.float64), y)
    assert backend.calls == 6
    assert (fam.depth_, fam.variant_, fam.lam_) == (one.depth_, one.variant_, one.lam_)
    assert fam.cv_results_["variant"].tolist() == [v for _ in (1, 3) for v in (0, 1, 2)
                                                   for _ in grid]
    for key in ("score", "lam_absolute", "depth", "variant"):
        np.testing.assert_allclose(fam.cv_results_[key], one.cv_results_[key], rtol=1e-10)
    member = ntkcompute.families.make_family(spec, [1, 3], [0, 1, 2]).member(
        fam.depth_, fam.variant_)
    assert fam.arch_ == member
    k, kc = kernel(member, x)["ntk"], kernel(member, x[:7], x)["ntk"]
    want = kc @ np.linalg.solve(k + fam.lam_absolute_ * np.eye(len(x)), y)
    np.testing.assert_allclose(fam.predict(x[:7]), want, rtol=1e-8, atol=1e-10)
    for params in ({"variants": [0, 1]}, {"arch": fc, "depths": [1, 2], "variants": [0]},
                   {"arch": spec, "depths": [1, 2], "variants": [0], "kernel": "nngp"},
                   {"arch": spec, "depths": [1, 2], "variants": [3]}):
        with pytest.raises(InputError) as e:
            NTKRegressor(**params).fit(x, y)
        assert e.value.field == "variants", params


def test_a_bias_grid_chooses_b_std_with_depth_from_one_pass_per_value():
    """``b_stds``: candidates (b_std, depth); the family pass gives the same choice and
    scores as one kernel per candidate, and the chosen network's predictions."""
    x, y = _regression_data(np.random.default_rng(5), n=30, d=3, noise=0.5)
    dense = {"type": "dense", "W_std": 1.5}
    spec = {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
        dense, {"type": "relu"}]}}, dense]}
    kw = dict(arch=spec, depths=[1, 3], b_stds=[0.0, 1.0], lam_grid=[1e-3, 1e-1])
    backend = _PerCandidate()
    fam = NTKClassifier(**kw).fit(x, y > 0)
    one = NTKClassifier(**kw, backend=backend).fit(x, y > 0)
    assert backend.calls == 4
    assert (fam.b_std_, fam.depth_, fam.lam_) == (one.b_std_, one.depth_, one.lam_)
    assert fam.cv_results_["b_std"].tolist() == [b for b in (0, 1) for _ in (1, 3)
                                                 for _ in range(2)]
    np.testing.assert_allclose(fam.cv_results_["score"], one.cv_results_["score"],
                               rtol=1e-10)
    assert fam.arch_ == ntkcompute.families.make_family(spec, [1, 3], b_stds=[0, 1]).member(
        fam.depth_, 0, fam.b_std_)
    np.testing.assert_allclose(fam.decision_function(x[:5]), one.decision_function(x[:5]),
                               rtol=1e-8, atol=1e-10)
    with pytest.raises(InputError) as e:
        NTKClassifier(arch=fc, depths=[1, 2], b_stds=[0, 1]).fit(x, y > 0)
    assert e.value.field == "b_stds"


# -- 5. predictions are the direct solve ------------------------------------------------

@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_predictions_equal_a_direct_solve(rng, get):
    x, y = _regression_data(rng, n=40, outputs=2)
    xt = rng.standard_normal((9, 5))
    K = kernel(ARCH, x, get=get)[get]
    Kc = kernel(ARCH, xt, x, get=get)[get]
    for lam in ["loo", 1e-2]:
        est = NTKRegressor(arch=ARCH, kernel=get, lam=lam).fit(x, y)
        direct = Kc @ np.linalg.solve(K + est.lam_absolute_ * np.eye(40), y)
        np.testing.assert_allclose(est.predict(xt), direct, rtol=0, atol=1e-10)
    labels = rng.integers(0, 4, 40)
    clf = NTKClassifier(arch=ARCH, kernel=get).fit(x, labels)
    direct = Kc @ np.linalg.solve(K + clf.lam_absolute_ * np.eye(40), one_hot(labels, 4))
    np.testing.assert_allclose(clf.decision_function(xt), direct, rtol=0, atol=1e-10)
    assert np.array_equal(clf.predict(xt), np.argmax(direct, axis=1))


# -- 6. the backend protocol ------------------------------------------------------------

class CountingBackend:
    """ntkcompute.kernel in-process, recording each call's shapes and kernel."""

    def __init__(self):
        self.calls = []

    def gram(self, arch, x1, x2=None, get="ntk"):
        assert isinstance(arch, ntkcompute.Architecture)
        self.calls.append((x1.shape, None if x2 is None else x2.shape, get))
        return kernel(arch, x1, x2, get=get)[get]


def test_fit_and_predict_go_through_the_backend(rng):
    x, y = _regression_data(rng, n=30)
    backend = CountingBackend()
    est = NTKRegressor(arch=ARCH, kernel="nngp", backend=backend).fit(x, y)
    assert backend.calls == [((30, 5), None, "nngp")]
    pred = est.predict(x[:6])
    assert backend.calls[1:] == [((6, 5), (30, 5), "nngp")]
    np.testing.assert_array_equal(pred, NTKRegressor(arch=ARCH, kernel="nngp").fit(x, y)
                                  .predict(x[:6]))
    # one Gram matrix per candidate depth, one cross kernel for the chosen one
    backend = CountingBackend()
    clf = NTKClassifier(arch=fc, depths=[1, 2, 3], backend=backend).fit(x, y > 0)
    assert backend.calls == [((30, 5), None, "ntk")] * 3
    clf.predict(x[:4])
    assert len(backend.calls) == 4 and backend.calls[3][1] == (30, 5)


def test_a_backend_is_checked(rng):
    x, y = _regression_data(rng, n=10)

    class Wrong:
        def gram(self, arch, x1, x2=None, get="ntk"):
            return np.eye(len(x1) + 1)

    with pytest.raises(InputError, match="backend returned") as e:
        NTKRegressor(backend=Wrong()).fit(x, y)
    assert e.value.field == "backend"
    with pytest.raises(InputError) as e:
        NTKRegressor(backend=object()).fit(x, y)
    assert e.value.field == "backend"


# -- argument checks --------------------------------------------------------------------

@pytest.mark.parametrize(("params", "field"), [
    ({"kernel": "rbf"}, "kernel"),
    ({"lam": -1.0}, "lam"),
    ({"lam": "cv"}, "lam"),
    ({"lam": float("nan")}, "lam"),
    ({"lam_grid": []}, "lam_grid"),
    ({"lam_grid": [0.0, 1.0]}, "lam_grid"),
    ({"lam_grid": ["a"]}, "lam_grid"),
    ({"relative": "yes"}, "relative"),
    ({"dtype": np.int32}, "dtype"),
    ({"depths": [1, 2]}, "layers"),  # a spec with depths but no top-level repeat
    ({"arch": 3, "depths": [1, 2]}, "arch"),
    ({"arch": fc, "depths": None}, "arch"),  # a callable without
    ({"arch": fc, "depths": []}, "depths"),
    ({"arch": fc, "depths": [1.5]}, "depths"),
    ({"arch": {"layers": [{"type": "dense", "W_std": -1}]}}, "W_std"),
])
def test_bad_parameters_raise_input_error_at_fit(rng, params, field):
    est = NTKRegressor(arch=ARCH).set_params(**params)  # no check before fit
    x, y = _regression_data(rng, n=8)
    with pytest.raises(InputError) as e:
        est.fit(x, y)
    assert e.value.field == field


def test_a_zero_kernel_cannot_take_a_relative_lambda():
    with pytest.raises(InputError, match=r"mean\(diag K\)"):
        NTKRegressor(arch=fc(1)).fit(np.zeros((5, 3)), np.ones(5))  # K = 0 without bias
    est = NTKRegressor(arch=fc(1), lam=1.0, relative=False).fit(np.zeros((5, 3)), np.ones(5))
    np.testing.assert_array_equal(est.predict(np.ones((2, 3))), 0.0)


def test_lambda_zero_interpolates_and_float32_inputs(rng):
    x, y = _regression_data(rng, n=20)
    est = NTKRegressor(arch=ARCH, lam=0, relative=False).fit(x, y)
    np.testing.assert_allclose(est.predict(x), y, atol=1e-8)
    assert np.isnan(est.best_score_)  # no leave-one-out residual at λ = 0
    with pytest.raises(InputError, match="finite score") as e:
        NTKRegressor(arch=fc, depths=[1, 2], lam=0, relative=False).fit(x, y)
    assert e.value.field == "lam"
    f32 = NTKRegressor(arch=ARCH, lam=1e-2, dtype=np.float32).fit(x, y)
    assert f32.X_fit_.dtype == np.float32
    f64 = NTKRegressor(arch=ARCH, lam=1e-2).fit(x, y)
    np.testing.assert_allclose(f32.predict(x[:5]), f64.predict(x[:5]), rtol=1e-4, atol=1e-5)


def test_import_ntkcompute_does_not_load_sklearn_and_exports_lazily():
    code = textwrap.dedent("""\
        import sys
        import ntkcompute
        before = "sklearn" in sys.modules
        from ntkcompute.estimators import NTKClassifier, NTKRegressor
        print(before, ntkcompute.NTKRegressor is NTKRegressor,
              ntkcompute.NTKClassifier is NTKClassifier, "sklearn" in sys.modules)
        """)
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "True", "True"]
    with pytest.raises(AttributeError):
        _ = ntkcompute.NTKNothing

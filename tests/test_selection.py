"""Closed-form model selection: leave-one-out and GCV equal their brute-force definitions,
and ``select`` over a kernel family reproduces an exhaustive leave-one-out search."""

import itertools

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris, load_wine

import ntkcompute as nc
from ntkcompute import InputError
from ntkcompute.datasets import digits
from ntkcompute.regression import Eigen, one_hot
from ntkcompute.selection import gcv_scores, loo_residuals

FC = {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
    {"type": "dense", "W_std": 2 ** 0.5, "b_std": 0.1}, {"type": "relu"}]}},
    {"type": "dense", "W_std": 2 ** 0.5, "b_std": 0.1}]}


def _fc(depth):
    return nc.make_family(FC, [depth]).members[0]


def _brute_loo(k, y, lam):
    """Refit without each point: its residual and the argmax of its prediction."""
    n = len(k)
    resid = np.zeros_like(y)
    for i in range(n):
        keep = np.arange(n) != i
        coef = np.linalg.solve(k[np.ix_(keep, keep)] + lam * np.eye(n - 1), y[keep])
        resid[i] = y[i] - k[i, keep] @ coef
    return resid


def test_loo_and_gcv_equal_their_definitions(rng):
    x = rng.standard_normal((40, 6))
    k = nc.kernel(_fc(3), x, get="ntk")["ntk"]
    y = rng.standard_normal((40, 2))
    eig = Eigen.of(k)
    for lam in (1e-3, 0.1, 3.0):
        want = _brute_loo(k, y, lam)
        assert np.abs(loo_residuals(eig, y, lam) - want).max() <= 1e-10 * np.abs(want).max()
        h = k @ np.linalg.inv(k + lam * np.eye(40))
        r = (np.eye(40) - h) @ y
        gcv = 40 * (r ** 2).sum(axis=0) / np.trace(np.eye(40) - h) ** 2
        assert np.allclose(gcv_scores(eig, y, lam), gcv, rtol=1e-10, atol=0)


def _standardised(x):
    return (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)


def _dataset(name, n):
    if name == "digits":
        x, y = digits()
        x = x.reshape(len(x), -1)
    else:
        x, y = {"iris": load_iris, "wine": load_wine,
                "breast cancer": load_breast_cancer}[name](return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(x))[:n]
    return _standardised(x[idx].astype(np.float64)), y[idx].astype(np.int64)


@pytest.mark.parametrize("name", ["iris", "wine", "breast cancer", "digits"])
def test_select_reproduces_an_exhaustive_leave_one_out_search(name):
    """Depths 1-4 x {NTK, NNGP} x 4 λ: ``select`` picks what refitting without each point
    picks (leave-one-out accuracy, ties by the leave-one-out squared error), with the same
    scores to 1e-10."""
    x, y = _dataset(name, 90)
    lams = [1e-4, 1e-2, 0.3, 3.0]
    fam = nc.kernel_family(FC, x, depths=[1, 2, 3, 4])
    got = nc.select(fam, y, lambdas=lams)
    codes = one_hot(y, int(y.max()) + 1)
    rows = []
    for kind in ("ntk", "nngp"):
        for i, d in enumerate(fam["depths"]):
            k = fam[kind][i]
            for lam in lams:
                e = _brute_loo(k, codes, lam * np.mean(np.diag(k)))
                rows.append(((-np.mean(np.argmax(codes - e, axis=1) == y),
                              np.mean(e ** 2)), (kind, int(d), lam)))
    (acc, mse), (kind, depth, lam) = min(rows, key=lambda r: r[0])
    b = got.best
    assert (b["kernel"], b["depth"], b["lam"]) == (kind, depth, lam)
    assert b["accuracy"] == -acc and abs(b["loo"] - mse) <= 1e-10 * mse
    assert len(got.table) == 2 * 4 * len(lams)
    for (score, _), row in zip(sorted(rows, key=lambda r: r[1]),
                               sorted(got.table, key=lambda r: (r["kernel"], r["depth"],
                                                                r["lam"])), strict=True):
        assert abs(row["loo"] - score[1]) <= 1e-10 * score[1]


def test_regression_targets_and_named_kernels(rng):
    x = rng.standard_normal((50, 4))
    y = np.sin(x[:, 0]) + 0.1 * rng.standard_normal(50)
    named = {f"fc{d}": nc.kernel(_fc(d), x, get="ntk")["ntk"] for d in (1, 3)}
    sel = nc.select(named, y, criterion="gcv")
    assert sel.criterion == "gcv" and sel.best["name"] in named and sel.best["depth"] is None
    assert sel.best["gcv"] == min(r["gcv"] for r in sel.table)
    loo = nc.select(named, y)
    assert loo.criterion == "loo" and loo.best["loo"] == min(r["loo"] for r in loo.table)


def test_gradient_flow_time_as_the_regulariser(rng):
    """With ``times``: GCV is the linear smoother ``H_t = I - exp(-η K t)``'s exactly (the
    matrix exponential), the LOO column is the shortcut applied to H_t, and relative times
    scale with each member's mean diagonal."""
    from scipy.linalg import expm

    x = rng.standard_normal((30, 4))
    y = np.sin(x[:, 0]) + 0.1 * rng.standard_normal(30)
    fam = nc.kernel_family(FC, x, depths=[1, 3])
    times, lr = [0.1, 1.0, 10.0, 100.0], 0.5
    sel = nc.select(fam, y, times=times, lr=lr)
    assert len(sel.table) == 2 * 2 * 4 and "t" in sel.best and "lam" not in sel.best
    for row in sel.table:
        k = fam[row["kernel"]][[1, 3].index(row["depth"])]
        t = row["t"] / (lr * np.mean(np.diag(k)))
        assert row["t_absolute"] == pytest.approx(t, rel=1e-12)
        resid_op = expm(-lr * t * k)  # I - H_t
        r = resid_op @ y
        gcv = len(y) * r @ r / np.trace(resid_op) ** 2
        loo = np.mean((r / np.diag(resid_op)) ** 2)
        assert row["gcv"] == pytest.approx(gcv, rel=1e-9)
        assert row["loo"] == pytest.approx(loo, rel=1e-9)
    # the fit sharpens with t: the residual of the best member falls monotonically
    best = [r for r in sel.table if r["name"] == sel.best["name"]]
    fits = [np.sum((expm(-lr * r["t_absolute"] * fam[r["kernel"]][[1, 3].index(r["depth"])])
                    @ y) ** 2) for r in best]
    assert all(b < a for a, b in itertools.pairwise(fits))
    for kwargs, field in (({"times": [0.0]}, "times"), ({"times": [1.0], "lr": 0}, "lr"),
                          ({"times": []}, "times")):
        with pytest.raises(InputError) as e:
            nc.select(fam, y, **kwargs)
        assert e.value.field == field


@pytest.mark.parametrize("kwargs,field", [
    ({"lambdas": []}, "lambdas"), ({"lambdas": [0.0]}, "lambdas"),
    ({"lambdas": [np.nan]}, "lambdas"), ({"criterion": "aic"}, "criterion"),
    ({"y": np.ones(7)}, "y"), ({"y": np.array([0, 1, 2, -1, 0, 1, 2, 0])}, "y"),
    ({"classes": 1}, "classes"), ({"kernels": {}}, "kernels"),
    ({"kernels": {"a": np.ones((8, 8)), "b": np.ones((7, 7))}}, "kernels"),
    ({"kernels": {"a": np.full((8, 8), np.inf)}}, "kernels"),
])
def test_refusals_name_the_field(kwargs, field):
    args = {"kernels": {"a": np.eye(8)}, "y": np.array([0, 1] * 4), **kwargs}
    with pytest.raises(InputError) as e:
        nc.select(args.pop("kernels"), args.pop("y"), **args)
    assert e.value.field == field


def test_svm_selection_equals_grid_search_cv_per_member():
    """``method="svm"``: each member's cross-validated accuracy at each C is scikit-learn's
    GridSearchCV over SVC(kernel="precomputed") on the same folds; the best is the max."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    x, y = _dataset("wine", 90)
    fam = nc.kernel_family(FC, x, depths=[1, 3])
    cs = [0.1, 1.0, 10.0]
    sel = nc.select(fam, y, method="svm", C=cs, folds=3, seed=2)
    assert len(sel.table) == 4 * len(cs) and sel.criterion == "svm_cv_accuracy"
    for kind in ("ntk", "nngp"):
        for i, d in enumerate(fam["depths"]):
            gs = GridSearchCV(SVC(kernel="precomputed"), {"C": cs},
                              cv=StratifiedKFold(3, shuffle=True, random_state=2)).fit(
                fam[kind][i], y)
            rows = [r for r in sel.table if (r["kernel"], r["depth"]) == (kind, d)]
            assert np.allclose([r["accuracy"] for r in rows],
                               gs.cv_results_["mean_test_score"], atol=1e-12)
    assert sel.best["accuracy"] == max(r["accuracy"] for r in sel.table)


@pytest.mark.parametrize("kwargs,field", [
    ({"method": "lasso"}, "method"), ({"method": "svm", "C": [-1.0]}, "C"),
    ({"method": "svm", "folds": 1}, "folds"), ({"method": "svm", "folds": 5}, "folds"),
    ({"method": "svm", "y": np.linspace(0, 1, 8)}, "y"),
])
def test_svm_refusals_name_the_field(kwargs, field):
    args = {"kernels": {"a": np.eye(8)}, "y": np.array([0, 1] * 4), **kwargs}
    with pytest.raises(InputError) as e:
        nc.select(args.pop("kernels"), args.pop("y"), **args)
    assert e.value.field == field


def test_select_over_depths_and_variants_equals_exhaustive(rng):
    """A family with variants: every (depth, variant) NTK and each depth's NNGP is a
    candidate, and the choice is the exhaustive search's over those kernels."""
    from ntkcompute.families import kernel_family, make_family
    from tests.conftest import fc_family

    x = rng.standard_normal((30, 4))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    fam = make_family(fc_family(), [1, 2, 3], [0, 1, 2])
    k = kernel_family(fam, x)
    got = nc.select(k, y, criterion="loo")
    assert len(got.table) == (9 + 3) * len(nc.selection.DEFAULT_LAMBDAS)
    named = {f"ntk {d} {v}": k["ntk"][i, j] for i, d in enumerate(fam.depths)
             for j, v in enumerate(fam.variants)}
    named.update({f"nngp {d}": k["nngp"][i] for i, d in enumerate(fam.depths)})
    brute = nc.select(named, y, criterion="loo")
    b = got.best
    key = f"ntk {b['depth']} {b['variant']}" if b["kernel"] == "ntk" else f"nngp {b['depth']}"
    assert key == brute.best["name"] and b["lam"] == brute.best["lam"]
    assert b["loo"] == pytest.approx(brute.best["loo"], rel=1e-12)
    assert {r["variant"] for r in got.table if r["kernel"] == "nngp"} == {None}
    assert {r["variant"] for r in got.table if r["kernel"] == "ntk"} == {0, 1, 2}


def test_select_over_a_bias_grid_equals_exhaustive(rng):
    """A family with a bias grid: every (b_std, depth) NTK and NNGP is a candidate, the
    choice is the exhaustive search's over those kernels, and rows name ``b_std``."""
    from ntkcompute.families import kernel_family, make_family
    from tests.conftest import fc_family

    x = rng.standard_normal((30, 4))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    fam = make_family(fc_family(), [1, 2], b_stds=[0, 1])
    k = kernel_family(fam, x)
    got = nc.select(k, y, criterion="gcv")
    named = {f"{g} {b} {d}": k[g][i, j] for g in ("ntk", "nngp")
             for i, b in enumerate(fam.b_stds) for j, d in enumerate(fam.depths)}
    brute = nc.select(named, y, criterion="gcv")
    assert len(got.table) == len(brute.table) == 8 * len(nc.selection.DEFAULT_LAMBDAS)
    b = got.best
    assert f"{b['kernel']} {b['b_std']} {b['depth']}" == brute.best["name"]
    assert b["gcv"] == pytest.approx(brute.best["gcv"], rel=1e-12)
    assert {r["b_std"] for r in got.table} == {0.0, 1.0}

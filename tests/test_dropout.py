"""Dropout (stax.Dropout): closed form, the empirical NTK of wide nets, tilings, JSON."""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute.plan import make_plan
from tests.reference import finite_difference_ntk

D = {"type": "dense", "W_std": 1.5, "b_std": 0.2}
RELU = {"type": "relu"}


def drop(rate, mode="train"):
    return {"type": "dropout", "rate": rate, "mode": mode}


def closed_form_fc(x, rate, n_hidden):
    """``n_hidden`` x [dense, relu, dropout] then dense, by hand: arc-cosine ReLU (Cho & Saul
    2009) and stax's dropout rule, on the symmetric Gram of ``x``."""
    k = x @ x.T / x.shape[1]
    t = np.zeros_like(k)
    for _ in range(n_hidden):
        k = 1.5**2 * k + 0.2**2
        t = 1.5**2 * t + k
        s = np.sqrt(np.outer(np.diag(k), np.diag(k)))
        theta = np.arccos(np.clip(k / s, -1, 1))
        k = s * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
        t = t * (np.pi - theta) / (2 * np.pi)
        np.fill_diagonal(k, np.diag(k) / rate)  # x paired with itself keeps its own mask
        np.fill_diagonal(t, np.diag(t) / rate)
    k = 1.5**2 * k + 0.2**2
    return {"nngp": k, "ntk": 1.5**2 * t + k}


@pytest.mark.parametrize("rate", [0.3, 0.8, 1.0])
def test_fc_matches_closed_form(rng, rate):
    x = rng.standard_normal((6, 5))
    arch = {"layers": [D, RELU, drop(rate), D, RELU, drop(rate), D]}
    got = nc.kernel(arch, x)
    ref = closed_form_fc(x, rate, 2)
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(got[g], ref[g], rtol=1e-12, atol=0)


def test_test_mode_is_identity_and_rate_one_too(rng):
    x = rng.standard_normal((5, 4, 4, 2))
    conv = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.4}
    plain = {"layers": [conv, RELU, conv, RELU, {"type": "global_avg_pool"}, D]}
    with_test = {"layers": [conv, RELU, drop(0.5, "test"), conv, RELU,
                            {"type": "global_avg_pool"}, D]}
    with_one = {"layers": [conv, RELU, drop(1.0), conv, RELU, {"type": "global_avg_pool"}, D]}
    ref = nc.kernel(plain, x)
    for arch in (with_test, with_one):
        got = nc.kernel(arch, x)
        for g in ("nngp", "ntk"):
            np.testing.assert_array_equal(got[g], ref[g])
    emp = nc.empirical_kernel(plain, x, width=8, seed=2)["ntk"]
    np.testing.assert_array_equal(nc.empirical_kernel(with_test, x, width=8, seed=2)["ntk"], emp)


def test_only_pairs_of_one_input_and_position_are_scaled(rng):
    """Before the readout, dropout changes nothing but the entries of an input with itself:
    the cross Gram of distinct inputs is the plain net's; in a spatial net with GAP (the full
    covariance) the p == p' terms of the diagonal grow by (1/rate - 1)."""
    x1, x2 = rng.standard_normal((4, 3, 3, 2)), rng.standard_normal((3, 3, 3, 2))
    conv = {"type": "conv", "filter_shape": [2, 2], "padding": "SAME", "W_std": 1.3}
    plain = {"layers": [conv, RELU, {"type": "global_avg_pool"}, D]}
    arch = {"layers": [conv, RELU, drop(0.4), {"type": "global_avg_pool"}, D]}
    for g in ("nngp", "ntk"):
        np.testing.assert_array_equal(nc.kernel(arch, x1, x2)[g], nc.kernel(plain, x1, x2)[g])
    # by hand: GAP of the relu layer's full covariance, its diagonal positions scaled; the
    # mean of those positions is what flatten computes
    diag_mean = nc.kernel({"layers": [conv, RELU, {"type": "flatten"},
                                      {"type": "dense", "W_std": 1.0}]}, x1)["nngp"]
    extra = (1 / 0.4 - 1) * np.diag(diag_mean) / 9  # mean over the 9 x 9 position pairs
    got, ref = nc.kernel(arch, x1)["nngp"], nc.kernel(plain, x1)["nngp"]
    np.testing.assert_allclose(np.diag(got) - np.diag(ref), 1.5**2 * extra, rtol=1e-12)
    off = ~np.eye(len(x1), dtype=bool)
    np.testing.assert_array_equal(got[off], ref[off])


def test_identity_is_per_pair_whatever_the_tiling(rng):
    x = rng.standard_normal((9, 4, 4, 1))
    conv = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.4,
            "b_std": 0.1}
    arch = {"layers": [conv, RELU, drop(0.6), conv, RELU, drop(0.6),
                       {"type": "avg_pool", "window_shape": [2, 2], "strides": [2, 2]},
                       {"type": "flatten"}, D]}
    ref = nc.kernel(arch, x)
    tiled = nc.kernel(arch, x, memory=60_000, threads=1)  # blocks of a few rows
    again = nc.kernel(arch, x, x.copy())  # x2 equal to x1: x1 is x2, as in stax
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(tiled[g], ref[g], rtol=1e-13)
        np.testing.assert_allclose(again[g], ref[g], rtol=1e-13)
    part = nc.kernel(arch, x[:4], x[2:7])  # shares rows 2, 3: those pairs are one input
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(part[g], ref[g][:4, 2:7], rtol=1e-13)


def test_float32_with_refined_near_pairs(rng):
    x = rng.standard_normal((6, 5)).astype(np.float32)
    x[3] = x[1] + 1e-3  # a near pair: recomputed in float64 as a list of pairs
    arch = {"layers": [D, RELU, drop(0.5), D, RELU, drop(0.5), D]}
    ref = nc.kernel(arch, x.astype(np.float64))
    got = nc.kernel(arch, x, dtype=np.float32)
    for g in ("nngp", "ntk"):
        scale = np.sqrt(np.outer(np.diag(ref[g]), np.diag(ref[g])))
        assert np.abs(got[g] - ref[g]).max() / scale.max() < 1e-6


def mean_rel_err(arch, x, width, seeds):
    ref = nc.kernel(arch, x)["ntk"]
    return np.mean([np.abs(nc.empirical_kernel(arch, x, width=width, seed=s)["ntk"] - ref).mean()
                    / np.abs(ref).mean() for s in range(seeds)])


def test_fc_empirical_ntk_converges(rng):
    x = rng.standard_normal((5, 8))
    arch = {"layers": [D, RELU, drop(0.6), D, RELU, drop(0.6), D]}
    errs = [mean_rel_err(arch, x, w, seeds=3) for w in (64, 512, 4096)]
    assert np.all(np.diff(errs) < 0) and errs[-1] < 0.05, errs


def test_conv_empirical_ntk_at_large_width(rng):
    x = rng.standard_normal((3, 4, 4, 2))
    conv = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.4}
    arch = {"layers": [conv, RELU, drop(0.7), conv, RELU, drop(0.7),
                       {"type": "global_avg_pool"}, D]}
    errs = [mean_rel_err(arch, x, w, seeds=2) for w in (16, 256)]
    assert errs[1] < errs[0] and errs[1] < 0.1, errs


def test_empirical_masks_follow_the_inputs(rng):
    """The same input gets the same mask, wherever it sits in the batch."""
    x1, x2 = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    arch = {"layers": [D, RELU, drop(0.5), D]}
    joint = nc.empirical_kernel(arch, np.concatenate([x1, x2]), width=64, seed=3)
    cross = nc.empirical_kernel(arch, x1, x2, width=64, seed=3)
    np.testing.assert_allclose(cross["ntk"], joint["ntk"][:3, 3:], rtol=1e-12)
    dup = nc.empirical_kernel(arch, np.concatenate([x1, x1[:1]]), width=64, seed=3,
                              get=("nngp", "ntk"))
    for g in ("nngp", "ntk"):
        np.testing.assert_allclose(dup[g][0], dup[g][3], rtol=1e-12)


def test_plan_refuses_a_nonlinearity_or_sum_right_after_it():
    x = np.zeros((2, 3))
    with pytest.raises(nc.InputError, match="Gaussian pre-activations") as e:
        nc.kernel({"layers": [D, drop(0.5), RELU, D]}, x)
    assert (e.value.layer, e.value.field) == (2, "type")
    nc.kernel({"layers": [D, drop(0.5, "test"), RELU, D]}, x)  # test mode: still Gaussian
    branches = {"layers": [D, {"type": "fan_out", "num": 2},
                           {"type": "parallel", "branches": [[drop(0.5)], [D]]},
                           {"type": "fan_in_sum"}, D]}
    with pytest.raises(nc.InputError, match="needs Gaussian branches"):
        nc.kernel(branches, x)


def test_json_round_trip_and_validation():
    arch = nc.parse_arch({"layers": [D, RELU, {"type": "dropout", "rate": 0.25}, D]})
    layer = arch.layers[2]
    assert (layer.type, layer.rate, layer.mode) == ("dropout", 0.25, "train")
    again = nc.parse_arch(arch.to_json())
    assert again == arch and again.to_json() == arch.to_json()
    assert '"type":"dropout","rate":0.25,"mode":"train"' in arch.to_json()
    for bad, field in (({"rate": 0}, "rate"), ({"rate": 1e-300}, "rate"),
                       ({"rate": 1.5}, "rate"), ({}, "rate"),
                       ({"rate": 0.5, "mode": "eval"}, "mode"),
                       ({"rate": 0.5, "p": 1}, "p")):
        with pytest.raises(nc.InputError) as e:
            nc.parse_arch({"layers": [D, {"type": "dropout", **bad}, D]})
        assert (e.value.layer, e.value.field) == (1, field), str(e.value)


def test_empirical_ntk_equals_finite_difference_jacobians(rng):
    """With the masks fixed by the seed, J J^T / K with J from central differences."""
    from ntkcompute.empirical import forward, init_params, readout_default

    conv = {"type": "conv", "filter_shape": [2, 2], "padding": "SAME", "W_std": 1.4,
            "b_std": 0.2}
    arch = {"layers": [conv, RELU, drop(0.5), conv, {"type": "erf"}, drop(0.7),
                       {"type": "global_avg_pool"}, {"type": "dense", "out_dim": 2}]}
    x = rng.standard_normal((3, 3, 3, 2))
    x[2] = x[0]  # one input twice: the same mask
    plan = make_plan(readout_default(nc.parse_arch(arch)), x.shape, width=3)
    params = init_params(plan, 7, np.float64)
    ntk = nc.empirical_kernel(arch, x, width=3, seed=7)["ntk"]
    np.testing.assert_allclose(ntk, finite_difference_ntk(forward, plan, params, x), rtol=1e-7,
                               atol=1e-9)
    np.testing.assert_allclose(ntk[0], ntk[2], rtol=1e-12)

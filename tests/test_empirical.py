"""The finite-width empirical NTK converges to the infinite-width kernel like width^-1/2."""

import numpy as np
import pytest

import ntkcompute as nc
from tests.conftest import conv_net, fc_net
from tests.reference import finite_difference_ntk


def mean_rel_err(arch, x, widths, seeds, inf=None, arch_for=None):
    out = []
    for w in widths:
        a = arch_for(w) if arch_for else arch
        ref = inf if inf is not None else nc.kernel(a, x)["ntk"]
        errs = [np.abs(nc.empirical_kernel(a, x, width=w, seed=s)["ntk"] - ref).mean()
                / np.abs(ref).mean() for s in range(seeds)]
        out.append(np.mean(errs))
    return np.array(out)


def slope(widths, errs):
    return np.polyfit(np.log(widths), np.log(errs), 1)[0]


def test_fc_relu_converges_like_inverse_sqrt_width(rng):
    x = rng.standard_normal((5, 8))
    arch = fc_net(2, w=1.5, b=0.2)
    widths = [64, 256, 1024, 4096]
    errs = mean_rel_err(arch, x, widths, seeds=4)
    assert np.all(np.diff(errs) < 0), errs
    assert -0.8 < slope(widths, errs) < -0.3, errs
    assert errs[-1] < 0.05


def test_cnn_gap_converges_like_inverse_sqrt_width(rng):
    x = rng.standard_normal((4, 5, 5, 2))
    arch = conv_net(2, "global_avg_pool", b=0.1)
    widths = [16, 64, 256, 1024]
    errs = mean_rel_err(arch, x, widths, seeds=3)
    assert np.all(np.diff(errs) < 0), errs
    assert -0.8 < slope(widths, errs) < -0.3, errs
    assert errs[-1] < 0.08


def test_standard_parameterization_converges(rng):
    x = rng.standard_normal((4, 6))

    def arch_for(w):
        return {"parameterization": "standard", "layers": [
            {"type": "dense", "W_std": 1.4, "b_std": 0.3, "out_dim": w}, {"type": "relu"},
            {"type": "dense", "W_std": 1.4, "b_std": 0.3, "out_dim": w}, {"type": "erf"},
            {"type": "dense", "W_std": 1.4, "b_std": 0.3}]}

    widths = [64, 512, 4096]
    errs = mean_rel_err(None, x, widths, seeds=3, arch_for=arch_for)
    assert np.all(np.diff(errs) < 0) and errs[-1] < 0.05, errs


@pytest.mark.parametrize("act", [
    {"type": "erf", "a": 1.2, "b": 0.8, "c": 0.1}, {"type": "gelu"}, {"type": "abs"},
    {"type": "leaky_relu", "alpha": 0.2}, {"type": "sin", "a": 1.0, "b": 1.3, "c": 0.2},
    {"type": "elementwise", "fn": "tanh"}, {"type": "elementwise", "fn": "softplus"},
    {"type": "exp", "a": 0.8, "b": 0.3}, {"type": "gaussian", "a": 1.5, "b": -0.5},
    {"type": "cos", "a": 1.2, "b": 0.9, "c": 0.4}, {"type": "rbf", "gamma": 0.6},
    {"type": "abrelu", "a": -0.4, "b": 1.2},
])
def test_each_activation_at_large_width(rng, act):
    x = rng.standard_normal((4, 6))
    arch = {"layers": [{"type": "dense", "W_std": 1.3, "b_std": 0.2}, act,
                       {"type": "dense", "W_std": 1.3, "b_std": 0.2}, act,
                       {"type": "dense", "W_std": 1.3, "b_std": 0.2}]}
    errs = mean_rel_err(arch, x, [4096], seeds=2)
    assert errs[0] < 0.05, errs


def test_conv_strides_padding_pooling_at_large_width(rng):
    x = rng.standard_normal((3, 6, 5, 2))
    arch = {"layers": [
        {"type": "conv", "filter_shape": [3, 2], "strides": [2, 1], "padding": "SAME",
         "W_std": 1.4, "b_std": 0.1}, {"type": "relu"},
        {"type": "conv", "filter_shape": [2, 3], "padding": "CIRCULAR", "W_std": 1.4},
        {"type": "relu"},
        {"type": "avg_pool", "window_shape": [2, 2], "strides": [1, 2], "padding": "SAME"},
        {"type": "dense", "W_std": 1.2, "b_std": 0.3}, {"type": "erf"},
        {"type": "flatten"}, {"type": "dense", "W_std": 1.2}]}
    errs = mean_rel_err(arch, x, [64, 1024], seeds=2)
    assert errs[1] < errs[0] / 2.5 and errs[1] < 0.06, errs


def test_empirical_nngp_readout_average_and_cross_kernel(rng):
    x1, x2 = rng.standard_normal((3, 5)), rng.standard_normal((2, 5))
    arch = fc_net(1)
    inf = nc.kernel(arch, x1, x2)
    emp = nc.empirical_kernel(arch, x1, x2, width=4096, seed=1)
    assert set(emp) == {"ntk"} and emp["ntk"].shape == (3, 2)
    assert np.abs(emp["ntk"] - inf["ntk"]).mean() / np.abs(inf["ntk"]).mean() < 0.05
    arch["layers"][-1]["out_dim"] = 4096  # many readout units: the output covariance averages
    emp = np.mean([nc.empirical_kernel(arch, x1, x2, width=2048, seed=s, get="nngp")["nngp"]
                   for s in range(6)], axis=0)
    assert np.abs(emp - inf["nngp"]).mean() / np.abs(inf["nngp"]).mean() < 0.05
    # the cross kernel is the off-diagonal block of the joint kernel (same weights)
    arch["layers"][-1]["out_dim"] = 3  # (4096 outputs would take one NTK pass each)
    joint = nc.empirical_kernel(arch, np.concatenate([x1, x2]), width=256, seed=3)["ntk"]
    cross = nc.empirical_kernel(arch, x1, x2, width=256, seed=3)["ntk"]
    np.testing.assert_allclose(cross, joint[:3, 3:], rtol=1e-12)


def test_empirical_errors(rng):
    with pytest.raises(nc.InputError) as e:
        nc.empirical_kernel(fc_net(1), rng.standard_normal((2, 3)), width=0)
    assert e.value.field == "width"


@pytest.mark.parametrize("arch,shape", [
    ({"layers": [{"type": "conv", "filter_shape": [3, 2], "strides": [2, 1], "padding": "SAME",
                  "W_std": 1.4, "b_std": 0.3}, {"type": "gelu"},
                 {"type": "conv", "filter_shape": [2, 2], "padding": "CIRCULAR", "W_std": 1.2},
                 {"type": "erf"}, {"type": "avg_pool", "window_shape": [2, 2],
                                   "padding": "SAME"},
                 {"type": "dense", "W_std": 1.1, "b_std": 0.2}, {"type": "sin"},
                 {"type": "global_avg_pool"}, {"type": "dense", "W_std": 1.3, "b_std": 0.1,
                                               "out_dim": 2}]}, (3, 5, 4, 2)),
    ({"parameterization": "standard", "layers": [
        {"type": "dense", "W_std": 1.4, "b_std": 0.3, "out_dim": 4},
        {"type": "elementwise", "fn": "tanh"},
        {"type": "dense", "W_std": 1.2, "b_std": 0.1, "out_dim": 3}]}, (4, 5)),
    ({"layers": [{"type": "conv", "filter_shape": [2, 2], "W_std": 1.5, "b_std": 0.1},
                 {"type": "elementwise", "fn": "softplus"}, {"type": "flatten"},
                 {"type": "dense", "W_std": 1.2}]}, (3, 3, 3, 1)),
    ({"layers": [  # a residual 1-D conv net with layer norm and sum pools
        {"type": "conv", "filter_shape": [3], "padding": "SAME", "b_std": 0.2},
        {"type": "fan_out", "num": 2},
        {"type": "parallel", "branches": [[{"type": "identity"}], [
            {"type": "relu"}, {"type": "conv", "filter_shape": [3], "padding": "SAME"}]]},
        {"type": "fan_in_sum"}, {"type": "layer_norm", "axis": [1, -1]},
        {"type": "sum_pool", "window_shape": [2]}, {"type": "global_sum_pool"},
        {"type": "dense", "b_std": 0.1}]}, (3, 5, 2)),
    ({"layers": [{"type": "dense"},
                 {"type": "global_self_attention", "n_heads": 2, "b_std": 0.3,
                  "W_query_std": 1.3},
                 {"type": "layer_norm"}, {"type": "relu"}, {"type": "global_avg_pool"},
                 {"type": "dense"}]}, (2, 4, 2)),
    ({"layers": [{"type": "dense"},
                 {"type": "global_self_attention", "linear_scaling": False,
                  "attention_mechanism": "IDENTITY", "n_chan_key": 2},
                 {"type": "flatten"}, {"type": "dense"}]}, (2, 3, 2)),
    ({"layers": [{"type": "dense"}, {"type": "fan_out", "num": 3},
                 {"type": "parallel", "branches": [
                     [{"type": "dense"}], [{"type": "erf"}, {"type": "dense", "out_dim": 2}],
                     [{"type": "dense", "out_dim": 4}]]},
                 {"type": "fan_in_concat"}, {"type": "dense"}, {"type": "fan_out", "num": 2},
                 {"type": "parallel", "branches": [[{"type": "dense"}], [{"type": "dense"}]]},
                 {"type": "fan_in_prod"}, {"type": "dense"}]}, (3, 4)),
], ids=["conv-pool-gap", "standard-fc", "flatten", "residual-layernorm-sumpool",
        "attention-softmax", "attention-sqrt", "concat-prod"])
def test_empirical_ntk_equals_finite_difference_jacobians(rng, arch, shape):
    """J J^T / K with J from central differences over every trainable parameter."""
    from ntkcompute.empirical import forward, init_params, readout_default
    from ntkcompute.plan import make_plan

    x = rng.standard_normal(shape)
    spec = readout_default(nc.parse_arch(arch))
    plan = make_plan(spec, x.shape, width=3)
    params = init_params(plan, 7, np.float64)
    ntk_fd = finite_difference_ntk(forward, plan, params, x)
    ntk = nc.empirical_kernel(arch, x, width=3, seed=7)["ntk"]
    np.testing.assert_allclose(ntk, ntk_fd, rtol=1e-7, atol=1e-9)

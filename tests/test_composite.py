"""Composite architectures (issue 8): branches, LayerNorm, sum pooling, self-attention and 1-D
sequences. Each rule is checked against a closed form built from other rules, and the
finite-width empirical NTK of the same net converges to it as width grows."""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.infinite import bytes_per_pair
from ntkcompute.plan import make_plan
from tests.test_empirical import mean_rel_err

RELU = {"type": "relu"}


def dense(**kw):
    return {"type": "dense", "W_std": 1.3, "b_std": 0.2, **kw}


def conv(k=(3,), **kw):
    return {"type": "conv", "filter_shape": list(k), "padding": "SAME", "W_std": 1.4, **kw}


def residual(block, shortcut=({"type": "identity"},)):
    return [{"type": "fan_out", "num": 2},
            {"type": "parallel", "branches": [list(shortcut), list(block)]},
            {"type": "fan_in_sum"}]


def both(arch, x, x2=None):
    return nc.kernel(arch, x, x2, get=("ntk", "nngp"))


# --- closed forms from other rules ------------------------------------------------------------

def test_identity_residual_is_the_sum_of_its_branches(rng):
    """x + f(x): K and Θ are those of the shortcut plus those of the branch (exactly)."""
    x1, x2 = rng.standard_normal((5, 7)), rng.standard_normal((3, 7))
    stem, block = [dense()], [RELU, dense(), RELU, dense()]
    k = both({"layers": stem + residual(block)}, x1, x2)
    a, b = both({"layers": stem}, x1, x2), both({"layers": stem + block}, x1, x2)
    for g in ("ntk", "nngp"):
        np.testing.assert_allclose(k[g], a[g] + b[g], rtol=1e-13)
    # images: a conv residual under global average pooling, which is linear
    xi = rng.standard_normal((4, 5, 5, 2))
    stem, block, tail = [conv((3, 3))], [RELU, conv((3, 3))], [{"type": "global_avg_pool"}]
    k = both({"layers": stem + residual(block) + tail}, xi)
    a, b = both({"layers": stem + tail}, xi), both({"layers": stem + block + tail}, xi)
    for g in ("ntk", "nngp"):
        np.testing.assert_allclose(k[g], a[g] + b[g], rtol=1e-12)


def test_product_and_concat_of_branches(rng):
    x = rng.standard_normal((5, 6))
    b1, b2 = [dense(W_std=0.9)], [RELU, dense(W_std=1.7, out_dim=6)]
    k1, k2 = both({"layers": [dense(), *b1]}, x), both({"layers": [dense(), *b2]}, x)
    fan = [dense(), {"type": "fan_out", "num": 2}, {"type": "parallel", "branches": [b1, b2]}]
    prod = both({"layers": [*fan, {"type": "fan_in_prod"}]}, x)
    np.testing.assert_allclose(prod["nngp"], k1["nngp"] * k2["nngp"], rtol=1e-13)
    np.testing.assert_allclose(prod["ntk"], k1["ntk"] * k2["nngp"] + k1["nngp"] * k2["ntk"],
                               rtol=1e-13)
    # concat along channels: the kernels weighted by the branches' widths (2 and 6)
    b1w = [dense(W_std=0.9, out_dim=2)]
    fan[2] = {"type": "parallel", "branches": [b1w, b2]}
    cat = both({"layers": [*fan, {"type": "fan_in_concat", "axis": -1}]}, x)
    for g in ("ntk", "nngp"):
        np.testing.assert_allclose(cat[g], (2 * k1[g] + 6 * k2[g]) / 8, rtol=1e-13)


def test_repeat_and_serial_inline(rng):
    x = rng.standard_normal((4, 5))
    block = [dense(), {"type": "erf"}]
    flat = both({"layers": block * 3 + [dense()]}, x)
    nested = both({"layers": [{"type": "repeat", "n": 3,
                               "layer": {"type": "serial", "layers": block}}, dense()]}, x)
    for g in ("ntk", "nngp"):
        np.testing.assert_array_equal(flat[g], nested[g])


def test_sum_pools_scale_the_average_pools(rng):
    x = rng.standard_normal((3, 6, 6, 2))
    head = [conv((3, 3)), RELU, conv((3, 3))]
    for s, a, factor in (({"type": "sum_pool", "window_shape": [2, 2], "strides": [2, 2]},
                          {"type": "avg_pool", "window_shape": [2, 2], "strides": [2, 2]}, 16),
                         ({"type": "global_sum_pool"}, {"type": "global_avg_pool"}, 36**2)):
        tail = [{"type": "flatten"}] if "window_shape" in s else []
        ks, ka = both({"layers": [*head, s, *tail]}, x), both({"layers": [*head, a, *tail]}, x)
        for g in ("ntk", "nngp"):
            np.testing.assert_allclose(ks[g], factor * ka[g], rtol=1e-12)


def test_layer_norm_output_has_unit_diagonal(rng):
    x = rng.standard_normal((6, 5)) * rng.uniform(0.1, 10, (6, 1))
    k = both({"layers": [dense(b_std=0.5), {"type": "layer_norm", "eps": 0.0}]}, x)
    np.testing.assert_allclose(np.diag(k["nngp"]), 1.0, rtol=1e-13)
    assert np.all(np.abs(k["nngp"]) <= 1 + 1e-13)
    xi = rng.standard_normal((4, 4, 3, 2)) * rng.uniform(0.1, 10, (4, 1, 1, 1))
    for axis in (-1, [1, 2, 3], [2, -1]):  # per position, per image, per row
        arch = {"layers": [conv((2, 2)), {"type": "layer_norm", "axis": axis, "eps": 0.0},
                           {"type": "flatten"}]}
        np.testing.assert_allclose(np.diag(both(arch, xi)["nngp"]), 1.0, rtol=1e-12)
    # the normalisation undoes the input scale: x and 7x have the same kernel row
    arch = {"layers": [dense(b_std=None), {"type": "layer_norm", "eps": 0.0}, RELU, dense()]}
    np.testing.assert_allclose(both(arch, x[:1], x)["ntk"], both(arch, 7 * x[:1], x)["ntk"],
                               rtol=1e-12)


def test_attention_with_zero_logits_averages_positions(rng):
    """W_query_std = 0: every softmax weight is 1/T, so the output at each position is the
    positions' mean: K' = OV² mean K (+ b²), Θ' = OV² (mean Θ + 2 mean K) (+ b²)."""
    x = rng.standard_normal((4, 5, 3))
    att = {"type": "global_self_attention", "W_query_std": 0.0, "W_value_std": 1.2,
           "W_out_std": 0.5, "b_std": 0.3}
    k = both({"layers": [conv(), att, {"type": "flatten"}]}, x)
    m = both({"layers": [conv(), {"type": "global_avg_pool"}]}, x)
    ov2 = (1.2 * 0.5) ** 2
    np.testing.assert_allclose(k["nngp"], ov2 * m["nngp"] + 0.09, rtol=1e-12)
    np.testing.assert_allclose(k["ntk"], ov2 * (m["ntk"] + 2 * m["nngp"]) + 0.09, rtol=1e-12)


def test_sequence_conv_is_an_image_conv_of_height_one(rng):
    x = rng.standard_normal((4, 9, 3))
    seq = {"layers": [conv((3,), strides=[2]), RELU, conv((2,)), RELU,
                      {"type": "avg_pool", "window_shape": [2]}, {"type": "global_avg_pool"},
                      dense()]}
    img = {"layers": [conv((1, 3), strides=[1, 2]), RELU, conv((1, 2)), RELU,
                      {"type": "avg_pool", "window_shape": [1, 2]},
                      {"type": "global_avg_pool"}, dense()]}
    a, b = both(seq, x), both(img, x[:, None])
    for g in ("ntk", "nngp"):
        np.testing.assert_allclose(a[g], b[g], rtol=1e-13)


def test_cross_kernel_is_the_block_of_the_joint_kernel(rng):
    """Self statistics (variances, attention weights) are per input: K(x1, x2) must equal the
    block of K([x1; x2]) for every new layer."""
    x = rng.standard_normal((6, 4, 2))
    arch = {"layers": [conv(), {"type": "layer_norm", "axis": [1, 2]},
                       {"type": "global_self_attention", "n_heads": 2},
                       *residual([RELU, conv()]), RELU, {"type": "global_sum_pool"}, dense()]}
    joint, cross = both(arch, x), both(arch, x[:4], x[4:])
    for g in ("ntk", "nngp"):
        np.testing.assert_allclose(cross[g], joint[g][:4, 4:], rtol=1e-12)


# --- the finite-width network converges to these kernels --------------------------------------

NETS = {
    "residual-1d": ({"layers": [conv(b_std=0.2), *residual([RELU, conv()]), RELU,
                                {"type": "sum_pool", "window_shape": [2]},
                                {"type": "global_avg_pool"}, dense()]}, (4, 6, 3)),
    "layer_norm": ({"layers": [dense(b_std=0.5), {"type": "layer_norm"}, RELU, dense(),
                               {"type": "layer_norm", "eps": 0.1}, {"type": "erf"}, dense()]},
                   (4, 5)),
    "layer_norm-spatial": ({"layers": [conv((2, 2)), {"type": "layer_norm", "axis": [1, 2, 3]},
                                       RELU, {"type": "global_sum_pool"}, dense()]},
                           (3, 3, 3, 2)),
    "attention-softmax": ({"layers": [dense(), {"type": "global_self_attention", "n_heads": 2,
                                                "b_std": 0.3, "W_query_std": 1.5,
                                                "W_key_std": 1.2},
                                      RELU, {"type": "global_avg_pool"}, dense()]}, (3, 5, 2)),
    "attention-relu": ({"layers": [dense(), {"type": "global_self_attention",
                                             "attention_mechanism": "RELU"},
                                   {"type": "erf"}, {"type": "global_avg_pool"}, dense()]},
                       (3, 5, 2)),
    "prod-concat": ({"layers": [dense(), {"type": "fan_out", "num": 3},
                                {"type": "parallel", "branches": [
                                    [dense()], [{"type": "erf"}, dense()], [RELU, dense()]]},
                                {"type": "fan_in_concat"}, dense(),
                                {"type": "fan_out", "num": 2},
                                {"type": "parallel",
                                 "branches": [[dense()], [{"type": "identity"}]]},
                                {"type": "fan_in_prod"}, dense()]}, (4, 3)),
}


@pytest.mark.parametrize("name", list(NETS))
def test_empirical_ntk_converges(rng, name):
    arch, shape = NETS[name]
    errs = mean_rel_err(arch, rng.standard_normal(shape), [64, 2048], seeds=3)
    assert errs[1] < errs[0] / 3 and errs[1] < 0.1, errs  # 32x the width: ~5.7x smaller


def test_square_root_attention_converges_as_heads_grow(rng):
    """Without linear scaling the logits stay random: the limit needs many heads too."""
    x = rng.standard_normal((3, 4, 2))

    def arch_for(w):
        return {"layers": [dense(), {"type": "global_self_attention", "linear_scaling": False,
                                     "attention_mechanism": "IDENTITY", "W_value_std": 0.7,
                                     "n_heads": w // 16, "n_chan_key": 16, "n_chan_val": 16,
                                     "b_std": 0.2}, {"type": "flatten"}, dense()]}

    errs = mean_rel_err(None, x, [256, 4096], seeds=3, arch_for=arch_for)
    assert errs[1] < errs[0] / 3 and errs[1] < 0.12, errs


# --- requirements, memory and errors ----------------------------------------------------------

def test_full_covariance_only_where_a_branch_needs_it():
    shape = (1, 8, 8, 3)
    flat = make_plan(nc.parse_arch(A.resnet(2, "flatten")), shape)
    assert not flat.input_full and not any(lp.in_full for lp in flat.layers)
    gap = make_plan(nc.parse_arch(A.resnet(2, "global_avg_pool")), shape)
    assert gap.input_full and all(lp.in_full for lp in gap.layers[:-1])
    assert gap.max_slots == flat.max_slots == 2
    # attention needs its input's full covariance; the layer_norm and flatten after it do not
    arch = {"layers": [conv((3, 3)), RELU, conv((3, 3)),
                       {"type": "global_self_attention"}, {"type": "layer_norm"},
                       {"type": "flatten"}, dense()]}
    p = make_plan(nc.parse_arch(arch), shape)
    assert [lp.in_full for lp in p.layers] == [True, True, True, True, False, False, False]
    assert [lp.self_stat for lp in p.layers] == [None, "var", None, "cov", "var", None, None]
    assert p.self_layers[1].self_shape == (8, 8, 8, 8)
    # a branch that pools makes the fan_out's input full; the shortcut then carries it
    pool = [{"type": "avg_pool", "window_shape": [2, 2], "padding": "SAME"}]
    arch = {"layers": [conv((3, 3)), *residual([RELU, conv((3, 3)), *pool]), RELU,
                       {"type": "flatten"}, dense()]}
    p = make_plan(nc.parse_arch(arch), shape)
    rows = {lp.path: lp for lp in p.layers}
    assert rows["layers[1]"].in_full and rows["layers[2].branches[1][2]"].in_full
    assert not rows["layers[3]"].out_full and not rows["layers[4]"].in_full
    # the memory estimate counts the shortcut's state held while the branch runs
    one = make_plan(nc.parse_arch(A.cntk(5, "flatten")), shape)
    assert bytes_per_pair(flat, 8) > bytes_per_pair(one, 8)


def test_residual_kernel_with_a_pooling_branch_matches_empirical(rng):
    x = rng.standard_normal((3, 4, 4, 2))
    pool = {"type": "avg_pool", "window_shape": [2, 2], "padding": "SAME"}
    arch = {"layers": [conv((3, 3)), *residual([RELU, conv((3, 3)), pool]), RELU,
                       {"type": "flatten"}, dense()]}
    errs = mean_rel_err(arch, x, [1024], seeds=2)
    assert errs[0] < 0.08, errs


BAD = [
    ({"layers": [dense(), {"type": "fan_in_sum"}]}, (3, 4), 1, "type", "fan_out"),
    ({"layers": [dense(), {"type": "fan_out", "num": 3},
                 {"type": "parallel", "branches": [[dense()], [dense()]]}, {"type": "fan_in_sum"}]},
     (3, 4), 2, "branches", "3 input"),
    ({"layers": [dense(), {"type": "fan_out", "num": 2}, dense()]}, (3, 4), 2, "type",
     "parallel"),
    ({"layers": [dense(), {"type": "fan_out", "num": 2}]}, (3, 4), 1, "type", "open branches"),
    ({"layers": [dense(), {"type": "global_self_attention"}, dense()]}, (3, 4), 1, "type",
     "vector"),
    ({"layers": [dense(), {"type": "fan_out", "num": 2}, {"type": "fan_in_sum"}]}, (3, 4), 2,
     "type", "independent"),
    ({"layers": [dense(), {"type": "fan_out", "num": 2},
                 {"type": "parallel", "branches": [[dense()], [dense()]]},
                 {"type": "fan_in_concat"}, RELU]}, (3, 4), 4, "type", "Gaussian"),
    ({"layers": [dense(), {"type": "fan_out", "num": 2},
                 {"type": "parallel", "branches": [[dense()], [RELU]]},
                 {"type": "fan_in_sum"}]}, (3, 4), 3, "type", "Gaussian"),
    ({"layers": [dense(), {"type": "fan_out", "num": 2},
                 {"type": "parallel", "branches": [
                     [dense()], [{"type": "serial", "layers": [RELU, {"type": "fan_out",
                                                                      "num": 2}]}]]},
                 {"type": "fan_in_sum"}]}, (3, 4), "layers[2].branches[1]", "[0]", "close"),
    ({"layers": [dense(), {"type": "fan_out", "num": 2},
                 {"type": "parallel", "branches": [
                     [dense()], [{"type": "repeat", "n": 2, "layer": conv()}]]},
                 {"type": "fan_in_sum"}]}, (3, 4), "layers[2].branches[1][0].layer",
     "filter_shape", "vectors"),
    ({"layers": [conv(), {"type": "layer_norm", "axis": [0, -1]}, {"type": "flatten"}]},
     (3, 4, 2), 1, "axis", "batch"),
    ({"layers": [conv(), {"type": "layer_norm", "axis": 1}, {"type": "flatten"}]},
     (3, 4, 2), 1, "axis", "channel"),
    ({"layers": [conv(), {"type": "global_self_attention", "linear_scaling": False},
                 {"type": "flatten"}]}, (3, 4, 2), 1, "attention_mechanism", "IDENTITY"),
    ({"layers": [conv(), {"type": "fan_out", "num": 2},
                 {"type": "parallel", "branches": [[conv()], [conv()]]},
                 {"type": "fan_in_concat", "axis": 1}, {"type": "flatten"}]}, (3, 4, 2), 3,
     "axis", "channel"),
    ({"layers": [conv(), {"type": "fan_out", "num": 2},
                 {"type": "parallel", "branches": [[conv()], [conv(strides=[2])]]},
                 {"type": "fan_in_sum"}, {"type": "flatten"}]}, (3, 4, 2), 3, "type",
     "spatial shapes"),
]


@pytest.mark.parametrize("arch,shape,where,field,words", BAD)
def test_bad_compositions_name_the_path(rng, arch, shape, where, field, words):
    with pytest.raises(nc.InputError) as e:
        nc.kernel(arch, rng.standard_normal(shape))
    assert (e.value.layer, e.value.field) == (where, field), str(e.value)
    assert words in e.value.reason

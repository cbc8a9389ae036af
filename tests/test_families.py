"""Kernel families (every depth from one pass): members equal separately computed kernels,
for symmetric and cross Grams, any block grid and threads; the refusals."""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import InputError
from ntkcompute import architectures as A
from ntkcompute.families import kernel_family, make_family
from ntkcompute.plan import make_plan

CONV = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.4, "b_std": 0.1}


def _body(*layers):
    return {"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": list(layers)}}


FAMILIES = {
    "fc": ({"layers": [_body({"type": "dense", "W_std": 1.4, "b_std": 0.1}, {"type": "relu"}),
                       {"type": "dense"}]}, (10, 5)),
    "cntk-gap": ({"layers": [_body(CONV, {"type": "relu"}), {"type": "global_avg_pool"},
                             {"type": "dense"}]}, (7, 5, 5, 2)),
    "cntk-v": ({"layers": [_body(CONV, {"type": "relu"}), {"type": "flatten"},
                           {"type": "dense"}]}, (7, 5, 5, 2)),
    # a stem, a residual block as the body, a head with a nonlinearity (its own self
    # statistics at every depth), pooling inside the body (full covariance at every tap)
    "resnet": (A.resnet(1, "global_avg_pool"), (6, 4, 4, 2)),
    "pool in body, flatten head": ({"layers": [
        _body({**CONV, "padding": "CIRCULAR"}, {"type": "erf"}, CONV,
              {"type": "avg_pool", "window_shape": [2, 2], "strides": [1, 1],
               "padding": "SAME"}),
        {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "b_std": 0.2}]},
        (5, 4, 4, 2)),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_members_equal_separate_kernels(rng, name):
    arch, shape = FAMILIES[name]
    x1, x2 = rng.standard_normal(shape), rng.standard_normal((4, *shape[1:]))
    fam = make_family(arch, [1, 2, 4])
    sym = kernel_family(fam, x1, threads=1)
    cross = kernel_family(fam, x2, x1, threads=2, memory=40_000)  # many blocks, 2 threads
    assert sym["ntk"].shape == (3, len(x1), len(x1)) and list(sym["depths"]) == [1, 2, 4]
    for i, member in enumerate(fam.members):
        assert member.layers[fam.at].n == fam.depths[i]
        ref, ref_c = nc.kernel(member, x1, threads=1), nc.kernel(member, x2, x1, threads=1)
        for g in ("ntk", "nngp"):
            scale = np.abs(ref[g]).max()
            assert np.abs(sym[g][i] - ref[g]).max() <= 1e-12 * scale, (name, i, g)
            assert np.abs(cross[g][i] - ref_c[g]).max() <= 1e-12 * scale, (name, i, g)
            assert np.array_equal(sym[g][i], sym[g][i].T)


def test_family_of_graph_nets(rng):
    """The graphs of Aggregate layers ride through the family pass with their rows."""
    x = nc.pack_pattern(rng.standard_normal((5, 6, 2)), rng.random((5, 6, 6)) < 0.4)
    arch = {"layers": [_body({"type": "conv", "filter_shape": [1]}, {"type": "relu"},
                             {"type": "aggregate"}),
                       {"type": "global_sum_pool"}, {"type": "dense"}],
            "pattern_channels": 6}
    fam = make_family(arch, [1, 3])
    k = kernel_family(fam, x, get="ntk")
    assert "nngp" not in k
    for i, member in enumerate(fam.members):
        ref = nc.kernel(member, x, get="ntk")["ntk"]
        assert np.abs(k["ntk"][i] - ref).max() <= 1e-12 * np.abs(ref).max()


def test_progress_counts_blocks(rng):
    arch = FAMILIES["fc"][0]
    seen = []
    kernel_family(arch, rng.standard_normal((40, 5)), depths=[1, 2], memory=30_000,
                  threads=1, progress=lambda done, total: seen.append((done, total)))
    assert len(seen) > 1 and seen[-1][0] == seen[-1][1] == len(seen)


@pytest.mark.parametrize("arch,depths,field", [
    (A.cntk(2), [1, 2], "layers"),  # no repeat
    ({"layers": [_body({"type": "dense"}, {"type": "relu"}),
                 _body({"type": "dense"}, {"type": "relu"}), {"type": "dense"}]}, [1],
     "layers"),
    (FAMILIES["fc"][0], [], "depths"),
    (FAMILIES["fc"][0], [2, 1], "depths"),
    (FAMILIES["fc"][0], [0, 1], "depths"),
    (FAMILIES["fc"][0], [1, 2.5], "depths"),
    (FAMILIES["fc"][0], list(range(1, 70)), "depths"),
    (FAMILIES["fc"][0], [1, 1001], "depths"),
    (FAMILIES["fc"][0], "123", "depths"),
])
def test_refusals_name_the_field(arch, depths, field):
    with pytest.raises(InputError) as e:
        make_family(arch, depths)
    assert e.value.field == field


@pytest.mark.parametrize("name", ["fc", "cntk-gap", "resnet", "pool in body, flatten head"])
def test_variants_equal_networks_with_fixed_bottom_layers(rng, name):
    """Every (depth, variant) member equals the kernel of the spec with the stem and the
    first v blocks ``trainable: false``, computed on its own (1e-12), symmetric and cross;
    at a depth d <= v only the head is trained."""
    arch, shape = FAMILIES[name]
    x1, x2 = rng.standard_normal(shape), rng.standard_normal((4, *shape[1:]))
    fam = make_family(arch, [1, 2, 4], variants=[0, 1, 3, 4])
    sym = kernel_family(fam, x1, threads=1)
    cross = kernel_family(fam, x2, x1, threads=2, memory=40_000)
    assert sym["ntk"].shape == (3, 4, len(x1), len(x1)) and sym["nngp"].shape[0] == 3
    assert list(sym["variants"]) == [0, 1, 3, 4]
    for i, d in enumerate(fam.depths):
        plain = nc.kernel(fam.member(d), x1, threads=1)["ntk"]
        for j, v in enumerate(fam.variants):
            member = fam.member(d, v)
            if v:
                fixed = [lp for lp in make_plan(member, x1.shape).layers
                         if getattr(lp.layer, "trainable", True) is False]
                assert fixed, (d, v)
            ref, ref_c = nc.kernel(member, x1, threads=1), nc.kernel(member, x2, x1, threads=1)
            scale = np.abs(ref["ntk"]).max()
            assert np.abs(sym["ntk"][i, j] - ref["ntk"]).max() <= 1e-12 * scale, (d, v)
            assert np.abs(cross["ntk"][i, j] - ref_c["ntk"]).max() <= 1e-12 * scale, (d, v)
            assert np.abs(sym["nngp"][i] - ref["nngp"]).max() <= 1e-12 * scale
            # fixing layers takes their terms out of the NTK: it is never larger on the diagonal
            assert (v == 0) == np.allclose(sym["ntk"][i, j], plain, rtol=1e-12, atol=0), (d, v)
            assert np.all(np.diag(sym["ntk"][i, j]) <= np.diag(plain) * (1 + 1e-12))


def test_variant_self_pass_diagonals(rng):
    from ntkcompute.families import family_self_pass, make_family_plan

    arch, shape = FAMILIES["cntk-gap"]
    x = rng.standard_normal(shape)
    fam = make_family(arch, [1, 3], variants=[0, 2])
    fp = make_family_plan(fam, x.shape)
    s = family_self_pass(fp, x)
    k = kernel_family(fam, x)
    assert s.ntk.shape == (len(x), 2, 2) and s.nngp.shape == (len(x), 2)
    for i in range(2):
        np.testing.assert_allclose(s.nngp[:, i], np.diag(k["nngp"][i]), rtol=1e-12)
        for j in range(2):
            np.testing.assert_allclose(s.ntk[:, i, j], np.diag(k["ntk"][i, j]), rtol=1e-12)
    # the self statistics are the unfixed pass's, whatever the variants
    plain = family_self_pass(make_family_plan(make_family(arch, [1, 3]), x.shape), x)
    assert len(s.variances) == len(plain.variances)
    assert all(np.array_equal(a, b) for a, b in zip(s.variances, plain.variances, strict=True))


@pytest.mark.parametrize("variants,field", [
    ([], "variants"), ([1, 0], "variants"), ([-1], "variants"), ([5], "variants"),
    ([0.5], "variants"), ([0, 1, 2, 3], None),
])
def test_variant_refusals_name_the_field(variants, field):
    arch = FAMILIES["fc"][0]
    if field is None:  # 4 depths x 4 variants is fine; 17 depths x 4 is more than 64
        make_family(arch, [1, 2, 3, 4], variants)
        with pytest.raises(InputError) as e:
            make_family(arch, list(range(1, 18)), variants)
        assert e.value.field == "variants"
        return
    with pytest.raises(InputError) as e:
        make_family(arch, [1, 4], variants)
    assert e.value.field == field


def test_variants_refuse_weights_that_cannot_be_fixed(rng):
    """Attention has weights but no ``trainable`` field: below a variant's block it is
    refused (above it, it is trained, and fine)."""
    attn = {"type": "global_self_attention", "n_heads": 1}
    arch = {"layers": [_body(CONV, {"type": "relu"}), attn, {"type": "flatten"},
                       {"type": "dense"}]}
    x = rng.standard_normal((3, 4, 4, 2))
    kernel_family(arch, x, depths=[1, 2], variants=[0, 2])  # attention is in the head
    stem = {"layers": [attn, _body(CONV, {"type": "relu"}), {"type": "flatten"},
                       {"type": "dense"}]}
    kernel_family(stem, x, depths=[1, 2], variants=[0])
    with pytest.raises(InputError) as e:
        kernel_family(stem, x, depths=[1, 2], variants=[0, 1])
    assert e.value.field == "variants" and "global_self_attention" in str(e.value)


@pytest.mark.parametrize("name", ["fc", "cntk-gap", "resnet"])
def test_a_bias_grid_equals_each_b_std_computed_alone(rng, name):
    """``b_stds``: every (b_std, depth[, variant]) member equals the network with every
    layer's b_std set to that value, computed on its own (1e-12); the inputs' pass is
    shared, each value's pass its own; the self-pass diagonals carry the same axis."""
    from ntkcompute.families import family_self_pass, make_family_plan

    arch, shape = FAMILIES[name]
    x1, x2 = rng.standard_normal(shape), rng.standard_normal((4, *shape[1:]))
    fam = make_family(arch, [1, 3], variants=[0, 1], b_stds=[0, 0.5])
    sym = kernel_family(fam, x1, threads=1)
    cross = kernel_family(fam, x2, x1, threads=2, memory=40_000)
    assert sym["ntk"].shape == (2, 2, 2, len(x1), len(x1))
    assert sym["nngp"].shape == (2, 2, len(x1), len(x1)) and list(sym["b_stds"]) == [0, 0.5]
    s = family_self_pass(make_family_plan(fam, x1.shape), x1)
    assert s.ntk.shape == (len(x1), 2, 2, 2) and s.nngp.shape == (len(x1), 2, 2)
    for k, b in enumerate(fam.b_stds):
        for i, d in enumerate(fam.depths):
            for j, v in enumerate(fam.variants):
                member = fam.member(d, v, b)
                assert all(lp.layer.b_std == b for lp in make_plan(member, x1.shape).layers
                           if "b_std" in type(lp.layer).model_fields)
                ref, ref_c = nc.kernel(member, x1, threads=1), nc.kernel(member, x2, x1,
                                                                         threads=1)
                for g, got, got_c in (("ntk", sym["ntk"][k, i, j], cross["ntk"][k, i, j]),
                                      ("nngp", sym["nngp"][k, i], cross["nngp"][k, i])):
                    scale = np.abs(ref[g]).max()
                    assert np.abs(got - ref[g]).max() <= 1e-12 * scale, (b, d, v, g)
                    assert np.abs(got_c - ref_c[g]).max() <= 1e-12 * scale, (b, d, v, g)
                np.testing.assert_allclose(s.ntk[:, k, i, j], np.diag(ref["ntk"]), rtol=1e-12)
    assert not np.allclose(sym["nngp"][0], sym["nngp"][1])  # the grid changes the kernel


@pytest.mark.parametrize("b_stds", [[], [1, 0], [-1], [float("nan")], [0.5] * 9, "01",
                                    [True]])
def test_bias_grid_refusals_name_the_field(b_stds):
    with pytest.raises(InputError) as e:
        make_family(FAMILIES["fc"][0], [1, 2], b_stds=b_stds)
    assert e.value.field == "b_stds"


def test_a_bias_grid_is_bounded_and_needs_a_bias():
    with pytest.raises(InputError) as e:  # 4 x 4 x 5 = 80 NTK matrices
        make_family(FAMILIES["fc"][0], [1, 2, 3, 4], variants=[0, 1, 2, 3],
                    b_stds=[0, 1, 2, 3, 4])
    assert e.value.field == "b_stds"
    no_bias = {"layers": [_body({"type": "relu"}), {"type": "relu"}]}
    with pytest.raises(InputError) as e:
        make_family(no_bias, [1, 2], b_stds=[0, 1])
    assert e.value.field == "b_stds"

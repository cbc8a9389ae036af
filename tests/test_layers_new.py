"""ConvTranspose, ConvLocal and ImageResize (issue 18): neural-tangents 0.6.5's kernels (a
fixture it computed: tests/fixtures/make_nt_new_layers.py), closed forms, the empirical NTK
of wide nets, and the spec's refusals."""

import json
from pathlib import Path

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import InputError, stax
from ntkcompute.layers.convolutions import transpose_table
from ntkcompute.layers.resize import resize_matrix
from ntkcompute.spec import parse_arch

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "nt_new_layers.npz")
N_CASES = sum(1 for k in FIXTURE.files if k.startswith("arch_"))


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("i", range(N_CASES), ids=[str(FIXTURE[f"name_{i}"])
                                                    for i in range(N_CASES)])
def test_equals_neural_tangents(i):
    arch = json.loads(str(FIXTURE[f"arch_{i}"]))
    x1, x2 = ((FIXTURE["v1"], FIXTURE["v2"]) if bool(FIXTURE[f"vector_{i}"])
              else (FIXTURE["x1"], FIXTURE["x2"]))
    k = nc.kernel(arch, x1, x2)
    for g in ("nngp", "ntk"):
        assert _rel(k[g], FIXTURE[f"{g}_{i}"]) < 1e-12, (g, _rel(k[g], FIXTURE[f"{g}_{i}"]))


def _reference_transpose(x, w, s, padding):
    """1-D ``lax.conv_transpose`` written out: dilate by ``s``, pad, correlate with ``w``
    (VALID / SAME), or VALID then fold onto ``n s`` positions (CIRCULAR, as stax)."""
    n, k = len(x), len(w)
    dil = np.zeros((n - 1) * s + 1)
    dil[::s] = x
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
    else:
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    xp = np.concatenate([np.zeros(pad_a), dil, np.zeros(pad_len - pad_a)])
    out = np.array([xp[o:o + k] @ w for o in range(len(xp) - k + 1)])
    if padding != "CIRCULAR":
        return out
    big = n * s
    lo = (len(out) - big) // 2
    folded = np.zeros(big)
    for t, v in enumerate(out):
        folded[(t - lo) % big] += v
    return folded


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize(("n", "k", "s"), [(5, 3, 1), (5, 3, 2), (4, 2, 3), (3, 5, 2),
                                           (6, 1, 1), (4, 4, 4)])
def test_transpose_table_is_lax_conv_transpose(padding, n, k, s):
    rng = np.random.default_rng(n * 100 + k * 10 + s)
    x, w = rng.standard_normal(n), rng.standard_normal(k)
    want = _reference_transpose(x, w, s, padding)
    t = transpose_table(n, k, s, padding)  # column j: the input tap w[j] multiplies
    got = (np.append(x, 0.0)[t] * w[None, :]).sum(axis=1)
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-14)


def test_conv_transpose_with_unit_filter_is_a_dense_per_position(rng):
    x = rng.standard_normal((3, 4, 5, 2))
    tail = [{"type": "relu"}, {"type": "global_avg_pool"}, {"type": "dense"}]
    a = nc.kernel({"layers": [{"type": "conv_transpose", "filter_shape": [1, 1],
                               "W_std": 1.3, "b_std": 0.2}, *tail]}, x)
    b = nc.kernel({"layers": [{"type": "dense", "W_std": 1.3, "b_std": 0.2}, *tail]}, x)
    assert _rel(a["ntk"], b["ntk"]) < 1e-14 and _rel(a["nngp"], b["nngp"]) < 1e-14


def test_conv_local_is_conv_on_the_diagonal_and_zero_off_it(rng):
    # flatten reads only the spatial diagonal: there ConvLocal's kernel is Conv's
    x = rng.standard_normal((3, 5, 4, 2))
    cv = {"filter_shape": [3, 2], "strides": [2, 1], "padding": "SAME", "W_std": 1.3,
          "b_std": 0.2}
    tail = [{"type": "relu"}, {"type": "flatten"}, {"type": "dense"}]
    a = nc.kernel({"layers": [{"type": "conv_local", **cv}, *tail]}, x)
    b = nc.kernel({"layers": [{"type": "conv", **cv}, *tail]}, x)
    assert _rel(a["ntk"], b["ntk"]) < 1e-14
    # global_avg_pool right after: the mean over all position pairs of a diagonal covariance
    gap = nc.kernel({"layers": [{"type": "conv_local", **cv}, {"type": "global_avg_pool"},
                                {"type": "dense"}]}, x)
    flat = nc.kernel({"layers": [{"type": "conv_local", **cv}, {"type": "flatten"},
                                 {"type": "dense"}]}, x)
    p = 3 * 4  # output positions
    assert _rel(gap["nngp"] * p, flat["nngp"]) < 1e-14


def test_resize_matrices_closed_forms():
    # linear upsampling 5 -> 9: sample points (o + 1/2) 5/9 - 1/2
    m = resize_matrix(5, 9, "linear", True)
    assert np.allclose(m[:3, :2], [[1, 0], [2 / 3, 1 / 3], [1 / 9, 8 / 9]], atol=1e-15)
    assert np.allclose(m.sum(axis=1), 1.0)
    # downsampling by 2 with antialias: the triangle stretched to width 2 -> weights 1/8 3/8
    m = resize_matrix(8, 4, "linear", True)
    assert np.allclose(m[1, 1:5], [1 / 8, 3 / 8, 3 / 8, 1 / 8])
    assert np.allclose(resize_matrix(8, 4, "linear", False)[1, 2:4], [0.5, 0.5])
    # nearest: floor((o + 1/2) 3 / 7)
    assert (resize_matrix(3, 7, "nearest", True).argmax(axis=1) == [0, 0, 1, 1, 1, 2, 2]).all()
    for method in ("cubic", "lanczos3", "lanczos5"):
        assert np.allclose(resize_matrix(6, 11, method, True).sum(axis=1), 1.0)


def test_image_resize_is_m_k_mt(rng):
    x = rng.standard_normal((3, 5, 4, 2))
    k0 = np.einsum("ahwc,bgvc->abhgwv", x, x) / 2  # input covariance per position pair
    mh, mw = resize_matrix(5, 7, "cubic", True), resize_matrix(4, 2, "lanczos3", True)
    k1 = np.einsum("oh,pg,abhgwv,qw,rv->abopqr", mh, mh, k0, mw, mw)
    want = k1.mean(axis=(2, 3, 4, 5))
    got = nc.kernel({"layers": [
        {"type": "image_resize", "shape": [-1, 7, -1, -1], "method": "cubic"},
        {"type": "image_resize", "shape": [-1, -1, 2, -1], "method": "lanczos3"},
        {"type": "global_avg_pool"}, {"type": "dense"}]}, x, get="nngp")["nngp"]
    assert _rel(got, want) < 1e-13


@pytest.mark.parametrize("layer", [
    {"type": "conv_transpose", "filter_shape": [3, 2], "strides": [2, 1], "padding": "SAME",
     "W_std": 1.3, "b_std": 0.2},
    {"type": "conv_transpose", "filter_shape": [2, 3], "strides": [1, 2],
     "padding": "CIRCULAR", "W_std": 1.2},
    {"type": "conv_local", "filter_shape": [3, 2], "strides": [2, 1], "padding": "SAME",
     "W_std": 1.3, "b_std": 0.2},
    {"type": "image_resize", "shape": [-1, 7, 3, -1], "method": "linear"},
])
def test_infinite_width_is_the_limit_of_the_empirical_ntk(rng, layer):
    x = rng.standard_normal((3, 4, 3, 2))
    arch = {"layers": [{"type": "conv", "filter_shape": [2, 2], "padding": "SAME",
                        "W_std": 1.3, "b_std": 0.1}, {"type": "relu"}, layer,
                       {"type": "conv", "filter_shape": [2, 1], "W_std": 1.2},
                       {"type": "relu"}, {"type": "global_avg_pool"}, {"type": "dense"}]}
    k = nc.kernel(arch, x)["ntk"]
    errs = [np.mean([np.abs(nc.empirical_kernel(arch, x, width=w, seed=s)["ntk"] - k).mean()
                     / np.abs(k).mean() for s in range(3)]) for w in (32, 1024)]
    assert errs[1] < errs[0] / 2.5 and errs[1] < 0.06, errs  # ~ width^-1/2: 32x = 5.7x


def test_finite_nets_of_init_and_apply_run(rng):
    x = rng.standard_normal((2, 4, 3, 2))
    net = stax.serial(stax.ConvTranspose(3, (3, 2), (2, 1), "SAME"), stax.Relu(),
                      stax.ConvLocal(4, (2, 2), padding="CIRCULAR", b_std=0.1), stax.Relu(),
                      stax.ImageResize((-1, 5, 5, -1), "bilinear"), stax.Flatten(),
                      stax.Dense(1))
    shape, params = net[0](0, x.shape)
    assert shape == (2, 1) and net[1](params, x).shape == (2, 1)
    assert net[2](x, None, "ntk").shape == (2, 2)


def test_stax_layers_translate_to_the_spec():
    assert stax.ConvTranspose(8, (3, 3), (2, 2), "SAME", 1.5, 0.1).layers[0] == {
        "type": "conv_transpose", "out_chan": 8, "filter_shape": [3, 3], "strides": [2, 2],
        "padding": "SAME", "W_std": 1.5, "b_std": 0.1}
    assert stax.ConvLocal(8, (3,)).layers[0]["type"] == "conv_local"

    class Method:  # a jax.image.ResizeMethod-like enum member
        name = "LANCZOS3"

    assert stax.ImageResize((-1, 4, 4, -1), Method()).layers[0] == {
        "type": "image_resize", "shape": [-1, 4, 4, -1], "method": "LANCZOS3",
        "antialias": True}


@pytest.mark.parametrize(("arch", "x_shape", "field"), [
    ([{"type": "conv_transpose", "filter_shape": [3]}], (2, 4, 3, 1), "filter_shape"),
    ([{"type": "conv_transpose", "filter_shape": [3, 3], "strides": [2]}], (2, 4, 3, 1),
     "strides"),
    ([{"type": "conv_transpose", "filter_shape": [3, 3], "strides": [2000, 2000]}],
     (2, 4, 3, 1), "strides"),
    ([{"type": "conv_transpose", "filter_shape": [30, 3], "padding": "CIRCULAR"}],
     (2, 4, 3, 1), "filter_shape"),
    ([{"type": "conv_local", "filter_shape": [5, 3]}], (2, 4, 3, 1), "filter_shape"),
    ([{"type": "image_resize", "shape": [-1, 5, -1], "method": "linear"}], (2, 4, 3, 1),
     "shape"),
])
def test_misfits_are_refused_in_the_plan_naming_the_field(arch, x_shape, field):
    spec = {"layers": [*arch, {"type": "flatten"}, {"type": "dense"}]}
    with pytest.raises(InputError) as e:
        nc.kernel(spec, np.ones(x_shape))
    assert (e.value.field, e.value.layer) == (field, 0)


@pytest.mark.parametrize(("layer", "field"), [
    ({"type": "conv_transpose", "filter_shape": [0, 3]}, "filter_shape"),
    ({"type": "conv_local", "filter_shape": [3, 3], "padding": "FULL"}, "padding"),
    ({"type": "conv_transpose", "filter_shape": [3, 3], "W_std": -1}, "W_std"),
    ({"type": "image_resize", "shape": [2, 5, 5, -1], "method": "linear"}, "shape"),
    ({"type": "image_resize", "shape": [-1, 5, 5, 3], "method": "linear"}, "shape"),
    ({"type": "image_resize", "shape": [-1, 0, 5, -1], "method": "linear"}, "shape"),
    ({"type": "image_resize", "shape": [-1, 4096, 4096, -1], "method": "linear"}, "shape"),
    ({"type": "image_resize", "shape": [-1, 5, 5, -1], "method": "area"}, "method"),
    ({"type": "image_resize", "shape": [-1, 5, 5, -1]}, "method"),
])
def test_bad_fields_are_refused_naming_them(layer, field):
    with pytest.raises(InputError) as e:
        parse_arch({"layers": [layer, {"type": "flatten"}, {"type": "dense"}]})
    assert (e.value.field, e.value.layer) == (field, 0)
    with pytest.raises(InputError):
        nc.features({"layers": [{"type": "conv_local", "filter_shape": [2, 2]},
                                {"type": "flatten"}, {"type": "dense"}]},
                    np.ones((2, 3, 3, 1)), 16)


def test_image_resize_random_features_are_exact_for_a_linear_net(rng):
    # no nonlinearity: the features are the resized inputs themselves, so their Gram is the
    # kernel (exact_norms off: nothing rescaled)
    x = rng.standard_normal((3, 4, 3, 2))
    arch = {"layers": [{"type": "image_resize", "shape": [-1, 6, 2, -1], "method": "cubic"},
                       {"type": "global_avg_pool"}, {"type": "dense", "W_std": 1.3}]}
    f = nc.features(arch, x, 64, exact_norms=False)
    k = nc.kernel(arch, x)
    for g in ("nngp", "ntk"):
        assert _rel(f[g] @ f[g].T, k[g]) < 1e-13

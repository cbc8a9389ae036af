"""``ntkcompute.stax``: stax's names, arguments and defaults; kernels equal to the JSON spec's;
nt's own example scripts run with one import changed (against nt itself: make conformance)."""

import inspect
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import InputError, stax
from ntkcompute import architectures as A

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import stax_examples

# neural_tangents 0.6.5's signatures (neural_tangents/_src/stax/*.py): name -> parameters
# with their defaults in order (REQUIRED = no default).
REQUIRED = inspect.Parameter.empty
NT_SIGNATURES = {
    "Dense": [("out_dim", REQUIRED), ("W_std", 1.0), ("b_std", None), ("batch_axis", 0),
              ("channel_axis", -1), ("parameterization", "ntk"), ("s", (1, 1))],
    "Conv": [("out_chan", REQUIRED), ("filter_shape", REQUIRED), ("strides", None),
             ("padding", "VALID"), ("W_std", 1.0), ("b_std", None),
             ("dimension_numbers", None), ("parameterization", "ntk"), ("s", (1, 1))],
    "ConvTranspose": [("out_chan", REQUIRED), ("filter_shape", REQUIRED), ("strides", None),
                      ("padding", "VALID"), ("W_std", 1.0), ("b_std", None),
                      ("dimension_numbers", None), ("parameterization", "ntk"), ("s", (1, 1))],
    "ConvLocal": [("out_chan", REQUIRED), ("filter_shape", REQUIRED), ("strides", None),
                  ("padding", "VALID"), ("W_std", 1.0), ("b_std", None),
                  ("dimension_numbers", None), ("parameterization", "ntk"), ("s", (1, 1))],
    # precision: jax.lax.Precision.HIGHEST in nt (an enum we cannot import without JAX)
    "ImageResize": [("shape", REQUIRED), ("method", REQUIRED), ("antialias", True),
                    ("precision", "HIGHEST"), ("batch_axis", 0), ("channel_axis", -1)],
    "AvgPool": [("window_shape", REQUIRED), ("strides", None), ("padding", "VALID"),
                ("normalize_edges", False), ("batch_axis", 0), ("channel_axis", -1)],
    "SumPool": [("window_shape", REQUIRED), ("strides", None), ("padding", "VALID"),
                ("batch_axis", 0), ("channel_axis", -1)],
    "GlobalAvgPool": [("batch_axis", 0), ("channel_axis", -1)],
    "GlobalSumPool": [("batch_axis", 0), ("channel_axis", -1)],
    "Flatten": [("batch_axis", 0), ("batch_axis_out", 0)],
    "LayerNorm": [("axis", -1), ("eps", 1e-12), ("batch_axis", 0), ("channel_axis", -1)],
    "Dropout": [("rate", REQUIRED), ("mode", "train")],
    "Relu": [("do_stabilize", False)],
    "LeakyRelu": [("alpha", REQUIRED), ("do_stabilize", False)],
    "ABRelu": [("a", REQUIRED), ("b", REQUIRED), ("do_stabilize", False)],
    "Abs": [("do_stabilize", False)],
    "Sign": [], "Identity": [], "FanInSum": [], "FanInProd": [],
    "Gelu": [("approximate", False)],
    "Erf": [("a", 1.0), ("b", 1.0), ("c", 0.0)],
    "Sin": [("a", 1.0), ("b", 1.0), ("c", 0.0)],
    "Cos": [("a", 1.0), ("b", 1.0), ("c", 0.0)],
    "Rbf": [("gamma", 1.0)],
    "Exp": [("a", 1), ("b", 1)],
    "Gaussian": [("a", 1), ("b", -1)],
    "ElementwiseNumerical": [("fn", REQUIRED), ("deg", REQUIRED), ("df", None)],
    "Elementwise": [("fn", None), ("nngp_fn", None), ("d_nngp_fn", None)],
    "FanOut": [("num", REQUIRED)],
    # to_dense: the identity (``lambda p: p`` in nt)
    "Aggregate": [("aggregate_axis", None), ("batch_axis", 0), ("channel_axis", -1),
                  ("to_dense", stax._same), ("implementation", "DENSE")],
    "FanInConcat": [("axis", -1)],
    "repeat": [("layer", REQUIRED), ("n", REQUIRED)],
    "GlobalSelfAttention": [
        ("n_chan_out", REQUIRED), ("n_chan_key", REQUIRED), ("n_chan_val", REQUIRED),
        ("n_heads", REQUIRED), ("linear_scaling", True), ("W_key_std", 1.0),
        ("W_value_std", 1.0), ("W_query_std", 1.0), ("W_out_std", 1.0), ("b_std", None),
        ("attention_mechanism", "SOFTMAX"), ("pos_emb_type", "NONE"), ("pos_emb_p_norm", 2),
        ("pos_emb_decay_fn", None), ("n_chan_pos_emb", None), ("W_pos_emb_std", 1.0),
        ("val_pos_emb", False), ("batch_axis", 0), ("channel_axis", -1)],
}


@pytest.mark.parametrize("name", sorted(NT_SIGNATURES))
def test_signature_is_stax_065s(name):
    params = list(inspect.signature(getattr(stax, name)).parameters.values())
    assert [(p.name, p.default) for p in params] == NT_SIGNATURES[name]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


def _close(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


NT_EXAMPLES = np.load(Path(__file__).parent / "fixtures" / "nt_stax_examples.npz")


def test_examples_run_with_one_import_changed_and_equal_the_json_specs():
    """Every nt script of bench/stax_examples.py runs here and gives nt 0.6.5's kernels (a
    fixture: ``.venv-nt/bin/python bench/stax_examples.py nt
    tests/fixtures/nt_stax_examples.npz``); those with a named spec give its kernels, and
    ``.spec`` (with ``.pack`` for graphs) is the whole net as JSON."""
    named = {"README: FC kernel_fn": A.fc(2, 1.0, None),
             "Myrtle notebook: MyrtleNetwork(5)": A.myrtle(5),
             "Arora et al.: CNTK-GAP-4": A.cntk(4)}
    fixture = {str(NT_EXAMPLES[k]): int(k.split("_")[1]) for k in NT_EXAMPLES.files
               if k.startswith("name_")}
    assert set(fixture) == set(stax_examples.EXAMPLES), "regenerate the nt fixture"
    for name, source in stax_examples.EXAMPLES.items():
        ns = stax_examples.run(source)
        kernel_fn, x1, x2 = ns["kernel_fn"], ns["x1"], ns["x2"]
        k, ks = stax_examples.cross_and_symmetric(ns)
        assert k.nngp.shape == k.ntk.shape == (len(x1), len(x2)), name
        assert np.isfinite(k.ntk).all() and np.isfinite(k.nngp).all(), name
        i, off = fixture[name], ~np.eye(len(x1), dtype=bool)
        for g in ("nngp", "ntk"):
            assert _close(getattr(k, g), NT_EXAMPLES[f"{g}_{i}"]) < 1e-10, (name, g)
            assert _close(getattr(ks, g)[off], NT_EXAMPLES[f"sym_{g}_{i}"][off]) < 1e-10, \
                (name, g)
        pattern = ns.get("kw", {}).get("pattern", (None, None))
        (spec, p1), (_, p2) = kernel_fn.pack(x1, pattern[0]), kernel_fn.pack(x2, pattern[1])
        assert nc.kernel(json.loads(json.dumps(spec)), p1, p2)["ntk"] \
            .tolist() == k.ntk.tolist(), name  # .spec is the whole net, as JSON
        if name in named:
            ref = nc.kernel(named[name], x1, x2)
            assert _close(k.ntk, ref["ntk"]) < 1e-13 and _close(k.nngp, ref["nngp"]) < 1e-13
    with pytest.raises(ValueError, match="imports"):
        stax_examples.run("import numpy\nkernel_fn = None")


def test_get_returns_what_stax_returns():
    _, _, kernel_fn = stax.serial(stax.Dense(8, 1.5, 0.1), stax.Erf(), stax.Dense(1))
    x = np.random.default_rng(0).standard_normal((5, 3))
    both = kernel_fn(x)
    assert both._fields == ("nngp", "ntk") and both.ntk.shape == (5, 5)
    assert np.array_equal(both.ntk, both.ntk.T)  # symmetric: upper triangle mirrored
    assert np.array_equal(kernel_fn(x, None, "ntk"), both.ntk)
    rev = kernel_fn(x, x[:2], ("ntk", "nngp"))
    assert rev._fields == ("ntk", "nngp") and rev.ntk.shape == (5, 2)
    assert _close(rev.nngp, both.nngp[:, :2]) < 1e-14
    assert np.array_equal(kernel_fn(x.tolist(), get="nngp"), both.nngp)  # lists, JAX arrays
    assert kernel_fn(x.astype(np.float32), get="ntk").dtype == np.float32
    with pytest.raises(InputError) as e:
        kernel_fn(x, get="cov1")
    assert e.value.field == "get"


def test_layers_translate_to_the_spec_with_stax_semantics():
    net = stax.serial(
        stax.Conv(16, (3, 3), (1, 2), "CIRCULAR", 1.5, 0.1), stax.LeakyRelu(0.2),
        stax.repeat(stax.serial(stax.Conv(4, (2, 2), padding="SAME"), stax.Relu()), 2),
        stax.Conv(4, (1, 1)), stax.LayerNorm((1, 2, 3), eps=0.1),
        stax.AvgPool((2, 2), padding="SAME"), stax.Dropout(0.9), stax.GlobalSumPool(),
        stax.Dense(3, b_std=0.5))
    layers = net.spec["layers"]
    assert layers[0] == {"type": "conv", "out_chan": 16, "filter_shape": [3, 3],
                         "strides": [1, 2], "padding": "CIRCULAR", "W_std": 1.5, "b_std": 0.1}
    assert layers[1] == {"type": "leaky_relu", "alpha": 0.2}
    assert layers[2]["type"] == "repeat" and layers[2]["n"] == 2
    assert [x["type"] for x in layers[2]["layer"]["layers"]] == ["conv", "relu"]
    assert layers[4] == {"type": "layer_norm", "eps": 0.1, "axis": [1, 2, 3]}
    assert net.spec["parameterization"] == "ntk" and net.parameterization == "ntk"
    x = np.random.default_rng(1).standard_normal((3, 6, 6, 2))
    assert np.array_equal(net[2](x, None, "ntk"), nc.kernel(net.spec, x, get="ntk")["ntk"])


def test_standard_parameterization_uses_the_widths():
    def net(w):
        return stax.serial(stax.Dense(w, 1.4, 0.1, parameterization="standard"), stax.Relu(),
                           stax.Dense(1, 1.4, 0.1, parameterization="standard"))
    x = np.random.default_rng(2).standard_normal((4, 5))
    spec = {"parameterization": "standard", "layers": [
        {"type": "dense", "W_std": 1.4, "b_std": 0.1, "out_dim": 64}, {"type": "relu"},
        {"type": "dense", "W_std": 1.4, "b_std": 0.1, "out_dim": 1}]}
    assert _close(net(64)[2](x, get="ntk"), nc.kernel(spec, x)["ntk"]) < 1e-14
    assert _close(net(64)[2](x, get="ntk"), net(128)[2](x, get="ntk")) > 0.1  # width matters
    with pytest.raises(InputError) as e:
        stax.serial(stax.Dense(4), stax.Dense(4, parameterization="standard"))
    assert e.value.field == "parameterization"


def test_finite_net_of_init_and_apply_converges_to_the_nngp():
    """The mean product of a finite net's outputs is an unbiased estimate of the NNGP
    (checked: z-scores of 3000 nets are standard normal); 8 nets of width 2048 with 2048
    outputs each come within ~3% (one net ~5% per entry), a wrong weight scale is 2.25x off."""
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(2048, W_std=1.5, b_std=0.2), stax.Relu(), stax.Dense(2048, W_std=1.5))
    x = np.random.default_rng(3).standard_normal((6, 10))
    out_shape, params = init_fn(np.random.default_rng(0), (-1, 10))
    assert out_shape == (-1, 2048) and [p[0].shape for p in params] == [(10, 2048),
                                                                        (2048, 2048)]
    assert apply_fn(params, x).shape == (6, 2048)
    emp = np.mean([(lambda f: f @ f.T / f.shape[1])(apply_fn(init_fn(s, (-1, 10))[1], x))
                   for s in range(8)], axis=0)
    assert _close(emp, kernel_fn(x, get="nngp")) < 0.06
    assert np.array_equal(apply_fn(init_fn(7, (1, 10))[1], x), apply_fn(init_fn(7, (1, 10))[1],
                                                                         x))
    key = np.array([0, 7], dtype=np.uint32)  # the shape of jax.random.PRNGKey(7)
    assert not np.array_equal(apply_fn(init_fn(key, (1, 10))[1], x),
                              apply_fn(init_fn(7, (1, 10))[1], x))
    with pytest.raises(InputError) as e:
        init_fn("seed", (1, 10))
    assert e.value.field == "rng"


def test_elementwise_numerical_takes_the_functions_we_integrate():
    assert stax.ElementwiseNumerical(np.tanh, 30).spec["layers"][0] == {
        "type": "elementwise", "fn": "tanh", "deg": 30}
    from scipy.special import erf
    assert stax.ElementwiseNumerical(lambda z: 0.5 * z * (1 + erf(z / math.sqrt(2))),
                                     25).layers[0]["fn"] == "gelu"
    tanh_gelu = stax.ElementwiseNumerical(
        lambda z: 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))), 25)
    assert tanh_gelu.layers[0]["fn"] == "gelu_tanh"
    # any other callable is traced to an expression (or kept in-process: test_elementwise)
    assert stax.ElementwiseNumerical(lambda z: z**3, 25).layers[0]["expr"] == "x ** 3"
    for fn in ("cube", 3):
        with pytest.raises(InputError) as e:
            stax.ElementwiseNumerical(fn, 25)
        assert e.value.field == "fn"


@pytest.mark.parametrize(("build", "field"), [
    (lambda: stax.Dense(4, batch_axis=1), "batch_axis"),
    (lambda: stax.Conv(4, (3, 3), dimension_numbers=("NCHW", "OIHW", "NCHW")),
     "dimension_numbers"),
    (lambda: stax.AvgPool((2, 2), padding="SAME", normalize_edges=True), "normalize_edges"),
    (lambda: stax.GlobalSelfAttention(4, 4, 4, 1, pos_emb_type="SUM"), "pos_emb_type"),
    (lambda: stax.Dense(4, W_std=-1.0), "W_std"),
    (lambda: stax.Conv(4, (0, 3)), "filter_shape"),
    (lambda: stax.Dropout(1.5), "rate"),
    (lambda: stax.ConvTranspose(4, (3, 3), dimension_numbers=("NCHW", "OIHW", "NCHW")),
     "dimension_numbers"),
    (lambda: stax.ConvLocal(4, (3, 3), s=(2, 1)), "s"),
    (lambda: stax.ConvTranspose(4, (3, 3), parameterization="mup"), "parameterization"),
    (lambda: stax.ImageResize((-1, 4, 4, -1), "linear", channel_axis=1), "channel_axis"),
    (lambda: stax.ImageResize((-1, 4, 4, 8), "linear"), "shape"),
    (lambda: stax.ImageResize((-1, 4, 4, -1), "area"), "method"),
    (lambda: stax.serial(stax.Relu(), (None, None, None)), "layers"),
    (lambda: stax.serial(), "layers"),
])
def test_unsupported_or_bad_arguments_are_refused_naming_the_field(build, field):
    with pytest.raises(InputError) as e:
        build()
    assert e.value.field == field


def test_a_layer_pickles_and_copies_by_its_spec():
    import copy
    import pickle

    net = stax.serial(stax.Conv(4, (2, 2), padding="SAME", W_std=1.3), stax.Erf(),
                      stax.Flatten(), stax.Dense(1))
    x = np.random.default_rng(4).standard_normal((3, 4, 4, 2))
    for other in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net), copy.copy(net)):
        assert isinstance(other, stax.StaxLayer) and other.spec == net.spec
        assert np.array_equal(other[2](x, get="ntk"), net[2](x, get="ntk"))

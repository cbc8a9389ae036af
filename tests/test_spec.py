"""Architecture spec: JSON round trip and errors that name the layer and the field."""

import json

import pytest

import ntkcompute as nc
from ntkcompute.spec import Architecture, parse_arch
from tests.conftest import conv_net


def test_json_round_trip_every_layer_type():
    arch = {"parameterization": "standard", "layers": [
        {"type": "conv", "filter_shape": [3, 3], "strides": [1, 2], "padding": "CIRCULAR",
         "W_std": 1.5, "b_std": 0.1, "out_chan": 16},
        {"type": "relu"}, {"type": "leaky_relu", "alpha": 0.1}, {"type": "ab_relu", "a": -1,
                                                                 "b": 2},
        {"type": "abs"}, {"type": "erf", "a": 2.0}, {"type": "gelu"}, {"type": "sin", "c": 1},
        {"type": "sign"}, {"type": "elementwise", "fn": "tanh", "deg": 30},
        {"type": "abrelu", "a": -0.5, "b": 1.5}, {"type": "exp", "b": 0.5},
        {"type": "gaussian", "a": 2.0}, {"type": "cos", "c": 0.5}, {"type": "rbf", "gamma": 2},
        {"type": "avg_pool", "window_shape": [2, 2], "strides": [2, 2], "padding": "SAME"},
        {"type": "identity"}, {"type": "global_avg_pool"}, {"type": "flatten"},
        {"type": "dense", "W_std": 2.0, "b_std": None, "out_dim": 10}]}
    a = parse_arch(arch)
    text = a.to_json()
    b = parse_arch(text)
    assert a == b
    assert parse_arch(json.loads(text)) == a
    assert [layer.type for layer in b.layers] == [layer["type"] for layer in arch["layers"]]
    assert b.layers[0].b_std == 0.1 and b.layers[-1].b_std is None


def test_new_activation_defaults_and_errors():
    layers = parse_arch({"layers": [{"type": "dense"}, {"type": "gaussian"}, {"type": "dense"},
                                    {"type": "exp"}, {"type": "dense"}, {"type": "rbf"}]}).layers
    assert (layers[1].a, layers[1].b, layers[3].a, layers[3].b, layers[5].gamma) == \
        (1.0, -1.0, 1.0, 1.0, 1.0)  # stax.Gaussian(a=1, b=-1), Exp(a=1, b=1), Rbf(gamma=1)
    for bad, field in [({"type": "gaussian", "b": 0.5}, "b"),
                       ({"type": "rbf", "gamma": 0}, "gamma"),
                       ({"type": "exp", "a": float("nan")}, "a")]:
        with pytest.raises(nc.InputError) as e:
            parse_arch({"layers": [{"type": "dense"}, bad]})
        assert (e.value.field, e.value.layer) == (field, 1)


def test_stax_defaults():
    a = parse_arch({"layers": [{"type": "dense"}, {"type": "conv", "filter_shape": [3]},
                               {"type": "avg_pool", "window_shape": [2]}]})
    assert a.parameterization == "ntk"
    assert a.layers[0].W_std == 1.0 and a.layers[0].b_std is None
    assert a.layers[1].padding == "VALID" and a.layers[1].strides is None
    assert a.layers[2].padding == "VALID"


@pytest.mark.parametrize("arch,layer,field", [
    ({"layers": [{"type": "dense"}, {"type": "bogus"}]}, 1, "type"),
    ({"layers": [{"type": "dense", "W_std": -1.0}]}, 0, "W_std"),
    ({"layers": [{"type": "relu"}, {"type": "dense", "b_std": float("nan")}]}, 1, "b_std"),
    ({"layers": [{"type": "conv", "filter_shape": [3, 0]}]}, 0, "filter_shape"),
    ({"layers": [{"type": "conv", "filter_shape": [3], "padding": "FULL"}]}, 0, "padding"),
    ({"layers": [{"type": "dense", "widht": 3}]}, 0, "widht"),
    ({"layers": [{"W_std": 1.0}]}, 0, "type"),
    ({"layers": [{"type": "elementwise", "fn": "cube"}]}, 0, "fn"),
])
def test_spec_errors_name_layer_and_field(arch, layer, field):
    with pytest.raises(nc.InputError) as e:
        parse_arch(arch)
    assert e.value.layer == layer
    assert e.value.field == field
    assert f"layers[{layer}].{field}" in str(e.value)


@pytest.mark.parametrize("arch,field", [
    ({"layers": []}, "layers"), ({"layerz": []}, "layers"), ("{not json", "arch"),
    ([1, 2], "arch"), ({"layers": [{"type": "relu"}], "parameterization": "mup"},
                       "parameterization"),
])
def test_top_level_errors(arch, field):
    with pytest.raises(nc.InputError) as e:
        parse_arch(arch)
    assert e.value.layer is None and e.value.field.startswith(field)


def test_spec_object_is_accepted_as_is():
    a = Architecture.model_validate(conv_net(1))
    assert parse_arch(a) is a


def test_nested_composites_round_trip():
    from ntkcompute import architectures as A

    arch = {"layers": [
        {"type": "conv", "filter_shape": [3], "padding": "SAME"},
        {"type": "repeat", "n": 2, "layer": {"type": "serial", "layers": [
            {"type": "fan_out", "num": 3},
            {"type": "parallel", "branches": [
                [{"type": "identity"}],
                [{"type": "layer_norm", "axis": [1, -1], "eps": 1e-6}, {"type": "relu"},
                 {"type": "conv", "filter_shape": [3], "padding": "SAME"}],
                [{"type": "global_self_attention", "n_heads": 4, "attention_mechanism": "RELU",
                  "b_std": 0.1}]]},
            {"type": "fan_in_sum"}]}},
        {"type": "fan_out", "num": 2},
        {"type": "parallel", "branches": [[{"type": "sum_pool", "window_shape": [2]}],
                                          [{"type": "avg_pool", "window_shape": [2]}]]},
        {"type": "fan_in_concat", "axis": -1}, {"type": "global_sum_pool"},
        {"type": "fan_out", "num": 2},
        {"type": "parallel", "branches": [[{"type": "dense"}], [{"type": "dense"}]]},
        {"type": "fan_in_prod"}, {"type": "dense"}]}
    a = parse_arch(arch)
    assert parse_arch(a.to_json()) == a and parse_arch(json.loads(a.to_json())) == a
    block = a.layers[1].layer
    assert block.layers[1].branches[2][0].attention_mechanism == "RELU"
    assert block.layers[1].branches[1][0].axis == [1, -1]
    assert parse_arch(A.resnet(3)).layers[1].n == 3


def test_attention_and_layer_norm_defaults_follow_stax():
    att = parse_arch({"layers": [{"type": "global_self_attention"}]}).layers[0]
    assert (att.n_heads, att.linear_scaling, att.attention_mechanism, att.b_std) == \
        (1, True, "SOFTMAX", None)
    assert att.W_key_std == att.W_query_std == att.W_value_std == att.W_out_std == 1.0
    ln = parse_arch({"layers": [{"type": "layer_norm"}]}).layers[0]
    assert (ln.axis, ln.eps) == (-1, 1e-12)


@pytest.mark.parametrize("layers,where,field", [
    ([{"type": "fan_out", "num": 1}], 0, "num"),
    ([{"type": "parallel", "branches": [[{"type": "dense", "W_std": -1}]]}],
     "layers[0].branches[0][0]", "W_std"),
    ([{"type": "repeat", "n": 2, "layer": {"type": "serial", "layers": [{"type": "conv"}]}}],
     "layers[0].layer.layers[0]", "filter_shape"),
    ([{"type": "repeat", "n": 0, "layer": {"type": "dense"}}], 0, "n"),
    ([{"type": "serial", "layers": [{"type": "dense"}, {"type": "bogus"}]}],
     "layers[0].layers[1]", "type"),
    ([{"type": "global_self_attention", "attention_mechanism": "TANH"}], 0,
     "attention_mechanism"),
    ([{"type": "layer_norm", "eps": -1}], 0, "eps"),
    ([{"type": "parallel", "branches": [[{"type": "identity"}], []]}], 0, "branches[1]"),
    ([{"type": "parallel", "branches": [[{"type": "relu"}, {}]]}], "layers[0].branches[0][1]",
     "type"),
])
def test_nested_spec_errors_name_the_path(layers, where, field):
    with pytest.raises(nc.InputError) as e:
        parse_arch({"layers": layers})
    assert (e.value.layer, e.value.field) == (where, field), str(e.value)


def _repeat(n: int, layer: dict) -> dict:
    return {"type": "repeat", "n": n, "layer": layer}


@pytest.mark.parametrize("layers", [
    [{"type": "dense"}, {"type": "relu"}, {"type": "dense"}],
    [_repeat(3, {"type": "serial", "layers": [{"type": "dense"}, {"type": "relu"}]}),
     {"type": "dense"}],
    [{"type": "dense"}, {"type": "fan_out", "num": 2},
     {"type": "parallel", "branches": [[_repeat(2, {"type": "serial", "layers": [
         {"type": "dense"}, {"type": "relu"}]}), {"type": "dense"}], [{"type": "dense"}]]},
     {"type": "fan_in_sum"}, {"type": "relu"}, {"type": "dense"}],
])
def test_spec_size_counts_the_planned_layers_without_planning(layers):
    from ntkcompute.plan import make_plan
    from ntkcompute.spec import spec_size

    n, _ = spec_size(layers)
    assert n == len(make_plan(parse_arch({"layers": layers}), (4, 6)).layers)


def test_explosions_and_deep_nesting_are_refused_before_validation():
    import time

    from ntkcompute.spec import MAX_LAYERS, MAX_NESTING

    boom = _repeat(100, _repeat(100, _repeat(100, {"type": "serial", "layers": [
        {"type": "dense"}, {"type": "relu"}]})))
    t0 = time.perf_counter()
    with pytest.raises(nc.InputError, match="2000000 layers") as e:
        parse_arch({"layers": [boom]})
    assert e.value.field == "arch" and time.perf_counter() - t0 < 0.05
    deep: dict = {"type": "dense"}
    for _ in range(5000):  # past any recursion limit: the walk must not recurse
        deep = {"type": "serial", "layers": [deep]}
    with pytest.raises(nc.InputError, match=f"more than {MAX_NESTING} levels"):
        parse_arch({"layers": [deep]})
    ok: dict = {"type": "dense"}
    for _ in range(MAX_NESTING):
        ok = {"type": "serial", "layers": [ok]}
    assert len(parse_arch({"layers": [ok]}).to_json()) > 0  # the deepest allowed serialises
    fits = [_repeat(MAX_LAYERS // 2, {"type": "serial", "layers": [
        {"type": "dense"}, {"type": "relu"}]})]
    with pytest.raises(nc.InputError):  # repeat's own n <= 1000 still holds
        parse_arch({"layers": fits})
    wide = [{"type": "dense"}] * (MAX_LAYERS + 1)
    with pytest.raises(nc.InputError, match=f"limit of {MAX_LAYERS}"):
        parse_arch({"layers": wide})


@pytest.mark.parametrize("layer", [
    {"type": "erf", "a": float("inf")}, {"type": "sin", "b": float("nan")},
    {"type": "ab_relu", "a": float("-inf"), "b": 1.0}, {"type": "cos", "c": float("inf")},
])
def test_no_layer_parameter_is_infinite(layer):
    with pytest.raises(nc.InputError) as e:
        parse_arch({"layers": [{"type": "dense"}, layer, {"type": "dense"}]})
    assert e.value.layer == 1

"""Bad data: NaN/Inf, wrong dtypes and shapes, x1/x2 mismatch, bad `get` and `dtype`."""

import numpy as np
import pytest

import ntkcompute as nc
from tests.conftest import conv_net, fc_net


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(rng, bad):
    x = rng.standard_normal((4, 3))
    x[2, 1] = bad
    with pytest.raises(nc.InputError) as e:
        nc.kernel(fc_net(1), x)
    assert e.value.field == "x1" and "NaN" in e.value.reason
    with pytest.raises(nc.InputError) as e:
        nc.kernel(fc_net(1), rng.standard_normal((4, 3)), x)
    assert e.value.field == "x2"


def test_mismatched_trailing_shapes(rng):
    with pytest.raises(nc.InputError) as e:
        nc.kernel(conv_net(1), rng.standard_normal((2, 5, 5, 1)), rng.standard_normal((2, 5, 4,
                                                                                         1)))
    assert e.value.field == "x2" and "(5, 4, 1)" in e.value.reason


@pytest.mark.parametrize("x,msg", [
    (np.array(["a", "b"]), "real numbers"), (np.ones(3), "shape"),
    (np.ones((0, 3)), "empty"), (np.ones((2, 3), dtype=complex), "real numbers"),
])
def test_bad_arrays(x, msg):
    with pytest.raises(nc.InputError) as e:
        nc.kernel(fc_net(1), x)
    assert e.value.field == "x1" and msg in e.value.reason


def test_integer_inputs_are_cast(rng):
    x = rng.integers(0, 255, (4, 6))
    out = nc.kernel(fc_net(1), x)
    assert out["ntk"].dtype == np.float64
    np.testing.assert_array_equal(out["ntk"], nc.kernel(fc_net(1), x.astype(float))["ntk"])


def test_bad_get_and_dtype(rng):
    x = rng.standard_normal((2, 3))
    with pytest.raises(nc.InputError) as e:
        nc.kernel(fc_net(1), x, get=("ntk", "cka"))
    assert e.value.field == "get"
    with pytest.raises(nc.InputError, match="twice") as e:
        nc.kernel(fc_net(1), x, get=("ntk", "ntk"))
    assert e.value.field == "get"
    with pytest.raises(nc.InputError) as e:
        nc.kernel(fc_net(1), x, dtype="float16")
    assert e.value.field == "dtype"


def test_error_is_a_value_error_with_location():
    err = nc.InputError("bad", field="W_std", layer=3)
    assert isinstance(err, ValueError) and str(err) == "layers[3].W_std: bad"


def test_float32_is_the_default_only_where_it_is_verified_accurate():
    import ntkcompute as nc
    from ntkcompute import architectures as A
    from ntkcompute.spec import float32_verified, parse_arch

    x = np.random.default_rng(0).standard_normal((3, 6, 6, 2)).astype(np.float32)
    for arch in (A.cntk(2), A.cntk(2, "flatten"), A.resnet(1), A.fc(2, act="erf")):
        assert float32_verified(parse_arch(arch))
        assert nc.kernel(arch, x if "conv" in str(arch) else x.reshape(3, -1),
                         get="nngp")["nngp"].dtype == np.float32
    norm = {"layers": [{"type": "conv", "filter_shape": [3, 3]},
                       {"type": "serial", "layers": [{"type": "layer_norm", "axis": [1, 2, 3]}]},
                       {"type": "relu"}, {"type": "flatten"}, {"type": "dense"}]}
    assert not float32_verified(parse_arch(norm))  # nested layers count too
    assert nc.kernel(norm, x, get="nngp")["nngp"].dtype == np.float64
    assert nc.kernel(norm, x, get="nngp", dtype="float32")["nngp"].dtype == np.float32

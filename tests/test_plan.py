"""Architectures that do not fit their data: one error type, the layer index and the field."""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute.plan import make_plan
from tests.conftest import conv_net


def _err(arch, x, x2=None):
    with pytest.raises(nc.InputError) as e:
        nc.kernel(arch, x, x2)
    return e.value


def test_conv_on_vectors(rng):
    e = _err(conv_net(1), rng.standard_normal((3, 8)))
    assert (e.layer, e.field) == (0, "filter_shape") and "vectors" in e.reason


def test_filter_rank_mismatch(rng):
    arch = {"layers": [{"type": "conv", "filter_shape": [3]}, {"type": "flatten"},
                       {"type": "dense"}]}
    e = _err(arch, rng.standard_normal((3, 5, 5, 1)))
    assert (e.layer, e.field) == (0, "filter_shape")


def test_pool_window_larger_than_image(rng):
    arch = {"layers": [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME"},
                       {"type": "relu"}, {"type": "avg_pool", "window_shape": [9, 2]},
                       {"type": "global_avg_pool"}, {"type": "dense"}]}
    e = _err(arch, rng.standard_normal((2, 8, 8, 1)))
    assert (e.layer, e.field) == (2, "window_shape") and "larger" in e.reason


def test_strides_rank_mismatch(rng):
    arch = {"layers": [{"type": "avg_pool", "window_shape": [2, 2], "strides": [2]},
                       {"type": "flatten"}, {"type": "dense"}]}
    e = _err(arch, rng.standard_normal((2, 4, 4, 1)))
    assert (e.layer, e.field) == (0, "strides")


def test_gap_on_vectors_and_spatial_output(rng):
    e = _err({"layers": [{"type": "dense"}, {"type": "global_avg_pool"}]},
             rng.standard_normal((2, 3)))
    assert (e.layer, e.field) == (1, "type")
    e = _err({"layers": [{"type": "conv", "filter_shape": [1, 1]}, {"type": "relu"}]},
             rng.standard_normal((2, 3, 3, 1)))
    assert (e.layer, e.field) == (1, "type") and "spatial" in e.reason


def test_standard_parameterization_needs_widths(rng):
    arch = {"parameterization": "standard",
            "layers": [{"type": "dense"}, {"type": "relu"}, {"type": "dense"}]}
    e = _err(arch, rng.standard_normal((2, 3)))
    assert (e.layer, e.field) == (2, "type") and "out_dim" in e.reason


@pytest.mark.parametrize("layers,bad", [
    ([{"type": "relu"}, {"type": "dense"}], 0),
    ([{"type": "dense"}, {"type": "relu"}, {"type": "erf"}, {"type": "dense"}], 2),
    ([{"type": "conv", "filter_shape": [1, 1]}, {"type": "flatten"}, {"type": "relu"},
      {"type": "dense"}], 2),
    ([{"type": "conv", "filter_shape": [1, 1]}, {"type": "relu"},
      {"type": "avg_pool", "window_shape": [2, 2]}, {"type": "relu"}, {"type": "flatten"},
      {"type": "dense"}], 3),
])
def test_nonlinearity_needs_gaussian_input(rng, layers, bad):
    x = rng.standard_normal((2, 3, 3, 2)) if layers[0]["type"] == "conv" else \
        rng.standard_normal((2, 3))
    e = _err({"layers": layers}, x)
    assert (e.layer, e.field) == (bad, "type") and "Gaussian" in e.reason


def test_gaussian_is_kept_by_pooling_and_restored_by_dense(rng):
    x = rng.standard_normal((2, 4, 4, 2))
    ok = {"layers": [{"type": "conv", "filter_shape": [1, 1]},
                     {"type": "avg_pool", "window_shape": [2, 2]}, {"type": "relu"},
                     {"type": "conv", "filter_shape": [1, 1]}, {"type": "global_avg_pool"},
                     {"type": "erf"}, {"type": "dense"}, {"type": "flatten"}, {"type": "sin"},
                     {"type": "dense"}]}
    assert np.isfinite(nc.kernel(ok, x)["ntk"]).all()


def test_requirements_follow_the_layers():
    shape = (1, 8, 8, 3)
    gap = make_plan(nc.parse_arch(conv_net(2, "global_avg_pool")), shape)
    flat = make_plan(nc.parse_arch(conv_net(2, "flatten")), shape)
    assert gap.input_full and all(lp.in_full for lp in gap.layers[:4])
    assert not flat.input_full and not any(lp.in_full for lp in flat.layers)
    assert gap.max_state_size == 64 * 64 and flat.max_state_size == 64
    # full covariance only up to the pool; its output feeds a flatten net: diagonal again
    mixed = conv_net(1, "flatten")
    mixed["layers"].insert(2, {"type": "avg_pool", "window_shape": [2, 2], "strides": [2, 2]})
    mixed["layers"].insert(3, {"type": "conv", "filter_shape": [3, 3], "padding": "SAME"})
    p = make_plan(nc.parse_arch(mixed), shape)
    assert [lp.in_full for lp in p.layers] == [True, True, True, False, False, False]
    assert p.layers[2].out_spatial == (4, 4) and not p.layers[2].out_full


def test_same_windows_past_the_input_are_refused(rng):
    """SAME pads at most the input's size past each edge: 2n+1 taps at stride 1 on n = 4."""
    x = rng.standard_normal((2, 4, 4, 1))

    def arch(f, s=1):
        return {"layers": [{"type": "conv", "filter_shape": [f, f], "strides": [s, s],
                            "padding": "SAME"}, {"type": "relu"}, {"type": "flatten"},
                           {"type": "dense"}]}

    assert np.isfinite(nc.kernel(arch(9), x)["ntk"]).all()
    assert np.isfinite(nc.kernel(arch(10, 2), x)["ntk"]).all()
    for f, s in ((10, 1), (11, 2), (20, 1)):
        e = _err(arch(f, s), x)
        assert (e.layer, e.field) == (0, "filter_shape") and "SAME" in e.reason

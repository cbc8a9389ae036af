"""Layers with fixed weights (``trainable: false``, Arora et al. 2020's fixed bottom layers):
the NTK loses exactly their terms, on the NumPy and the compiled paths, and is the limit of
the empirical NTK of nets whose frozen layers are not differentiated."""

import json

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import InputError
from ntkcompute.kernels import fused
from ntkcompute.spec import parse_arch

CONV = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.4, "b_std": 0.2}
NETS = {
    "fc": ({"layers": [{"type": "dense", "W_std": 1.4, "b_std": 0.1}, {"type": "relu"},
                       {"type": "dense", "W_std": 1.2, "b_std": 0.3}, {"type": "erf"},
                       {"type": "dense", "W_std": 1.1, "b_std": 0.2}]}, (6, 5)),
    "cntk": ({"layers": [CONV, {"type": "relu"}, CONV, {"type": "relu"},
                         {"type": "global_avg_pool"}, {"type": "dense", "b_std": 0.1}]},
             (4, 5, 4, 2)),
    "standard": ({"parameterization": "standard", "layers": [
        {**CONV, "out_chan": 6}, {"type": "relu"},
        {"type": "conv_local", "filter_shape": [2, 2], "out_chan": 5, "b_std": 0.1},
        {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "out_dim": 1}]},
        (4, 5, 4, 2)),
}


def _weighted(arch):
    return [i for i, lay in enumerate(arch["layers"])
            if lay["type"] in ("dense", "conv", "conv_local")]


def _only(arch, keep):
    out = json.loads(json.dumps(arch))  # (no shared layer dicts, unlike deepcopy)
    for i in _weighted(arch):
        if i not in keep:
            out["layers"][i]["trainable"] = False
    return out


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "fused"])
@pytest.mark.parametrize("name", list(NETS))
def test_ntk_is_the_sum_of_each_layers_term(rng, name, compiled):
    """Θ is linear in the layers' contributions: the NTKs with one layer trained sum to the
    NTK with all trained; the NNGP never changes."""
    arch, shape = NETS[name]
    x1, x2 = rng.standard_normal(shape), rng.standard_normal((3, *shape[1:]))
    with fused.use(compiled):
        full = nc.kernel(arch, x1, x2)
        parts = [nc.kernel(_only(arch, {i}), x1, x2) for i in _weighted(arch)]
    total = sum(p["ntk"] for p in parts)
    assert np.abs(total - full["ntk"]).max() <= 1e-12 * np.abs(full["ntk"]).max()
    for p in parts:
        assert np.array_equal(p["nngp"], full["nngp"])
        assert np.abs(p["ntk"]).max() > 1e-3 * np.abs(full["ntk"]).max()  # a real term


def test_readout_only_ntk_is_the_nngp(rng):
    arch, shape = NETS["fc"]
    k = nc.kernel(_only(arch, {_weighted(arch)[-1]}), rng.standard_normal(shape))
    assert np.abs(k["ntk"] - k["nngp"]).max() <= 1e-14 * np.abs(k["nngp"]).max()


def test_empirical_ntk_of_nets_with_fixed_layers_converges(rng):
    arch = _only(NETS["cntk"][0], {2, 5})  # the first conv fixed
    x = rng.standard_normal((3, 5, 4, 2))
    k = nc.kernel(arch, x)["ntk"]
    errs = [np.mean([np.abs(nc.empirical_kernel(arch, x, width=w, seed=s)["ntk"] - k).mean()
                     / np.abs(k).mean() for s in range(3)]) for w in (32, 1024)]
    assert errs[1] < errs[0] / 2.5 and errs[1] < 0.06, errs
    full = nc.empirical_kernel(NETS["cntk"][0], x, width=256, seed=0)["ntk"]
    fixed = nc.empirical_kernel(arch, x, width=256, seed=0)["ntk"]
    assert np.all(fixed < full)  # the same net, fewer parameters differentiated


def test_spec_dumps_trainable_only_when_false_and_features_refuse(rng):
    arch, _ = NETS["fc"]
    assert "trainable" not in parse_arch(arch).to_json()
    frozen = _only(arch, {4})
    assert '"trainable":false' in parse_arch(frozen).to_json()
    with pytest.raises(InputError) as e:
        nc.features(frozen, rng.standard_normal((4, 5)), 16)
    assert e.value.field == "trainable"

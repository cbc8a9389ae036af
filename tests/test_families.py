"""Kernel families (every depth from one pass): members equal separately computed kernels,
for symmetric and cross Grams, any block grid and threads; the refusals."""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import InputError
from ntkcompute import architectures as A
from ntkcompute.families import kernel_family, make_family

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

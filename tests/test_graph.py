"""Aggregate (stax.Aggregate, graph networks): closed forms, the empirical NTK of wide graph
nets, the graphs carried in the inputs' channels, and the refusals. (Against nt 0.6.5:
tests/test_stax.py runs nt's Aggregate examples against its fixture.)"""

import json

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import InputError, stax
from ntkcompute.spec import parse_arch


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _graphs(rng, n, v, p=0.35):
    return (rng.random((n, v, v)) < p).astype(float)


GNTK = {"layers": [
    {"type": "conv", "filter_shape": [1], "W_std": 1.4, "b_std": 0.1}, {"type": "relu"},
    {"type": "aggregate"},
    {"type": "conv", "filter_shape": [1], "W_std": 1.4, "b_std": 0.1}, {"type": "relu"},
    {"type": "aggregate", "aggregate_axis": 1},
    {"type": "global_sum_pool"}, {"type": "dense"}]}


def test_linear_aggregation_is_a_transpose_k_a_in_closed_form(rng):
    """Aggregate then the sum over vertices: NNGP = sum_{jj'} (A1ᵀ K0 A2)[j, j'] with K0 the
    inputs' covariance, per pair; twice: A1ᵀ A1ᵀ K0 A2 A2."""
    n1, n2, v, c = 4, 3, 7, 3
    x1, x2 = rng.standard_normal((n1, v, c)), rng.standard_normal((n2, v, c))
    a1, a2 = rng.standard_normal((n1, v, v)), rng.standard_normal((n2, v, v))
    k0 = np.einsum("aic,bjc->abij", x1, x2) / c
    for depth in (1, 2):
        arch = {"layers": [{"type": "aggregate"}] * depth + [{"type": "global_sum_pool"}],
                "pattern_channels": v}
        got = nc.kernel(arch, nc.pack_pattern(x1, a1), nc.pack_pattern(x2, a2), get="nngp")
        m1 = a1 if depth == 1 else a1 @ a1
        m2 = a2 if depth == 1 else a2 @ a2
        want = np.einsum("aij,abik,bkl->ab", m1, k0, m2)
        assert _rel(got["nngp"], want) < 1e-13


def test_aggregating_one_axis_of_images(rng):
    """Over W of (H, W) images: each row of the image aggregates on its own."""
    x = rng.standard_normal((3, 2, 5, 2))
    a = rng.standard_normal((3, 5, 5))
    arch = {"layers": [{"type": "aggregate", "aggregate_axis": [2]}, {"type": "flatten"}],
            "pattern_channels": 5}
    got = nc.kernel(arch, nc.pack_pattern(x, a, 2), get="nngp")["nngp"]
    y = np.einsum("nij,nhic->nhjc", a, x)  # the aggregated inputs, then flatten's kernel
    want = np.einsum("ahwc,bhwc->ab", y, y) / (2 * 5 * 2)
    assert _rel(got, want) < 1e-13


def test_identity_graph_is_the_net_without_aggregate(rng):
    x = rng.standard_normal((5, 6, 3))
    plain = [lay for lay in GNTK["layers"] if lay["type"] != "aggregate"]
    with_eye = nc.kernel({**GNTK, "pattern_channels": 6}, nc.pack_pattern(x))
    without = nc.kernel({"layers": plain}, x)
    for g in ("ntk", "nngp"):  # equal but for BLAS's summation order on other block shapes
        assert _rel(with_eye[g], without[g]) < 1e-14


def test_tiles_blocks_and_rows_do_not_change_a_graph_kernel(rng):
    """The graphs travel with their rows: any block grid, cross blocks of row subsets and
    the symmetric Gram agree."""
    x = nc.pack_pattern(rng.standard_normal((9, 6, 2)), _graphs(rng, 9, 6))
    arch = {**GNTK, "pattern_channels": 6}
    one = nc.kernel(arch, x, threads=1)
    small = nc.kernel(arch, x, memory=60_000, threads=2)  # many blocks, two threads
    cross = nc.kernel(arch, x[:4], x[2:], threads=1)
    for g in ("ntk", "nngp"):
        assert _rel(small[g], one[g]) < 1e-14
        assert _rel(cross[g], one[g][:4, 2:]) < 1e-14
        assert np.array_equal(one[g], one[g].T)


def test_infinite_width_is_the_limit_of_the_empirical_ntk_of_graph_nets(rng):
    x = nc.pack_pattern(rng.standard_normal((4, 6, 3)), _graphs(rng, 4, 6) + np.eye(6))
    arch = {**GNTK, "pattern_channels": 6}
    k = nc.kernel(arch, x)["ntk"]
    errs = [np.mean([_rel(nc.empirical_kernel(arch, x, width=w, seed=s)["ntk"], k)
                     for s in range(3)]) for w in (32, 4096)]
    # ~ width^-1/2: 128x = 11x (measured 0.36 -> 0.035 with seed 0)
    assert errs[1] < errs[0] / 4 and errs[1] < 0.06, errs


def test_sparse_edges_equal_their_dense_adjacency(rng):
    """stax's SPARSE edge lists (repeats add up, a negative head is padding) give the kernel
    of the dense adjacency they stand for, over one and over two axes; and the finite net
    of apply_fn does the same message passing as the dense one."""
    for shape in ((4, 8, 2), (4, 3, 4, 2)):
        x = rng.standard_normal(shape)
        agg = shape[1:-1]
        edges = rng.integers(0, 3, size=(4, 10, len(agg), 2))
        edges[:, :2, :, 1] = -1  # padding
        dense = np.zeros((4, *agg, *agg))
        for b in range(4):
            for e in edges[b]:
                if (e[:, 1] >= 0).all():
                    dense[(b, *e[:, 0], *e[:, 1])] += 1
        k = len(agg)

        def layers(impl, k=k):
            return stax.serial(
                stax.Aggregate(implementation=impl), stax.Conv(8, (1,) * k), stax.Relu(),
                stax.Aggregate(implementation=impl), stax.GlobalAvgPool(), stax.Dense(1))

        init_fn, apply_fn, kf_sparse = layers("SPARSE")
        _, apply_dense, kf_dense = layers("DENSE")
        ks, kd = kf_sparse(x, None, "ntk", pattern=edges), kf_dense(x, None, "ntk",
                                                                     pattern=dense)
        assert _rel(ks, kd) < 1e-14
        _, params = init_fn(3, x.shape)
        assert np.allclose(apply_fn(params, x, pattern=edges),
                           apply_dense(params, x, pattern=dense), rtol=1e-13, atol=1e-13)


def test_finite_apply_fn_passes_messages(rng):
    x = rng.standard_normal((3, 5, 2))
    a = rng.standard_normal((3, 5, 5))
    _, apply_fn, _ = stax.serial(stax.Aggregate(), stax.Flatten())
    out = apply_fn([], x, pattern=a)
    assert np.allclose(out, np.einsum("nij,nic->njc", a, x).reshape(3, -1), atol=1e-14)
    assert np.allclose(apply_fn([], x), x.reshape(3, -1))  # no pattern: identity, as stax


def test_packed_spec_round_trips_and_old_specs_keep_their_identity(rng):
    _, _, kernel_fn = stax.serial(stax.Conv(8, (1,)), stax.Relu(), stax.Aggregate(1),
                                  stax.GlobalSumPool(), stax.Dense(1))
    x, a = rng.standard_normal((4, 6, 3)), _graphs(rng, 4, 6)
    spec, packed = kernel_fn.pack(x, a)
    assert spec["pattern_channels"] == 6 and packed.shape == (4, 6, 9)
    assert json.loads(parse_arch(json.dumps(spec)).to_json()) == spec
    k = nc.kernel(spec, packed, get="ntk")["ntk"]
    assert np.array_equal(k, kernel_fn(x, None, "ntk", pattern=a))
    assert "pattern_channels" not in parse_arch({"layers": [{"type": "relu"}]}).to_json()


@pytest.mark.parametrize("arch,channels,field,match", [
    ({"layers": [{"type": "aggregate"}, {"type": "flatten"}]}, 9, "pattern_channels",
     "needs each input's graph"),
    ({"layers": [{"type": "aggregate"}, {"type": "flatten"}], "pattern_channels": 5}, 9,
     "pattern_channels", "6 vertices"),
    ({"layers": [{"type": "conv", "filter_shape": [1]}, {"type": "flatten"}],
      "pattern_channels": 6}, 9, "pattern_channels", "no layer reads a graph"),
    ({"layers": [{"type": "aggregate"}, {"type": "flatten"}], "pattern_channels": 6}, 6,
     "pattern_channels", "none is left for features"),
    ({"layers": [{"type": "aggregate", "aggregate_axis": [0]}, {"type": "flatten"}],
      "pattern_channels": 6}, 9, "aggregate_axis", "batch axis"),
    ({"layers": [{"type": "aggregate", "aggregate_axis": [-1]}, {"type": "flatten"}],
      "pattern_channels": 6}, 9, "aggregate_axis", "channel axis"),
    ({"layers": [{"type": "conv", "filter_shape": [2]}, {"type": "aggregate"},
                 {"type": "flatten"}], "pattern_channels": 6}, 9, "aggregate_axis",
     "sizes"),
    ({"layers": [{"type": "flatten"}, {"type": "aggregate"}], "pattern_channels": 6}, 9,
     "aggregate_axis", "vector"),
    ({"layers": [{"type": "aggregate"}, {"type": "flatten"}], "pattern_channels": 5000},
     9, "pattern_channels", "4096"),
])
def test_refusals_name_the_field(rng, arch, channels, field, match):
    with pytest.raises(InputError, match=match) as e:
        nc.kernel(arch, rng.standard_normal((2, 6, channels)))
    assert e.value.field == field


def test_stax_pattern_refusals(rng):
    x = rng.standard_normal((3, 5, 2))
    _, _, kf = stax.serial(stax.Aggregate(), stax.Flatten())
    for bad, field in [((np.ones((3, 4, 4)), None), "pattern"),
                       (np.ones((3, 5, 5), dtype=complex), "pattern")]:
        with pytest.raises(InputError) as e:
            kf(x, None, "nngp", pattern=bad)
        assert e.value.field == field
    with pytest.raises(InputError, match="both") as e:
        kf(x, x, "nngp", pattern=(np.ones((3, 5, 5)), None))
    _, _, kf_sparse = stax.serial(stax.Aggregate(implementation="SPARSE"), stax.Flatten())
    with pytest.raises(InputError, match="integers") as e:
        kf_sparse(x, None, "nngp", pattern=np.ones((3, 4, 2)))
    with pytest.raises(InputError) as e:
        stax.Aggregate(implementation="CSR")
    assert e.value.field == "implementation"
    with pytest.raises(InputError) as e:  # two readings of one pattern
        stax.serial(stax.Aggregate(), stax.Aggregate(implementation="SPARSE"),
                    stax.Flatten())[2](x, None, "nngp")
    assert e.value.field == "pattern"

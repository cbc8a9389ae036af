"""NTK/NNGP random features (Zandieh et al. 2021) against the exact kernels."""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.features import TensorSRHT, _srht_rows, feature_map, features


def rel_err(f: np.ndarray, k: np.ndarray) -> float:
    return float(np.linalg.norm(f @ f.T - k) / np.linalg.norm(k))


def assert_error_falls(arch: dict, x: np.ndarray, ms: list[int], seeds: int,
                       min_slope: float, max_last: float) -> None:
    """The seed-mean Gram error of NTK and NNGP features falls in m like m^-1/2: strictly
    down, log-log slope in (min_slope, -0.3), below ``max_last`` at the largest m."""
    ref = nc.kernel(arch, x)
    for kind in ("ntk", "nngp"):
        errs = [np.mean([rel_err(features(arch, x, m, seed=s)[kind], ref[kind])
                         for s in range(seeds)]) for m in ms]
        slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
        assert errs[0] > errs[1] > errs[2], (kind, errs)
        assert min_slope < slope < -0.3, (kind, slope, errs)
        assert errs[-1] < max_last, (kind, errs)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_gram_error_falls_like_inverse_sqrt_m(depth):
    x = np.random.default_rng(depth).standard_normal((120, 20))
    assert_error_falls(A.fc(depth, b_std=0.2), x, [256, 1024, 4096], 2, -0.8, 0.15)


def test_tensor_srht_preserves_products_in_expectation():
    rng = np.random.default_rng(0)
    a, a2 = rng.standard_normal((2, 5))
    b, b2 = rng.standard_normal((2, 12))
    target = (a @ a2) * (b @ b2)
    vals = []
    for _ in range(3000):
        s = TensorSRHT.draw(rng, 5, 12, 16)
        vals.append(float((s(a[None], b[None]) @ s(a2[None], b2[None]).T)[0, 0]))
    se = np.std(vals) / np.sqrt(len(vals))
    assert abs(np.mean(vals) - target) < 4 * se, (np.mean(vals), target, se)


@pytest.mark.parametrize("d,big", [(1, 1), (5, 8), (100, 128), (3000, 4096)])
def test_srht_rows_equal_the_dense_hadamard_transform(d, big):
    from scipy.linalg import hadamard

    rng = np.random.default_rng(d)
    x, signs, rows = rng.standard_normal((3, d)), rng.choice([-1.0, 1.0], big), \
        rng.integers(0, big, 7)
    padded = np.zeros((3, big))
    padded[:, :d] = x * signs[:d]
    np.testing.assert_allclose(_srht_rows(np, x, signs, rows),
                               (padded @ hadamard(big).T / np.sqrt(big))[:, rows], atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_cntk_gap_gram_error_falls_like_inverse_sqrt_m(depth):
    """The convolutional map (per-position features, random ReLU convs, TensorSRHT) against
    the exact CNTK-GAP, which pairs every position of one image with every one of the other."""
    x = np.random.default_rng(depth).standard_normal((24, 4, 4, 2))
    assert_error_falls(A.cntk(depth, b_std=0.1), x, [64, 256, 1024], 3, -0.85, 0.12)


def test_cntk_flatten_error_falls():
    x = np.random.default_rng(5).standard_normal((24, 4, 4, 2))
    arch = A.cntk(2, readout="flatten", b_std=0.1)
    ref = nc.kernel(arch, x, get="ntk")["ntk"]
    errs = [np.mean([rel_err(features(arch, x, m, seed=s, get="ntk")["ntk"], ref)
                     for s in range(3)]) for m in (64, 256, 1024)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.15, errs


@pytest.mark.parametrize("layers", [
    [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.3, "b_std": 0.4},
     {"type": "global_avg_pool"}, {"type": "dense", "W_std": 0.7, "b_std": 0.2}],
    [{"type": "conv", "filter_shape": [2, 3], "strides": [2, 1], "padding": "VALID"},
     {"type": "avg_pool", "window_shape": [2, 2], "padding": "SAME"},
     {"type": "conv", "filter_shape": [3, 1], "padding": "CIRCULAR", "b_std": 0.3},
     {"type": "flatten"}, {"type": "dense"}],
    [{"type": "avg_pool", "window_shape": [2, 2], "strides": [2, 2]},
     {"type": "dense", "W_std": 2.0, "b_std": 1.0}, {"type": "identity"},
     {"type": "conv", "filter_shape": [3, 3], "padding": "SAME"}, {"type": "global_avg_pool"},
     {"type": "dense"}],
])
def test_linear_layers_are_exact(layers):
    """Without a ReLU nothing is random: conv (strides, VALID/SAME/CIRCULAR padding),
    avg_pool, global_avg_pool, flatten and dense features reproduce the exact kernels (m
    above flatten's P·dim, so it does not project)."""
    x = np.random.default_rng(6).standard_normal((7, 6, 5, 3))
    arch = {"layers": layers}
    ref = nc.kernel(arch, x)
    f = feature_map(arch, x.shape[1:], 4096)(x)
    for kind in ("ntk", "nngp"):
        np.testing.assert_allclose(f[kind] @ f[kind].T, ref[kind], rtol=1e-12, atol=1e-12)


def test_image_rows_do_not_depend_on_their_chunk():
    x = np.random.default_rng(7).standard_normal((9, 5, 5, 2))
    fm = feature_map(A.cntk(2, b_std=0.1), (5, 5, 2), 32, seed=3)
    whole = fm(x)
    one_by_one = fm(x, memory=1)  # one row per chunk
    for k in ("ntk", "nngp"):
        np.testing.assert_allclose(one_by_one[k], whole[k], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(fm(x[4:6])[k], whole[k][4:6], rtol=1e-12, atol=1e-14)
    assert whole["ntk"].shape == (9, fm.dims["ntk"]) == (9, 2 * 32 + 1)  # ξ, ψ, bias
    assert fm.row_flops > feature_map(A.cntk(1), (5, 5, 2), 32).row_flops > 0


def test_rows_do_not_depend_on_their_batch_and_seed_is_deterministic():
    x = np.random.default_rng(2).standard_normal((50, 9))
    fm = feature_map(A.fc(2, b_std=0.1), 9, 64, seed=7)
    whole = fm(x)
    for lo, hi in [(0, 1), (10, 23), (40, 50)]:
        part = fm(x[lo:hi])
        for k in ("ntk", "nngp"):
            np.testing.assert_allclose(part[k], whole[k][lo:hi], rtol=1e-12, atol=1e-15)
    again = feature_map(A.fc(2, b_std=0.1), 9, 64, seed=7)(x)
    assert np.array_equal(again["ntk"], whole["ntk"])
    other = feature_map(A.fc(2, b_std=0.1), 9, 64, seed=8)(x)
    assert not np.allclose(other["ntk"], whole["ntk"])
    assert whole["ntk"].shape == (50, fm.dims["ntk"]) == (50, 2 * 64 + 1)
    assert whole["nngp"].shape == (50, fm.dims["nngp"]) == (50, 64 + 1)


def test_float32_and_the_array_module_path():
    x = np.random.default_rng(3).standard_normal((30, 7))
    f64 = features(A.fc(2), x, 128)["ntk"]
    f32 = features(A.fc(2), x.astype(np.float32), 128)["ntk"]
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, f64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,field,layer", [
    (A.cntk(1), "filter_shape", 0),  # a conv on vectors
    ({"layers": [{"type": "dense"}, {"type": "erf"}, {"type": "dense"}]}, "type", 1),
    ({"layers": [{"type": "relu"}, {"type": "dense"}]}, "type", 0),
    ({**A.fc(1), "parameterization": "standard"}, "parameterization", None),
    ({"layers": [{"type": "dense"}, {"type": "layer_norm"}, {"type": "dense"}]}, "type", 1),
    (A.resnet(1), "type", 1),  # composite nets: the exact kernel only
])
def test_unsupported_architectures_are_clear_errors(arch, field, layer):
    with pytest.raises(nc.InputError) as e:
        feature_map(arch, 4, 16)
    assert (e.value.field, e.value.layer) == (field, layer)


def test_bad_arguments():
    with pytest.raises(nc.InputError, match="m: must be a positive integer"):
        feature_map(A.fc(1), 4, 0)
    with pytest.raises(nc.InputError) as e:  # an FC net on images needs a readout
        features(A.fc(1), np.ones((3, 4, 2)), 8)
    assert (e.value.field, e.value.layer) == ("type", 2)
    with pytest.raises(nc.InputError) as e:
        features(A.fc(1), np.ones(3), 8)
    assert e.value.field == "x"
    with pytest.raises(nc.InputError) as e:
        feature_map(A.cntk(1), (4, 4, 1), 8)(np.ones((3, 4, 5, 1)))
    assert e.value.field == "x"
    with pytest.raises(nc.InputError) as e:
        feature_map(A.fc(1), 4, 8)(np.ones((3, 5)))
    assert e.value.field == "x"

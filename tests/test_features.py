"""NTK/NNGP random features (Zandieh et al. 2021) against the exact kernels."""

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.features import (
    TensorSRHT,
    _coords,
    _srht_rows,
    feature_map,
    features,
    relu_directions,
)


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


def _digits(n: int) -> np.ndarray:
    """n load_digits images (n, 8, 8, 1), pixels / 16, in the bench's permuted order."""
    from ntkcompute.datasets import digits

    x = digits()[0]
    return x[np.random.default_rng(0).permutation(len(x))][:n]


def test_seed_spread_on_digits_is_within_3x_of_the_median():
    """Issue 15: at a fixed m the CNTK-GAP-2 Gram error of single seeds must not go bad.

    The Gram of GAP features on digits is rank one to 1e-5, so with the plain estimator the
    error is one random scalar, the scale of ΦΦᵀ, common to every entry (all positions share
    each layer's draws): half-normal with heavy tails, max/median 3.1-10 in every window of
    10 seeds here (m = 64, 40 images, seeds 0-59), 10.2 for seeds 0-9. With each row's norm
    exact that scalar is gone; the same windows give 1.3-2.6 (q95/median 2.0 over 60 seeds).
    """
    x = _digits(40)
    arch = A.cntk(2)
    ref = nc.kernel(arch, x)
    errs = {"ntk": [], "nngp": []}
    for s in range(10):
        f = features(arch, x, 64, seed=s)
        for k, e in errs.items():
            e.append(rel_err(f[k], ref[k]))
    for k, e in errs.items():
        assert max(e) <= 3 * np.median(e), (k, np.round(np.sort(e) / np.median(e), 2))


def test_rows_have_their_exact_norms():
    """⟨Φ(x), Φ(x)⟩ = Θ(x, x) and ⟨Ψ(x), Ψ(x)⟩ = K(x, x), the exact kernel's diagonal, for FC
    and conv maps; ``exact_norms=False`` is the plain estimator, whose norms are random."""
    cases = [(A.fc(2, b_std=0.1), np.random.default_rng(4).standard_normal((6, 9))),
             (A.cntk(2), _digits(6)),
             (A.cntk(1, readout="flatten", b_std=0.2), _digits(6))]
    for arch, x in cases:
        ref = nc.kernel(arch, x)
        fm = feature_map(arch, x.shape[1:], 32, seed=1)
        assert fm.exact_norms
        f, plain = fm(x), features(arch, x, 32, seed=1, exact_norms=False)
        for k in ("ntk", "nngp"):
            np.testing.assert_allclose(np.sum(f[k] ** 2, axis=1), np.diag(ref[k]), rtol=1e-12)
            # the same features up to each row's scale
            cos = np.sum(f[k] * plain[k], 1) / np.linalg.norm(f[k], axis=1) \
                / np.linalg.norm(plain[k], axis=1)
            np.testing.assert_allclose(cos, 1.0, rtol=1e-12)
            assert not np.allclose(np.sum(plain[k] ** 2, axis=1), np.diag(ref[k]), rtol=1e-3)
    # left to the caller where one row's exact self pass would hold P² = 4096² values
    assert not feature_map(A.cntk(1), (64, 64, 3), 8).exact_norms
    assert feature_map(A.cntk(1), (64, 64, 3), 8, exact_norms=True).exact_norms
    with pytest.raises(nc.InputError) as e:
        feature_map(A.fc(1), 4, 8, exact_norms="yes")
    assert e.value.field == "exact_norms"


def test_conv_features_are_unbiased():
    """The plain estimator is unbiased (mean over seeds within its standard error of the exact
    CNTK-GAP-2); with exact norms the bias of the cosines is O(1/m), here < 0.2% at m = 32,
    far below one plain seed's error."""
    x = _digits(8)
    arch = A.cntk(2)
    ref = nc.kernel(arch, x)
    for exact in (False, True):
        grams = {"ntk": [], "nngp": []}
        for s in range(150):
            f = features(arch, x, 32, seed=s, exact_norms=exact)
            for k, g in grams.items():
                g.append(f[k] @ f[k].T)
        for k, g in grams.items():
            g = np.array(g)
            bias = np.linalg.norm(g.mean(0) - ref[k])
            se = np.linalg.norm(g.std(0, ddof=1)) / np.sqrt(len(g))
            if exact:
                assert bias < 2e-3 * np.linalg.norm(ref[k]), (k, bias, se)
            else:
                assert bias < 3 * se, (k, bias, se)


def test_relu_directions_are_rotated_cross_polytopes():
    """2d <= m: rows ±√d·(a Haar frame), so the order-1 norms are exact and half the steps fire
    for any input, while each row is marginally √d·uniform (unbiased for the homogeneous
    arc-cosine kernels: checked by Monte Carlo); 2d > m: i.i.d. Gaussian rows."""
    rng = np.random.default_rng(0)
    d, m = 5, 20  # two cross-polytopes
    g = relu_directions(rng, m, d)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), np.sqrt(d), rtol=1e-12)
    np.testing.assert_allclose(g[:d] @ g[:d].T, d * np.eye(d), atol=1e-12)
    np.testing.assert_allclose(g[m // 2:], -g[:m // 2])
    a, b = rng.standard_normal((2, d))
    np.testing.assert_allclose(np.sum(np.maximum(g @ a, 0) ** 2) / m, a @ a / 2, rtol=1e-12)
    assert np.sum(g @ a > 0) == m // 2
    theta = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    k1 = np.linalg.norm(a) * np.linalg.norm(b) * (np.sin(theta) + (np.pi - theta)
                                                  * np.cos(theta)) / (2 * np.pi)
    k0 = (np.pi - theta) / (2 * np.pi)
    v1, v0 = [], []
    for _ in range(2000):
        g = relu_directions(rng, 12, d)  # one full cross-polytope and a part of another
        v1.append(np.mean(np.maximum(g @ a, 0) * np.maximum(g @ b, 0)))
        v0.append(np.mean((g @ a > 0) & (g @ b > 0)))
    for v, target in ((v1, k1), (v0, k0)):
        assert abs(np.mean(v) - target) < 4 * np.std(v) / np.sqrt(len(v)), (np.mean(v), target)
    g = relu_directions(np.random.default_rng(1), 8, 5)  # 2d > m
    assert g.shape == (8, 5) and not np.allclose(np.linalg.norm(g, axis=1), np.sqrt(5))


@pytest.mark.parametrize("p,m", [(8, 5), (8, 8), (8, 21), (1 << 20, 300)])
def test_sketch_coordinates_are_drawn_without_replacement(p, m):
    c = _coords(np.random.default_rng(p + m), p, m)
    counts = np.bincount(c, minlength=p)
    assert c.shape == (m,) and counts.max() - counts.min() <= 1 and counts.sum() == m
    s = TensorSRHT.draw(np.random.default_rng(0), 20, 7, 40)  # D1 = 32, D2 = 8
    assert np.bincount(s.rows1).max() == 2 and np.bincount(s.rows2, minlength=8).min() == 5


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

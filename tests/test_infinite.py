"""Infinite-width kernels against closed forms, an independent reference and Arora et al."""

import math

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from tests.conftest import conv_net, fc_net
from tests.reference import gram


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_one_hidden_layer_relu_closed_form(rng):
    x = rng.standard_normal((7, 5))
    w2, b2 = 1.7**2, 0.3**2
    out = nc.kernel(fc_net(1, w=1.7, b=0.3), x)
    k1 = w2 * (x @ x.T) / 5 + b2
    d = np.sqrt(np.diag(k1))
    c = np.clip(k1 / np.outer(d, d), -1, 1)
    np.fill_diagonal(c, 1.0)
    th = np.arccos(c)
    relu = np.outer(d, d) * (np.sin(th) + (np.pi - th) * c) / (2 * np.pi)
    nngp = w2 * relu + b2
    ntk = w2 * k1 * (np.pi - th) / (2 * np.pi) + nngp
    assert rel(out["nngp"], nngp) < 1e-13
    assert rel(out["ntk"], ntk) < 1e-13


@pytest.mark.parametrize("arch", [
    conv_net(2, "global_avg_pool", b=0.1),
    {"layers": [{"type": "conv", "filter_shape": [2, 2], "W_std": 1.5, "b_std": 0.1},
                {"type": "relu"},
                {"type": "conv", "filter_shape": [2, 2], "W_std": 1.5, "b_std": 0.1},
                {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "W_std": 1.1}]},
    {"layers": [{"type": "conv", "filter_shape": [2, 3], "strides": [2, 1], "padding": "SAME",
                 "W_std": 1.3, "b_std": 0.2}, {"type": "erf"},
                {"type": "conv", "filter_shape": [3, 2], "padding": "CIRCULAR", "W_std": 1.1},
                {"type": "relu"}, {"type": "avg_pool", "window_shape": [2, 2], "strides": [1, 2],
                                   "padding": "SAME"},
                {"type": "dense", "W_std": 1.5, "b_std": 0.1},
                {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "W_std": 1.2}]},
    {"layers": [{"type": "conv", "filter_shape": [3, 3], "padding": "CIRCULAR", "W_std": 1.4},
                {"type": "relu"}, {"type": "avg_pool", "window_shape": [2, 2],
                                   "strides": [2, 2]},
                {"type": "dense", "W_std": 1.2, "b_std": 0.5}, {"type": "relu"},
                {"type": "global_avg_pool"}, {"type": "dense", "W_std": 1.2}]},
], ids=["gap", "flatten-valid", "strided-circular-pool", "pool-then-gap"])
def test_matches_independent_reference(rng, arch):
    x1 = rng.standard_normal((3, 5, 4, 2))
    x2 = rng.standard_normal((2, 5, 4, 2))
    nngp_ref, ntk_ref = gram(arch["layers"], x1, x2)
    out = nc.kernel(arch, x1, x2)
    assert rel(out["nngp"], nngp_ref) < 1e-12
    assert rel(out["ntk"], ntk_ref) < 1e-12
    sym = nc.kernel(arch, x1)
    nngp_ref, ntk_ref = gram(arch["layers"], x1)
    assert rel(sym["ntk"], ntk_ref) < 1e-12  # includes the diagonal: no 1e-8 angle noise
    assert rel(sym["nngp"], nngp_ref) < 1e-12


def test_conv_1x1_on_1x1_images_equals_dense(rng):
    x = rng.standard_normal((6, 4))
    conv = {"layers": [{"type": "conv", "filter_shape": [1, 1], "W_std": 1.3, "b_std": 0.2},
                       {"type": "relu"},
                       {"type": "conv", "filter_shape": [1, 1], "W_std": 1.3, "b_std": 0.2},
                       {"type": "erf"}, {"type": "flatten"},
                       {"type": "dense", "W_std": 1.3, "b_std": 0.2}]}
    dense = fc_net(0)
    dense["layers"] = [{"type": "dense", "W_std": 1.3, "b_std": 0.2}, {"type": "relu"},
                       {"type": "dense", "W_std": 1.3, "b_std": 0.2}, {"type": "erf"},
                       {"type": "dense", "W_std": 1.3, "b_std": 0.2}]
    a = nc.kernel(conv, x[:, None, None, :])
    b = nc.kernel(dense, x)
    for k in ("nngp", "ntk"):
        assert rel(a[k], b[k]) < 1e-14


def test_gap_over_constant_images_equals_fc(rng):
    """A constant image is the same vector at every position; SAME zero padding is what breaks
    translation invariance, so use CIRCULAR padding: every position then sees the same kernel."""
    v = rng.standard_normal((5, 3))
    imgs = np.broadcast_to(v[:, None, None, :], (5, 4, 4, 3)).copy()
    cnn = conv_net(3, "global_avg_pool", w=1.4, b=0.3, padding="CIRCULAR")
    fc = fc_net(3, w=1.4, b=0.3)
    fc["layers"][-1]["W_std"] = 1.4
    a = nc.kernel(cnn, imgs)
    b = nc.kernel(fc, v)
    for k in ("nngp", "ntk"):
        assert rel(a[k], b[k]) < 1e-13


def test_diagonal_and_full_paths_agree(rng):
    """A flatten readout runs on the spatial diagonal; a 1x1 avg_pool in front forces the full
    (P x P) path without changing the kernel."""
    x = rng.standard_normal((4, 6, 5, 2))
    diag = conv_net(3, "flatten", b=0.2)
    full = conv_net(3, "flatten", b=0.2)
    full["layers"].insert(-2, {"type": "avg_pool", "window_shape": [1, 1]})
    plan_d = nc.plan.make_plan(nc.parse_arch(diag), x.shape)
    plan_f = nc.plan.make_plan(nc.parse_arch(full), x.shape)
    assert not any(lp.in_full for lp in plan_d.layers)
    assert plan_f.layers[0].in_full
    a, b = nc.kernel(diag, x), nc.kernel(full, x)
    for k in ("nngp", "ntk"):
        assert rel(a[k], b[k]) < 1e-13


def arora_cntk(x, depth, gap):
    """Arora et al. 2019, Sec. 4 / Appendix, as in the authors' CNTK.py: c_sigma = 2, q = 3,
    raw channel sums, SAME zero padding, CNTK-V sums the diagonal, CNTK-GAP averages all."""
    n, P, Q, _ = x.shape
    q = 3

    def tr_D(M):  # M[(i,j),(i',j')] as (P,Q,P,Q): sum of the same shift of both positions
        out = np.zeros_like(M)
        Mp = np.pad(M, ((1, 1), (1, 1), (1, 1), (1, 1)))
        for a in range(q):
            for b in range(q):
                out += Mp[a:a + P, b:b + Q, a:a + P, b:b + Q]
        return out

    def relu_k(S, d1, d2):
        norm = np.sqrt(np.einsum("ij,kl->ijkl", d1, d2))
        rho = np.clip(np.divide(S, norm, out=np.zeros_like(S), where=norm > 0), -1, 1)
        th = np.arccos(rho)
        K = norm * (rho * (np.pi - th) + np.sqrt(1 - rho**2)) / (2 * np.pi) * 2 / q**2
        Kd = (np.pi - th) / (2 * np.pi) * 2 / q**2
        return K, Kd

    def sigma0(a, b):
        return tr_D(np.einsum("ijc,klc->ijkl", a, b))

    diag = [np.einsum("ijij->ij", sigma0(x[i], x[i])) for i in range(n)]
    selfs = []
    for i in range(n):  # per-image diagonals at every layer
        S = sigma0(x[i], x[i])
        ds = [np.einsum("ijij->ij", S)]
        for _ in range(depth - 1):
            K, _ = relu_k(S, ds[-1], ds[-1])
            S = tr_D(K)
            ds.append(np.einsum("ijij->ij", S))
        selfs.append(ds)
    del diag
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            S = sigma0(x[i], x[j])
            T = S.copy()
            for h in range(1, depth):
                K, Kd = relu_k(S, selfs[i][h - 1], selfs[j][h - 1])
                S = tr_D(K)
                T = tr_D(Kd * T + K)
            K, Kd = relu_k(S, selfs[i][depth - 1], selfs[j][depth - 1])
            F = Kd * T + K
            out[i, j] = F.mean() if gap else np.einsum("ijij->", F)
    return out


@pytest.mark.parametrize("gap", [False, True])
def test_arora_cntk_recursion(rng, gap):
    x = rng.standard_normal((4, 5, 6, 3))
    depth = 3
    ref = arora_cntk(x, depth, gap)
    ours = nc.kernel(conv_net(depth, "global_avg_pool" if gap else "flatten", b=None), x)["ntk"]
    _, P, Q, C = x.shape
    const = C / 2 if gap else C * P * Q / 2  # ours: <x,x'>/C, window means, flatten mean
    assert rel(ref, const * ours) < 1e-12


def test_symmetric_psd_and_x2_none_equals_explicit(rng):
    x = rng.standard_normal((9, 6, 6, 1))
    arch = conv_net(3, b=0.1)
    a = nc.kernel(arch, x)
    b = nc.kernel(arch, x, x.copy())
    for k in ("nngp", "ntk"):
        assert np.array_equal(a[k], a[k].T)
        assert np.linalg.eigvalsh(a[k]).min() > -1e-12 * np.abs(a[k]).max()
        assert rel(a[k], b[k]) < 1e-13


def test_blocking_and_threads_do_not_change_the_result(rng):
    x1 = rng.standard_normal((13, 5, 5, 2))
    x2 = rng.standard_normal((7, 5, 5, 2))
    arch = conv_net(2, b=0.1)
    plan = nc.plan.make_plan(nc.parse_arch(arch), x1.shape)
    one_pair = nc.infinite.bytes_per_pair(plan, 8)
    ref = nc.kernel(arch, x1, x2, threads=1)
    calls = []
    tiny = nc.kernel(arch, x1, x2, memory=3 * one_pair, threads=1,
                     progress=lambda d, t: calls.append((d, t)))
    threaded = nc.kernel(arch, x1, x2, memory=5 * one_pair, threads=3)
    assert calls[-1][0] == calls[-1][1] > 20  # really split into many blocks
    for k in ("nngp", "ntk"):
        assert rel(tiny[k], ref[k]) < 1e-14
        assert rel(threaded[k], ref[k]) < 1e-14
    sym_tiny = nc.kernel(arch, x1, memory=2 * one_pair, threads=2)
    sym = nc.kernel(arch, x1, threads=1)
    assert rel(sym_tiny["ntk"], sym["ntk"]) < 1e-14
    assert np.array_equal(sym_tiny["ntk"], sym_tiny["ntk"].T)


def test_threaded_self_pass_equals_the_serial_one_exactly(rng):
    """The self pass split over threads (chunks of 4 inputs on 3 threads) gives the same bits
    as one chunk: each input's statistics are computed on their own."""
    x = rng.standard_normal((11, 8, 8, 2))
    for arch in (conv_net(2, b=0.1), A.cntk(2), A.cntk(2, "flatten")):
        plan = nc.plan.make_plan(nc.parse_arch(arch), x.shape)
        one = nc.infinite.self_pass(plan, x)
        split = nc.infinite.self_pass(plan, x, threads=3)
        assert len(one.variances) == len(split.variances) > 0
        for a, b in zip((*one.variances, one.nngp, one.ntk),
                        (*split.variances, split.nngp, split.ntk), strict=True):
            assert np.array_equal(a, b)


def test_block_threads_run_with_one_blas_thread_each(rng):
    """With blocks on a thread pool, BLAS is held to one thread for the call (its own pool
    would contend with ours) and given back its threads afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    x = rng.standard_normal((9, 5))
    seen: list[set[int]] = []
    with threadpool_limits(2, user_api="blas"):
        nc.kernel(fc_net(2), x, memory=2 * 2**10, threads=2,
                  progress=lambda d, t: seen.append(blas_threads()))
        after = blas_threads()
    assert len(seen) > 3 and all(s == {1} for s in seen), seen
    assert after == {2}


def test_float32_matches_float64(rng):
    x = rng.standard_normal((6, 6, 6, 2))
    arch = conv_net(3, b=0.1)
    a = nc.kernel(arch, x, dtype="float32")
    b = nc.kernel(arch, x, dtype="float64")
    assert a["ntk"].dtype == np.float32 and b["ntk"].dtype == np.float64
    for k in ("nngp", "ntk"):
        assert rel(a[k].astype(np.float64), b[k]) < 1e-5
    # float32 inputs default to a float32 computation
    assert nc.kernel(arch, x.astype(np.float32))["ntk"].dtype == np.float32


def test_get_returns_only_what_is_asked(rng):
    x = rng.standard_normal((4, 3))
    out = nc.kernel(fc_net(2), x, get="nngp")
    assert set(out) == {"nngp"}
    both = nc.kernel(fc_net(2), x)
    assert np.array_equal(out["nngp"], both["nngp"])


def test_standard_parameterization_uses_finite_widths(rng):
    x = rng.standard_normal((5, 4))
    arch = {"parameterization": "standard",
            "layers": [{"type": "dense", "W_std": 1.5, "b_std": 0.1, "out_dim": 50},
                       {"type": "relu"}, {"type": "dense", "W_std": 1.5, "b_std": 0.1}]}
    out = nc.kernel(arch, x)
    ntk_param = nc.kernel({**arch, "parameterization": "ntk"}, x)
    assert rel(out["nngp"], ntk_param["nngp"]) < 1e-14  # NNGP is parameterization-free
    # stax: Θ1 = d K0 + 1; Θ2 = 50 K1_relu + W² Θ1 Kdot + 1
    k0 = x @ x.T / 4
    k1 = 1.5**2 * k0 + 0.01
    d = np.sqrt(np.diag(k1))
    c = np.clip(k1 / np.outer(d, d), -1, 1)
    np.fill_diagonal(c, 1)
    th = np.arccos(c)
    relu = np.outer(d, d) * (np.sin(th) + (np.pi - th) * c) / (2 * np.pi)
    t1 = 4 * k0 + 1
    t2 = 50 * relu + 1.5**2 * t1 * (np.pi - th) / (2 * np.pi) + 1
    assert rel(out["ntk"], t2) < 1e-13


def test_deep_nets_stay_finite_and_psd(rng):
    x = rng.standard_normal((8, 10))
    x[3] = x[2]  # duplicate row
    x[4] = 0.0  # zero input and no bias: zero variances everywhere
    out = nc.kernel(fc_net(60, w=math.sqrt(2), b=None), x)
    for k in ("nngp", "ntk"):
        assert np.isfinite(out[k]).all()
        assert np.linalg.eigvalsh(out[k]).min() > -1e-10 * np.abs(out[k]).max()
    assert out["ntk"][2, 3] == out["ntk"][2, 2] == out["ntk"][3, 3]

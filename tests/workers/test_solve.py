"""Distributed CG over stored kernels, with real worker processes and Zarr on disk."""

import dask
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

import ntkcompute as nc
import workers
from ntkcompute import architectures as A
from ntkcompute.datasets import digits
from ntkcompute.regression import one_hot, solve_direct
from workers.solve import check_finite_result


@pytest.fixture(scope="module")
def digits_jobs(client, tmp_path_factory):
    root = tmp_path_factory.mktemp("solve")
    x, y = digits()
    tr, te = slice(0, 400), slice(400, 600)
    arch = A.cntk(2, "flatten")
    train = workers.compute_gram(arch, x[tr], store=str(root / "train"), client=client).wait()
    cross = workers.compute_gram(arch, x[te], x[tr], store=str(root / "cross"),
                                 client=client).wait()
    return train.url, cross.url, y[tr], y[te]


def test_distributed_cg_equals_cholesky_and_predicts(client, digits_jobs):
    train, cross, ytr, yte = digits_jobs
    K = zarr.open_group(train, mode="r")["ntk"][...]
    lam = 1e-3 * np.mean(np.diag(K))
    ref = solve_direct(K, one_hot(ytr, 10), lam)
    res = workers.solve(train, ytr, lam, solver="cg", tol=1e-11, client=client, cross=cross,
                        test_labels=yte, preconditioner="nystrom", rank=50)
    assert res.converged
    assert np.abs(res.coefficients - ref).max() / np.abs(ref).max() < 1e-8
    kc = zarr.open_group(cross, mode="r")["ntk"][...]
    acc = float(np.mean((kc @ ref).argmax(1) == yte))
    assert res.metrics["accuracy"] == acc > 0.8  # chance is 0.1
    saved = zarr.open_group(train, mode="r")["solves/default"]
    assert np.array_equal(saved["coefficients"][...], res.coefficients)
    assert saved.attrs["ntkcompute"]["iterations"] == res.iterations
    plain = workers.solve(train, ytr, lam, solver="cg", tol=1e-11, client=client,
                          preconditioner=None, save=None)
    assert plain.iterations > res.iterations


def test_direct_sweep_and_bad_input(client, digits_jobs):
    train, cross, ytr, yte = digits_jobs
    res = workers.solve(train, ytr, [1e-4, 1e-2, 1.0], solver="direct", cross=cross,
                        test_labels=yte, save="sweep")
    assert res.coefficients.shape == (3, 400, 10) and len(res.metrics["per_lambda"]) == 3
    with pytest.raises(nc.InputError) as e:
        workers.solve(train, ytr[:10], 1e-3, solver="direct")
    assert e.value.field == "labels"
    with pytest.raises(nc.InputError) as e:
        workers.solve(train, ytr, -1.0, solver="direct")
    assert e.value.field == "lambda"
    with pytest.raises(nc.InputError) as e:
        workers.solve(train, ytr, 1e-3, solver="lu")
    assert e.value.field == "solver"


def test_label_scale_is_exact_or_refused(client, digits_jobs):
    """Targets of 1e30 solve exactly (linear in y); past LABEL_BOUND they are refused, and a
    non-finite result is an error, never a "succeeded" solve of NaNs."""
    train, cross, ytr, _ = digits_jobs
    y = one_hot(ytr, 10)
    base = workers.solve(train, y, 1e-3, solver="direct", cross=cross, save=None)
    big = workers.solve(train, y * 1e30, 1e-3, solver="direct", cross=cross, save=None)
    np.testing.assert_allclose(big.predictions, base.predictions * 1e30, rtol=1e-9)
    cg = workers.solve(train, y, 1e-3, cross=cross, save=None, client=client)
    cg_big = workers.solve(train, y * 1e30, 1e-3, cross=cross, save=None, client=client)
    assert cg_big.converged and cg_big.iterations == cg.iterations  # CG is scale-free
    ref = cg.predictions * 1e30
    np.testing.assert_allclose(cg_big.predictions, ref, rtol=0, atol=1e-9 * np.abs(ref).max())
    with pytest.raises(nc.InputError, match="within") as e:
        workers.solve(train, y * 1e308, 1e-3, solver="direct", save=None)
    assert e.value.field == "labels"
    bad = workers.SolveResult(np.full((4, 1), np.nan), [1e-3], "direct")
    with pytest.raises(FloatingPointError, match="non-finite"):
        check_finite_result(bad)


def test_out_of_core_when_worker_memory_is_below_the_kernel(tmp_path):
    """Workers whose memory limit is below their share of the kernel (its upper triangle's
    tiles, 44 MB of the 72 MB) stream their tiles from Zarr on every product instead of
    holding them, and the solve still matches Cholesky."""
    x = np.random.default_rng(5).standard_normal((3000, 16))
    y = np.random.default_rng(6).integers(0, 3, 3000)
    with dask.config.set({"distributed.worker.memory.target": False,
                          "distributed.worker.memory.spill": False,
                          "distributed.worker.memory.pause": False,
                          "distributed.worker.memory.terminate": False}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               memory_limit="30MB", dashboard_address=None)
        c = Client(cluster)
        try:
            job = workers.compute_gram(A.fc(2), x, store=str(tmp_path / "k"), client=c,
                                       tile=512, get="ntk").wait()
            kbytes = 3000 * 3000 * 8
            limits = [w["memory_limit"] for w in c.scheduler_info()["workers"].values()]
            assert all(lim < kbytes / 2 for lim in limits)  # 72 MB kernel, 30 MB workers
            op = workers.DistributedKernel(c, job.url)
            assert not any(i["cached"] for i in op.info())
            K = job.to_numpy()["ntk"]
            lam = 1e-2 * np.mean(np.diag(K))
            res = workers.solve(job.url, y, lam, solver="cg", tol=1e-10, client=c,
                                preconditioner="jacobi", save=None)
        finally:
            c.close()
            cluster.close()
    ref = solve_direct(K, one_hot(y, 3), lam)
    assert res.converged
    assert np.abs(res.coefficients - ref).max() / np.abs(ref).max() < 1e-8


def test_cli_gram_then_solve(tmp_path):
    import json
    import subprocess
    import sys

    x, y = digits()
    np.save(tmp_path / "xtr.npy", x[:150])
    np.save(tmp_path / "xte.npy", x[150:250])
    np.save(tmp_path / "ytr.npy", y[:150])
    np.save(tmp_path / "yte.npy", y[150:250])
    (tmp_path / "arch.json").write_text(json.dumps(A.cntk(2, "flatten")))
    run = [sys.executable, "-m", "ntkcli"]
    for extra, out in (([], "train"), (["--x2", str(tmp_path / "xtr.npy")], "cross")):
        x1 = tmp_path / ("xtr.npy" if out == "train" else "xte.npy")
        p = subprocess.run([*run, "gram", "--arch", str(tmp_path / "arch.json"), "--x1",
                            str(x1), *extra, "--out", str(tmp_path / out), "--quiet"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    p = subprocess.run([*run, "solve", "--kernel", str(tmp_path / "train"), "--labels",
                        str(tmp_path / "ytr.npy"), "--lambda", "1e-3", "--solver", "direct",
                        "--cross", str(tmp_path / "cross"), "--test-labels",
                        str(tmp_path / "yte.npy"), "--times", "0,1e9", "--bound",
                        "--spectrum", "3"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(report["analyses"]["eigenvalues"]) == 3 and report["analyses"]["bound"] > 0
    assert report["analyses"]["gd"][0]["accuracy"] <= report["analyses"]["gd"][1]["accuracy"]
    kc = nc.kernel(A.cntk(2, "flatten"), x[150:250], x[:150])["ntk"]
    kt = nc.kernel(A.cntk(2, "flatten"), x[:150])["ntk"]
    acc = float(np.mean((kc @ solve_direct(kt, one_hot(y[:150], 10), 1e-3)).argmax(1)
                        == y[150:250]))
    assert report["metrics"]["accuracy"] == acc
    bad = subprocess.run([*run, "solve", "--kernel", str(tmp_path / "train"), "--labels",
                          str(tmp_path / "yte.npy"), "--lambda", "1e-3"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "labels" in bad.stderr and "Traceback" not in bad.stderr


def test_analyses_direct_and_distributed(client, digits_jobs):
    train, cross, ytr, yte = digits_jobs
    K = zarr.open_group(train, mode="r")["ntk"][...]
    kc = zarr.open_group(cross, mode="r")["ntk"][...]
    Y = one_hot(ytr, 10)
    lam = 1e-3 * np.mean(np.diag(K))
    d = workers.solve(train, ytr, lam, solver="direct", cross=cross, test_labels=yte,
                      times=[0.0, 1.0, 1e8], bound=True, spectrum_k=5, save=None)
    s = np.sort(np.linalg.eigvalsh(K))[::-1][:5]
    np.testing.assert_allclose(d.analyses["eigenvalues"], s, rtol=1e-10)
    assert abs(d.analyses["bound"] - np.sqrt(2 * np.sum(Y * np.linalg.solve(K, Y)) / 400)) \
        < 1e-6 * d.analyses["bound"]
    gd = d.analyses["gd"]
    assert gd[0]["mse"] == np.mean(one_hot(yte, 10) ** 2)  # f_0 = 0
    ridgeless = float(np.mean((kc @ np.linalg.solve(K, Y)).argmax(1) == yte))
    assert gd[-1]["accuracy"] == ridgeless  # t -> infinity: kernel regression
    curves = np.array(d.analyses["learning_curves"])
    assert curves.shape == (3, 5) and np.all(curves[1] <= curves[0])
    c = workers.solve(train, ytr, lam, solver="cg", tol=1e-10, client=client, bound=True,
                      spectrum_k=5, save=None)
    np.testing.assert_allclose(c.analyses["eigenvalues"], s, rtol=1e-8)
    at_lam = np.sqrt(2 * np.sum(Y * solve_direct(K, Y, lam)) / 400)
    assert abs(c.analyses["bound"] - at_lam) < 1e-8 * at_lam


def test_distributed_randomized_block_cg_equals_in_process(client, digits_jobs):
    """Randomized Nyström over the workers (one block product per sketch), block CG over
    two λ, and mixed precision: the same solution and iterations as in process."""
    from ntkcompute.cg import cg, randomized_nystrom

    train, _, ytr, _ = digits_jobs
    K = zarr.open_group(train, mode="r")["ntk"][...]
    Y = one_hot(ytr, 10)
    md = float(np.mean(np.diag(K)))
    rel = [1e-3, 1e-2]
    res = workers.solve(train, ytr, rel, relative=True, solver="cg", tol=1e-11,
                        client=client, preconditioner="randomized", rank=25, save=None)
    assert res.converged and res.coefficients.shape == (2, 400, 10)
    info = res.analyses["preconditioner"]
    ranks = [r for r, _ in info["history"]]
    assert ranks[0] == 25 and info["rank"] == ranks[-1]
    lam_col = np.repeat([v * md for v in rel], 10)
    pre = randomized_nystrom(lambda V: K @ V, 400, lam_col, rank=25, max_rank=info["rank"])
    local = cg(lambda V: K @ V, Y, [v * md for v in rel], tol=1e-11, precond=pre)
    assert [r for r, _ in pre.history] == ranks
    assert abs(local.iterations - res.iterations) <= 1, (local.iterations, res.iterations)
    for i, v in enumerate(rel):
        ref = solve_direct(K, Y, v * md)
        assert np.abs(res.coefficients[i] - ref).max() / np.abs(ref).max() < 1e-8
        assert np.abs(res.coefficients[i] - local.x[i]).max() / np.abs(ref).max() < 1e-8
    mixed = workers.solve(train, ytr, 1e-2, relative=True, solver="cg", tol=1e-10,
                          client=client, preconditioner="randomized", rank=25,
                          precision="mixed", save=None)
    ref = solve_direct(K, Y, 1e-2 * md)
    assert mixed.converged
    assert np.abs(mixed.coefficients - ref).max() / np.abs(ref).max() < 1e-8
    with pytest.raises(nc.InputError) as e:
        workers.solve(train, ytr, 1e-3, client=client, precision="half", save=None)
    assert e.value.field == "precision"


def _fc_stores(client, root, n, m):
    """A train Gram (n x n), a right cross kernel (test x train, m x n) and a wrong one
    (train x test, n x m) of an FC-2 net on random rows."""
    rng = np.random.default_rng(3)
    xtr, xte = rng.standard_normal((n, 6)), rng.standard_normal((m, 6))
    arch = A.fc(2)
    urls = {}
    for name, x1, x2 in (("train", xtr, None), ("cross", xte, xtr), ("wrong", xtr, xte)):
        urls[name] = workers.compute_gram(arch, x1, x2, store=str(root / name),
                                          client=client).wait().url
    return urls, rng.integers(0, 3, n), rng.integers(0, 3, m)


@pytest.mark.parametrize("m", [30, 40])  # 40: square, told apart by the input checksums
def test_a_train_x_test_cross_kernel_is_refused_before_the_solve(client, tmp_path, m):
    urls, ytr, yte = _fc_stores(client, tmp_path, 40, m)
    for solver in ("direct", "cg"):
        with pytest.raises(nc.InputError) as e:
            # a scheduler nobody listens on: the refusal must come before joining a cluster
            workers.solve(urls["train"], ytr, 1e-3, solver=solver, cross=urls["wrong"],
                          test_labels=yte, scheduler="tcp://127.0.0.1:9")
        assert e.value.field == "cross" and "--x1 test --x2 train" in str(e.value)
        assert "\n" not in str(e.value)
    assert "solves" not in zarr.open_group(urls["train"], mode="r")  # nothing was saved
    with pytest.raises(nc.InputError) as e:
        workers.solve(urls["train"], ytr, 1e-3, solver="direct", cross=urls["cross"],
                      test_labels=yte[:-1])
    assert e.value.field == "test_labels"
    with pytest.raises(nc.InputError) as e:
        workers.solve(urls["train"], ytr, 1e-3, solver="direct", cross=str(tmp_path / "none"))
    assert e.value.field == "cross"
    res = workers.solve(urls["train"], ytr, 1e-3, solver="direct", cross=urls["cross"],
                        test_labels=yte)
    assert res.predictions.shape == (m, 3) and 0 <= res.metrics["accuracy"] <= 1


def test_predictive_variances_on_stored_kernels_equal_in_process(client, tmp_path):
    """``variance=True``: the NTK ensemble's (and the NNGP posterior's) variance of every
    test output from the stored kernels, per λ and per gradient-flow time, equal
    :class:`ntkcompute.predict.Ensemble` on the in-process kernels; saved beside the
    solve. Real targets are scored by their 2-sd coverage."""
    from ntkcompute.predict import Ensemble

    rng = np.random.default_rng(5)
    xtr, xte = rng.standard_normal((40, 5)), rng.standard_normal((12, 5))
    f = np.sin(np.concatenate([xtr, xte]) @ rng.standard_normal(5))
    ytr, yte = f[:40], f[40:]
    arch = A.fc(2)
    train = workers.compute_gram(arch, xtr, store=str(tmp_path / "train"),
                                 client=client).wait().url
    cross = workers.compute_gram(arch, xte, xtr, store=str(tmp_path / "cross"),
                                 client=client).wait().url
    kdd, ktd = nc.kernel(arch, xtr), nc.kernel(arch, xte, xtr)
    ktt = np.diagonal(nc.kernel(arch, xte, get="nngp")["nngp"])
    lams, times = [1e-4, 1e-2], [0.5, 5.0]
    for name in ("ntk", "nngp"):
        r = workers.solve(train, ytr, lams, solver="direct", name=name, cross=cross,
                          test_labels=yte, times=times, variance=True, save="var")
        ntk = kdd["ntk"] if name == "ntk" else None
        for k, lam in enumerate(lams):
            want = Ensemble(kdd["nngp"], ntk, ytr, diag_reg=lam, diag_reg_absolute_scale=True
                            ).predict(None, ktd, ktt, get=name, compute_cov=True)[name]
            np.testing.assert_allclose(r.variances[k], want.covariance, rtol=1e-9,
                                       atol=1e-12)
            np.testing.assert_allclose(r.predictions[k], want.mean, rtol=1e-9, atol=1e-12)
            per = r.metrics["per_lambda"][k]
            sd = np.sqrt(want.covariance)
            assert per["coverage_2sd"] == np.mean(np.abs(yte - want.mean[:, 0]) <= 2 * sd)
        flow = Ensemble(kdd["nngp"], ntk, ytr).predict(times, ktd, ktt, get=name,
                                                       compute_cov=True)[name]
        got = [e["variance"] for e in r.analyses["gd"]]
        np.testing.assert_allclose(got, flow.covariance.mean(axis=1), rtol=1e-9)
        assert np.all(r.variances > 0) and got[0] > got[1]  # training shrinks the spread
        saved = zarr.open_group(train, mode="r")["solves/var/variances"][...]
        np.testing.assert_array_equal(saved, r.variances)
    with pytest.raises(nc.InputError) as e:
        workers.solve(train, ytr, 1e-3, solver="cg", cross=cross, variance=True,
                      client=client, save=None)
    assert e.value.field == "variance"
    with pytest.raises(nc.InputError) as e:
        workers.solve(train, ytr, 1e-3, solver="direct", variance=True, save=None)
    assert e.value.field == "variance"

"""Tiled Gram jobs on a real Dask cluster with real Zarr on disk."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import ntkcompute as nc
import workers
from ntkcompute import architectures as A
from ntkcompute.datasets import digits
from ntkcompute.infinite import bytes_per_pair
from ntkcompute.plan import make_plan


def block_memory(arch, shape, b):
    """The memory budget whose block grid has side b (to compare with kernel() exactly)."""
    return bytes_per_pair(make_plan(nc.parse_arch(arch), shape), 8) * b * b


@pytest.mark.parametrize("arch,shape,tile,b", [
    (A.fc(3, b_std=0.1), (300, 20), 128, 64),
    (A.cntk(2, b_std=0.1), (45, 6, 6, 2), 12, 4),
    ({"layers": [  # residual blocks, layer norm and attention: self statistics of both kinds
        *A.resnet(1, "global_avg_pool")["layers"][:2],
        {"type": "layer_norm", "axis": [1, 2, 3]},
        {"type": "global_self_attention", "n_heads": 2, "b_std": 0.1},
        {"type": "relu"}, {"type": "global_sum_pool"}, {"type": "dense"}]},
     (30, 4, 4, 2), 8, 4),
], ids=["fc", "cntk", "resnet-attention"])
def test_tiled_equals_in_process_exactly(client, tmp_path, arch, shape, tile, b):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    mem = block_memory(arch, shape, b)
    job = workers.compute_gram(arch, x, store=str(tmp_path / "sym"), tile=tile, client=client,
                               memory=mem).wait()
    ref = nc.kernel(arch, x, memory=mem, threads=1)
    out = job.to_numpy()
    for k in ("ntk", "nngp"):
        assert np.array_equal(out[k], ref[k])
    g = zarr.open_group(str(tmp_path / "sym"), mode="r")  # plain zarr reads it
    assert g["ntk"].chunks == (tile, tile)
    meta = g.attrs["ntkcompute"]
    assert meta["status"] == "succeeded" and meta["spec"]["layers"][0]["type"] in ("dense",
                                                                                "conv")
    t = -(-shape[0] // tile)
    assert job.tiles_total == t * (t + 1) // 2 == job.tiles_computed
    # cross kernel: all tiles
    s = shape[0] // 3
    cross = workers.compute_gram(arch, x[:s], x[s:], store=str(tmp_path / "cross"),
                                 tile=tile, client=client, memory=mem).wait()
    ref = nc.kernel(arch, x[:s], x[s:], memory=mem, threads=1)
    assert np.array_equal(cross.to_numpy()["ntk"], ref["ntk"])
    assert cross.tiles_total == -(-s // tile) * -(-(shape[0] - s) // tile)


def test_graph_job_tiles_equal_in_process_exactly(client, tmp_path):
    """Aggregate's graphs ride in the inputs' channels, so tiles carry their rows' graphs."""
    rng = np.random.default_rng(3)
    x = nc.pack_pattern(rng.standard_normal((26, 6, 2)), rng.random((26, 6, 6)) < 0.4)
    arch = {"layers": [{"type": "conv", "filter_shape": [1], "b_std": 0.1}, {"type": "relu"},
                       {"type": "aggregate"}, {"type": "global_sum_pool"},
                       {"type": "dense"}], "pattern_channels": 6}
    mem = block_memory(arch, x.shape, 4)
    job = workers.compute_gram(arch, x, store=str(tmp_path / "g"), tile=8, client=client,
                               memory=mem).wait()
    ref = nc.kernel(arch, x, memory=mem, threads=1)
    for k in ("ntk", "nngp"):
        assert np.array_equal(job.to_numpy()[k], ref[k])
    assert zarr.open_group(str(tmp_path / "g"), mode="r").attrs["ntkcompute"]["spec"][
        "pattern_channels"] == 6


def test_resume_computes_only_missing_tiles_and_dask_array_reads(client, tmp_path):
    x = np.random.default_rng(1).standard_normal((90, 5, 5, 1))
    arch = A.cntk(2)
    url = str(tmp_path / "job")
    first = workers.compute_gram(arch, x, store=url, tile=30, client=client).wait()
    g = zarr.open_group(url, mode="r+")
    g["done"][0, 2] = 0  # as if the driver had stopped before tiles (0, 2) and (2, 2)
    g["done"][2, 2] = 0
    g["ntk"][0:30, 60:90] = 0.0
    again = workers.compute_gram(arch, x, store=url, tile=30, client=client).wait()
    assert again.tiles_reused == first.tiles_total - 2 and again.tiles_computed == 2
    import dask.array as da

    k = da.from_zarr(zarr.open_group(url, mode="r")["ntk"]).compute()
    assert np.array_equal(k, first.to_numpy()["ntk"])
    assert np.array_equal(k, nc.kernel(arch, x)["ntk"])


def test_nan_tile_fails_job_and_finished_tiles_are_reused(client, tmp_path):
    x = np.random.default_rng(2).standard_normal((60, 4))
    bad = x.copy()
    bad[45, 1] = np.nan  # row chunk 2 of 3
    url = str(tmp_path / "job")
    job = workers.compute_gram(A.fc(2), bad, store=url, tile=20, client=client)
    with pytest.raises(workers.GramJobError) as e:
        job.wait()
    assert "NaN" in str(e.value) and "x1" in str(e.value) and "rows 40:60" in str(e.value)
    # each failed task is kept with the worker it ran on, as the scheduler saw it
    assert job.failures and all("NaN" in f["error"] for f in job.failures)
    workers_now = set(client.scheduler_info()["workers"])
    assert {f["worker"] for f in job.failures} <= workers_now
    assert all(f["worker"] and f["tile"].startswith("tile") for f in job.failures)
    g = zarr.open_group(url, mode="r")
    assert g.attrs["ntkcompute"]["status"] == "failed"
    done = g["done"][...]
    assert done[0, 0] and done[0, 1] and done[1, 1]  # tiles not touching rows 40:60
    assert not done[:, 2].any() and not done[2, :].any()
    fixed = workers.compute_gram(A.fc(2), x, store=url, tile=20, client=client).wait()
    assert fixed.tiles_reused == 3 and fixed.tiles_computed == 3
    ref = nc.kernel(A.fc(2), x, memory=block_memory(A.fc(2), x.shape, 20), threads=1)
    np.testing.assert_allclose(fixed.to_numpy()["ntk"], ref["ntk"], rtol=1e-15, atol=0)


def test_concurrent_jobs_on_one_store(client, tmp_path):
    rng = np.random.default_rng(3)
    xa, xb = rng.standard_normal((40, 5, 5, 1)), rng.standard_normal((50, 6))
    root = tmp_path / "store"
    ja = workers.compute_gram(A.cntk(2), xa, store=str(root / "a"), tile=10, client=client)
    jb = workers.compute_gram(A.fc(3), xb, store=str(root / "b"), tile=16, client=client)
    jc = workers.compute_gram(A.cntk(2), xa, store=str(root / "c"), tile=10, client=client)
    jd = workers.compute_gram(A.cntk(2), xa, store=str(root / "c"), tile=10, client=client)
    for j in (ja, jb, jc, jd):
        j.wait()
    ref = nc.kernel(A.cntk(2), xa)["ntk"]
    assert np.array_equal(ja.to_numpy()["ntk"], ref)
    assert np.array_equal(jc.to_numpy()["ntk"], ref)  # the same job twice at once: idempotent
    np.testing.assert_allclose(jb.to_numpy()["ntk"], nc.kernel(A.fc(3), xb)["ntk"],
                               rtol=1e-14)
    with pytest.raises(nc.InputError) as e:  # a different job into an occupied group
        workers.compute_gram(A.fc(3), xb, store=str(root / "a"), client=client)
    assert e.value.field == "store"


def test_kill_a_worker_mid_job(client, tmp_path):
    x = digits()[0][:160]
    arch = A.cntk(3)
    url = str(tmp_path / "job")
    job = workers.compute_gram(arch, x, store=url, tile=16, client=client)
    while job.progress()["done"] < 3:
        time.sleep(0.05)
    victim = next(iter(client.run(os.getpid).values()))
    os.kill(victim, signal.SIGKILL)
    assert job.progress()["done"] < job.tiles_total  # killed mid-job
    job.wait(timeout=300)
    assert job.progress()["done"] == job.tiles_total
    assert victim not in client.run(os.getpid).values()  # the nanny started a new process
    ref = nc.kernel(arch, x)
    out = job.to_numpy()
    assert np.array_equal(out["ntk"], ref["ntk"]) and np.array_equal(out["nngp"], ref["nngp"])


def test_interrupted_driver_resumes(tmp_path):
    x = digits()[0][:120]
    np.save(tmp_path / "x.npy", x)
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(json.dumps(A.cntk(3)))
    url = str(tmp_path / "job")
    cmd = [sys.executable, "-m", "ntkcli", "gram", "--arch", str(arch_path), "--x1",
           str(tmp_path / "x.npy"), "--out", url, "--tile", "8", "--quiet"]  # 120 tiles: a wide
    # window to interrupt in, even on a loaded machine
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done_before = 0
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            done_before = int(zarr.open_group(url, mode="r")["done"][...].sum())
        except (KeyError, FileNotFoundError, ValueError):
            continue
        if done_before >= 8:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"rerun the same command to resume" in err, err[-2000:]
    marks = zarr.open_group(url, mode="r")["done"][...]
    t = marks.shape[0]
    total = t * (t + 1) // 2
    done_before = int(np.triu(marks).sum())  # the driver is gone: nothing writes any more
    assert 0 < done_before < total
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["reused"] == done_before and report["computed"] == total - done_before
    k = zarr.open_group(url, mode="r")["ntk"][...]
    assert np.array_equal(k, nc.kernel(A.cntk(3), x)["ntk"])


def test_datasets_in_zarr_and_bad_input(client, tmp_path):
    x = np.random.default_rng(4).standard_normal((30, 6))
    y = np.arange(30) % 3
    workers.write_dataset(str(tmp_path / "ds"), x, y, rows=8)
    xs, ys = workers.read_dataset(str(tmp_path / "ds"))
    assert np.array_equal(xs[...], x) and np.array_equal(ys[...], y)
    job = workers.compute_gram(A.fc(2), "file://" + str(tmp_path / "ds"),
                               store=str(tmp_path / "job"), client=client).wait()
    np.testing.assert_allclose(job.to_numpy()["ntk"], nc.kernel(A.fc(2), x)["ntk"], rtol=1e-14)
    with pytest.raises(nc.InputError) as e:
        workers.compute_gram(A.cntk(1), x, store=str(tmp_path / "bad"), client=client)
    assert (e.value.layer, e.value.field) == (0, "filter_shape")
    with pytest.raises(nc.InputError) as e:
        workers.compute_gram(A.fc(1), x, x[:, :5], store=str(tmp_path / "bad2"), client=client)
    assert e.value.field == "x2"
    with pytest.raises(nc.InputError) as e:  # tile outputs past the per-task budget
        workers.plan_job(A.fc(1), np.zeros((100_000, 3)), tile=50_000)
    assert e.value.field == "tile" and "budget" in e.value.reason


def test_tiles_and_blocks_never_exceed_the_matrix(client, tmp_path):
    """A cheap architecture's memory-derived block (or a huge user tile) is clamped to n, so a
    Zarr chunk is never larger than the matrix (a fuzzed spec once asked for 8 TiB chunks)."""
    x = np.random.default_rng(5).standard_normal((24, 4, 4, 2))
    arch = {"layers": [{"type": "flatten"}, {"type": "dense"}], "parameterization": "standard"}
    assert workers.plan_job(arch, x).block == 24
    job = workers.compute_gram(arch, x, store=str(tmp_path / "j"), tile=1 << 20,
                               client=client).wait()
    assert job.arrays["ntk"].chunks == (24, 24)
    np.testing.assert_array_equal(job.to_numpy()["nngp"], nc.kernel(arch, x)["nngp"])


def test_overflowing_kernel_fails_the_job_clearly(client, tmp_path):
    x = np.random.default_rng(6).standard_normal((10, 3))
    arch = {"layers": [{"type": "dense", "W_std": 1e100}, {"type": "relu"},
                       {"type": "dense", "W_std": 1e100}]}
    with pytest.raises(workers.GramJobError, match="non-finite entries"):
        workers.compute_gram(arch, x, store=str(tmp_path / "j"), client=client).wait()


def test_preprocess_transforms_the_inputs_fit_on_the_training_rows(client, tmp_path):
    """``preprocess={"zca", "standardize"}``: the train job and the test x train job equal
    ``nc.kernel`` on the inputs transformed by ZCA then standardisation, both fit on the
    training rows only (1e-12); the options are part of the job's identity."""
    import ntkcompute as nc
    from ntkcompute import InputError
    from ntkcompute.preprocess import ZCA, Standardize

    rng = np.random.default_rng(6)
    x, xt = rng.standard_normal((12, 4, 4, 2)) * 3 + 1, rng.standard_normal((5, 4, 4, 2))
    arch = nc.architectures.cntk(1)
    prep = {"zca": 0.1, "standardize": True}
    train = workers.compute_gram(arch, x, store=str(tmp_path / "t"), tile=5, client=client,
                                 preprocess=prep).wait()
    cross = workers.compute_gram(arch, xt, x, store=str(tmp_path / "c"), tile=5,
                                 client=client, preprocess=prep).wait()
    zca = ZCA.fit(x, 0.1)
    std = Standardize.fit(zca(x))
    for job, args in ((train, (std(zca(x)),)), (cross, (std(zca(xt)), std(zca(x))))):
        ref = nc.kernel(arch, *args)
        got = job.to_numpy()
        for k in ("ntk", "nngp"):
            assert np.abs(got[k] - ref[k]).max() <= 1e-12 * np.abs(ref[k]).max()
    assert train.to_xarray().attrs["ntkcompute"]["preprocess"] == prep
    with pytest.raises(InputError) as e:  # the same store with other options: another job
        workers.compute_gram(arch, x, store=train.url, tile=5, client=client)
    assert e.value.field == "store"
    for bad, field in (({"zca": -1}, "preprocess.zca"), ({"whiten": 1}, "preprocess"),
                       ({"standardize": "yes"}, "preprocess.standardize")):
        with pytest.raises(InputError) as e:
            workers.compute_gram(arch, x, store=str(tmp_path / "bad"), client=client,
                                 preprocess=bad)
        assert e.value.field == field


@pytest.mark.parametrize("family", [False, True])
def test_a_flip_job_stores_the_flip_symmetrised_kernel(client, tmp_path, family):
    """``preprocess={"flip": true}``: the train and test x train jobs equal
    ``flip_symmetrized`` in process (1e-12), also for a family (every member); the stored
    diagonals are the symmetrised kernel's."""
    import functools

    import ntkcompute as nc
    from ntkcompute.families import kernel_family, make_family
    from ntkcompute.preprocess import flip_symmetrized
    from workers.store import read

    rng = np.random.default_rng(8)
    x, xt = rng.standard_normal((11, 4, 5, 2)), rng.standard_normal((4, 4, 5, 2))
    conv = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.4,
            "b_std": 0.1}
    arch = {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
        conv, {"type": "relu"}]}}, {"type": "global_avg_pool"}, {"type": "dense"}]}
    if family:
        kw = {"depths": [1, 2]}
        fam = make_family(arch, [1, 2])

        def kern(a, b=None):
            return kernel_family(fam, a, b)
    else:
        kw = {}
        arch = make_family(arch, [2]).member(2)
        kern = functools.partial(nc.kernel, arch)
    prep = {"zca": 0.5, "flip": True}
    train = workers.compute_gram(arch, x, store=str(tmp_path / "t"), tile=4, client=client,
                                 preprocess=prep, **kw).wait()
    cross = workers.compute_gram(arch, xt, x, store=str(tmp_path / "c"), tile=4,
                                 client=client, preprocess=prep, **kw).wait()
    from ntkcompute.preprocess import ZCA

    zca = ZCA.fit(x, 0.5)
    want = flip_symmetrized(kern, zca(x))
    want_c = flip_symmetrized(kern, zca(xt), zca(x))
    got, got_c = train.to_numpy(), cross.to_numpy()
    for k in ("ntk", "nngp"):
        scale = np.abs(want[k]).max()
        assert np.abs(got[k] - want[k]).max() <= 1e-12 * scale, k
        assert np.abs(got_c[k] - want_c[k]).max() <= 1e-12 * scale, k
        assert np.array_equal(got[k], np.swapaxes(got[k], -1, -2))
        diag = read(train.group[f"self/x1/diag_{k}"])
        np.testing.assert_allclose(np.moveaxis(diag, 0, -1),
                                   np.diagonal(want[k], axis1=-2, axis2=-1), rtol=1e-12)
        diag_t = read(cross.group[f"self/x1/diag_{k}"])
        self_t = flip_symmetrized(kern, zca(xt))[k]
        np.testing.assert_allclose(np.moveaxis(diag_t, 0, -1),
                                   np.diagonal(self_t, axis1=-2, axis2=-1), rtol=1e-12)
    plain = workers.compute_gram(arch, x, store=str(tmp_path / "p"), tile=4, client=client,
                                 preprocess={"zca": 0.5}, **kw).wait().to_numpy()
    assert not np.allclose(plain["ntk"], got["ntk"])  # the flip changes the kernel
    # a flip tile holds three blocks per matrix: tiles are sized (and refused) for them
    big = np.zeros((200, 4, 5, 2))
    budget = 2 * 200 * 200 * 8 * 2 * (2 if family else 1)  # twice the plain tile's outputs
    assert workers.plan_job(arch, big, tile=200, memory=budget, **kw).tile == 200
    with pytest.raises(nc.InputError, match="3 blocks each") as e:
        workers.plan_job(arch, big, tile=200, memory=budget, flip=True, **kw)
    assert e.value.field == "tile"
    assert workers.plan_job(arch, big, memory=budget, flip=True, **kw).tile < 200
    with pytest.raises(nc.InputError) as e:
        workers.compute_gram(nc.architectures.fc(1), x.reshape(11, -1),
                             store=str(tmp_path / "v"), client=client,
                             preprocess={"flip": True})
    assert e.value.field == "preprocess.flip"

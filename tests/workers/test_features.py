"""Random-feature jobs on a real Dask cluster into Zarr: equal to in-process, resumable."""

import numpy as np
import pytest
import zarr

import ntkcompute as nc
import workers
from ntkcompute import architectures as A


def test_feature_job_equals_in_process_whatever_the_tiles(client, tmp_path):
    x = np.random.default_rng(0).standard_normal((230, 12))
    arch = A.fc(2, b_std=0.1)
    ref = nc.features(arch, x, 64, seed=3)
    for tile in (17, 100):
        job = workers.compute_features(arch, x, store=str(tmp_path / f"t{tile}"), m=64,
                                       seed=3, tile=tile, client=client).wait()
        out = job.to_numpy()
        for k in ("ntk", "nngp"):
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-12, atol=1e-14)
        assert job.tiles_total == -(-230 // tile) == job.tiles_computed
    meta = zarr.open_group(str(tmp_path / "t17"), mode="r").attrs["ntkcompute"]
    assert meta["status"] == "succeeded" and meta["dims"] == {"ntk": 129, "nngp": 65}


def test_feature_job_resumes_and_refuses_a_different_job(client, tmp_path):
    x = np.random.default_rng(1).standard_normal((90, 5))
    url = str(tmp_path / "f")
    first = workers.compute_features(A.fc(1), x, store=url, m=32, tile=20, client=client)
    first.wait()
    g = zarr.open_group(url, mode="r+")
    g["done"][1] = 0
    g["done"][3] = 0
    g["ntk"][20:40] = 0.0
    again = workers.compute_features(A.fc(1), x, store=url, m=32, tile=20,
                                     client=client).wait()
    assert (again.tiles_reused, again.tiles_computed) == (3, 2)
    np.testing.assert_array_equal(again.to_numpy()["ntk"], nc.features(A.fc(1), x, 32)["ntk"])
    with pytest.raises(nc.InputError) as e:
        workers.compute_features(A.fc(1), x, store=url, m=64, tile=20, client=client)
    assert e.value.field == "store" and "'m'" in e.value.reason
    with pytest.raises(nc.InputError) as e:
        workers.compute_features(A.cntk(1), x, store=str(tmp_path / "c"), m=8, client=client)
    assert e.value.field == "filter_shape"  # a conv on vectors


def test_cntk_feature_job_on_images_equals_in_process(client, tmp_path):
    from ntkcompute.datasets import digits

    x = digits()[0][:110]  # (110, 8, 8, 1)
    arch = A.cntk(2, b_std=0.1)
    ref = nc.features(arch, x, 48, seed=2)
    job = workers.compute_features(arch, x, store=str(tmp_path / "img"), m=48, seed=2,
                                   tile=25, client=client).wait()
    out = job.to_numpy()
    for k in ("ntk", "nngp"):
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-12, atol=1e-14)
    assert job.tiles_total == 5 and out["ntk"].shape == (110, 2 * 48 + 1)
    fm, _, tile = workers.plan_features(A.cntk(4), np.empty((10**5, 32, 32, 3), np.float32),
                                        m=256)
    assert tile * fm.row_flops <= workers.features.TILE_FLOPS < 2 * tile * fm.row_flops


def test_solve_features_equals_in_process_ridge(client, tmp_path):
    from ntkcompute.datasets import digits
    from ntkcompute.regression import one_hot

    x, y = digits()
    x = x.reshape(len(x), -1)
    tr, te = slice(0, 300), slice(300, 400)
    arch = A.fc(2, b_std=0.1)
    kw = dict(m=256, seed=1, tile=70, client=client)
    ztr = workers.compute_features(arch, x[tr], store=str(tmp_path / "tr"), **kw).wait()
    zte = workers.compute_features(arch, x[te], store=str(tmp_path / "te"), **kw).wait()
    Z, Zt = ztr.to_numpy()["ntk"], zte.to_numpy()["ntk"]
    Y = one_hot(y[tr], 10)
    lams = [1e-3, 1e-1]
    res = workers.solve_features(ztr.url, y[tr], lams, test=zte.url, test_labels=y[te],
                                 client=client)
    for i, lam in enumerate(lams):
        w = np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ Y)
        np.testing.assert_allclose(res.coefficients[i], w, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(res.predictions[i], Zt @ w, rtol=1e-6, atol=1e-8)
    one = workers.solve_features(ztr.url, y[tr], 1e-3, test=zte.url, test_labels=y[te],
                                 client=client)
    np.testing.assert_allclose(one.coefficients, res.coefficients[0], rtol=1e-8, atol=1e-10)
    assert one.metrics["accuracy"] > 0.8
    with pytest.raises(nc.InputError) as e:
        workers.solve_features(ztr.url, y[:10], 1e-3, client=client)
    assert e.value.field == "labels"


def test_solve_features_by_cg_never_forms_the_normal_matrix(client, tmp_path):
    x = np.random.default_rng(5).standard_normal((150, 6))
    y = (x[:, 0] > 0).astype(int)
    job = workers.compute_features(A.fc(2), x, store=str(tmp_path / "z"), m=16, tile=40,
                                   client=client).wait()
    lams = [1e-2, 1e-1]
    ref = workers.solve_features(job.url, y, lams, method="normal", client=client)
    res = workers.solve_features(job.url, y, lams, method="cg", tol=1e-12, client=client)
    assert res.solver == "features-cg" and res.converged and res.iterations > 0
    np.testing.assert_allclose(res.coefficients, ref.coefficients, rtol=1e-6, atol=1e-8)
    with pytest.raises(nc.InputError) as e:
        workers.solve_features(job.url, y, 1e-2, method="lu", client=client)
    assert e.value.field == "method"

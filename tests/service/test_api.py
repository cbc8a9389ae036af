"""The REST API through the real server: end to end, auth and tenancy, limits, bad input."""

from __future__ import annotations

import hashlib
import io
import os
import time

import httpx
import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.cg import Nystrom, cg, pivoted_cholesky
from ntkcompute.client import ApiError, Client, JobFailed
from ntkcompute.datasets import digits
from ntkcompute.regression import one_hot, solve_direct


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def data():
    x, y = digits()
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:400], perm[400:600]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="module")
def client_a(service):
    with Client(service.url, service.key_a) as c:
        yield c


@pytest.fixture(scope="module")
def finished(client_a, data):
    """A CNTK job (train and test x train) on digits, run to completion."""
    xtr, ytr, xte, yte = data
    train, test = client_a.upload(xtr, ytr), client_a.upload(xte, yte)
    job = client_a.kernel(train, A.cntk(2), test=test).wait(timeout=300, progress=False)
    return job, train, test


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_end_to_end_cg_matches_in_process(client_a, finished, data):
    xtr, ytr, xte, yte = data
    job, _train, _ = finished
    assert job.info["status"] == "succeeded"
    assert job.info["tiles_done"] == job.info["tiles_total"] > 1
    ref_train = nc.kernel(A.cntk(2), xtr)
    ref_cross = nc.kernel(A.cntk(2), xte, xtr)
    np.testing.assert_allclose(job.to_numpy("ntk"), ref_train["ntk"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(job.to_numpy("nngp", "test"), ref_cross["nngp"], rtol=1e-12,
                               atol=0)
    # the same solve in process: Nyström-preconditioned CG on the in-process kernel
    lam, Y = 1e-3, one_hot(ytr, 10)
    K = ref_train["ntk"]
    L, _ = pivoted_cholesky(np.diag(K).copy(), lambda i: K[:, i], 100)
    ref = cg(lambda v: K @ v, Y, lam, tol=1e-10, precond=Nystrom(L, lam))
    ref_pred = ref_cross["ntk"] @ ref.x
    sol = client_a.solve(job, lam, tol=1e-10).wait(timeout=120)
    pred = sol.predictions(0)
    np.testing.assert_allclose(pred, ref_pred, atol=1e-7)
    acc = float(np.mean(ref_pred.argmax(1) == yte))
    assert sol.metrics["best"]["accuracy"] == acc > 0.8
    assert sol.metrics["per_lambda"][0]["converged"]
    np.testing.assert_allclose(sol.coefficients(0), ref.x, atol=1e-7)
    # two λ through REST: one block CG with the randomized Nyström preconditioner
    both = client_a.solve(job, [lam, 10 * lam], tol=1e-10,
                          preconditioner="randomized").wait(timeout=120)
    assert [m["lambda"] for m in both.metrics["per_lambda"]] == [lam, 10 * lam]
    assert all(m["converged"] for m in both.metrics["per_lambda"])
    np.testing.assert_allclose(both.coefficients(0), ref.x, atol=1e-7)
    np.testing.assert_allclose(both.coefficients(1), np.linalg.solve(
        K + 10 * lam * np.eye(len(K)), Y), atol=1e-7)


def test_direct_lambda_sweep_and_analyses(client_a, finished, data):
    xtr, ytr, xte, _yte = data
    job, _, _ = finished
    lams = [1e-4, 1e-2, 1.0]
    sol = client_a.solve(job, lams, solver="direct", kind="nngp", times=[0.0, 10.0],
                         bound=True, spectrum=5).wait(timeout=120)
    K = nc.kernel(A.cntk(2), xtr, get="nngp")["nngp"]
    for i, lam in enumerate(lams):
        np.testing.assert_allclose(sol.coefficients(i), solve_direct(K, one_hot(ytr, 10), lam),
                                   rtol=1e-6, atol=1e-8)
    assert sol.predictions().shape == (3, len(xte), 10)
    assert [m["lambda"] for m in sol.metrics["per_lambda"]] == lams
    an = sol.info["analyses"]
    np.testing.assert_allclose(an["eigenvalues"], np.linalg.eigvalsh(K)[::-1][:5], rtol=1e-9)
    assert an["gd"][0]["t"] == 0.0 and an["bound"] > 0
    # relative λ: a multiple of mean(diag K), solved by CG
    rel = client_a.solve(job, 1e-3, relative=True, kind="nngp", tol=1e-10).wait(timeout=120)
    lam = 1e-3 * float(np.mean(np.diag(K)))
    assert rel.metrics["per_lambda"][0]["lambda"] == pytest.approx(lam, rel=1e-12)
    np.testing.assert_allclose(rel.coefficients(0), solve_direct(K, one_hot(ytr, 10), lam),
                               atol=1e-6)


def test_predictive_variances_through_the_service(service, client_a, finished, data):
    """``variance=True``: the NTK ensemble's variance of every test output per λ, equal to
    :class:`ntkcompute.predict.Ensemble` on in-process kernels; refused (422 naming the
    field) where it cannot be made."""
    from ntkcompute.predict import Ensemble

    xtr, ytr, xte, _ = data
    job, _, _ = finished
    lams = [1e-3, 1e-1]
    sol = client_a.solve(job, lams, solver="direct", variance=True, times=[1.0]
                         ).wait(timeout=120)
    kdd, ktd = nc.kernel(A.cntk(2), xtr), nc.kernel(A.cntk(2), xte, xtr)
    ktt = np.diagonal(nc.kernel(A.cntk(2), xte, get="nngp")["nngp"])
    var = sol.variances()
    assert var.shape == (2, len(xte))
    for i, lam in enumerate(lams):
        want = Ensemble(kdd["nngp"], kdd["ntk"], one_hot(ytr, 10), diag_reg=lam,
                        diag_reg_absolute_scale=True).predict(None, ktd, ktt, get="ntk",
                                                              compute_cov=True)["ntk"]
        np.testing.assert_allclose(var[i], want.covariance, rtol=1e-7)
        np.testing.assert_array_equal(sol.variances(i), var[i])
        assert sol.metrics["per_lambda"][i]["mean_variance"] == pytest.approx(
            float(want.covariance.mean()), rel=1e-7)
    assert sol.info["analyses"]["gd"][0]["variance"] > 0
    h = headers(service.key_a)
    for body in ({"solver": "cg"}, {"solver": "direct", "kernel": "k-missing"}):
        r = httpx.post(f"{service.url}/v1/solves", headers=h, json={
            "kernel": job.id, **body, "analyses": {"variance": True}})
        assert r.status_code in (404, 422), r.text
        if r.status_code == 422:
            assert r.json()["field"] == "analyses.variance"
    plain = client_a.solve(job, 1e-3, solver="direct").wait(timeout=120)
    with pytest.raises(ApiError) as e:
        plain.variances()
    assert e.value.status == 404 and "variance" in str(e.value)


def test_blocks(service, finished):
    job, _, _ = finished
    full = job.to_numpy("ntk")
    blk = job.block("ntk", (10, 50), (100, 130))
    np.testing.assert_array_equal(blk, full[10:50, 100:130])
    h = headers(service.key_a)
    base = f"{service.url}/v1/kernels/{job.id}/blocks"
    for params, field in [({"rows": "5:2"}, "rows"), ({"cols": "a:b"}, "cols"),
                          ({"rows": "0:999999"}, "rows"), ({"kind": "xyz"}, "kind"),
                          ({"part": "other"}, "part")]:
        r = httpx.get(base, params=params, headers=h)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    # the size cap (1 MiB here): 400 x 400 float64 = 1.28 MB
    r = httpx.get(base, headers=h)
    assert r.status_code == 422 and "limit" in r.json()["detail"]


def test_auth_and_tenant_isolation(service, finished):
    job, train, _ = finished
    u = service.url
    assert httpx.get(f"{u}/v1/datasets").status_code == 401
    r = httpx.get(f"{u}/v1/datasets", headers=headers("ntk_0000_bogus"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{u}/v1/datasets", headers=headers("garbage")).status_code == 401
    b = headers(service.key_b)
    for method, path in [("GET", f"/v1/datasets/{train.id}"),
                         ("DELETE", f"/v1/datasets/{train.id}"),
                         ("GET", f"/v1/kernels/{job.id}"),
                         ("GET", f"/v1/kernels/{job.id}/blocks"),
                         ("DELETE", f"/v1/kernels/{job.id}"),
                         ("POST", f"/v1/kernels/{job.id}/resume")]:
        r = httpx.request(method, f"{u}{path}", headers=b)
        assert r.status_code == 404, (method, path, r.text)
    r = httpx.post(f"{u}/v1/kernels", headers=b, json={"train": train.id,
                                                       "arch": A.fc(2)})
    assert r.status_code == 404
    r = httpx.post(f"{u}/v1/solves", headers=b, json={"kernel": job.id})
    assert r.status_code == 404
    assert httpx.get(f"{u}/v1/kernels", headers=b).json() == []
    # A still sees everything
    assert httpx.get(f"{u}/v1/kernels/{job.id}", headers=headers(service.key_a)).status_code \
        == 200


def test_upload_formats_checksums_and_delete(service, data):
    xtr, ytr, _, _ = data
    h = headers(service.key_a)
    u = f"{service.url}/v1/datasets"
    body = npy(xtr[:50])
    r = httpx.post(u, content=body, headers={**h, "content-type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["sha256"] == hashlib.sha256(body).hexdigest()
    assert out["shape"] == [50, 8, 8, 1] and out["y_shape"] is None
    assert r.headers["location"] == f"/v1/datasets/{out['id']}"
    r = httpx.post(u, content=npz(x=xtr[:50].astype(np.float32), y=ytr[:50]), headers=h)
    assert r.status_code == 201 and r.json()["dtype"] == "float32"
    assert r.json()["y_shape"] == [50]
    r = httpx.post(u, files={"file": ("d.npz", npz(x=xtr[:20]))}, headers=h)
    assert r.status_code == 201 and r.json()["n"] == 20
    r = httpx.post(u, files={"x": ("x.npy", npy(np.asfortranarray(xtr[:30, :, :, 0])))},
                   headers=h)
    assert r.status_code == 201 and r.json()["shape"] == [30, 8, 8]
    did = r.json()["id"]
    assert httpx.delete(f"{u}/{did}", headers=h).status_code == 204
    assert httpx.get(f"{u}/{did}", headers=h).status_code == 404


@pytest.mark.parametrize("body,field", [
    (b"not a numpy file", "body"),
    (npy(np.ones((5, 3)))[:-7], "x"),  # truncated
    (npy(np.array([{"a": 1}] * 4, dtype=object).reshape(2, 2)), "x"),
    (npy(np.ones((4, 3)) * 1j), "x"),
    (npy(np.array([[1.0, np.nan], [0, 1]])), "x"),
    (npy(np.array([[1.0, np.inf], [0, 1]])), "x"),
    (npy(np.ones(5)), "x"),  # no feature axis
    (npy(np.ones((0, 3))), "x"),
    (npy(np.ones((2001, 2))), "x"),  # more rows than NTK_MAX_N
    (npz(x=np.ones((4, 3)), y=np.ones(5)), "y"),
    (npz(x=np.ones((4, 3)), y=np.array([0, 1, np.nan, 2])), "y"),
    (npz(a=np.ones((4, 3))), "body"),
    (b"PK\x03\x04 broken zip", "body"),
])
def test_bad_uploads_are_422_naming_the_field(service, body, field):
    r = httpx.post(f"{service.url}/v1/datasets", content=body,
                   headers=headers(service.key_a))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["detail"].startswith(f"{field}: ")


def test_upload_size_limit_is_413(service):
    big = npy(np.ones((1000, 600)))  # 4.8 MB > 4 MiB
    h = headers(service.key_a)
    r = httpx.post(f"{service.url}/v1/datasets", content=big, headers=h)
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for i in range(0, len(big), 1 << 16):
            yield big[i:i + 1 << 16]

    r = httpx.post(f"{service.url}/v1/datasets", content=chunks(), headers=h)
    assert r.status_code == 413
    r = httpx.post(f"{service.url}/v1/datasets", files={"x": ("x.npy", big)}, headers=h)
    assert r.status_code == 413


def test_bad_jobs_are_422_naming_the_field(service, client_a, finished, data):
    job, train, _test = finished
    flat = client_a.upload(np.ones((10, 64)))
    h, u = headers(service.key_a), f"{service.url}/v1/kernels"
    cases = [
        ({"train": train.id, "test": flat.id, "arch": A.fc(2)}, "test"),
        ({"train": train.id, "arch": {"layers": [{"type": "conv", "filter_shape": [9, 9],
                                                  "padding": "VALID"}]}},
         "arch.layers[0].filter_shape"),
        ({"train": train.id, "arch": {"layers": [{"type": "dense", "W_std": -1}]}},
         "arch.layers[0].W_std"),
        ({"train": train.id, "arch": {"layers": [{"type": "softmax"}]}}, "arch.layers[0]"),
        ({"train": flat.id, "arch": {"layers": [{"type": "relu"}]}}, "arch.layers[0].type"),
        ({"train": flat.id, "arch": A.cntk(2)}, "arch.layers[0]"),  # conv on (n, 64) data
        # composite nets: the path to the nested layer
        ({"train": flat.id, "arch": {"layers": [
            {"type": "dense"}, {"type": "fan_out", "num": 2},
            {"type": "parallel", "branches": [[{"type": "identity"}],
                                              [{"type": "dense", "W_std": -1}]]},
            {"type": "fan_in_sum"}]}}, "arch.layers[2].branches[1][0].W_std"),
        ({"train": flat.id, "arch": {"layers": [
            {"type": "dense"}, {"type": "fan_out", "num": 2},
            {"type": "parallel", "branches": [[{"type": "dense"}], [{"type": "serial", "layers": [
                {"type": "conv", "filter_shape": [3]}]}]]},
            {"type": "fan_in_sum"}]}}, "arch.layers[2].branches[1][0].layers[0].filter_shape"),
        ({"train": flat.id, "arch": {"layers": [{"type": "dense"}, {"type": "fan_in_sum"}]}},
         "arch.layers[1].type"),
        ({"train": flat.id, "arch": {"layers": [{"type": "dense"},
                                                {"type": "global_self_attention"},
                                                {"type": "dense"}]}}, "arch.layers[1].type"),
        ({"train": train.id, "arch": A.fc(2), "kernels": ["ntk", "rbf"]},
         "kernels[1]"),
        ({"train": train.id, "arch": A.fc(2), "dtype": "float16"}, "dtype"),
        ({"train": train.id, "arch": A.fc(2), "tile": 0}, "tile"),
        ({"train": train.id, "arch": A.fc(2), "extra": 1}, "extra"),
        ({"arch": A.fc(2)}, "train"),
    ]
    for body, field in cases:
        r = httpx.post(u, json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["field"].startswith(field), (field, r.json())
    # solves: labels of the wrong length, unknown kernel kind, times without direct
    s = f"{service.url}/v1/solves"
    for body, field in [({"kernel": job.id, "labels": [0, 1, 2]}, "labels"),
                        ({"kernel": job.id, "labels": [-1] * 400}, "labels"),
                        ({"kernel": job.id, "lambdas": [-1.0]}, "lambdas[0]"),
                        ({"kernel": job.id, "analyses": {"times": [1.0]}}, "analyses.times"),
                        ({"kernel": job.id, "test_labels": [0.5] * 3}, "test_labels")]:
        r = httpx.post(s, json=body, headers=h)
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    r = httpx.post(u, content=b"{not json", headers={**h, "content-type": "application/json"})
    assert r.status_code == 422


def test_concurrency_limit_cancel_and_resume(service, client_a):
    """3 jobs per key: the 4th is 429; cancel keeps finished tiles and resume reuses them."""
    x = np.random.default_rng(3).standard_normal((450, 8, 8, 1))
    ds = client_a.upload(x)
    arch = A.cntk(2)
    jobs = [client_a.kernel(ds, arch, kernels=("ntk",), tile=75) for _ in range(3)]
    with pytest.raises(ApiError) as e:
        client_a.kernel(ds, arch)
    assert e.value.status == 429 and e.value.field == "max_jobs_per_key"
    for j in jobs[1:]:
        assert j.cancel().info["status"] == "cancelled"
    first = jobs[0]
    t0 = time.monotonic()
    while first.refresh()["tiles_done"] < 3 and time.monotonic() - t0 < 120:
        time.sleep(0.2)
    first.cancel()
    time.sleep(1.0)  # tiles in flight finish and are marked
    before = first.refresh()
    assert before["status"] == "cancelled" and 3 <= before["tiles_done"] < before["tiles_total"]
    with pytest.raises(ApiError) as e:
        client_a.solve(first)
    assert e.value.status == 409
    resumed = first.resume().wait(timeout=400, progress=False)
    assert resumed.info["tiles_reused"] >= before["tiles_done"]
    ref = nc.kernel(arch, x[:150], x[300:450], get="ntk")["ntk"]
    np.testing.assert_allclose(resumed.block("ntk", (0, 150), (300, 450)), ref, rtol=1e-12)
    assert httpx.delete(f"{service.url}/v1/kernels/{first.id}", params={"purge": True},
                        headers=headers(service.key_a)).status_code == 204
    with pytest.raises(ApiError) as e:
        first.refresh()
    assert e.value.status == 404


def test_cntk_features_job_on_images(service, client_a, data):
    """A CNTK-GAP random-feature job on 8x8 digit images: blocks are the in-process features'
    products; a ridge solve on them classifies the digits."""
    xtr, ytr, xte, yte = data
    train, test = client_a.upload(xtr, ytr), client_a.upload(xte, yte)
    arch = A.cntk(2, b_std=0.1)
    job = client_a.kernel(train, arch, test=test, method="features", m=128, seed=5,
                          kernels=["ntk"])
    job.wait(timeout=180, progress=False)
    fm = nc.feature_map(arch, xtr.shape[1:], 128, seed=5)
    ztr, zte = fm(xtr, "ntk")["ntk"], fm(xte, "ntk")["ntk"]
    np.testing.assert_allclose(job.block("ntk", (0, 40), (100, 160)), ztr[:40] @ ztr[100:160].T,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(job.block("ntk", (0, 30), None, "test"), zte[:30] @ ztr.T,
                               rtol=1e-10, atol=1e-12)
    sol = client_a.solve(job, 1e-2, relative=True).wait(timeout=120)
    assert sol.metrics["best"]["accuracy"] > 0.85, sol.metrics


def test_residual_attention_job_on_images(service, client_a, data):
    """A composite net (ResNet blocks given as repeat/serial/parallel, layer norm, attention)
    through REST: blocks equal the in-process kernel, and its solve classifies the digits."""
    xtr, ytr, xte, yte = data
    n, m = 120, 60
    train, test = client_a.upload(xtr[:n], ytr[:n]), client_a.upload(xte[:m], yte[:m])
    arch = A.resnet(1, "global_avg_pool")
    arch["layers"][2:2] = [{"type": "layer_norm"},
                           {"type": "global_self_attention", "W_query_std": 0.5}]
    job = client_a.kernel(train, arch, test=test, kernels=["ntk"]).wait(timeout=300,
                                                                       progress=False)
    assert job.info["arch"]["layers"][1]["layer"]["layers"][1]["type"] == "parallel"
    ref, cross = nc.kernel(arch, xtr[:n], get="ntk"), nc.kernel(arch, xte[:m], xtr[:n], get="ntk")
    np.testing.assert_allclose(job.to_numpy("ntk"), ref["ntk"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(job.to_numpy("ntk", "test"), cross["ntk"], rtol=1e-12, atol=0)
    sol = client_a.solve(job, 1e-3, relative=True).wait(timeout=120)
    assert sol.metrics["best"]["accuracy"] > 0.7, sol.metrics


def test_graph_network_job_through_the_service(service, client_a):
    """A stax graph net (Aggregate) through REST: the packed inputs and spec that
    ``kernel_fn.pack`` gives are a dataset and an arch like any other."""
    from ntkcompute import stax

    rng = np.random.default_rng(5)
    _, _, kernel_fn = stax.serial(stax.Conv(64, (1,), b_std=0.1), stax.Relu(),
                                  stax.Aggregate(1), stax.GlobalSumPool(), stax.Dense(1))
    x1, x2 = rng.standard_normal((30, 8, 3)), rng.standard_normal((12, 8, 3))
    a1, a2 = rng.random((30, 8, 8)) < 0.3, rng.random((12, 8, 8)) < 0.3
    (spec, p1), (_, p2) = kernel_fn.pack(x1, a1), kernel_fn.pack(x2, a2)
    job = client_a.kernel(client_a.upload(p1), spec, test=client_a.upload(p2)).wait(
        timeout=300, progress=False)
    assert job.info["arch"]["pattern_channels"] == 8
    np.testing.assert_allclose(job.to_numpy("ntk"), kernel_fn(x1, None, "ntk", pattern=a1),
                               rtol=1e-12, atol=0)
    np.testing.assert_allclose(job.to_numpy("nngp", "test"),
                               kernel_fn(x2, x1, "nngp", pattern=(a2, a1)), rtol=1e-12, atol=0)


def test_stale_staging_dirs_are_cleaned(tmp_path):
    from service.uploads import clean_stale

    old, new = tmp_path / "up-old", tmp_path / "up-new"
    old.mkdir()
    new.mkdir()
    os.utime(old, (time.time() - 7 * 3600,) * 2)
    assert clean_stale(tmp_path) == 1 and not old.exists() and new.exists()


def test_features_job_blocks_and_solve(service, client_a, data):
    """method "features": the same job, block and solve routes on NTK random features."""
    xtr, ytr, xte, yte = (a.reshape(len(a), -1) if a.ndim > 1 else a for a in data)
    train, test = client_a.upload(xtr, ytr), client_a.upload(xte, yte)
    arch = A.fc(2, b_std=0.1)
    job = client_a.kernel(train, arch, test=test, method="features", m=256, seed=4)
    assert job.info["method"] == "features" and job.info["m"] == 256
    job.wait(timeout=120, progress=False)
    fm = nc.feature_map(arch, xtr.shape[1], 256, seed=4)
    ztr, zte = fm(xtr)["ntk"], fm(xte)["ntk"]
    np.testing.assert_allclose(job.block("ntk", (0, 50), (10, 70)), ztr[:50] @ ztr[10:70].T,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(job.block("ntk", (0, 20), None, "test"), zte[:20] @ ztr.T,
                               rtol=1e-10, atol=1e-12)
    sol = client_a.solve(job, 1e-3, relative=True).wait(timeout=120)
    lam = 1e-3 * float(np.mean(np.sum(ztr * ztr, axis=1)))
    w = np.linalg.solve(ztr.T @ ztr + lam * np.eye(ztr.shape[1]), ztr.T @ one_hot(ytr, 10))
    np.testing.assert_allclose(sol.predictions(0), zte @ w, rtol=1e-6, atol=1e-7)
    assert sol.metrics["best"]["accuracy"] == float(np.mean((zte @ w).argmax(1) == yte))
    h, u = headers(service.key_a), f"{service.url}/v1/kernels"
    img = client_a.upload(data[0][:30])
    erf = {"layers": [{"type": "dense"}, {"type": "erf"}, {"type": "dense"}]}
    for body, field in [({"train": train.id, "arch": arch, "method": "features"}, "m"),
                        ({"train": train.id, "arch": A.cntk(1), "method": "features",
                          "m": 8}, "arch.layers[0].filter_shape"),
                        ({"train": train.id, "arch": erf, "method": "features", "m": 8},
                         "arch.layers[1].type"),
                        ({"train": img.id, "arch": arch, "method": "features", "m": 8},
                         "arch.layers[4].type")]:  # an FC net on images: no readout
        r = httpx.post(u, json=body, headers=h)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    r = httpx.post(f"{service.url}/v1/solves", json={"kernel": job.id,
                                                     "analyses": {"bound": True}}, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "analyses"


def test_a_finished_job_outlives_its_datasets(service, client_a, data):
    """A job keeps its own copy of its inputs: with both datasets deleted its blocks are
    served and a solve with its labels given runs; only a rerun needs them, and fails naming
    why."""
    xtr, ytr, xte, yte = data
    n, m = 60, 20
    xtr, xte = xtr[:n].reshape(n, -1), xte[:m].reshape(m, -1)
    train, test = client_a.upload(xtr), client_a.upload(xte)
    job = client_a.kernel(train, A.fc(2), test=test, kernels=("ntk",)).wait(
        timeout=120, progress=False)
    before = job.block("ntk", None, (0, n), "test")
    client_a.delete_dataset(train)
    client_a.delete_dataset(test)
    np.testing.assert_array_equal(job.block("ntk", None, (0, n), "test"), before)
    sol = client_a.solve(job, 1e-3, labels=ytr[:n].tolist(), test_labels=yte[:m].tolist(),
                         solver="direct").wait(timeout=120)
    assert sol.predictions(0).shape == (m, 10)
    with pytest.raises(JobFailed, match="a dataset of this job was deleted"):
        job.resume().wait(timeout=120, progress=False)

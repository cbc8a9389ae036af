"""The two job kinds behind one protocol, on a real cluster and a real store: what they
start, the blocks they serve, what they refuse, and a solve's arrays."""

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from ntkcompute import architectures as A
from ntkcompute.errors import InputError
from ntkcompute.features import feature_map
from ntkcompute.infinite import kernel
from workers import write_dataset
from workers.jobs import (
    JobConflict,
    JobSpec,
    Missing,
    NotStored,
    PartDamaged,
    Status,
    kind_of,
    layout,
    progress,
    solves,
    span,
)

PARAMS = {"lambdas": [1e-3, 1e-2], "solver": "direct", "kind": "ntk", "tol": 1e-10,
          "maxiter": 200, "preconditioner": "none", "rank": 10, "relative": False}


def _job(tmp_path, method, xtr, xte, **kw):
    train = str(tmp_path / "d-train")
    test = str(tmp_path / "d-test")
    write_dataset(train, xtr)
    write_dataset(test, xte)
    planned = kind_of(method).plan(A.fc(2), xtr, xte, kernels=("ntk", "nngp"), dtype=None,
                                   tile=5, memory=1 << 28, **kw)
    return JobSpec(url=layout.kernel_url(str(tmp_path / "store"), f"k-{method}"),
                   method=method, train=train, test=test, has_test=True, n_train=len(xtr),
                   arch=planned.arch, kernels=tuple(planned.kernels), dtype=planned.dtype,
                   tile=planned.tile, m=kw.get("m"), seed=kw.get("seed", 0))


def _run(job, client):
    parts = {}
    t0 = time.time()
    job.kind.start(job, parts, client=client, memory=1 << 28, verify=False)
    assert set(parts) == {"train", "test"}
    assert progress(parts, t0).event is None or all(p.tiles_done == p.tiles_total
                                                     for p in parts.values())
    for p in parts.values():
        p.wait(120)
        assert p.status == Status.SUCCEEDED
    pr = progress(parts, t0)
    assert (pr.event, pr.eta_seconds) == ("succeed", 0.0)
    assert pr.tiles_done == sum(p.tiles_total for p in parts.values())
    return parts


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((12, 6)), rng.standard_normal((7, 6))


def test_exact_kind_serves_the_kernel_and_names_what_it_cannot(tmp_path, client, data):
    xtr, xte = data
    job = _job(tmp_path, "exact", xtr, xte, m=None, seed=0)
    with pytest.raises(NotStored, match="job is queued; nothing stored yet"):
        job.kind.read_block(job, "ntk", "train", None, None, status="queued", max_bytes=1e9)
    _run(job, client)
    ref = kernel(A.fc(2), xte, xtr, dtype="float64")
    got = job.kind.read_block(job, "ntk", "test", "2:7", "0:12", status="succeeded",
                              max_bytes=1 << 20)
    np.testing.assert_allclose(got, ref["ntk"][2:7], rtol=1e-12)
    with pytest.raises(InputError, match="block of 480 bytes exceeds the limit of 100"):
        job.kind.read_block(job, "ntk", "train", "0:6", "0:10", status="succeeded",
                            max_bytes=100)
    assert job.kind.coefficient_rows(job, "ntk") == 12
    # its datasets deleted, the job still serves its kernel (it keeps its own inputs); only a
    # start needs them
    gone = dataclasses.replace(job, test=None)
    np.testing.assert_array_equal(
        gone.kind.read_block(gone, "ntk", "test", None, None, status="succeeded",
                             max_bytes=1 << 20),
        job.kind.read_block(job, "ntk", "test", None, None, status="succeeded",
                            max_bytes=1 << 20))
    with pytest.raises(InputError, match="a dataset of this job was deleted"):
        gone.kind.start(gone, {}, client=client, memory=1 << 28, verify=False)
    # a lost done marker: in a finished job it is damage, in a running one "not yet"
    (Path(layout.part_url(job.url, "train")) / "done" / "c" / "1" / "2").unlink()
    with pytest.raises(PartDamaged) as e:
        job.kind.read_block(job, "nngp", "train", None, None, status="succeeded",
                            max_bytes=1 << 20)
    assert (e.value.part, e.value.error.array) == ("train", "done")
    with pytest.raises(JobConflict, match="some tiles of this block are not computed"):
        job.kind.read_block(job, "nngp", "train", "5:10", "10:12", status="running",
                            max_bytes=1 << 20)


def test_features_kind_block_is_phi_phi_transposed(tmp_path, client, data):
    xtr, xte = data
    with pytest.raises(InputError) as e:
        kind_of("features").plan(A.fc(2), xtr, xte, kernels=("ntk",), dtype=None, tile=None,
                                 memory=1 << 28, m=None, seed=0)
    assert e.value.field == "m"
    job = _job(tmp_path, "features", xtr, xte, m=64, seed=3)
    _run(job, client)
    fm = feature_map(A.fc(2), (6,), 64, 3)
    phi_te, phi_tr = fm(xte)["ntk"], fm(xtr)["ntk"]
    got = job.kind.read_block(job, "ntk", "test", None, "3:9", status="succeeded",
                              max_bytes=1 << 20)
    np.testing.assert_allclose(got, phi_te @ phi_tr[3:9].T, rtol=1e-10, atol=1e-12)
    assert job.kind.coefficient_rows(job, "ntk") == fm.dims["ntk"]
    with pytest.raises(InputError) as e:
        job.kind.check_solve(job, {"analyses": {"spectrum": 3}})
    assert e.value.field == "analyses"
    for request, field in (({"select": {}}, "select"), ({"depth": 2}, "depth")):
        with pytest.raises(InputError) as e:
            job.kind.check_solve(job, request)
        assert e.value.field == field


def test_a_solve_of_either_kind_is_saved_and_read_back(tmp_path, client, data):
    xtr, xte = data
    y = np.arange(12) % 3
    for method, kw in (("exact", {"m": None}), ("features", {"m": 64})):
        job = _job(tmp_path / method, method, xtr, xte, **kw)
        _run(job, client)
        results = job.kind.solve(job, y, np.arange(7) % 3, PARAMS, client=client)
        url = layout.solve_url(job.url, "s-1")
        metrics, _ = solves.save(url, results)
        assert [m["lambda"] for m in metrics["per_lambda"]] == PARAMS["lambdas"]
        coef = solves.read_array(url, "coefficients", None, None, 1 << 20)
        rows = job.kind.coefficient_rows(job, "ntk")
        assert coef.shape == (2, rows, 3)
        one = solves.read_array(url, "predictions", 1, "2:5", 1 << 20)
        assert one.shape == (3, 3)
        np.testing.assert_array_equal(one, solves.read_array(url, "predictions", None, None,
                                                             1 << 20)[1, 2:5])
        with pytest.raises(InputError) as e:
            solves.read_array(url, "coefficients", 2, None, 1 << 20)
        assert e.value.field == "lambda_index"
    no_test = results[0]
    no_test.predictions = None
    solves.save(str(tmp_path / "no-test"), [no_test])
    with pytest.raises(Missing, match="no test set"):
        solves.read_array(str(tmp_path / "no-test"), "predictions", None, None, 1 << 20)


def test_span_and_layout():
    assert span(None, 5, "rows") == slice(0, 5) and span(":3", 5, "rows") == slice(0, 3)
    for bad in ("3", "a:b", "4:2", "0:6"):
        with pytest.raises(InputError) as e:
            span(bad, 5, "cols")
        assert e.value.field == "cols"
    assert layout.parts_of("s3://b/k/", True) == {"train": "s3://b/k/train",
                                                 "test": "s3://b/k/test"}
    with pytest.raises(ValueError):
        layout.part_url("/s/k", "val")
    with pytest.raises(InputError) as e:
        kind_of("approximate")
    assert e.value.field == "method"


def test_each_worker_plans_a_job_once_not_once_per_tile(tmp_path, client):
    x = np.random.default_rng(1).standard_normal((24, 5))
    write_dataset(str(tmp_path / "d"), x)
    job = JobSpec(url=str(tmp_path / "k"), method="exact", train=str(tmp_path / "d"),
                  test=None, has_test=False, n_train=24, arch=A.fc(3), kernels=("ntk",),
                  dtype="float64", tile=4)
    before = client.run(lambda dask_worker: dask_worker.plugins["ntkcompute-planner"].made
                        if "ntkcompute-planner" in dask_worker.plugins else 0)
    parts = {}
    job.kind.start(job, parts, client=client, memory=1 << 28, verify=False)
    parts["train"].wait(120)
    assert parts["train"].tiles_computed == 21  # 6 x 6 tiles, upper triangle
    made = client.run(lambda dask_worker: dask_worker.plugins["ntkcompute-planner"].made)
    assert sum(made.values()) - sum(before.values()) <= len(made)  # once per worker
    np.testing.assert_allclose(parts["train"].to_numpy()["ntk"],
                               kernel(A.fc(3), x, get="ntk", dtype="float64")["ntk"],
                               rtol=1e-12)

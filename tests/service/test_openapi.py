"""The OpenAPI document says exactly what each route answers: every status it lists for an
operation is produced here by a real request to the real service (uvicorn, an external Dask
scheduler and worker, SQLite, Zarr on disk), and every status those requests get is listed.
Errors are RFC 9457 problems; 429 and 503 carry Retry-After."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from collections import defaultdict

import httpx
import numpy as np
import pytest

from ntkcompute.client import Client
from service.routes.common import MAX_STREAMS_PER_KEY

from .conftest import external_cluster, make_key
from .test_attacks import _nested, _stalled

FC = {"layers": [{"type": "dense"}, {"type": "relu"}, {"type": "dense"}]}
CONV = {"layers": [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME"},
                   {"type": "relu"}, {"type": "global_avg_pool"}, {"type": "dense"}]}
LIMITS = {"NTK_MAX_UPLOAD_BYTES": str(1 << 20), "NTK_MAX_JSON_BYTES": str(64 << 10),
          "NTK_BODY_TIMEOUT": "0.5", "NTK_MAX_JOBS_PER_KEY": "2"}


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with external_cluster(tmp_path_factory.mktemp("openapi"), LIMITS) as s:
        yield s


def test_every_listed_status_is_answered_and_no_other(svc):
    doc = httpx.get(f"{svc.url}/openapi.json").json()
    ops = {op["operationId"]: (m.upper(), path) for path, item in doc["paths"].items()
           for m, op in item.items()}
    listed = {op["operationId"]: {int(c) for c in op["responses"]}
              for item in doc["paths"].values() for op in item.values()}
    got: dict[str, set[int]] = defaultdict(set)
    key, other = make_key(svc.db, "k"), make_key(svc.db, "other")
    h, ho = {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {other}"}

    def call(op: str, want: int, *, params=None, json_body=None, content=None,
             headers=None, path_args=None, **kw) -> httpx.Response:
        method, path = ops[op]
        url = svc.url + path.format(**(path_args or {}))
        r = httpx.request(method, url, params=params, json=json_body, content=content,
                          headers=h if headers is None else headers, timeout=60, **kw)
        assert r.status_code == want, (op, want, r.status_code, r.text[:300])
        if want >= 400 and op != "readyz":
            assert r.headers["content-type"] == "application/problem+json", (op, want)
            assert r.json()["status"] == want and r.json()["title"]
        got[op].add(want)
        return r

    def stalled(op: str) -> None:
        _, path = ops[op]
        status, body = _stalled(svc.port, path, key, b'{"a', 500)
        assert status == 408 and json.loads(body)["field"] == "body", (op, body)
        got[op].add(408)

    no_key = {}
    rng = np.random.default_rng(0)
    with Client(svc.url, key) as c:
        x, y = rng.standard_normal((600, 4)), np.arange(600) % 3
        train, test = c.upload(x[:500], y[:500]), c.upload(x[500:], y[500:])
        job = c.kernel(train, FC, test=test).wait(timeout=300, progress=False)
        sol = c.solve(job, 0.1).wait(timeout=300)
        var = c.solve(job, 0.1, solver="direct", kind="nngp", variance=True).wait(timeout=300)
    K, S = {"kernel_id": job.id}, {"solve_id": sol.id}

    # health, limits
    call("healthz", 200, headers=no_key)
    assert call("readyz", 200, headers=no_key).json()["workers"] == 1
    call("get_limits", 200)
    call("get_limits", 401, headers=no_key)
    # datasets
    made = call("upload_dataset", 201, content=npy(np.ones((5, 3))))
    assert made.headers["Location"] == f"/v1/datasets/{made.json()['id']}"
    call("upload_dataset", 401, content=npy(np.ones((5, 3))), headers=no_key)
    call("upload_dataset", 413, content=npy(np.ones((400, 400))))
    call("upload_dataset", 422, content=b"not an npy file")
    _, path = ops["upload_dataset"]
    status, _ = _stalled(svc.port, path, key, b"\x93NUMPY", 1000)
    assert status == 408
    got["upload_dataset"].add(408)
    for op in ("list_datasets", "list_kernels", "list_solves"):
        call(op, 200)
        call(op, 401, headers=no_key)
        call(op, 422, params={"limit": 0})
    call("get_dataset", 200, path_args={"dataset_id": train.id})
    call("get_dataset", 401, path_args={"dataset_id": train.id}, headers=no_key)
    call("get_dataset", 404, path_args={"dataset_id": train.id}, headers=ho)
    call("delete_dataset", 204, path_args={"dataset_id": made.json()["id"]})
    call("delete_dataset", 401, path_args={"dataset_id": train.id}, headers=no_key)
    call("delete_dataset", 404, path_args={"dataset_id": made.json()["id"]})
    # kernel jobs that end at once: submitted, cancelled, resumed, purged
    tiny = {"train": train.id, "arch": FC, "kernels": ["nngp"]}
    k1 = call("submit_kernel", 202, json_body=tiny).json()["id"]
    call("cancel_kernel", 200, path_args={"kernel_id": k1})
    call("resume_kernel", 202, path_args={"kernel_id": k1})
    with Client(svc.url, key) as c:
        c.job(k1).wait(timeout=120, progress=False)
    call("cancel_kernel", 204, path_args={"kernel_id": k1}, params={"purge": "true"})
    call("cancel_kernel", 404, path_args={"kernel_id": k1})
    call("cancel_kernel", 401, path_args=K, headers=no_key)
    call("cancel_kernel", 422, path_args=K, params={"purge": "maybe"})
    call("submit_kernel", 400, content=(f'{{"train": "{train.id}", "arch": ' + "[" * 20000
                                        + "]" * 20000 + "}").encode(),
         headers={**h, "Content-Type": "application/json"})
    call("submit_kernel", 401, json_body=tiny, headers=no_key)
    call("submit_kernel", 404, json_body={**tiny, "train": "d-nosuchdataset00"})
    call("submit_kernel", 413, json_body={**tiny, "arch": {"layers": [_nested(1)] * 3000}})
    call("submit_kernel", 422, json_body={**tiny, "arch": {"layers": [{"type": "bogus"}]}})
    stalled("submit_kernel")
    for op in ("get_kernel", "kernel_events", "verify_kernel"):
        call(op, 200, path_args=K)
        call(op, 401, path_args=K, headers=no_key)
        call(op, 404, path_args=K, headers=ho)
    ev = httpx.get(f"{svc.url}/v1/kernels/{job.id}/events", headers=h).text
    assert ev.startswith("event: end") and '"status": "succeeded"' in ev
    for op in ("get_block", "kernel_preview"):
        call(op, 200, path_args=K)
        call(op, 401, path_args=K, headers=no_key)
        call(op, 404, path_args=K, headers=ho)
        call(op, 422, path_args=K, params={"kind": "bogus"})
    call("resume_kernel", 401, path_args=K, headers=no_key)
    call("resume_kernel", 404, path_args=K, headers=ho)
    # a job whose store lost its group: verify finds nothing stored
    lost = call("submit_kernel", 202, json_body=tiny).json()["id"]
    with Client(svc.url, key) as c:
        c.job(lost).wait(timeout=120, progress=False)
    shutil.rmtree(svc.root / "store" / "kernels" / lost)
    call("verify_kernel", 409, path_args={"kernel_id": lost})
    # solves
    call("submit_solve", 202, json_body={"kernel": job.id, "lambdas": [0.5]})
    with Client(svc.url, key) as c:
        for s in c.solves():
            s.wait(timeout=120)
    call("submit_solve", 400, content=('{"kernel": ' + "[" * 20000 + "]" * 20000 + "}")
         .encode(), headers={**h, "Content-Type": "application/json"})
    call("submit_solve", 401, json_body={"kernel": job.id}, headers=no_key)
    call("submit_solve", 404, json_body={"kernel": "k-nosuchjob000000"})
    call("submit_solve", 413, json_body={"kernel": job.id, "labels": [1.5] * 20000})
    call("submit_solve", 422, json_body={"kernel": job.id, "lambdas": [-1.0]})
    stalled("submit_solve")
    for op in ("get_solve", "solve_events"):
        call(op, 200, path_args=S)
        call(op, 401, path_args=S, headers=no_key)
        call(op, 404, path_args=S, headers=ho)
    for op in ("get_coefficients", "get_predictions", "get_variances"):
        args = {"solve_id": var.id} if op == "get_variances" else S
        call(op, 200, path_args=args)
        call(op, 401, path_args=args, headers=no_key)
        call(op, 404, path_args=args, headers=ho)
        call(op, 422, path_args=args, params={"lambda_index": -1})
    # a job still running: its blocks, preview and dataset are busy, its solves refused
    with Client(svc.url, key) as c:
        big = c.upload(rng.standard_normal((300, 16, 16, 1)))
    running = call("submit_kernel", 202, json_body={"train": big.id, "arch": CONV,
                                                    "tile": 10}).json()["id"]
    R = {"kernel_id": running}
    t0 = time.monotonic()
    while httpx.get(f"{svc.url}/v1/kernels/{running}", headers=h).json()["status"] != "running":
        assert time.monotonic() - t0 < 60
        time.sleep(0.2)
    call("resume_kernel", 409, path_args=R)
    call("get_block", 409, path_args=R, params={"rows": "290:300", "cols": "290:300"})
    call("kernel_preview", 409, path_args=R)
    call("delete_dataset", 409, path_args={"dataset_id": big.id})
    call("submit_solve", 409, json_body={"kernel": running})
    # a solve that runs for long (unpreconditioned CG to 1e-15 at λ = 0): the kernel it
    # reads cannot be purged, its arrays are not there yet; and the key is at its limit
    slow = call("submit_solve", 202, json_body={
        "kernel": job.id, "tol": 1e-15, "maxiter": 100000, "preconditioner": "none",
        "lambdas": [0.0]}).json()["id"]
    call("cancel_kernel", 409, path_args=K, params={"purge": "true"})
    call("get_coefficients", 409, path_args={"solve_id": slow})
    call("get_predictions", 409, path_args={"solve_id": slow})
    call("get_variances", 409, path_args={"solve_id": slow})
    for op, body in (("submit_kernel", tiny), ("submit_solve", {"kernel": job.id})):
        r = call(op, 429, json_body=body)
        assert 1 <= int(r.headers["Retry-After"]) <= 3600
    r = call("resume_kernel", 429, path_args=K)
    assert int(r.headers["Retry-After"]) >= 1
    # event streams: at most MAX_STREAMS_PER_KEY open per key; a closed one frees its slot
    with httpx.Client(timeout=60, headers=h) as streams, contextlib.ExitStack() as held:
        for _ in range(MAX_STREAMS_PER_KEY):
            r = held.enter_context(streams.stream("GET", f"{svc.url}/v1/kernels/{running}"
                                                  "/events"))
            assert r.status_code == 200
        r = call("kernel_events", 429, path_args=R)
        assert r.json()["field"] == "events" and int(r.headers["Retry-After"]) >= 1
        call("solve_events", 429, path_args={"solve_id": slow})
    t0 = time.monotonic()
    while (r := httpx.get(f"{svc.url}/v1/solves/{sol.id}/events", headers=h)).status_code \
            == 429:
        assert time.monotonic() - t0 < 30, "closed streams keep their slots"
        time.sleep(0.5)
    assert r.status_code == 200
    call("cancel_kernel", 200, path_args=R)
    # the scheduler goes away: not ready, and when to ask again
    for p in svc.procs:
        p.kill()
    t0 = time.monotonic()
    while (r := httpx.get(f"{svc.url}/readyz", timeout=60)).status_code == 200:
        assert time.monotonic() - t0 < 90, r.text
        time.sleep(1)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["status"] == "unavailable"
    got["readyz"].add(503)

    missing = {op: sorted(listed[op] - got[op]) for op in listed if listed[op] - got[op]}
    unlisted = {op: sorted(got[op] - listed[op]) for op in got if got[op] - listed[op]}
    assert not missing, f"listed but never answered: {missing}"
    assert not unlisted, f"answered but not listed: {unlisted}"

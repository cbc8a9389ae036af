"""Corruption of a finished kernel through the real service: deleted, truncated and
bit-flipped chunks and a lost marker are answered by name (never as numbers), listed by
verify, and repaired by resume to a bit-identical kernel; plus the store's hygiene."""

from __future__ import annotations

import io
import stat
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ntkcompute import architectures as A
from ntkcompute.client import Client, JobFailed
from ntkcompute.datasets import digits
from tests.damage import flip_bit, truncate

from .test_api import headers


def _chunk(service, job: str, part: str, array: str, *coords: int) -> Path:
    return Path(service.store, "kernels", job, part, array, "c", *map(str, coords))


@pytest.fixture(scope="module")
def fresh(service):
    """A finished FC job on 200 + 100 digits rows, tile 50: 10 train and 8 test tiles."""
    x, y = digits()
    x = x.reshape(len(x), -1)
    with Client(service.url, service.key_b) as c:
        train, test = c.upload(x[:200], y[:200]), c.upload(x[200:300], y[200:300])
        job = c.kernel(train, A.fc(3), test=test, tile=50).wait(timeout=300, progress=False)
        original = {(k, p): job.to_numpy(k, p) for k in ("ntk", "nngp")
                    for p in ("train", "test")}
    return job.id, original


def test_damage_is_named_listed_and_repaired(service, fresh):
    jid, original = fresh
    h = headers(service.key_b)
    base = f"{service.url}/v1/kernels/{jid}"
    root = str(service.root)

    _chunk(service, jid, "train", "ntk", 0, 1).unlink()
    truncate(_chunk(service, jid, "train", "nngp", 2, 2), lose=9)
    flip_bit(_chunk(service, jid, "test", "ntk", 1, 3))

    def block(**params) -> httpx.Response:
        return httpx.get(f"{base}/blocks", params=params, headers=h, timeout=30)

    r = block(kind="ntk", rows="0:50", cols="40:100")
    assert r.status_code == 409 and r.json()["field"] == "tile", r.text
    assert "train tile [0, 1] of ntk is damaged: missing" in r.json()["detail"]
    r = block(kind="nngp", rows="100:150", cols="100:150")
    assert r.status_code == 409 and "train tile [2, 2] of nngp" in r.json()["detail"]
    r = block(kind="ntk", part="test", rows="60:70", cols="160:200")
    assert r.status_code == 409 and "test tile [1, 3] of ntk" in r.json()["detail"]
    assert "checksum" in r.json()["detail"]
    r = block(kind="ntk", rows="50:150", cols="0:50")  # untouched tiles still serve
    assert r.status_code == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content)),
                                  original[("ntk", "train")][50:150, :50])

    # a solve reads the damaged tile and fails naming it: never "succeeded" on zeros
    with Client(service.url, service.key_b) as c:
        with pytest.raises(JobFailed) as e:
            c.solve(jid, 1e-3, kind="ntk").wait(timeout=120)
        assert "ntk chunk [0, 1]" in str(e.value) and root not in str(e.value)

    _chunk(service, jid, "train", "done", 3, 3).unlink()  # a lost marker
    r = block(kind="ntk", rows="150:200", cols="150:200")
    assert r.status_code == 409 and r.json()["field"] == "tile", r.text
    assert "train tile [3, 3] of done is damaged: marker lost" in r.json()["detail"]

    rep = httpx.post(f"{base}/verify", headers=h, timeout=120)
    assert rep.status_code == 200, rep.text
    rep = rep.json()
    assert rep["ok"] is False and rep["status"] == "succeeded"
    train, test = rep["parts"]["train"], rep["parts"]["test"]
    assert sorted((b["array"], b["chunk"]) for b in train["bad"]) == [
        ("nngp", [2, 2]), ("ntk", [0, 1])]
    assert train["pending"] == [[3, 3]]
    assert [(b["array"], b["chunk"]) for b in test["bad"]] == [("ntk", [1, 3])]
    assert test["ok"] is False and test["pending"] == []
    assert root not in str(rep)

    r = httpx.post(f"{base}/resume", headers=h)
    assert r.status_code == 202, r.text
    with Client(service.url, service.key_b) as c:
        job = c.job(jid).wait(timeout=300, progress=False)
        # exactly the damaged tiles: train (0, 1), (2, 2), (3, 3) and test (1, 3)
        assert job.info["tiles_total"] == 18 and job.info["tiles_reused"] == 14
        for (k, p), a in original.items():
            assert np.array_equal(job.to_numpy(k, p), a), (k, p)  # bit-identical
        assert job.verify()["ok"]
        sol = c.solve(job, 1e-3).wait(timeout=120)
        assert sol.metrics["best"]["accuracy"] > 0.8


def test_store_and_db_are_private_and_readyz_does_not_write(service, fresh):
    jid, _ = fresh
    mode = lambda p: stat.S_IMODE(Path(p).stat().st_mode)  # noqa: E731
    if service.db.startswith("sqlite:///"):
        assert mode(service.db.removeprefix("sqlite:///")) == 0o600
    assert mode(service.store) == 0o700
    assert mode(Path(service.store, "kernels", jid)) == 0o700
    assert mode(_chunk(service, jid, "train", "ntk", 0, 0)) == 0o600
    probe = Path(service.store, "_readyz", "zarr.json")
    httpx.get(f"{service.url}/readyz").raise_for_status()
    before = probe.stat().st_mtime_ns
    time.sleep(0.05)
    for _ in range(5):
        assert httpx.get(f"{service.url}/readyz").status_code == 200
    assert probe.stat().st_mtime_ns == before

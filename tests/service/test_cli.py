"""``ntk keys create / submit / status / fetch`` against the running service."""

from __future__ import annotations

import json
import subprocess

import numpy as np

import ntkcompute as nc
from ntkcompute import architectures as A

from .conftest import NTK, make_key


def ntk(*args: str, key: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NTK, *args], capture_output=True, text=True, timeout=300,
                          env={"NTK_URL": url, "NTK_API_KEY": key, "PATH": "/usr/bin:/bin"})


def test_submit_status_fetch(service, tmp_path):
    key = make_key(service.db, "cli")
    assert key.startswith("ntk_")
    rng = np.random.default_rng(5)
    x, xt = rng.standard_normal((60, 10)), rng.standard_normal((20, 10))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "xt.npy", xt)
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 60))
    (tmp_path / "arch.json").write_text(json.dumps(A.fc(2)))
    out = ntk("submit", "--arch", str(tmp_path / "arch.json"), "--train", str(tmp_path / "x.npy"),
              "--train-labels", str(tmp_path / "y.npy"), "--test", str(tmp_path / "xt.npy"),
              "--wait", "--quiet", key=key, url=service.url)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["shape"] == {"train": [60, 60],
                                                             "test": [20, 60]}
    st = ntk("status", job["id"], key=key, url=service.url)
    assert st.returncode == 0 and json.loads(st.stdout)["tiles_done"] == job["tiles_total"]
    f = ntk("fetch", job["id"], "--out", str(tmp_path / "k.npy"), "--part", "test",
            "--kind", "nngp", key=key, url=service.url)
    assert f.returncode == 0, f.stderr
    np.testing.assert_allclose(np.load(tmp_path / "k.npy"),
                               nc.kernel(A.fc(2), xt, x)["nngp"], rtol=1e-12)
    f = ntk("fetch", job["id"], "--out", str(tmp_path / "b.npy"), "--rows", "5:9", "--cols",
            "0:3", key=key, url=service.url)
    assert np.load(tmp_path / "b.npy").shape == (4, 3)
    # errors: the server's message, a non-zero exit, no traceback
    bad = ntk("status", "k-nope", key=key, url=service.url)
    assert bad.returncode == 1 and "HTTP 404" in bad.stderr and "Traceback" not in bad.stderr
    bad = ntk("status", job["id"], key="ntk_x_y", url=service.url)
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr
    bad = ntk("status", job["id"], key="", url=service.url)
    assert bad.returncode == 2 and "api_key" in bad.stderr

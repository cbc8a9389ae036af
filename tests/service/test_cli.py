"""``ntk keys create / submit / solve / status / list / fetch`` against the running service."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

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
    # ntk list follows the pages: with 1 row per request it still lists every row
    rows = ntk("list", "datasets", "--json", "--page", "1", key=key, url=service.url)
    assert rows.returncode == 0, rows.stderr
    assert len([json.loads(line) for line in rows.stdout.splitlines()]) == 2  # train, test
    table = ntk("list", "kernels", key=key, url=service.url).stdout.splitlines()
    assert table[0].split() == ["id", "status", "tiles_done", "tiles_total", "method",
                                "created"]
    assert table[1].split()[:2] == [job["id"], "succeeded"] and len(table) == 2
    bad = ntk("status", "k-nope", key=key, url=service.url)
    assert bad.returncode == 1 and "HTTP 404" in bad.stderr and "Traceback" not in bad.stderr
    bad = ntk("status", job["id"], key="ntk_x_y", url=service.url)
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr
    bad = ntk("status", job["id"], key="", url=service.url)
    assert bad.returncode == 2 and "api_key" in bad.stderr


def test_solve_a_kernel_job_of_the_service_then_fetch_it(service, tmp_path):
    """``ntk solve --kernel k-...`` creates a remote solve and prints its id ``s-...``, which
    ``ntk status`` and ``ntk fetch`` then take; with ``--wait`` it prints the metrics."""
    from ntkcompute.regression import kernel_ridge, one_hot

    key = make_key(service.db, "cli-solve")
    rng = np.random.default_rng(6)
    x, xt = rng.standard_normal((50, 8)), rng.standard_normal((20, 8))
    y, yt = rng.integers(0, 3, 50), rng.integers(0, 3, 20)
    for name, a in (("x", x), ("xt", xt), ("y", y), ("yt", yt)):
        np.save(tmp_path / f"{name}.npy", a)
    (tmp_path / "arch.json").write_text(json.dumps(A.fc(2)))
    out = ntk("submit", "--arch", str(tmp_path / "arch.json"), "--train", str(tmp_path / "x.npy"),
              "--train-labels", str(tmp_path / "y.npy"), "--test", str(tmp_path / "xt.npy"),
              "--test-labels", str(tmp_path / "yt.npy"), "--dtype", "float64", "--wait",
              "--quiet", key=key, url=service.url)
    assert out.returncode == 0, out.stderr
    kid = json.loads(out.stdout)["id"]
    # --wait: the solve as it ended, with its metrics
    done = ntk("solve", "--kernel", kid, "--lambda", "1e-3", "--relative", "--solver",
               "direct", "--variance", "--wait", key=key, url=service.url)
    assert done.returncode == 0, done.stderr
    solved = json.loads(done.stdout)
    assert solved["id"].startswith("s-") and solved["status"] == "succeeded"
    k = nc.kernel(A.fc(2), x)["ntk"]
    ref = kernel_ridge(k, one_hot(y, 3), nc.kernel(A.fc(2), xt, x)["ntk"], lam=1e-3,
                       relative=True)
    acc = float(np.mean(ref.argmax(1) == yt))
    assert solved["metrics"]["best"]["accuracy"] == pytest.approx(acc)
    f = ntk("fetch", solved["id"], "--out", str(tmp_path / "p.npy"), key=key, url=service.url)
    assert f.returncode == 0, f.stderr
    np.testing.assert_allclose(np.load(tmp_path / "p.npy").reshape(ref.shape), ref,
                               rtol=1e-8, atol=1e-10)
    # --variance: the NTK ensemble's predictive variances, fetched as an array
    f = ntk("fetch", solved["id"], "--out", str(tmp_path / "v.npy"), "--what", "variances",
            key=key, url=service.url)
    assert f.returncode == 0, f.stderr
    v = np.load(tmp_path / "v.npy")
    assert v.shape == (1, len(xt)) and np.all(v > 0)
    assert solved["metrics"]["best"]["mean_variance"] == pytest.approx(float(v.mean()))
    # ntk plot: the job's kernel; a solve without analyses has nothing to draw (exit 2)
    p = ntk("plot", kid, "--out", str(tmp_path / "k.png"), key=key, url=service.url)
    assert p.returncode == 0 and json.loads(p.stdout)["panels"] == ["heatmap", "spectrum"], \
        p.stderr
    p = ntk("plot", solved["id"], "--out", str(tmp_path / "s.png"), key=key, url=service.url)
    assert p.returncode == 2 and "nothing to draw" in p.stderr, p.stderr
    # without --wait: the solve as created; its id works with status, then fetch
    started = ntk("solve", "--kernel", kid, "--lambda", "1e-2,1e-1", "--labels",
                  str(tmp_path / "y.npy"), "--precond", "randomized", key=key, url=service.url)
    assert started.returncode == 0, started.stderr
    sid = json.loads(started.stdout)["id"]
    assert sid.startswith("s-") and json.loads(started.stdout)["status"] in ("queued",
                                                                             "running")
    for _ in range(300):
        st = json.loads(ntk("status", sid, key=key, url=service.url).stdout)
        if st["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert st["status"] == "succeeded", st
    f = ntk("fetch", sid, "--out", str(tmp_path / "c.npy"), "--what", "coefficients",
            key=key, url=service.url)
    assert f.returncode == 0 and np.load(tmp_path / "c.npy").shape == (2, 50, 3)
    # refused here, exit 2 in one line: store-only flags, a bad λ; the server's 4xx: exit 1
    for extra, word in ((["--cross", "out/cross"], "--cross"), (["--save", "s"], "--save"),
                        (["--lambda", "1e-3,x"], "--lambda")):
        args = ["solve", "--kernel", kid, "--lambda", "1e-3", *extra]
        bad = ntk(*args, key=key, url=service.url)
        assert bad.returncode == 2 and word in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    bad = ntk("solve", "--kernel", kid, "--lambda", "1e-3", "--labels",
              str(tmp_path / "yt.npy"), key=key, url=service.url)
    assert bad.returncode == 1 and "HTTP 422" in bad.stderr and "labels" in bad.stderr

"""Numerics through the real server: one λ convention at every solver entry point, and
solves on an indefinite kernel that fail naming the cause (never a library error)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.cg import cg
from ntkcompute.client import Client, JobFailed
from ntkcompute.datasets import digits
from ntkcompute.regression import Eigen, kernel_ridge, one_hot, solve_direct
from workers import solve as workers_solve
from workers.cluster import get_client, shutdown
from workers.store import open_group, read

from .conftest import NTK

ARCH = A.cntk(2)


@pytest.fixture(scope="module")
def client(service):
    with Client(service.url, service.key_a) as c:
        yield c


@pytest.fixture(scope="module")
def rows():
    x, y = digits()
    return x[:160], y[:160]


def _job(client, rows):
    x, y = rows
    return client.kernel(client.upload(x, y), ARCH, kernels=["ntk"]).wait(
        timeout=300, progress=False)


@pytest.fixture(scope="module")
def shared_job(client, rows):
    """One stored kernel that both λ conventions solve (neither test changes it)."""
    return _job(client, rows)


@pytest.fixture(scope="module")
def dask_client():
    """A local Dask cluster for the in-process ``workers.solve`` calls (one, not one per
    call)."""
    c, cluster = get_client(n_workers=1, reuse_default=False)
    yield c
    shutdown(c, cluster)


@pytest.mark.parametrize("relative", [False, True])
def test_every_solver_entry_point_takes_lambda_the_same_way(service, client, rows, tmp_path,
                                                           relative, shared_job, dask_client):
    x, y = rows
    job = shared_job
    url = f"{service.store}/kernels/{job.id}/train"
    K = np.asarray(read(open_group(url, mode="r")["ntk"]), dtype=np.float64)
    np.testing.assert_allclose(K, nc.kernel(ARCH, x, get="ntk")["ntk"], rtol=1e-12)
    Y = one_hot(y, 10)
    lam = 1e-3 if relative else 1e-3 * float(np.mean(np.diag(K)))  # the same system
    ref = solve_direct(K, Y, 1e-3 * float(np.mean(np.diag(K))))
    md = float(np.mean(np.diag(K)))
    got = {
        "solve_direct": solve_direct(K, Y, lam, relative=relative),
        "Eigen.solve": Eigen.of(K).solve(Y, lam, relative=relative),
        "Eigen.sweep": Eigen.of(K).sweep(Y, [lam], relative=relative)[0],
        "kernel_ridge": kernel_ridge(K, Y, np.eye(len(K)), lam=lam, relative=relative),
        "cg": cg(lambda V: K @ V, Y, lam, tol=1e-12, scale=md, relative=relative).x,
        "workers direct": workers_solve(url, y, lam, solver="direct", save=None,
                                        relative=relative, client=dask_client).coefficients,
        "workers cg": workers_solve(url, y, lam, solver="cg", tol=1e-12, save=None,
                                    relative=relative, client=dask_client).coefficients,
    }
    for solver in ("direct", "cg"):
        got[f"REST {solver}"] = client.solve(job, lam, relative=relative, solver=solver,
                                             tol=1e-12).wait(timeout=120).coefficients(0)
    np.save(tmp_path / "y.npy", y)
    cli = subprocess.run([*NTK, "solve", "--kernel", url, "--labels", str(tmp_path / "y.npy"),
                          "--lambda", repr(lam), "--solver", "direct", "--save", f"cli-{relative}",
                          *(["--relative"] if relative else [])],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["lambda"] == [pytest.approx(1e-3 * md, rel=1e-12)]
    saved = open_group(url, mode="r")[f"solves/cli-{relative}/coefficients"]
    got["CLI direct"] = np.asarray(read(saved))
    for name, coef in got.items():
        err = np.abs(coef - ref).max() / np.abs(ref).max()
        assert err < 1e-8, (name, err)


def _indefinite(url: str, low: float) -> np.ndarray:
    """Move the stored kernel's smallest eigenvalue to ``low``·mean diag (through Zarr, so
    its checksums are those of the new numbers)."""
    arr = open_group(url, mode="r+")["ntk"]
    K = np.asarray(read(arr), dtype=np.float64)
    s, U = np.linalg.eigh(K)
    s[0] = low * float(np.mean(np.diag(K)))
    bad = (U * s) @ U.T
    arr[...] = (bad + bad.T) / 2
    return bad


def test_solves_on_an_indefinite_kernel_fail_naming_the_cause(service, client, rows):
    job = _job(client, rows)
    _indefinite(f"{service.store}/kernels/{job.id}/train", -1e-3)
    cases = [dict(solver="cg", preconditioner=p)
             for p in ("nystrom", "randomized", "jacobi", "none")]
    cases += [dict(solver="direct"), dict(solver="direct", lambdas=[1e-2, 1e-5])]
    for case in cases:
        lams = case.pop("lambdas", 1e-5)
        sol = client.solve(job, lams, relative=True, maxiter=5000, **case)
        with pytest.raises(JobFailed) as e:
            sol.wait(timeout=120)
        msg = str(e.value)
        assert "NotPositiveDefinite" in msg and "float64" in msg and "raise λ" in msg, msg
        assert "Traceback" not in msg and "LinAlgError" not in msg and "scipy" not in msg
        if case["solver"] == "cg" and "iteration" in msg:  # stopped early, not at maxiter
            it = int(msg.split("at iteration ")[1].split(";")[0].split(":")[0])
            assert it < 200, msg
    # the same kernel with λ above -λmin solves, and the metrics say what was found
    ok = client.solve(job, [1e-2, 1e-1], relative=True, solver="direct").wait(timeout=120)
    d = ok.metrics["definiteness"]
    assert d["negative_eigenvalues"] == 1
    assert d["min_eigenvalue_relative"] == pytest.approx(-1e-3, rel=1e-3)  # diag moved a bit
    est = client.solve(job, 1e-2, relative=True, min_eigenvalue=True).wait(timeout=120)
    lanczos = est.info["analyses"]["min_eigenvalue"]
    assert lanczos["exact"] is False
    assert lanczos["relative"] == pytest.approx(-1e-3, rel=1e-3)

"""The service end to end on a cluster whose Dask comms are mutual TLS: a TLS ``ntk scheduler``,
``ntk worker --nprocs 2`` with TLS, and ``ntk serve`` presenting the client certificate."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import httpx
import numpy as np
import pytest
from distributed import Client as DaskClient

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.client import Client
from ntkcompute.datasets import digits
from ntkcompute.regression import one_hot, solve_direct
from workers.certs import write_bundle
from workers.cluster import TLS_ENV, make_security

from .conftest import NTK, Service, free_port, make_key


def _plain_env() -> dict[str, str]:
    drop = {*TLS_ENV.values(), "NTK_SCHEDULER_ADDRESS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _flags(certs, role: str) -> list[str]:
    return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{role}.pem"),
            "--tls-key", str(certs / f"{role}-key.pem")]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-service")
    certs = root / "certs"
    write_bundle(certs)
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    env = _plain_env()
    procs = [subprocess.Popen([*NTK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-port", "0", *_flags(certs, "scheduler")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        t0 = time.monotonic()
        while True:
            assert procs[0].poll() is None and time.monotonic() - t0 < 60
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        procs.append(subprocess.Popen([*NTK, "worker", "--scheduler", address, "--nprocs", "2",
                                       *_flags(certs, "worker")], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sec = make_security(certs / "ca.pem", certs / "client.pem", certs / "client-key.pem")
        with DaskClient(address, security=sec, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        yield root, certs, address
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def test_service_on_tls_cluster_end_to_end(tls_cluster):
    root, certs, address = tls_cluster
    env = {"NTK_TLS_CA_FILE": str(certs / "ca.pem"), "NTK_TLS_CERT": str(certs / "client.pem"),
           "NTK_TLS_KEY": str(certs / "client-key.pem")}
    svc = Service(root, env=env, scheduler=address).start()
    try:
        ready = httpx.get(f"{svc.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["status"] == "ok"
        assert ready.json()["checks"]["scheduler"] == "ok (2 workers)"
        key = make_key(svc.db)
        x, y = digits()
        x = x.reshape(len(x), -1)
        xtr, ytr, xte, yte = x[:200], y[:200], x[200:260], y[200:260]
        arch = A.fc(2)
        with Client(svc.url, key) as c:
            train, test = c.upload(xtr, ytr), c.upload(xte, yte)
            job = c.kernel(train, arch, test=test, kernels=("ntk",), tile=50)
            job.wait(timeout=120, progress=False)
            info = job.info
            assert info["status"] == "succeeded" and info["tiles_done"] == info["tiles_total"] > 1
            K, Kx = job.to_numpy("ntk"), job.to_numpy("ntk", "test")
            np.testing.assert_allclose(K, nc.kernel(arch, xtr, get="ntk")["ntk"],
                                       rtol=1e-12, atol=0)
            np.testing.assert_allclose(Kx, nc.kernel(arch, xte, xtr, get="ntk")["ntk"],
                                       rtol=1e-12, atol=0)
            lam = 1e-2 * float(np.mean(np.diag(K)))
            sol = c.solve(job, lam, tol=1e-10).wait(timeout=120)
            ref = solve_direct(K, one_hot(ytr, 10), lam)
            assert sol.metrics["per_lambda"][0]["converged"]
            np.testing.assert_allclose(sol.coefficients(0), ref, atol=1e-6)
            acc = float(np.mean((Kx @ ref).argmax(1) == yte))
            assert sol.metrics["best"]["accuracy"] == pytest.approx(acc) and acc > 0.7
    finally:
        svc.stop()
    assert svc.proc.returncode is not None


def test_serve_tls_flags(tls_cluster, tmp_path):
    _root, certs, address = tls_cluster
    env = {**_plain_env(), "NTK_STORE": str(tmp_path / "store"),
           "NTK_DB_URL": f"sqlite:///{tmp_path / 'ntk.db'}"}

    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*NTK, "serve", "--port", str(free_port()), *args], env=env,
                              capture_output=True, text=True, timeout=60)

    r = serve("--scheduler", address)
    assert r.returncode == 2 and "needs TLS" in r.stderr
    r = serve("--scheduler", address, "--tls-cert", str(certs / "client.pem"))
    assert r.returncode == 2 and "--tls-ca-file" in r.stderr
    missing = str(tmp_path / "missing-key.pem")
    r = serve("--scheduler", address, *_flags(certs, "client")[:4], "--tls-key", missing)
    assert r.returncode == 2 and missing in r.stderr
    # the flags alone (no NTK_TLS_*) get the service onto the TLS cluster
    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        p = subprocess.Popen([*NTK, "serve", "--port", str(port), "--scheduler", address,
                              *_flags(certs, "client")], env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        t0, body = time.monotonic(), None
        while time.monotonic() - t0 < 60 and p.poll() is None:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
                if body["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert body is not None and body["checks"]["scheduler"] == "ok (2 workers)", \
            (tmp_path / "serve.log").read_text()[-2000:]
    finally:
        p.terminate()
        p.wait(30)

"""Kill the service process (SIGKILL) mid-job on a mutual-TLS cluster with checksummed
tiles: a new process resumes the job from the store's tile markers, recomputes no finished
tile, and produces the same kernel, every chunk of which verifies."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import zarr
from distributed import Client as DaskClient

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.client import Client
from workers.certs import write_bundle
from workers.cluster import make_security

from .conftest import NTK, Service, free_port, make_key


def _dask(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + args[0],
                             *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ntk(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*NTK, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _tls(certs, role: str) -> list[str]:
    return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{role}.pem"),
            "--tls-key", str(certs / f"{role}-key.pem")]


def _done_tiles(url: str) -> int:
    g = zarr.open_group(url, mode="r")
    d = g["done"][...]
    return int(np.triu(d).sum())


def test_service_killed_mid_job_resumes_without_recomputing(tmp_path):
    certs = tmp_path / "certs"
    write_bundle(certs)
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    procs = [_ntk("scheduler", "--host", "127.0.0.1", "--port", str(port),
                  "--dashboard-port", "0", *_tls(certs, "scheduler"))]
    try:
        time.sleep(3)
        procs += [_ntk("worker", "--scheduler", address, "--nprocs", "1",
                       *_tls(certs, "worker")) for _ in range(2)]
        sec = make_security(certs / "ca.pem", certs / "client.pem", certs / "client-key.pem")
        with DaskClient(address, security=sec, timeout=60) as dc:
            dc.wait_for_workers(2, timeout=60)
        env = {"NTK_TLS_CA_FILE": str(certs / "ca.pem"),
               "NTK_TLS_CERT": str(certs / "client.pem"),
               "NTK_TLS_KEY": str(certs / "client-key.pem")}
        svc = Service(tmp_path, env=env, scheduler=address).start()
        key = make_key(svc.db)
        x = np.random.default_rng(7).standard_normal((294, 8, 8, 1))
        arch = A.cntk(4)
        with Client(svc.url, key) as c:
            ds = c.upload(x)
            job = c.kernel(ds, arch, kernels=("ntk",), tile=49)
            total = 6 * 7 // 2  # 6 x 6 tiles of 49 rows, upper triangle
            t0 = time.monotonic()
            while job.refresh()["tiles_done"] < 8 and time.monotonic() - t0 < 120:
                time.sleep(0.1)
            assert job.info["status"] == "running" and job.info["tiles_total"] == total
            svc.kill()  # SIGKILL: no shutdown code runs
            url = f"{svc.store}/kernels/{job.id}/train"
            time.sleep(3)  # tasks already running on the workers finish and mark their tiles
            done_before = _done_tiles(url)
            assert 8 <= done_before < total

        svc.start()
        with Client(svc.url, key) as c:
            job = c.job(job.id).wait(timeout=300, progress=False)
            info = job.info
            assert info["status"] == "succeeded" and info["tiles_total"] == total
            # every tile done before the restart was reused, none recomputed
            print(f"restart: {done_before} tiles marked before, {info['tiles_reused']} reused, "
                  f"{total} total")
            assert info["tiles_reused"] >= done_before
            meta = zarr.open_group(url, mode="r").attrs["ntkcompute"]
            assert meta["status"] == "succeeded"
            K = job.to_numpy("ntk")
            assert job.verify()["ok"]  # every chunk, written by two processes, checks out
        ref = nc.kernel(arch, x, get="ntk")["ntk"]
        np.testing.assert_allclose(K, ref, rtol=1e-12, atol=0)
        svc.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait(30)

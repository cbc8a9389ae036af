"""Kill the service process (SIGKILL) mid-job: a new process resumes the job from the store's
tile markers, recomputes no finished tile, and produces the same kernel."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import zarr

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.client import Client

from .conftest import Service, free_port, make_key


def _dask(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + args[0],
                             *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _done_tiles(url: str) -> int:
    g = zarr.open_group(url, mode="r")
    d = g["done"][...]
    return int(np.triu(d).sum())


def test_service_killed_mid_job_resumes_without_recomputing(tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", str(port),
                   "--dashboard-address", ":0")]
    try:
        time.sleep(2)
        procs += [_dask("worker", address, "--nthreads", "1", "--nworkers", "1",
                        "--no-dashboard") for _ in range(2)]
        svc = Service(tmp_path, scheduler=address).start()
        key = make_key(svc.db)
        x = np.random.default_rng(7).standard_normal((490, 8, 8, 1))
        arch = A.cntk(4)
        with Client(svc.url, key) as c:
            ds = c.upload(x)
            job = c.kernel(ds, arch, kernels=("ntk",), tile=49)
            total = 10 * 11 // 2
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
        ref = nc.kernel(arch, x, get="ntk")["ntk"]
        np.testing.assert_allclose(K, ref, rtol=1e-12, atol=0)
        svc.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait(30)

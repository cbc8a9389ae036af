"""Dask + Zarr overhead and scaling of tiled Gram jobs (issue 3), all ratios from one run.

For each configuration: one in-process ``ntkcompute.kernel`` call (2 threads, the baseline),
then ``workers.compute_gram`` on an embedded LocalCluster of 2 worker processes and of 1,
writing to Zarr on local disk. Prints seconds, the Dask overhead ``dask2 / in-process - 1``,
the scaling ``dask1 / dask2``, the in-process scaling from 1 to 2 threads (NTK only) as the
machine's own ceiling, and the peak RSS of each worker against the task budget.

Run: ``.venv/bin/python bench/gram.py [--quick]``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from typing import Any

import numpy as np
from distributed import Client, LocalCluster

import ntkcompute as nc
import workers
from ntkcompute import architectures as A
from ntkcompute.datasets import digits
from workers.cluster import shutdown


def _peak_rss() -> int:
    """This process's peak RSS in bytes (VmHWM: unlike ru_maxrss it starts afresh at exec,
    so a worker does not inherit the driver's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_dask(arch, x, n_workers: int, memory: int, root: str) -> tuple[float, list[int], Any]:
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        client.run(lambda: None)  # workers up before the clock starts
        t = time.perf_counter()
        job = workers.compute_gram(arch, x, store=f"{root}/w{n_workers}", client=client,
                                   memory=memory).wait()
        sec = time.perf_counter() - t
        rss = sorted(client.run(_peak_rss).values())
        return sec, rss, job
    finally:
        shutdown(client, cluster)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller n")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    memory = 1 << 30
    cases = [("FC ReLU depth 3, d=64", A.fc(3),
              rng.standard_normal((5000 if args.quick else 20000, 64))),
             ("CNTK-GAP depth 4, digits 8x8x1", A.cntk(4), digits()[0][:200 if args.quick
                                                                           else 600])]
    print(f"{'config':32s} {'n':>6s} {'in-proc s':>9s} {'dask2 s':>8s} {'overhead':>8s} "
          f"{'dask1 s':>8s} {'2w/1w':>6s} {'1-thread s':>10s} {'2t/1t':>6s} {'tiles':>5s} "
          f"{'tile':>5s} {'worker peak RSS MB':>20s}")
    for name, arch, x in cases:
        root = tempfile.mkdtemp(prefix="ntkbench-")
        try:
            t = time.perf_counter()
            ref = nc.kernel(arch, x, threads=2)
            t_in = time.perf_counter() - t
            t2, rss2, job = run_dask(arch, x, 2, memory, root)
            k = job.arrays["ntk"]
            tile = k.chunks[0]
            same = all(np.array_equal(k[i:i + tile, j:j + tile], ref["ntk"][i:i + tile,
                                                                           j:j + tile])
                       for i, j in [(0, 0), (0, tile), (len(x) - 1, len(x) - 1)])
            del ref
            t1, _, _ = run_dask(arch, x, 1, memory, root)
            t = time.perf_counter()
            nc.kernel(arch, x, threads=1, get="ntk")  # does 2 threads scale in-process?
            t_1t = time.perf_counter() - t
            t = time.perf_counter()
            nc.kernel(arch, x, threads=2, get="ntk")
            t_2t = time.perf_counter() - t
            print(f"{name:32s} {len(x):6d} {t_in:9.1f} {t2:8.1f} {t2 / t_in - 1:+8.1%} "
                  f"{t1:8.1f} {t1 / t2:5.2f}x {t_1t:10.1f} {t_1t / t_2t:5.2f}x "
                  f"{job.tiles_total:5d} {tile:5d} "
                  f"{'/'.join(f'{r / 2**20:.0f}' for r in rss2):>20s}"
                  f"{'' if same else '  MISMATCH'}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"task memory budget {memory / 2**20:.0f} MB")


if __name__ == "__main__":
    main()

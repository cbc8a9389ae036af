"""What mutual TLS on Dask comms costs a Gram job, against plain TCP in the same run.

Two 2-worker LocalClusters on loopback live side by side: the embedded one of
``workers.cluster.get_client`` (TLS, ``Security.temporary()``) and a plain-TCP one. Each
configuration runs the same ``workers.compute_gram`` job (fixed tile, a fresh store each
time) alternately on the two, ``--reps`` times each, so load drifts hit both alike. Prints
wall seconds per run, the median of TLS / plain (the baseline), the Dask task count, and
the cluster start times.

Run: ``.venv/bin/python bench/tls.py [--reps 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from typing import Any

import numpy as np
from distributed import Client, LocalCluster

import workers
from ntkcompute import architectures as A
from ntkcompute.datasets import digits
from workers.cluster import get_client, shutdown


def start(mode: str) -> tuple[Client, LocalCluster, float]:
    t = time.perf_counter()
    if mode == "tls":
        client, cluster = get_client(n_workers=2, reuse_default=False)
    else:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1", protocol="tcp://")
        client = Client(cluster)
    assert cluster is not None
    client.wait_for_workers(2)
    client.run(lambda: None)
    client.get_task_stream()  # installs the scheduler's task-stream plugin (counts tasks)
    return client, cluster, time.perf_counter() - t


def run(client: Client, arch: dict, x: np.ndarray, tile: int, store: str
        ) -> tuple[float, int, Any]:
    t0 = time.time()
    t = time.perf_counter()
    job = workers.compute_gram(arch, x, store=store, tile=tile, client=client).wait()
    sec = time.perf_counter() - t
    return sec, len(client.get_task_stream(start=t0)), job


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [("CNTK-GAP depth 2, digits 8x8x1", A.cntk(2), digits()[0][:240], 30),
             ("FC ReLU depth 3, d=64", A.fc(3), rng.standard_normal((2400, 64)), 300)]
    clusters = {}
    for mode in ("plain", "tls"):
        clusters[mode] = start(mode)
        print(f"{mode:5s} cluster up in {clusters[mode][2]:.1f} s at "
              f"{clusters[mode][0].scheduler.address}", flush=True)
    root = tempfile.mkdtemp(prefix="ntkbench-tls-")
    try:
        print(f"{'config':32s} {'n':>5s} {'tile':>4s} {'tiles':>5s} {'tasks':>5s} "
              f"{'plain s':>24s} {'tls s':>24s} {'tls/plain':>9s}")
        for c, (name, arch, x, tile) in enumerate(cases):
            secs: dict[str, list[float]] = {"plain": [], "tls": []}
            tasks, ref = {}, None
            run(clusters["plain"][0], arch, x, tile, f"{root}/warm{c}")  # imports, caches
            for r in range(args.reps):
                order = ("plain", "tls") if r % 2 == 0 else ("tls", "plain")
                for mode in order:
                    sec, ntask, job = run(clusters[mode][0], arch, x, tile,
                                          f"{root}/{c}-{mode}{r}")
                    secs[mode].append(sec)
                    tasks[mode] = ntask
                    k = job.arrays["ntk"][:tile, :tile]
                    ref = k if ref is None else ref
                    assert np.array_equal(k, ref), "TLS and plain runs differ"
                    tiles = job.tiles_total
            ratio = statistics.median(secs["tls"]) / statistics.median(secs["plain"])
            pairs = [t / p for t, p in zip(secs["tls"], secs["plain"], strict=True)]
            print(f"{name:32s} {len(x):5d} {tile:4d} {tiles:5d} {tasks['tls']:5d} "
                  f"{' '.join(f'{s:5.2f}' for s in secs['plain']):>24s} "
                  f"{' '.join(f'{s:5.2f}' for s in secs['tls']):>24s} {ratio:9.3f}"
                  f"   (pairwise {', '.join(f'{p:.3f}' for p in pairs)})", flush=True)
            if tasks["tls"] != tasks["plain"]:
                print(f"  task counts differ: {tasks}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for client, cluster, _ in clusters.values():
            shutdown(client, cluster)
    print("tls/plain: median TLS seconds / median plain-TCP seconds, same run, same machine")


if __name__ == "__main__":
    main()

"""MNIST end to end on the embedded cluster: 30 000 rows (the 20 000 training images of
``../shared/data`` and the official 10 000 test images), kernel + solve, with wall time per
step and peak memory per process.

Steps, all through the public API on one ``LocalCluster`` (2 worker processes, 1 thread
each): the FC-3 NTK train Gram (20 000², symmetric, float64, to a Zarr store on local
disk), the test x train cross kernel (10 000 x 20 000), then ``workers.solve`` with
distributed CG (randomized Nyström, mixed precision, λ = 1e-3·mean diag, tol 1e-6) on the
stored train kernel, predicting the test set from the stored cross kernel. Peak memory is
each process's maximum resident set (``getrusage``), read from the workers at the end.

Run: ``.venv/bin/python bench/endtoend.py [--train 20000] [--test 10000] [--touch 12]``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import tempfile
import time

from distributed import Client, LocalCluster
from solve import touch  # bench/solve.py: the script's folder is on sys.path

import workers
from ntkcompute import architectures as A
from ntkcompute.datasets import mnist
from workers.cluster import shutdown


def peak_rss_gib() -> float:
    """This process's peak resident set, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--touch", type=float, default=0.0,
                    help="GiB of memory to touch once before timing (a fresh VM)")
    args = ap.parse_args()
    if args.touch:
        touch(args.touch)
    xtr, ytr = mnist("train", args.train)
    xte, yte = mnist("test", args.test)
    tr = xtr.reshape(len(xtr), -1) / 255.0
    te = xte.reshape(len(xte), -1) / 255.0
    mu, sd = tr.mean(), tr.std()
    tr, te = (tr - mu) / sd, (te - mu) / sd
    root = tempfile.mkdtemp(prefix="ntk-e2e-")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    try:
        t0 = time.perf_counter()
        train = workers.compute_gram(A.fc(3), tr, store=f"{root}/train", client=client,
                                     get="ntk").wait()
        t1 = time.perf_counter()
        cross = workers.compute_gram(A.fc(3), te, tr, store=f"{root}/cross", client=client,
                                     get="ntk").wait()
        t2 = time.perf_counter()
        res = workers.solve(train.url, ytr, 1e-3, relative=True, solver="cg",
                            preconditioner="randomized", rank=200, precision="mixed",
                            tol=1e-6, cross=cross.url, test_labels=yte, client=client,
                            save=None)
        t3 = time.perf_counter()
        peaks = sorted(client.run(peak_rss_gib).values())
        disk = subprocess.run(["du", "-sh", root], capture_output=True, text=True).stdout
        sec = res.analyses["seconds"]
        pre = res.analyses.get("preconditioner", {})
        print(f"MNIST FC-3 NTK, {args.train} train + {args.test} test rows, 2 workers x 1 "
              "thread")
        print(f"  train Gram {args.train}x{args.train}   {t1 - t0:7.1f} s")
        print(f"  cross {args.test}x{args.train}        {t2 - t1:7.1f} s")
        print(f"  solve + predict           {t3 - t2:7.1f} s  (load {sec['load']:.1f}, "
              f"preconditioner {sec['preconditioner']:.1f} at rank {pre.get('rank')}, "
              f"{res.iterations} iterations {sec['iterations']:.1f}, converged "
              f"{res.converged})")
        print(f"  end to end                {t3 - t0:7.1f} s")
        print(f"  test accuracy             {res.metrics['accuracy']:.4f}")
        print(f"  peak RSS: workers {', '.join(f'{p:.2f}' for p in peaks)} GiB, "
              f"client {peak_rss_gib():.2f} GiB; stores on disk {disk.split()[0]}")
    finally:
        shutdown(client, cluster)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

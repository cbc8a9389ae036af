"""Random-feature benchmark (issue 7): NTK random features against the exact NTK, all in one run.

Parts (``--part error,accuracy,scaling``):

* error: relative Frobenius error ‖ΦΦᵀ − Θ‖/‖Θ‖ of the FC ReLU NTK on held-out rows (MNIST),
  depths 1-3, against m, with the fitted log-log slope (theory: -1/2);
* accuracy: MNIST subset (``../shared/data``, /255 then standardised) test accuracy of
  ridge regression on features at several m, against the exact NTK with a direct solve on
  the same split;
* scaling: wall time against n of the exact path (``workers.compute_gram`` + CG solve) and of
  the feature path (``workers.compute_features`` + ``workers.solve_features``), both on an
  embedded 2-worker cluster with Zarr on local disk, features up to ``--max-n`` synthetic
  rows; peak RSS of this process and of the workers.

Run: ``.venv/bin/python bench/features.py [--part error,accuracy,scaling]``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time

import numpy as np
from distributed import Client, LocalCluster

import ntkcompute as nc
import workers
from ntkcompute import architectures as A
from ntkcompute.datasets import SHARED
from ntkcompute.regression import kernel_ridge, one_hot


def mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.load(SHARED / "mnist" / "mnist_train_first20000.npz")
    x = f["x"][:n].reshape(n, -1).astype(np.float64) / 255.0
    return (x - x.mean()) / x.std(), f["y"][:n]


def error(ms: list[int], n: int = 500) -> None:
    x, _ = mnist(n)
    print(f"\n[error] MNIST, {n} rows, FC ReLU NTK (W_std=√2, b_std=0.1); mean of 2 seeds")
    print(f"{'depth':>5s} " + " ".join(f"{'m=' + str(m):>9s}" for m in ms) + "   slope")
    for depth in (1, 2, 3):
        arch = A.fc(depth, b_std=0.1)
        ref = nc.kernel(arch, x, get="ntk")["ntk"]
        errs = []
        for m in ms:
            e = []
            for seed in (0, 1):
                z = nc.features(arch, x, m, seed=seed, get="ntk")["ntk"]
                e.append(np.linalg.norm(z @ z.T - ref) / np.linalg.norm(ref))
            errs.append(float(np.mean(e)))
        slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
        print(f"{depth:5d} " + " ".join(f"{v:9.4f}" for v in errs) + f"   {slope:+.2f}",
              flush=True)


def accuracy(ms: list[int], n_train: int, n_test: int, lam: float) -> None:
    x, y = mnist(n_train + n_test)
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    arch = A.fc(3, b_std=0.1)
    Y = one_hot(ytr, 10)
    print(f"\n[accuracy] MNIST {n_train} train / {n_test} test, FC-3 NTK, "
          f"λ = {lam:g}·mean(diag)")
    t = time.perf_counter()
    k = nc.kernel(arch, xtr, get="ntk")["ntk"]
    kx = nc.kernel(arch, xte, xtr, get="ntk")["ntk"]
    pred = kernel_ridge(k, Y, kx, reg=lam)
    print(f"exact NTK          acc {np.mean(pred.argmax(1) == yte):.4f}  "
          f"({time.perf_counter() - t:.1f}s)", flush=True)
    for m in ms:
        t = time.perf_counter()
        fm = nc.feature_map(arch, x.shape[1], m, seed=0)
        z, zt = fm(xtr, "ntk")["ntk"], fm(xte, "ntk")["ntk"]
        reg = lam * float(np.mean(np.sum(z * z, axis=1)))
        if z.shape[1] <= z.shape[0]:  # primal: (ZᵀZ + λI) w = ZᵀY
            w = np.linalg.solve(z.T @ z + reg * np.eye(z.shape[1]), z.T @ Y)
        else:  # dual, the same w: Zᵀ (ZZᵀ + λI)⁻¹ Y
            w = z.T @ np.linalg.solve(z @ z.T + reg * np.eye(len(z)), Y)
        acc = np.mean((zt @ w).argmax(1) == yte)
        print(f"features m={m:<6d} acc {acc:.4f}  (D={z.shape[1]}, "
              f"{time.perf_counter() - t:.1f}s)", flush=True)


def _worker_rss(client: Client) -> float:
    def hwm() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1])
        return 0
    return max(client.run(hwm).values()) / 1024


def scaling(exact_ns: list[int], feature_ns: list[int], m: int) -> None:
    arch = A.fc(3, b_std=0.1)
    d = 784
    rng = np.random.default_rng(0)
    print(f"\n[scaling] FC-3 NTK, synthetic d={d} rows, 2 worker processes, Zarr on disk; "
          f"features m={m} (D={2 * m + 1}); solve λ=1e-3·mean(diag)")
    print(f"{'path':9s} {'n':>9s} {'compute s':>10s} {'solve s':>8s} {'total s':>8s} "
          f"{'µs/row':>8s} {'worker peak RSS MB (this path so far)':>14s}")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        root = tempfile.mkdtemp(prefix="ntk-bench-features-")
        try:
            for path, ns in (("exact", exact_ns), ("features", feature_ns)):
                client.restart()  # fresh workers: the RSS column is this path's peak
                for n in ns:
                    # rows past 200 000 go to a Zarr array in blocks, before the clock starts
                    x = rng.standard_normal((n, d)) if n <= 200_000 else \
                        _synthetic(f"{root}/x-{n}", n, d)
                    y = rng.integers(0, 10, n)
                    url = f"{root}/{path}-{n}"
                    t0 = time.perf_counter()
                    if path == "exact":
                        job = workers.compute_gram(arch, x, store=url, client=client,
                                                   get="ntk").wait()
                        t1 = time.perf_counter()
                        diag = float(np.mean(np.diag(job.arrays["ntk"][:2000, :2000])))
                        workers.solve(url, y, 1e-3 * diag, client=client, tol=1e-4,
                                      maxiter=200, save=None)
                    else:
                        job = workers.compute_features(arch, x, store=url, m=m,
                                                       client=client, get="ntk").wait()
                        t1 = time.perf_counter()
                        z = np.asarray(job.arrays["ntk"][:2000])
                        diag = float(np.mean(np.sum(z * z, axis=1)))
                        workers.solve_features(url, y, 1e-3 * diag, client=client)
                    t2 = time.perf_counter()
                    print(f"{path:9s} {n:9d} {t1 - t0:10.1f} {t2 - t1:8.1f} {t2 - t0:8.1f} "
                          f"{(t2 - t0) / n * 1e6:8.1f} {_worker_rss(client):14.0f}",
                          flush=True)
                    shutil.rmtree(url, ignore_errors=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process {rss:.0f} MB")


def _synthetic(url: str, n: int, d: int, rows: int = 50_000) -> object:
    """A Zarr array of n standard-normal rows, written in blocks."""
    import zarr

    g = zarr.open_group(url, mode="w")
    a = g.create_array("x", shape=(n, d), chunks=(rows, d), dtype="float64",
                       compressors=None)
    rng = np.random.default_rng(1)
    for r in range(0, n, rows):
        a[r:r + rows] = rng.standard_normal((min(rows, n - r), d))
    return a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--part", default="error,accuracy,scaling")
    ap.add_argument("--ms", default="256,1024,4096,16384")
    ap.add_argument("--acc-ms", default="1024,4096,16384")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--lam", type=float, default=1e-3)
    ap.add_argument("--exact-ns", default="2500,5000,10000,20000")
    ap.add_argument("--feature-ns", default="10000,100000,1000000")
    ap.add_argument("--m", type=int, default=256)
    args = ap.parse_args()
    parts = args.part.split(",")
    if "error" in parts:
        error([int(v) for v in args.ms.split(",")])
    if "accuracy" in parts:
        accuracy([int(v) for v in args.acc_ms.split(",")], args.train, args.test, args.lam)
    if "scaling" in parts:
        scaling([int(v) for v in args.exact_ns.split(",")],
                [int(v) for v in args.feature_ns.split(",")], args.m)


if __name__ == "__main__":
    main()

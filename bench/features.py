"""Random-feature benchmark (issue 7): NTK random features against the exact NTK, all in one run.

Parts (``--part error,accuracy,scaling``):

* error: relative Frobenius error ‖ΦΦᵀ − Θ‖/‖Θ‖ of the FC ReLU NTK on held-out rows (MNIST),
  depths 1-3, against m, with the fitted log-log slope (theory: -1/2);
* accuracy: MNIST subset (``../shared/data``, /255 then standardised) test accuracy of
  ridge regression on features at several m, against the exact NTK with a direct solve on
  the same split;
* cntk: the convolutional map against the exact CNTK-GAP: Gram error against m on digits
  (depths 1-3); digits accuracy of exact CNTK-GAP-4 and of features at several m; CIFAR-10
  (``../shared/data``) CNTK-GAP-4 features on an embedded 2-worker cluster against the exact
  CNTK-V-4 on the same split, with the exact CNTK-GAP-4's cost measured on a block and
  extrapolated (computing it would take days here);
* seeds (``--seeds N``): the spread over seeds 0..N-1 at fixed m of the CNTK-GAP-2 Gram
  error on digits (``--seed-rows`` images, ``--seed-ms``): min, median, max and max/median of
  the relative Frobenius error ‖ΦΦᵀ − K‖/‖K‖ of the NTK and NNGP features against the exact
  ``nc.kernel`` Gram, and the CPU time of the feature computation per image; a markdown
  table. It calls only ``nc.features(arch, x, m, seed=s)``, so the same script measures older
  code: ``PYTHONPATH=<old checkout> .venv/bin/python bench/features.py --seeds 20``;
* scaling: wall time against n of the exact path (``workers.compute_gram`` + CG solve) and of
  the feature path (``workers.compute_features`` + ``workers.solve_features``), both on an
  embedded 2-worker cluster with Zarr on local disk, features up to ``--max-n`` synthetic
  rows; peak RSS of this process and of the workers.

Accuracy is reported over a λ sweep (λ = c·mean diag, one eigendecomposition per model), the
best c and the accuracy at each.

Run: ``.venv/bin/python bench/features.py [--part error,accuracy,cntk,scaling]``, or
``--seeds 20`` for the seed spread alone.
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
from ntkcompute.regression import one_hot


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


LAMS = (1e-4, 1e-3, 1e-2, 1e-1)


def _sweep(z: np.ndarray, zt: np.ndarray, ytr: np.ndarray, yte: np.ndarray,
           lams: tuple[float, ...] = LAMS) -> list[float]:
    """Test accuracy of ridge regression on features z (n, D) at λ = c·mean ‖z‖², each c in
    ``lams``: one eigendecomposition of the smaller of ZᵀZ and ZZᵀ."""
    Y = one_hot(ytr, 10)
    scale = float(np.mean(np.sum(z * z, axis=1)))
    if z.shape[1] <= z.shape[0]:  # primal: w = (ZᵀZ + λI)⁻¹ ZᵀY
        s, U = np.linalg.eigh(z.T @ z)
        UB = U.T @ (z.T @ Y)
        ws = [U @ (UB / (s + c * scale)[:, None]) for c in lams]
    else:  # dual, the same w: Zᵀ (ZZᵀ + λI)⁻¹ Y
        s, U = np.linalg.eigh(z @ z.T)
        UY = U.T @ Y
        ws = [z.T @ (U @ (UY / (s + c * scale)[:, None])) for c in lams]
    return [float(np.mean((zt @ w).argmax(1) == yte)) for w in ws]


def _kernel_sweep(k: np.ndarray, kx: np.ndarray, ytr: np.ndarray, yte: np.ndarray,
                  lams: tuple[float, ...] = LAMS) -> list[float]:
    """The same sweep for an exact kernel: k (n, n), kx (n_test, n)."""
    s, U = np.linalg.eigh(k)
    UY = U.T @ one_hot(ytr, 10)
    scale = float(np.mean(np.diag(k)))
    return [float(np.mean((kx @ (U @ (UY / (s + c * scale)[:, None]))).argmax(1) == yte))
            for c in lams]


def _accs(accs: list[float]) -> str:
    best = int(np.argmax(accs))
    return (f"best {accs[best]:.4f} at c={LAMS[best]:g}  [" +
            " ".join(f"{a:.3f}" for a in accs) + "]")


def accuracy(ms: list[int], n_train: int, n_test: int, cg_m: int | None) -> None:
    x, y = mnist(n_train + n_test)
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    arch = A.fc(3, b_std=0.1)
    print(f"\n[accuracy] MNIST {n_train} train / {n_test} test, FC-3 NTK; ridge at λ = "
          f"c·mean(diag), c in {list(LAMS)}: best, then each")
    t = time.perf_counter()
    k = nc.kernel(arch, xtr, get="ntk")["ntk"]
    kx = nc.kernel(arch, xte, xtr, get="ntk")["ntk"]
    print(f"exact NTK          {_accs(_kernel_sweep(k, kx, ytr, yte))}  "
          f"({time.perf_counter() - t:.1f}s)", flush=True)
    for m in ms:
        t = time.perf_counter()
        fm = nc.feature_map(arch, x.shape[1], m, seed=0)
        z, zt = fm(xtr, "ntk")["ntk"], fm(xte, "ntk")["ntk"]
        print(f"features m={m:<6d} {_accs(_sweep(z, zt, ytr, yte))}  (D={z.shape[1]}, "
              f"{time.perf_counter() - t:.1f}s)", flush=True)
    if cg_m:
        _workers_cg(arch, xtr, ytr, xte, yte, cg_m)


def _workers_cg(arch: dict, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
                yte: np.ndarray, m: int) -> None:
    """The large-D path as the service runs it: features into Zarr on 2 worker processes,
    then CG over Z (no D × D matrix), at c = 1e-2."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        root = tempfile.mkdtemp(prefix="ntk-bench-cg-")
        try:
            t0 = time.perf_counter()
            kw = dict(m=m, seed=0, get="ntk", client=client)
            tr = workers.compute_features(arch, xtr, store=f"{root}/tr", **kw).wait()
            workers.compute_features(arch, xte, store=f"{root}/te", **kw).wait()
            t1 = time.perf_counter()
            z = np.asarray(tr.arrays["ntk"][:2000])
            scale = float(np.mean(np.sum(z * z, axis=1)))
            for c in (1e-2,):
                t2 = time.perf_counter()
                r = workers.solve_features(f"{root}/tr", ytr, c * scale, test=f"{root}/te",
                                           test_labels=yte, method="cg", tol=1e-5,
                                           maxiter=1000, client=client)
                print(f"workers m={m} CG   c={c:g} acc {r.metrics['accuracy']:.4f}  "
                      f"(D={z.shape[1]}, features {t1 - t0:.1f}s, CG {r.iterations} its "
                      f"{time.perf_counter() - t2:.1f}s, converged {r.converged}; worker peak "
                      f"RSS {_worker_rss(client):.0f} MB)", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def cntk(ms: list[int], acc_ms: list[int], cifar_m: int, n_train: int, n_test: int) -> None:
    from ntkcompute.datasets import cifar10, digits, standardize

    x, y = digits()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    sub = x[:300]
    print("\n[cntk-error] digits 8x8x1, 300 rows, CNTK-GAP (3x3 SAME conv, W_std=√2, no bias); "
          "relative Frobenius error of ΦΦᵀ, mean of 2 seeds")
    print(f"{'depth':>5s} " + " ".join(f"{'m=' + str(m):>9s}" for m in ms) + "   slope")
    for depth in (1, 2, 3):
        arch = A.cntk(depth)
        ref = nc.kernel(arch, sub, get="ntk")["ntk"]
        errs = []
        for m in ms:
            e = [np.linalg.norm((z := nc.features(arch, sub, m, seed=s, get="ntk")["ntk"])
                                @ z.T - ref) / np.linalg.norm(ref) for s in (0, 1)]
            errs.append(float(np.mean(e)))
        slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
        print(f"{depth:5d} " + " ".join(f"{v:9.4f}" for v in errs) + f"   {slope:+.2f}",
              flush=True)

    ntr = 1200
    xtr, ytr, xte, yte = x[:ntr], y[:ntr], x[ntr:], y[ntr:]
    arch = A.cntk(4)
    print(f"\n[cntk-accuracy] digits {ntr} train / {len(xte)} test, CNTK-GAP-4 NTK; λ = "
          f"c·mean(diag), c in {list(LAMS)}")
    t = time.perf_counter()
    k = nc.kernel(arch, xtr, get="ntk")["ntk"]
    kx = nc.kernel(arch, xte, xtr, get="ntk")["ntk"]
    te = time.perf_counter() - t
    print(f"exact CNTK-GAP-4   {_accs(_kernel_sweep(k, kx, ytr, yte))}  ({te:.1f}s float64, "
          f"{te / (ntr * (ntr + 1) / 2 + ntr * len(xte)) * 1e3:.3f} ms/entry)", flush=True)
    for m in acc_ms:
        t = time.perf_counter()
        fm = nc.feature_map(arch, xtr.shape[1:], m, seed=0)
        z, zt = (fm(a.astype(np.float32), "ntk")["ntk"].astype(np.float64) for a in (xtr, xte))
        tf = time.perf_counter() - t
        print(f"features m={m:<6d} {_accs(_sweep(z, zt, ytr, yte))}  (D={z.shape[1]}, "
              f"{tf:.1f}s float32, {tf / len(x) * 1e3:.1f} ms/row)", flush=True)

    xc, yc = cifar10(n_train + n_test)
    xtr, xte = standardize(xc[:n_train], xc[n_train:])
    ytr, yte = yc[:n_train], yc[n_train:]
    print(f"\n[cntk-cifar] CIFAR-10 {n_train} train / {n_test} test (../shared/data), "
          "2 worker processes, Zarr on disk")
    gap, flat = A.cntk(4), A.cntk(4, readout="flatten")
    t = time.perf_counter()
    nc.kernel(gap, xtr[:8], get="ntk", threads=1)
    per = (time.perf_counter() - t) / 36
    n_entries = n_train * (n_train + 1) / 2 + n_train * n_test
    print(f"exact CNTK-GAP-4   {per * 1e3:.1f} ms/entry (8x8 block, 1 core): this split's "
          f"{n_entries:,.0f} entries ≈ {per * n_entries / 3600 / 2:.0f} h on 2 cores", flush=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        root = tempfile.mkdtemp(prefix="ntk-bench-cntk-")
        try:
            t = time.perf_counter()
            k, kx = (np.asarray(workers.compute_gram(flat, *xs, store=f"{root}/{name}",
                                                     get="ntk", client=client
                                                     ).wait().arrays["ntk"])
                     for name, xs in (("v", (xtr,)), ("vx", (xte, xtr))))
            tv = time.perf_counter() - t
            print(f"exact CNTK-V-4     {_accs(_kernel_sweep(k, kx, ytr, yte))}  "
                  f"({tv:.1f}s)", flush=True)
            t = time.perf_counter()
            kw = dict(m=cifar_m, seed=0, get="ntk", dtype="float32", client=client)
            tr = workers.compute_features(gap, xtr, store=f"{root}/tr", **kw).wait()
            ts = workers.compute_features(gap, xte, store=f"{root}/te", **kw).wait()
            tf = time.perf_counter() - t
            z, zt = (np.asarray(j.arrays["ntk"], dtype=np.float64) for j in (tr, ts))
            print(f"features CNTK-GAP-4 m={cifar_m} {_accs(_sweep(z, zt, ytr, yte))}  "
                  f"(D={z.shape[1]}, {tf:.1f}s, {tf / (n_train + n_test) * 1e3:.0f} ms/row "
                  f"on 2 workers; worker peak RSS {_worker_rss(client):.0f} MB)", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def seed_spread(ms: list[int], seeds: int, rows: int) -> None:
    """Min, median, max and max/median over seeds 0..seeds-1 of the relative Frobenius error
    of CNTK-GAP-2 NTK and NNGP features at each m, on ``rows`` digits images (float64), with
    the CPU seconds per image of ``nc.features``: a markdown table."""
    from ntkcompute.datasets import digits

    x = digits()[0]
    x = x[np.random.default_rng(0).permutation(len(x))][:rows]  # (rows, 8, 8, 1) in [0, 1]
    arch = A.cntk(2)
    ref = nc.kernel(arch, x)
    print(f"\n[seeds] digits 8x8x1, {rows} images, CNTK-GAP-2 (3x3 SAME conv, W_std=√2, no "
          f"bias); ‖ΦΦᵀ - K‖_F/‖K‖_F over seeds 0..{seeds - 1}; code: {nc.__file__}")
    print("| kernel | m | min | median | max | max/median | CPU s/image |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in ms:
        errs: dict[str, list[float]] = {"ntk": [], "nngp": []}
        cpu = 0.0
        for s in range(seeds):
            t = time.process_time()
            z = nc.features(arch, x, m, seed=s)
            cpu += time.process_time() - t
            for k, e in errs.items():
                e.append(float(np.linalg.norm(z[k] @ z[k].T - ref[k]) / np.linalg.norm(ref[k])))
        for k, e in errs.items():
            med = float(np.median(e))
            print(f"| {k} | {m} | {min(e):.5f} | {med:.5f} | {max(e):.5f} | {max(e) / med:.2f} "
                  f"| {cpu / (seeds * rows):.3f} |", flush=True)


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
    ap.add_argument("--part", default="error,accuracy,cntk,scaling")
    ap.add_argument("--ms", default="256,1024,4096,16384")
    ap.add_argument("--acc-ms", default="1024,4096,16384")
    ap.add_argument("--cg-m", type=int, default=16384,
                    help="m of the workers + CG row of the accuracy part (0: none)")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--cntk-ms", default="64,256,1024")
    ap.add_argument("--cntk-acc-ms", default="128,512,1024")
    ap.add_argument("--cifar-m", type=int, default=256)
    ap.add_argument("--cifar-train", type=int, default=2000)
    ap.add_argument("--cifar-test", type=int, default=1000)
    ap.add_argument("--exact-ns", default="2500,5000,10000,20000")
    ap.add_argument("--feature-ns", default="10000,100000,1000000")
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=0,
                    help="the seed-spread part alone, over this many seeds (0: not run)")
    ap.add_argument("--seed-ms", default="256,1024,4096")
    ap.add_argument("--seed-rows", type=int, default=24)
    args = ap.parse_args()
    if args.seeds:
        seed_spread([int(v) for v in args.seed_ms.split(",")], args.seeds, args.seed_rows)
        return
    parts = args.part.split(",")
    if "error" in parts:
        error([int(v) for v in args.ms.split(",")])
    if "accuracy" in parts:
        accuracy([int(v) for v in args.acc_ms.split(",")], args.train, args.test, args.cg_m)
    if "cntk" in parts:
        cntk([int(v) for v in args.cntk_ms.split(",")],
             [int(v) for v in args.cntk_acc_ms.split(",")], args.cifar_m, args.cifar_train,
             args.cifar_test)
    if "scaling" in parts:
        scaling([int(v) for v in args.exact_ns.split(",")],
                [int(v) for v in args.feature_ns.split(",")], args.m)


if __name__ == "__main__":
    main()

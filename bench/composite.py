"""Composite-architecture benchmark (issue 8): a residual CNTK on CIFAR-10 against the plain
CNTK with the same number of convolutions, through the Dask workers and through the REST
service.

* Dask: ``workers.compute_gram`` on an embedded 2-worker cluster with Zarr on disk, for
  ResNet-V (``architectures.resnet(2, "flatten")``: stem conv + 2 residual blocks, 5 convs)
  and CNTK-V-5 (``architectures.cntk(5, "flatten")``), on the same standardised split; test
  accuracy of kernel ridge regression over a λ sweep (λ = c·mean diag K).
* REST: the same ResNet submitted to ``ntk serve`` (uvicorn, SQLite, its own Dask cluster)
  on the first ``--rest-train`` / ``--rest-test`` rows; its blocks are compared with the Dask
  job's entries for those rows, and a CG solve through the service gives its accuracy.

Run: ``.venv/bin/python bench/composite.py [--train 2000 --test 1000]``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster
from features import LAMS, _accs  # bench/features.py: the λ sweep and its report
from features import _kernel_sweep as _sweep

import workers
from ntkcli.demo import start_service
from ntkcompute import architectures as A
from ntkcompute.client import Client as ApiClient
from ntkcompute.datasets import cifar10, standardize
from ntkcompute.regression import one_hot


def _predictions(k: np.ndarray, kx: np.ndarray, ytr: np.ndarray, c: float = 0.1) -> np.ndarray:
    alpha = np.linalg.solve(k + c * np.mean(np.diag(k)) * np.eye(len(k)), one_hot(ytr, 10))
    return (kx @ alpha).argmax(1)


def _normalised_gap(a: np.ndarray, b: np.ndarray) -> float:
    """‖A/√(diag diagᵀ) − B/√(diag diagᵀ)‖ / ‖B/…‖: how far apart the kernels are as
    correlations (regression is not blind to a kernel's scale, but nearly so here)."""
    na = a / np.sqrt(np.outer(np.diag(a), np.diag(a)))
    nb = b / np.sqrt(np.outer(np.diag(b), np.diag(b)))
    return float(np.linalg.norm(na - nb) / np.linalg.norm(nb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--rest-train", type=int, default=400)
    ap.add_argument("--rest-test", type=int, default=200)
    args = ap.parse_args()
    x, y = cifar10(args.train + args.test)
    xtr, xte = standardize(x[:args.train], x[args.train:])
    ytr, yte = y[:args.train], y[args.train:]
    nets = {"ResNet-V (2 blocks, 5 convs)": A.resnet(2, "flatten"),
            "CNTK-V-5": A.cntk(5, "flatten")}
    print(f"[composite] CIFAR-10 {args.train} train / {args.test} test (../shared/data), "
          f"NTK, λ = c·mean(diag), c in {list(LAMS)}")
    root = tempfile.mkdtemp(prefix="ntk-bench-composite-")
    kernels = {}
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            for j, (label, arch) in enumerate(nets.items()):
                t = time.perf_counter()
                jobs = [workers.compute_gram(arch, *xs, store=f"{root}/{j}{name}", get="ntk",
                                             client=client).wait()
                        for name, xs in (("k", (xtr,)), ("kx", (xte, xtr)))]
                k, kx = (np.asarray(jb.arrays["ntk"]) for jb in jobs)
                sec = time.perf_counter() - t
                kernels[label] = (k, kx)
                print(f"Dask  {label:30s} {_accs(_sweep(k, kx, ytr, yte))}  ({sec:.1f}s, "
                      f"{jobs[0].tiles_total + jobs[1].tiles_total} tiles)", flush=True)
        (ka, kxa), (kb, kxb) = kernels.values()
        pa, pb = (_predictions(k, kx, ytr) for k, kx in ((ka, kxa), (kb, kxb)))
        print(f"the two kernels: correlation-normalised train kernels differ by "
              f"{_normalised_gap(ka, kb):.3f} (relative Frobenius); test predictions agree "
              f"on {np.mean(pa == pb):.3f} of the points at c=0.1", flush=True)

        label, arch = next(iter(nets.items()))
        nt, ns = args.rest_train, args.rest_test
        t0 = time.perf_counter()
        proc, url, key = start_service(Path(root) / "service", 2)
        try:
            with ApiClient(url, key) as c:
                train, test = c.upload(xtr[:nt], ytr[:nt]), c.upload(xte[:ns], yte[:ns])
                t = time.perf_counter()
                job = c.kernel(train, arch, test=test, kernels=("ntk",)).wait(progress=False)
                sec = time.perf_counter() - t
                k, kx = kernels[label]
                diff = max(float(np.abs(job.to_numpy("ntk", "train") - k[:nt, :nt]).max()),
                           float(np.abs(job.to_numpy("ntk", "test") - kx[:ns, :nt]).max()))
                sol = c.solve(job, 1e-3, relative=True, kind="ntk", tol=1e-6).wait()
                m = sol.metrics["per_lambda"][0]
                print(f"REST  {label:30s} {nt} train / {ns} test: kernel {sec:.1f}s, max |REST "
                      f"- Dask| = {diff:.1e}; CG solve at c=0.001: acc {m['accuracy']:.4f} "
                      f"({m['iterations']} its); service total {time.perf_counter() - t0:.1f}s",
                      flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

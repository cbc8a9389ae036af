"""``make demo``: the product end to end on this machine.

Starts the service (``ntk serve``: uvicorn, an embedded Dask LocalCluster, SQLite, Zarr in a
temporary directory), makes an API key, and drives it with :class:`ntkcompute.client.Client`:
upload the CIFAR-10 subset from ``../shared/data`` (scikit-learn digits if it is absent),
run a CNTK job and an FC-NTK job with progress bars, solve kernel regression by distributed
CG on each, print test accuracy and timings, and shut the service down.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from ntkcompute import architectures as A
from ntkcompute.client import Client


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(n_train: int, n_test: int) -> tuple[str, list[np.ndarray]]:
    from ntkcompute.datasets import SHARED, cifar10, digits, standardize

    if (SHARED / "cifar10" / "cifar10_train_first4000.npz").exists():
        x, y = cifar10(n_train + n_test)
        xtr, xte = standardize(x[:n_train], x[n_train:])
        return "CIFAR-10 32x32x3", [xtr, y[:n_train], xte, y[n_train:]]
    x, y = digits()
    print(f"(no CIFAR-10 subset under {SHARED}: using scikit-learn digits)")
    n_train, n_test = min(n_train, 1200), min(n_test, 597)
    return "digits 8x8x1", [x[:n_train], y[:n_train], x[n_train:n_train + n_test],
                            y[n_train:n_train + n_test]]


def start_service(root: Path, workers: int) -> tuple[subprocess.Popen, str, str]:
    """``ntk serve`` in a subprocess; returns (process, url, api key)."""
    db = f"sqlite:///{root / 'ntk.db'}"
    env = {**os.environ, "NTK_STORE": str(root / "store"), "NTK_DB_URL": db,
           "NTK_WORKERS": str(workers)}
    key = subprocess.run([sys.executable, "-m", "ntkcli", "keys", "create", "--name",
                          "demo"], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "ntkcli", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError("the service exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url, key
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not become ready in 60 s")


def run(n_train: int, n_test: int, depth: int, workers: int, lam: float) -> None:
    name, (xtr, ytr, xte, yte) = _data(n_train, n_test)
    with tempfile.TemporaryDirectory(prefix="ntk-demo-") as tmp:
        t0 = time.perf_counter()
        proc, url, key = start_service(Path(tmp), workers)
        print(f"service up at {url} ({workers} Dask workers) in "
              f"{time.perf_counter() - t0:.1f}s")
        try:
            with Client(url, key) as c:
                t = time.perf_counter()
                train, test = c.upload(xtr, ytr), c.upload(xte, yte)
                print(f"uploaded {name}: {len(xtr)} train / {len(xte)} test in "
                      f"{time.perf_counter() - t:.1f}s (sha256 {train.info['sha256'][:12]}…)")
                rows = []
                for label, arch, flat in ((f"CNTK-V depth {depth}", A.cntk(depth, "flatten"),
                                           False), ("FC-ReLU depth 3", A.fc(3), True)):
                    a, b = (train, test)
                    if flat:  # the FC net sees the flattened images
                        a = c.upload(xtr.reshape(len(xtr), -1), ytr)
                        b = c.upload(xte.reshape(len(xte), -1), yte)
                    t = time.perf_counter()
                    job = c.kernel(a, arch, test=b, kernels=("ntk", "nngp")).wait()
                    k_sec = time.perf_counter() - t
                    entries = len(xtr) * (len(xtr) + 1) // 2 + len(xte) * len(xtr)
                    accs = []
                    for kind in ("ntk", "nngp"):
                        t = time.perf_counter()
                        sol = c.solve(job, lam, relative=True, kind=kind, tol=1e-6).wait()
                        m = sol.metrics["per_lambda"][0]
                        accs.append((kind, m["accuracy"], m["iterations"],
                                     time.perf_counter() - t))
                    rows.append((label, job.info, k_sec, entries, accs))
            print(f"\n{name}, λ = {lam:g}·mean(diag K), CG with Nyström preconditioner")
            for label, info, k_sec, entries, accs in rows:
                print(f"{label:16s} kernel {k_sec:6.1f}s ({info['tiles_total']} tiles, "
                      f"{entries / k_sec:,.0f} entries/s)", end="")
                for kind, acc, its, sec in accs:
                    print(f"  {kind.upper()} acc {acc:.4f} ({its} CG its, {sec:.1f}s)", end="")
                print()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        print(f"total {time.perf_counter() - t0:.1f}s; service stopped")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--lam", type=float, default=1e-3, help="λ relative to mean(diag K)")
    args = ap.parse_args()
    run(args.train, args.test, args.depth, args.workers, args.lam)


if __name__ == "__main__":
    main()

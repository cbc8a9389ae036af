"""Solver benchmark (issue 4): iterations and time of CG with and without preconditioners,
and CG vs a dense LAPACK solve, on the FC NTK of the MNIST subset in ``../shared/data``;
all ratios from one run.

The dense baseline is ``numpy.linalg.solve``: ``scipy.linalg.solve`` (scipy 1.17.1, its
bundled OpenBLAS 0.3.30) segfaults on this machine at n = 20 000 (reproduced on a random SPD
matrix; numpy's own OpenBLAS 0.3.31 solves it).

Run: ``.venv/bin/python bench/solve.py [--sizes 4000,20000] [--rank 200] [--arch cntk-v-2]
[--dtype float32] [--store DIR]`` for the solver part (plain, Jacobi, pivoted-Cholesky
Nyström of ``--rank`` columns, randomized Nyström starting at ``--rank`` and doubled while
it pays, in float64 and mixed precision; then one line per n with the dense time over the
randomized-Nyström CG time and the iterations of plain CG over preconditioned CG, all from
this run). Both sides start from the stored kernel: the dense time is reading it into memory
plus ``numpy.linalg.solve``, CG's is ``workers.solve`` whole (the actors loading their
tiles, the preconditioner, the iterations; each phase printed); the summary gives the ratio
with and without the loads. ``--arch`` picks the kernel (FC-3 on standardised vectors by
default, or a CNTK-V on the images), ``--dtype`` its stored dtype, ``--store`` a directory
that keeps the kernel job for the next run (a complete job is reused). ``--touch G`` touches
G GiB once before timing: on a freshly booted VM the first touch of each page costs ~2.5
s/GiB here, which would otherwise land in whichever phase first needs the memory.
``--accuracy`` for the test accuracy of CNTK kernel regression (CNTK-V, depth 4, and an FC-3
NTK for reference) on train/test splits of the CIFAR-10 and MNIST subsets with a direct
solve and targets 0.9 / -0.1: CIFAR-10 with Arora et al. 2019's preprocessing (/255, then
per-channel standardisation by the training set), MNIST /255 only (see below). The kernel is
computed by ``workers.compute_gram`` into a temporary Zarr store and solved where it lies
(one actor per worker holds its tiles); LAPACK gets the same matrix loaded in memory."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from distributed import Client, LocalCluster

import workers
from ntkcompute import architectures as A
from ntkcompute.datasets import SHARED
from ntkcompute.regression import one_hot
from workers.cluster import shutdown
from workers.store import open_group, read


def touch(gib: float) -> None:
    """Touch ``gib`` GiB once in a child process: a freshly booted VM backs each page on its
    first touch (~2.5 s/GiB here), which would otherwise land in whichever timed phase first
    needs the memory. A child, so that no process of the run inherits the peak RSS."""
    subprocess.run([sys.executable, "-c",
                    f"import numpy as np; np.ones({int(gib * 2**30) // 8})"], check=True)


def mnist(n: int, images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The first n training images: standardised vectors (n, 784) for an FC kernel, or
    (n, 28, 28, 1) images /255 for a CNTK (see ``accuracy`` on why not centred)."""
    f = np.load(SHARED / "mnist" / "mnist_train_first20000.npz")
    if images:
        return f["x"][:n, :, :, None].astype(np.float64) / 255.0, f["y"][:n]
    x = f["x"][:n].reshape(n, -1).astype(np.float64) / 255.0
    x = (x - x.mean()) / x.std()
    return x, f["y"][:n]


#: The kernels the solver part can run on: FC-3 on standardised vectors, CNTK-V (3x3 SAME
#: convolutions, flatten readout) on the images.
ARCHS = {"fc-3": (A.fc(3), False), "cntk-v-2": (A.cntk(2, "flatten"), True),
         "cntk-v-4": (A.cntk(4, "flatten"), True)}


def dense(url: str, Y: np.ndarray, reg: float) -> tuple[np.ndarray, float, float, float]:
    """The baseline: read the stored kernel into memory as float64, then
    ``numpy.linalg.solve``. Returns ``(solution, λ, read seconds, solve seconds)``."""
    t = time.perf_counter()
    K = np.asarray(read(open_group(url, mode="r")["ntk"]), dtype=np.float64)
    t_load = time.perf_counter() - t
    lam = reg * float(np.mean(np.diag(K)))
    t = time.perf_counter()
    K[np.diag_indices(len(K))] += lam
    ref = np.linalg.solve(K, Y)
    return ref, lam, t_load, time.perf_counter() - t


def accuracy(n_train: int, n_test: int, only: str | None = None) -> None:
    import ntkcompute as nc
    from ntkcompute.datasets import cifar10, standardize
    from ntkcompute.regression import kernel_ridge

    xc, yc = cifar10(4000)
    f = np.load(SHARED / "mnist" / "mnist_train_first20000.npz")
    xm, ym = f["x"][..., None], f["y"]
    print(f"{'data':10s} {'kernel':14s} {'train':>6s} {'test':>5s} {'NTK acc':>8s} "
          f"{'NNGP acc':>9s} {'kernel s':>9s}")
    for data, x, y in (("CIFAR-10", xc, yc), ("MNIST", xm, ym)):
        if only and only.lower() not in data.lower():
            continue
        if data == "CIFAR-10":
            tr, te = standardize(x[:n_train], x[n_train:n_train + n_test])
        else:  # centring MNIST turns its zero background into a shared constant that
            # dominates every kernel entry (CNTK-V accuracy 0.26 vs 0.84 at n=300): /255 only
            tr = x[:n_train] / 255.0
            te = x[n_train:n_train + n_test] / 255.0
        ytr, yte = y[:n_train], y[n_train:n_train + n_test]
        for name, arch, a, b in (
                ("CNTK-V-4", A.cntk(4, "flatten"), tr, te),
                ("FC-3 NTK", A.fc(3), tr.reshape(len(tr), -1), te.reshape(len(te), -1))):
            t = time.perf_counter()
            k_tr = nc.kernel(arch, a)
            k_te = nc.kernel(arch, b, a)
            sec = time.perf_counter() - t
            accs = [float(np.mean(kernel_ridge(k_tr[k], one_hot(ytr, 10), k_te[k], lam=1e-4,
                                               relative=True)
                                  .argmax(1) == yte)) for k in ("ntk", "nngp")]
            print(f"{data:10s} {name:14s} {n_train:6d} {n_test:5d} {accs[0]:8.4f} "
                  f"{accs[1]:9.4f} {sec:9.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4000,20000")
    ap.add_argument("--rank", type=int, default=200)
    ap.add_argument("--reg", type=float, default=1e-3, help="λ relative to mean diag K")
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--methods", default="none,jacobi,nystrom,randomized,randomized-mixed",
                    help="CG variants to run (none and randomized are needed for the summary)")
    ap.add_argument("--accuracy", action="store_true", help="the CNTK accuracy part")
    ap.add_argument("--touch", type=float, default=0.0,
                    help="GiB of memory to touch once before timing (a fresh VM)")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--data", default=None, help="cifar or mnist (default both)")
    ap.add_argument("--arch", default="fc-3", choices=sorted(ARCHS),
                    help="the kernel the solvers run on (MNIST)")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                    help="the stored kernel's dtype")
    ap.add_argument("--tile", type=int, default=None,
                    help="the kernel job's tile (= chunk) side; default: the job's own "
                         "choice, sized for computing (275 for a CNTK-V at n = 20 000)")
    ap.add_argument("--store", default=None,
                    help="keep the kernel job here (reused when complete) instead of a "
                         "temporary directory")
    args = ap.parse_args()
    if args.accuracy:
        accuracy(args.train, args.test, args.data)
        return
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    if args.touch:
        touch(args.touch)
    print(f"{'n':>6s} {'method':22s} {'iters':>6s} {'seconds':>8s} {'vs dense':>9s} "
          f"{'rel err vs dense':>17s} {'rank':>5s} {'load s':>7s} {'precond s':>9s} "
          f"{'iterate s':>9s}")
    methods = [(None if m.split("-")[0] == "none" else m.split("-")[0],
                "mixed" if m.endswith("-mixed") else "double")
               for m in args.methods.split(",")]
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            root = args.store or tempfile.mkdtemp(prefix="ntksolve-")
            try:
                arch, images = ARCHS[args.arch]
                x, y = mnist(n, images)
                t = time.perf_counter()
                job = workers.compute_gram(arch, x, store=f"{root}/{args.arch}-{n}",
                                           client=client, get="ntk", dtype=args.dtype,
                                           tile=args.tile).wait()
                t_k = time.perf_counter() - t
                print(f"{n:6d} {args.arch + ' (' + str(job.arrays['ntk'].dtype) + ')':22s} "
                      f"{'':6s} {t_k:8.1f}   kernel: {job.tiles_computed} tiles computed, "
                      f"{job.tiles_reused} reused", flush=True)
                ref, lam, t_load, t_solve = dense(job.url, one_hot(y, 10), args.reg)
                t_sp = t_load + t_solve  # "vs dense" per row: against this first solve
                print(f"{n:6d} {'numpy.linalg.solve':22s} {'':6s} {t_load + t_solve:8.1f} "
                      f"{1.0:8.2f}x {'':17s} {'':5s} {t_load:7.1f} {'':9s} {t_solve:9.1f}",
                      flush=True)
                got = {}
                for pre, prec in methods:
                    r = workers.solve(job.url, y, lam, solver="cg", tol=args.tol,
                                      preconditioner=pre, rank=args.rank, client=client,
                                      save=None, maxiter=5000, precision=prec)
                    got[pre, prec] = r
                    err = np.abs(r.coefficients - ref).max() / np.abs(ref).max()
                    info = r.analyses.get("preconditioner", {})
                    rank = info.get("rank", args.rank if pre == "nystrom" else "")
                    label = f"cg {pre}" + (" mixed" if prec == "mixed" else "")
                    sec = r.analyses["seconds"]
                    print(f"{n:6d} {label:22s} {r.iterations:6d} {r.seconds:8.1f} "
                          f"{t_sp / r.seconds:8.2f}x {err:17.1e} {rank!s:>5s} "
                          f"{sec['load']:7.1f} {sec['preconditioner']:9.1f} "
                          f"{sec['iterations']:9.1f}", flush=True)
                # the dense solve again after CG, the faster of the two kept: this shared
                # machine's speed drifts by up to 1.5x over minutes (48-77 s for one solve)
                _, _, load2, solve2 = dense(job.url, one_hot(y, 10), args.reg)
                print(f"{n:6d} {'numpy.linalg.solve again':22s} {'':6s} {load2 + solve2:8.1f} "
                      f"{'':9s} {'':17s} {'':5s} {load2:7.1f} {'':9s} {solve2:9.1f}")
                if load2 + solve2 < t_load + t_solve:
                    t_load, t_solve = load2, solve2
                t_sp = t_load + t_solve
                fast = [got[k] for k in (("randomized", "double"), ("randomized", "mixed"))
                        if k in got]
                if not fast or (None, "double") not in got:
                    continue  # the summary compares plain CG with a randomized Nyström one
                best = min(fast, key=lambda r: r.seconds)
                plain, rnys = got[None, "double"], fast[0]
                print(f"{n:6d} summary: distributed CG (randomized Nyström) "
                      f"{best.seconds:.1f} s / dense {t_sp:.1f} s = "
                      f"{best.seconds / t_sp:.2f}x the dense time (both from the store; "
                      f"{best.seconds - best.analyses['seconds']['load']:.1f} / "
                      f"{t_solve:.1f} s = "
                      f"{(best.seconds - best.analyses['seconds']['load']) / t_solve:.2f}x "
                      "without the loads); iterations plain "
                      f"{plain.iterations} / randomized {rnys.iterations} = "
                      f"{plain.iterations / rnys.iterations:.1f}x fewer "
                      f"(λ = {args.reg:g}·mean diag, tol {args.tol:g})", flush=True)
            finally:
                if not args.store:
                    shutil.rmtree(root, ignore_errors=True)
    finally:
        shutdown(client, cluster)


if __name__ == "__main__":
    main()

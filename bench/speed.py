"""Issue 17's speed benchmark: ntkcompute (fused kernels, and its NumPy rules) against
neural-tangents 0.6.5 (jit) in the same run, on the issue's workloads.

Run: ``make conformance`` once (it builds ``.venv-nt``), then
``.venv/bin/python bench/speed.py [--threads 1,2] [--dtypes float64,float32] [--only NAME]``.

Every measurement runs in its own process pinned with ``taskset`` to one core (or two),
with BLAS and XLA held to as many threads: nt (``bench/nt_reference.py``), then ours fused,
then ours with the NumPy rules (``NTK_FUSED=0``), per dtype. Times are process CPU seconds
of the fastest of ``--reps`` calls after a warm-up call (compilation excluded on both sides;
wall-clock seconds with two threads), per Gram entry (a
symmetric n x n job counts n² entries, however it exploits symmetry). ``rss`` is each
process's peak resident set over its cases. ``err`` is ours against nt (float64), and our
float32 against our float64. The last lines put the fused CNTK-GAP-4 32x32 against this
machine's measured limits (one core: float64 matmul GFLOP/s, copy GB/s), counting the flops
and bytes of the algorithm the fused path runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from ntkcompute import architectures as A  # noqa: E402
from ntkcompute.datasets import cifar10, digits, standardize  # noqa: E402


def cases() -> list[tuple[str, dict, np.ndarray, np.ndarray | None]]:
    """(name, arch, x1, x2 or None for a symmetric Gram)."""
    rng = np.random.default_rng(0)
    cif = standardize(cifar10(256)[0])[0]
    dig = digits()[0]
    return [
        ("fc-3 n=4000 d=64", A.fc(3), rng.standard_normal((4000, 64)), None),
        ("cntk-gap-4 8x8x1 sym n=100", A.cntk(4), dig[:100], None),
        ("cntk-gap-4 32x32x3 sym n=8", A.cntk(4), cif[:8], None),
        ("cntk-gap-4 32x32x3 cross 4x4", A.cntk(4), cif[:4], cif[4:8]),
        ("myrtle-5 32x32x3 sym n=8", A.myrtle(5), cif[:8], None),
        ("cntk-v-4 32x32x3 sym n=128", A.cntk(4, "flatten"), cif[:128], None),
    ]


def _env(threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(threads)}
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def _pin(threads: int) -> list[str]:
    return ["taskset", "-c", ",".join(str(i) for i in range(threads))]


def worker(cases_file: str, out_file: str, dtype: str, threads: int, reps: int) -> None:
    """Our side of one measurement (in its own process)."""
    import resource

    import ntkcompute as nc

    f = np.load(cases_file)
    res: dict = {}
    i = 0
    while f"arch_{i}" in f:
        arch = json.loads(str(f[f"arch_{i}"]))
        x1 = f[f"x1_{i}"]
        x2 = f[f"x2_{i}"] if f"x2_{i}" in f else None
        nc.kernel(arch, x1[:2], None if x2 is None else x2[:2], dtype=dtype, threads=threads)
        secs, cpus = [], []
        for _ in range(reps):
            k = None  # the last result's memory is free again for this call, as in nt's loop
            t, c = time.perf_counter(), time.process_time()
            k = nc.kernel(arch, x1, x2, dtype=dtype, threads=threads)
            secs.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        res[f"sec_{i}"], res[f"cpu_{i}"] = min(secs), min(cpus)
        res[f"ntk_{i}"] = k["ntk"]
        res[f"nngp_{i}"] = k["nngp"]
        i += 1
    res["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.savez(out_file, **res)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    if res.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-4000:]}")


def machine_limits() -> tuple[float, float]:
    """(float64 matmul GFLOP/s, copy GB/s) on one core, measured now."""
    code = ("import numpy as np, time\n"
            "a = np.random.rand(2000, 2000); a @ a\n"
            "t = time.process_time(); [a @ a for _ in range(3)]\n"
            "g = 3 * 2 * 2000**3 / (time.process_time() - t) / 1e9\n"
            "x = np.random.rand(1 << 25); y = np.empty_like(x); np.copyto(y, x)\n"
            "t = time.process_time(); [np.copyto(y, x) for _ in range(10)]\n"
            "b = 10 * 2 * x.nbytes / (time.process_time() - t) / 1e9\n"
            "print(g, b)")
    out = subprocess.run([*_pin(1), sys.executable, "-c", code], env=_env(1), check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def fused_cost_per_pair(spatial: int = 32, depth: int = 4) -> tuple[float, float]:
    """(flops, bytes) per pair of the fused CNTK-GAP path on a spatial x spatial image.

    Per conv + ReLU layer and state entry (P² = spatial⁴ of them), float64: the 3x3 window
    of K and Θ (8 + 8 adds), the affine maps (5), the arc-cosine step (det 3, sqrt 1, the
    angle ~22 with its 2 divisions, K' and Θ' 6: ~32); bytes: K and Θ read once and written
    once (32; the padded slabs the window reads stay in cache). The GAP readout reads both.
    """
    p2 = float(spatial) ** 4
    flops = depth * p2 * (16 + 5 + 32) + 2 * p2
    nbytes = depth * p2 * 32 + 2 * p2 * 8
    return flops, nbytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--only", default=None, help="substring of a case name")
    ap.add_argument("--reps", type=int, default=2, help="timed calls per case (the fastest)")
    ap.add_argument("--worker", nargs=4, metavar=("CASES", "OUT", "DTYPE", "THREADS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2], int(args.worker[3]), args.reps)
        return
    nt_python = os.environ.get("NT_PYTHON", str(ROOT / ".venv-nt" / "bin" / "python"))
    have_nt = Path(nt_python).exists()
    sel = [c for c in cases() if not args.only or args.only in c[0]]
    tmp = Path(tempfile.mkdtemp(prefix="ntk-speed-"))
    results: dict = {}
    print(f"cores={os.cpu_count()} numpy={np.__version__} nt={'yes' if have_nt else 'missing'}")
    for threads in (int(t) for t in args.threads.split(",")):
        for dtype in args.dtypes.split(","):
            arrays: dict = {}
            for i, (_, arch, x1, x2) in enumerate(sel):
                arrays[f"arch_{i}"] = json.dumps(arch)
                arrays[f"x1_{i}"] = x1.astype(dtype)
                if x2 is not None:
                    arrays[f"x2_{i}"] = x2.astype(dtype)
            cf = tmp / f"cases-{dtype}.npz"
            np.savez(cf, **arrays)
            env = {**_env(threads), "NT_REPS": str(args.reps)}
            runs = {}
            if have_nt:
                out = tmp / f"nt-{dtype}-{threads}.npz"
                _run([*_pin(threads), nt_python, str(HERE / "nt_reference.py"), str(cf),
                      str(out)], env)
                runs["nt"] = np.load(out)
            for label, flag in (("fused", "1"), ("numpy", "0")):
                out = tmp / f"{label}-{dtype}-{threads}.npz"
                _run([*_pin(threads), sys.executable, str(HERE / "speed.py"), "--worker",
                      str(cf), str(out), dtype, str(threads), "--reps", str(args.reps)],
                     {**env, "NTK_FUSED": flag})
                runs[label] = np.load(out)
            results[(threads, dtype)] = runs
            _table(sel, runs, threads, dtype, results.get((threads, "float64")))
    flops, nbytes = fused_cost_per_pair()
    gflops, gbs = machine_limits()
    floor = max(flops / (gflops * 1e9), nbytes / (gbs * 1e9))
    print(f"\nmachine, one core: {gflops:.1f} GFLOP/s float64 matmul, {gbs:.1f} GB/s copy")
    print(f"fused CNTK-GAP-4 32x32, per pair: {flops / 1e6:.0f} MFLOP, {nbytes / 1e6:.0f} MB "
          f"-> at best {floor * 1e3:.1f} ms")
    for name in ("cntk-gap-4 32x32x3 cross 4x4", "cntk-gap-4 32x32x3 sym n=8"):
        for (threads, dtype), runs in results.items():
            if threads != 1 or dtype != "float64":
                continue
            idx = [c[0] for c in sel].index(name) if name in [c[0] for c in sel] else None
            if idx is None:
                continue
            pairs = 16 if "cross" in name else 8 * 9 // 2
            ms = float(runs["fused"][f"cpu_{idx}"]) / pairs * 1e3
            print(f"{name}: {ms:.1f} ms per computed pair, {100 * floor * 1e3 / ms:.0f}% "
                  "of the machine's limit")


def _table(sel, runs, threads, dtype, f64runs) -> None:
    rss = "  ".join(f"{k} {float(r['rss']) / 2**20:.0f} MB" for k, r in runs.items())
    what = "CPU" if threads == 1 else "wall-clock"
    print(f"\n--- {threads} thread(s), {dtype}: {what} ms per Gram entry; peak RSS over these "
          f"cases: {rss} ---")
    hdr = f"{'workload':30s} {'nt':>9s} {'fused':>9s} {'numpy':>9s} {'nt/fused':>8s} " \
          f"{'numpy/fused':>11s} {'err':>9s}"
    print(hdr)
    for i, (name, _, x1, x2) in enumerate(sel):
        entries = len(x1) * (len(x1) if x2 is None else len(x2))
        key = "cpu" if threads == 1 else "sec"
        ms = {k: float(r[f"{key}_{i}"]) / entries * 1e3 for k, r in runs.items()}
        ours = runs["fused"]
        if dtype == "float64" and "nt" in runs:
            ref = runs["nt"]
        elif f64runs is not None:
            ref = f64runs["fused"]
        else:
            ref = ours
        err = max(float(np.abs(ours[f"{g}_{i}"] - ref[f"{g}_{i}"]).max()
                        / np.abs(ref[f"{g}_{i}"]).max()) for g in ("ntk", "nngp"))
        nt = f"{ms['nt']:9.2e}" if "nt" in ms else f"{'-':>9s}"
        ratio = f"{ms['nt'] / ms['fused']:7.1f}x" if "nt" in ms else f"{'-':>8s}"
        print(f"{name:30s} {nt} {ms['fused']:9.2e} {ms['numpy']:9.2e} {ratio} "
              f"{ms['numpy'] / ms['fused']:10.2f}x {err:9.1e}", flush=True)


if __name__ == "__main__":
    main()

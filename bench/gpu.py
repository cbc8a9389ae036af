"""The GPU check (issue 17), run by ``bench/gpu.sh`` on a machine with a CUDA device.

1. Conformance: the Gram matrices of the fused-kernel test cases (``tests/kernels/
   test_fused.py``) and of CNTK / Myrtle / FC workloads computed on the GPU (CuPy inputs:
   the CUDA kernels of ``ntkcompute/kernels/fused_cuda.py``) against the CPU path.
2. Timing: every ``bench/speed.py`` workload on the GPU, float64 and float32, ms per entry
   (wall time of one call after a warm-up, synchronised), and CNTK-GAP depth 21 on 32x32x3
   next to neural-tangents' published 2.70 ms per entry (V100, float32).
3. A tiled job on a GPU worker: ``workers.compute_gram`` on a local Dask cluster of one
   worker, where dask, distributed and zarr are installed.

Prints one table; exits non-zero when a GPU result is off the CPU one by more than 1e-10
(float64) or 1e-5 (float32).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "kernels"))


def main() -> int:
    import cupy
    from speed import cases
    from test_fused import CASES

    import ntkcompute as nc
    from ntkcompute import architectures as A
    from ntkcompute.kernels import fused_cuda

    print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, "
          f"fused CUDA kernels available: {fused_cuda.available()}")
    bad = 0
    print(f"\n{'conformance case':32s} {'dtype':8s} {'max rel err vs CPU':>18s}")
    rng = np.random.default_rng(0)
    conf = [(k, a, rng.standard_normal(s)) for k, (a, s) in CASES.items()]
    conf += [(name, arch, x1[:4]) for name, arch, x1, _ in cases()]
    for name, arch, x in conf:
        for dt, tol in (("float64", 1e-10), ("float32", 1e-5)):
            cpu = nc.kernel(arch, x, dtype=dt)
            gpu = nc.kernel(arch, cupy.asarray(x), dtype=dt)
            err = max(float(np.abs(cupy.asnumpy(gpu[g]) - cpu[g]).max() / np.abs(cpu[g]).max())
                      for g in cpu)
            bad += err > tol
            print(f"{name:32s} {dt:8s} {err:18.2e}{'  FAIL' if err > tol else ''}", flush=True)

    print(f"\n{'workload':32s} {'dtype':8s} {'ms/entry':>10s}")
    work = [(n, a, x1, x2) for n, a, x1, x2 in cases()]
    cif = work[2][2]
    work.append(("cntk-gap-21 32x32x3 sym n=8", A.cntk(21), cif[:8], None))
    for name, arch, x1, x2 in work:
        for dt in ("float64", "float32"):
            g1 = cupy.asarray(x1)
            g2 = None if x2 is None else cupy.asarray(x2)
            nc.kernel(arch, g1[:2], None if g2 is None else g2[:2], dtype=dt)
            cupy.cuda.Device().synchronize()
            t = time.perf_counter()
            nc.kernel(arch, g1, g2, dtype=dt)
            cupy.cuda.Device().synchronize()
            sec = time.perf_counter() - t
            ms = sec * 1e3 / (len(x1) * (len(x1) if x2 is None else len(x2)))
            note = "  (nt, V100 float32: 2.70 ms)" if "gap-21" in name else ""
            print(f"{name:32s} {dt:8s} {ms:10.4f}{note}", flush=True)

    try:
        from distributed import Client, LocalCluster

        import workers
    except ImportError as e:
        print(f"\ntiled job skipped: {e}")
        return 1 if bad else 0
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cl, \
            Client(cl) as client:
        x = cif[:64].astype(np.float32)
        t = time.perf_counter()
        job = workers.compute_gram(A.cntk(4), x, store=f"{tmp}/k", tile=32, client=client)
        job.wait()
        sec = time.perf_counter() - t
        got = np.asarray(job.arrays()["ntk"][:])
        ref = nc.kernel(A.cntk(4), x)["ntk"]
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        bad += err > 1e-5
        print(f"\ntiled CNTK-GAP-4 job, 64x64 on one GPU worker: {sec:.1f} s, "
              f"max rel err vs in-process CPU {err:.1e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

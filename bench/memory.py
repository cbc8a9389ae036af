"""Peak memory of a full 1797 x 1797 CNTK-GAP (depth 4) Gram on scikit-learn digits.

Run: ``.venv/bin/python bench/memory.py [--n N] [--dtype float64]``. Prints wall time,
Gram entries per second and the process's peak RSS (issue 2 asks for < 2 GB). The tiled
computation's working set is bounded by ``memory`` (default 1 GiB, and at most 16 MiB per
CPU thread, which is also the fastest block size); the rest is the interpreter, the inputs,
the per-input self-covariances and the two n x n outputs.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.datasets import digits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1797)
    ap.add_argument("--dtype", default="float64")
    args = ap.parse_args()
    x = digits()[0][: args.n]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    t = time.perf_counter()
    k = nc.kernel(A.cntk(4), x, dtype=args.dtype)
    sec = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    ntk = k["ntk"]
    print(f"n={args.n} dtype={args.dtype} seconds={sec:.1f} entries/s={args.n**2 / sec:.0f} "
          f"peak_rss_MB={rss:.0f} (before: {rss0:.0f}) symmetric={np.array_equal(ntk, ntk.T)} "
          f"min_eig={np.linalg.eigvalsh(ntk)[0]:.3e}")


if __name__ == "__main__":
    main()

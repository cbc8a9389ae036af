"""The memory budget bounds the working set; digits CNTK-GAP stays far below 2 GB RSS."""

import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.datasets import digits


@pytest.mark.parametrize("memory,threads,arch", [
    (2 << 20, 1, A.cntk(3)), (8 << 20, 2, A.cntk(3)),
    (2 << 20, 1, A.resnet(1, "global_avg_pool")),  # the shortcut's state held by a branch
], ids=["cntk-1-thread", "cntk-2-threads", "resnet"])
def test_budget_bounds_traced_memory(memory, threads, arch):
    x = digits()[0][:160]
    x1, x2 = x[:100], x[100:]
    plan = nc.plan.make_plan(nc.parse_arch(arch), x.shape)
    # What is held outside the blocks: inputs, outputs, self-covariances of both sets.
    fixed = (x1.nbytes + x2.nbytes + 2 * 8 * len(x1) * len(x2)
             + 2 * 8 * len(x) * 64 * len(plan.self_indices))
    # the compiled layer kernels load once per process (numba's cache): not working memory
    nc.kernel(arch, x1[:2], x2[:2], memory=memory, threads=threads)
    tracemalloc.start()
    try:
        nc.kernel(arch, x1, x2, memory=memory, threads=threads)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    blocks = nc.infinite.bytes_per_pair(plan, 8)
    assert blocks < memory / threads  # several pairs per block, so the budget is what binds
    assert peak < 2 * memory + fixed, (peak, memory, fixed)


def test_digits_cntk_gap_rss_under_2gb():
    """All 1797 digits against a slab of columns: the self pass covers all 1797 inputs and the
    blocks are the same as in the full 1797 x 1797 job (bench/memory.py runs that one)."""
    # VmHWM, the peak of this process's own memory map: ru_maxrss also keeps the high-water
    # mark of the forked copy of the parent before exec (pytest's RSS, 2.1 GB once here)
    code = textwrap.dedent("""
        import ntkcompute as nc
        from ntkcompute import architectures as A
        from ntkcompute.datasets import digits
        x = digits()[0]
        k = nc.kernel(A.cntk(4), x, x[:16])
        assert k["ntk"].shape == (1797, 16)
        status = open("/proc/self/status").read()
        print(next(int(v.split()[1]) for v in status.splitlines() if v.startswith("VmHWM")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=600)
    rss_mb = int(out.stdout.strip().splitlines()[-1]) / 1024
    assert rss_mb < 2048, rss_mb
    assert np.isfinite(rss_mb)

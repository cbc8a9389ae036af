"""The CUDA kernels (``ntkcompute.kernels.fused_cuda``) on the CPU, under numba's CUDA
simulator: every kernel runs as written, one simulated thread per output entry, on NumPy
arrays; the whole kernel computation is routed through them (``NTK_FUSED=cuda``) and compared
with the NumPy rules. ``bench/gpu.sh`` runs the same comparison on a real device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json
import numpy as np
import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.kernels import fused, fused_cuda

rng = np.random.default_rng(0)
pool = {"layers": [{"type": "conv", "filter_shape": [2, 2], "padding": "SAME", "b_std": 0.1},
                   {"type": "leaky_relu", "alpha": 0.2},
                   {"type": "avg_pool", "window_shape": [2, 2], "padding": "SAME"},
                   {"type": "global_avg_pool"}, {"type": "dense"}]}
cases = {"cntk-gap": (A.cntk(2), (2, 4, 4, 1)),
         "cntk-flatten": (A.cntk(2, "flatten"), (2, 4, 3, 1)),
         "fc": (A.fc(2), (3, 4)), "pool": (pool, (2, 4, 4, 1))}
out = {}
for name, (arch, shape) in cases.items():
    x, x2 = rng.standard_normal(shape), rng.standard_normal((1, *shape[1:]))
    with fused.use(False):
        ref = nc.kernel(arch, x, x2, dtype="float64")
    for dt in ("float64", "float32"):
        got = nc.kernel(arch, x, x2, dtype=dt, threads=1)
        out[f"{name} {dt}"] = max(float(np.abs(got[g] - ref[g]).max() / np.abs(ref[g]).max())
                                  for g in ref)
out["launched"] = sorted(fused_cuda._CACHE)
out["broken"] = fused_cuda._broken
print(json.dumps(out))
"""


def test_cuda_kernels_under_the_simulator_equal_the_numpy_rules() -> None:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "NTK_FUSED": "cuda"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # every kernel was built and none failed to launch: the simulator ran the device code
    assert out.pop("launched") == ["activation", "affine_diag", "affine_full", "pool_full"]
    assert out.pop("broken") == []
    for case, err in out.items():
        assert err < (1e-12 if case.endswith("float64") else 3e-7), (case, err)

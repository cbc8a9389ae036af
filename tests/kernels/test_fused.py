"""The compiled one-pass kernels (``ntkcompute.kernels.fused``) against the NumPy rules.

The NumPy rules are the reference (they are checked against closed forms and the empirical
NTK elsewhere); the fused path must give the same Gram matrices to 1e-12 in float64, and in
float32 stay as close to float64 as the NumPy float32 path does.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import architectures as A
from ntkcompute.kernels import fused, inputs
from ntkcompute.kernels.state import State
from ntkcompute.layers.registry import make_window

CONV = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.3, "b_std": 0.2}


def _arch(*layers: dict, **kw) -> dict:
    return {"layers": list(layers), **kw}


# name -> (architecture, input shape (n, *spatial, C))
CASES = {
    "fc3": (A.fc(3), (9, 5)),
    "fc-standard": (_arch({"type": "dense", "out_dim": 7, "W_std": 1.2, "b_std": 0.3},
                          {"type": "relu"}, {"type": "dense", "out_dim": 5, "b_std": 0.1},
                          {"type": "abs"}, {"type": "dense"}, parameterization="standard"),
                    (8, 4)),
    "cntk-gap": (A.cntk(2), (4, 6, 5, 2)),
    "cntk-flatten": (A.cntk(2, "flatten"), (5, 6, 6, 2)),
    "myrtle": (A.myrtle(5), (2, 32, 32, 1)),
    "resnet": (A.resnet(1), (3, 5, 5, 2)),
    "windows": (_arch({**CONV, "filter_shape": [2, 3], "padding": "VALID"},
                      {"type": "leaky_relu", "alpha": 0.3},
                      {**CONV, "filter_shape": [5, 1]},
                      {"type": "ab_relu", "a": -0.4, "b": 1.7},
                      {**CONV, "filter_shape": [1, 1]}, {"type": "relu"},
                      {"type": "avg_pool", "window_shape": [3, 2], "strides": [2, 1],
                       "padding": "SAME"},
                      {"type": "sum_pool", "window_shape": [2, 2], "strides": [1, 2]},
                      {"type": "global_avg_pool"}, {"type": "dense"}),
                (3, 7, 6, 2)),
    "conv1d": (_arch({**CONV, "filter_shape": [3]}, {"type": "relu"},
                     {**CONV, "filter_shape": [4], "padding": "VALID"}, {"type": "relu"},
                     {"type": "avg_pool", "window_shape": [2]}, {"type": "flatten"},
                     {"type": "dense"}),
               (4, 9, 3)),
    "fallbacks": (_arch({**CONV, "padding": "CIRCULAR"}, {"type": "relu"},
                        {**CONV, "strides": [2, 1]}, {"type": "erf"},
                        {"type": "global_avg_pool"}, {"type": "dense"}),
                  (3, 6, 6, 2)),
}


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def references() -> dict:
    """NumPy float64 Gram matrices (symmetric and a cross block) of every case."""
    out = {}
    with fused.use(False):
        for name, (arch, shape) in CASES.items():
            x, x2 = _data(shape, 0), _data((2, *shape[1:]), 1)
            out[name] = (nc.kernel(arch, x, dtype="float64"),
                         nc.kernel(arch, x, x2, dtype="float64"))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_float64_equals_numpy_rules(name: str, references: dict) -> None:
    arch, shape = CASES[name]
    x, x2 = _data(shape, 0), _data((2, *shape[1:]), 1)
    with fused.use(True):
        sym = nc.kernel(arch, x, dtype="float64")
        cross = nc.kernel(arch, x, x2, dtype="float64")
        nngp_only = nc.kernel(arch, x, x2, dtype="float64", get="nngp")
    ref_sym, ref_cross = references[name]
    for g in ("ntk", "nngp"):
        assert _rel(sym[g], ref_sym[g]) < 1e-12, g
        assert _rel(cross[g], ref_cross[g]) < 1e-12, g
    assert _rel(nngp_only["nngp"], ref_cross["nngp"]) < 1e-12
    assert np.array_equal(sym["ntk"], sym["ntk"].T)


@pytest.mark.parametrize("name", ["fc3", "cntk-gap", "cntk-flatten", "myrtle", "windows"])
def test_float32_is_as_close_to_float64_as_the_numpy_float32_path(name: str,
                                                                  references: dict) -> None:
    arch, shape = CASES[name]
    x, x2 = _data(shape, 0), _data((2, *shape[1:]), 1)
    ref_sym, ref_cross = references[name]
    with fused.use(True):
        sym = nc.kernel(arch, x, dtype="float32")
        cross = nc.kernel(arch, x, x2, dtype="float32")
    assert sym["ntk"].dtype == np.float32
    for g in ("ntk", "nngp"):
        # the NumPy float32 path measures 3e-8 .. 9e-8 on these cases
        assert _rel(sym[g], ref_sym[g]) < 3e-7, g
        assert _rel(cross[g], ref_cross[g]) < 3e-7, g
        # the diagonal: the self pass and the pair pass agree bit for bit (det = 0), so
        # there is no sqrt(eps) angle noise there
        d, dr = np.diag(sym[g]), np.diag(ref_sym[g])
        assert float(np.abs(d - dr).max() / np.abs(dr).max()) < 3e-7, g


def _state(shape: tuple[int, ...], full: bool, nb: int, seed: int = 0) -> State:
    rng = np.random.default_rng(seed)
    k, t = rng.random(shape) + 1.0, rng.random(shape)
    spatial = shape[:len(shape) - nb:2] if full else shape[:len(shape) - nb]
    return State(k, t, nb, tuple(spatial), full)


def test_the_compiled_path_serves_what_it_covers_and_declines_the_rest() -> None:
    conv = make_window("layers[0]", "filter_shape", (6, 5), [3, 3], None, "SAME", (1, 1))
    circular = make_window("layers[0]", "filter_shape", (6, 5), [3, 3], None, "CIRCULAR",
                           (1, 1))
    strided = make_window("layers[0]", "filter_shape", (6, 5), [3, 3], [2, 1], "SAME", (1, 1))
    coef = (2.0, 0.1, 2.0, 1.0, 0.0, 0.0)
    st = _state((6, 6, 5, 5, 2, 3), True, 2)
    out = fused.affine(st, conv, (6, 5), coef)
    assert out is not None and out.nngp.shape == st.nngp.shape and out.spatial == (6, 5)
    assert fused.affine(st, circular, (6, 5), coef) is None
    assert fused.affine(st, strided, (3, 5), coef) is None
    three_d = _state((3, 3, 3, 3, 3, 3, 2), True, 1)
    assert fused.activation(three_d, 0.0, 0.5, 0.1, np.ones((2, 3, 3, 3)),
                            np.ones((2, 3, 3, 3))) is None
    assert not fused.enabled(type(sys))  # any module but NumPy: CuPy arrays never go here


def test_the_activation_leaves_its_input_and_statistics_alone() -> None:
    """Self statistics may share memory with the state (a vector batch is its own variance):
    the kernel writes K to a new array, as the NumPy rule does."""
    x = _data((6, 4), 0)
    st = inputs.self_input(np, x, False, True)
    before = st.nngp.copy()
    out = fused.activation(st, 0.0, 0.5, 1 / (2 * np.pi), st.nngp, st.nngp)
    assert out is not None and out.nngp is not st.nngp
    assert np.array_equal(st.nngp, before)


def test_atan2_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    r = np.abs(rng.standard_normal(n)) * 10.0 ** rng.uniform(-12, 6, n)
    k = rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 6, n)
    r[:50], k[25:75] = 0.0, 0.0  # atan2(0, 0) = 0, atan2(r, 0) = π/2, atan2(0, -k) = π
    k[:10] *= -1
    got = np.array([fused._atan2(a, b, fused.C64)
                    for a, b in zip(r[:2000], k[:2000], strict=True)])
    ref = np.arctan2(r, k)
    assert np.abs(got - ref[:2000]).max() <= 5e-16
    r32, k32 = r[:2000].astype(np.float32), k[:2000].astype(np.float32)
    got32 = np.array([fused._atan2(a, b, fused.C32) for a, b in zip(r32, k32, strict=True)])
    ref32 = np.arctan2(r32.astype(np.float64), k32.astype(np.float64))
    assert np.abs(got32 - ref32).max() <= 5e-7


def test_ntk_fused_0_turns_the_compiled_path_off() -> None:
    code = "import numpy, ntkcompute.kernels.fused as f; print(f.enabled(numpy))"
    env = {**os.environ, "NTK_FUSED": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"
    env["NTK_FUSED"] = "1"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip() == "True"


def test_numba_loads_with_the_first_kernel_not_with_the_package() -> None:
    """The CLI and the API process import ntkcompute for specs and the client: they do not
    pay numba's import (0.4 s here)."""
    code = ("import sys, numpy, ntkcompute, ntkcompute.client\n"
            "from ntkcompute import architectures as A\n"
            "print('numba' in sys.modules, end=' ')\n"
            "ntkcompute.kernel(A.cntk(1), numpy.ones((2, 4, 4, 1)))\n"
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False True"


def test_warm_compiles_every_kernel_for_both_dtypes() -> None:
    """``fused.warm`` (run once per test session, float32 in a second process) reaches every
    CPU kernel in float32 and float64: each value of the flags (the ReLU fused or not, Θ
    carried or not, full or diagonal layout) and pooling. Processes started after it load
    them from the cache."""
    fused.warm()
    kernels = [*fused.AFFINE.values(), *fused.ACTIVATION.values(), fused._pool_full]
    for fn in kernels:
        dtypes = {str(sig[0].dtype) for sig in fn.signatures}
        assert dtypes == {"float32", "float64"}, fn.signatures

"""Array-module dispatch: one code path for NumPy and CuPy, chosen from the inputs."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

try:  # CuPy is optional (the ``gpu`` extra); without it every array is NumPy.
    import cupy as _cupy  # type: ignore[import-not-found]
except Exception:
    _cupy = None


def array_module(*arrays: Any) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def special(xp: ModuleType) -> ModuleType:
    """``scipy.special`` or ``cupyx.scipy.special`` matching ``xp``."""
    if xp is np:
        import scipy.special as sp

        return sp
    import cupyx.scipy.special as csp  # type: ignore[import-not-found]

    return csp


def to_numpy(a: Any) -> np.ndarray:
    """Host copy of a NumPy or CuPy array."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def gpu_count() -> int:
    """CUDA devices CuPy sees (0 without CuPy or a driver)."""
    if _cupy is None:
        return 0
    try:
        return int(_cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return gpu_count() > 0


_TUNED = False


def tune_allocator() -> None:
    """Keep large temporaries on glibc's heap instead of fresh ``mmap`` pages.

    Kernel rules allocate many short-lived arrays of a few MB. By default glibc serves each
    from new ``mmap`` pages, and the page faults cost ~30% of a CNTK's time (measured in
    bench/kernels.py). Raising the mmap and trim thresholds lets freed blocks be reused.
    Process-wide, idempotent, Linux/glibc only; set ``NTKCOMPUTE_MALLOC_TUNING=0`` to skip.
    """
    global _TUNED
    if _TUNED:
        return
    _TUNED = True
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("NTKCOMPUTE_MALLOC_TUNING") == "0":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # Block temporaries stay under 32 MiB (CPU blocks are capped at 16 MiB); anything
        # bigger (whole tiles, outputs) still gets its own mapping, returned on free.
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass

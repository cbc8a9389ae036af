"""Checks on user data before any math runs: shape, dtype, finiteness, x1/x2 agreement."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module
from .errors import InputError
from .spec import float32_verified


def check_shape(shape: tuple[int, ...], field: str) -> None:
    """An input shape must be ``(n, features)`` or ``(n, *spatial, channels)``, none empty."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise InputError(f"must be (n, features) or (n, *spatial, channels), got shape "
                         f"{shape}", field=field)
    if any(s <= 0 for s in shape):
        raise InputError(f"has an empty axis: shape {shape}", field=field)


def as_input(x: Any, field: str, dtype: Any) -> Any:
    """Return ``x`` as a finite floating array of ``dtype`` (NumPy or CuPy, as given)."""
    xp = array_module(x)
    try:
        arr = xp.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"not an array: {e}", field=field) from None
    if arr.dtype.kind not in "fiu":
        raise InputError(f"must be real numbers (float32/float64 or integers), got dtype "
                         f"{arr.dtype}", field=field)
    check_shape(arr.shape, field)
    arr = arr.astype(dtype, copy=False)
    if not bool(xp.isfinite(arr).all()):
        bad = int((~xp.isfinite(arr)).sum())
        raise InputError(f"contains {bad} NaN or infinite value(s)", field=field)
    return xp.ascontiguousarray(arr)


def resolve_dtype(dtype: Any, x: Any, arch: Any = None) -> np.dtype:
    """``dtype`` if given (float32 or float64), else the input's float dtype, else float64.

    With ``arch`` (an :class:`~ntkcompute.spec.Architecture`), float32 inputs default to
    float32 only when every layer's float32 kernel is verified accurate
    (:func:`ntkcompute.spec.float32_verified`); otherwise to float64.
    """
    if dtype is None:
        kind = getattr(x, "dtype", np.dtype(np.float64))
        dtype = kind if np.dtype(kind) in (np.float32, np.float64) else np.float64
        if np.dtype(dtype) == np.float32 and arch is not None and not float32_verified(arch):
            dtype = np.float64
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise InputError(f"unknown dtype {dtype!r}", field="dtype") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InputError(f"must be float32 or float64, got {dt}", field="dtype")
    return dt


def check_pair(x1: Any, x2: Any) -> None:
    if tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
        raise InputError(f"trailing shape {tuple(x2.shape[1:])} does not match x1's "
                         f"{tuple(x1.shape[1:])}", field="x2")
    if array_module(x1) is not array_module(x2):
        raise InputError("x1 and x2 must both be NumPy or both CuPy arrays", field="x2")


def check_get(get: Any) -> tuple[str, ...]:
    if isinstance(get, str):
        get = (get,)
    get = tuple(get)
    bad = [g for g in get if g not in ("ntk", "nngp")]
    if not get or bad:
        raise InputError(f"must name 'ntk' and/or 'nngp', got {list(get)}", field="get")
    if len(set(get)) != len(get):
        raise InputError(f"names a kernel twice: {list(get)}", field="get")
    return get

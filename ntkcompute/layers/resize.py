"""ImageResize (stax.ImageResize, ``jax.image.resize``): spec, plan, kernel rule, finite-width
forward / backward and random features.

Every method of ``jax.image.resize`` is a linear map along each resized spatial axis,
``x' = M x`` with ``M`` ``(out, in)``: ``nearest`` selects (``floor((o + 1/2) in / out)``,
computed in float32 as JAX does), ``linear`` / ``cubic`` (Keys) / ``lanczos3`` /
``lanczos5`` weigh by their kernel at ``|(o + 1/2) in / out - 1/2 - i|`` (stretched by
``in / out`` when downsampling with ``antialias``), each column normalised to sum 1, as
``jax.image.scale_and_translate``'s weight matrix. Axes whose size does not change are left
as they are (JAX skips them too). So the kernel is exact for all of them:

    K'[o, o'] = sum_{i, i'} M[o, i] M[o', i'] K[i, i']   (per axis: M K Mᵀ),  Θ' likewise

(stax's kernel_fn takes only linear and nearest). The channel and batch axes are not
resized (``shape`` entries -1 there).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import field_validator

from .registry import MAX_OUT_POSITIONS, LayerRule, Leaf, _Layer, register

if TYPE_CHECKING:
    from types import ModuleType

    from ..kernels.state import Array, State
    from ..plan import LayerPlan

#: stax / jax.image spellings -> the method
METHODS = {"nearest": "nearest", "linear": "linear", "bilinear": "linear",
           "trilinear": "linear", "triangle": "linear", "cubic": "cubic", "bicubic": "cubic",
           "tricubic": "cubic", "lanczos3": "lanczos3", "lanczos5": "lanczos5"}


class ImageResize(_Layer):
    """Resize the spatial axes to ``shape`` (the whole input shape as in stax, ``-1`` for an
    axis left as it is: batch and channels must be ``-1``)."""

    type: Literal["image_resize"] = "image_resize"
    shape: list[int]
    method: str
    antialias: bool = True

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or any(s == 0 or s < -1 for s in v):
            raise ValueError(f"must list a size > 0 or -1 for every axis of the input, "
                             f"batch and channels included, got {v}")
        if v[0] != -1 or v[-1] != -1:
            raise ValueError("must be -1 for the batch (first) and channel (last) axes: only "
                             f"spatial axes are resized, got {v}")
        if any(s > MAX_OUT_POSITIONS for s in v) or \
                math.prod(s for s in v if s > 0) > MAX_OUT_POSITIONS:
            raise ValueError(f"asks for more than {MAX_OUT_POSITIONS} output positions")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not isinstance(v, str) or v.lower() not in METHODS:
            raise ValueError(f"must be one of {', '.join(METHODS)}, got {v!r}")
        return v


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    out = ((1.5 * x - 2.5) * x) * x + 1.0
    out = np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, out)
    return np.where(x >= 2.0, 0.0, out)


def _lanczos(radius: int):
    def k(x: np.ndarray) -> np.ndarray:
        y = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius)
        safe = np.where(x != 0, np.pi**2 * x**2, 1.0)
        out = np.where(x > 1e-3, y / safe, 1.0)
        return np.where(x > radius, 0.0, out)

    return k


_KERNELS = {"linear": _triangle, "cubic": _keys_cubic, "lanczos3": _lanczos(3),
            "lanczos5": _lanczos(5)}


@lru_cache(maxsize=128)
def resize_matrix(n_in: int, n_out: int, method: str, antialias: bool) -> np.ndarray:
    """``M`` ``(n_out, n_in)`` of ``jax.image.resize`` along one axis (float64)."""
    method = METHODS[method.lower()]
    if method == "nearest":
        pos = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in) \
            / np.float32(n_out)
        idx = np.floor(pos.astype(np.float32)).astype(np.int64)
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), idx] = 1.0
        return m
    scale = n_out / n_in
    inv = 1.0 / scale
    kscale = max(inv, 1.0) if antialias else 1.0
    sample = (np.arange(n_out, dtype=np.float64) + 0.5) * inv - 0.5
    x = np.abs(sample[None, :] - np.arange(n_in, dtype=np.float64)[:, None]) / kscale
    w = _KERNELS[method](x)  # (in, out)
    tot = w.sum(axis=0, keepdims=True)
    w = np.where(np.abs(tot) > 1000.0 * float(np.finfo(np.float32).eps),
                 w / np.where(tot != 0, tot, 1.0), 0.0)
    inside = (sample >= -0.5) & (sample <= n_in - 0.5)
    w = np.where(inside[None, :], w, 0.0)
    return np.ascontiguousarray(w.T)


def _apply(xp: ModuleType, a: Array, m: Array, ax: int) -> Array:
    """``M`` along axis ``ax`` of ``a``."""
    out = xp.tensordot(m, a, axes=([1], [ax]))
    return xp.moveaxis(out, 0, ax)


@register(ImageResize)
class ImageResizeRule(LayerRule):
    covariance = "full"
    has_features = True

    def shape(self, layer: Any, leaf: Leaf) -> None:
        cur = leaf.in_spatial
        if len(layer.shape) != len(cur) + 2:
            raise leaf.err(f"has {len(layer.shape)} entries but the input to this layer has "
                           f"{len(cur) + 2} axes (n, *{cur}, channels)", field="shape")
        out = tuple(n if s == -1 else s for n, s in zip(cur, layer.shape[1:-1], strict=True))
        if math.prod(out) > MAX_OUT_POSITIONS:
            raise leaf.err(f"asks for {math.prod(out)} output positions, more than "
                           f"{MAX_OUT_POSITIONS}", field="shape")
        leaf.out_spatial = out

    def _mats(self, lp: LayerPlan) -> list[tuple[int, np.ndarray]]:
        """``(spatial axis, M)`` for each axis that changes size."""
        layer = lp.layer
        return [(k, resize_matrix(n, o, layer.method, layer.antialias))
                for k, (n, o) in enumerate(zip(lp.in_spatial, lp.out_spatial, strict=True))
                if n != o]

    def kernel(self, lp: LayerPlan, st: State, xp: ModuleType, va: Array | None = None,
               vb: Array | None = None) -> State:
        mats = [(k, xp.asarray(m, dtype=st.nngp.dtype)) for k, m in self._mats(lp)]

        def f(a: Array) -> Array:
            for k, m in mats:
                axes = (2 * k, 2 * k + 1) if st.full else (k,)
                for ax in axes:
                    a = _apply(xp, a, m, ax)
            return a

        if not st.full and mats:  # the plan keeps the full covariance before this layer
            raise AssertionError("image_resize needs the full spatial covariance")
        return st.with_(spatial=lp.out_spatial, nngp=f(st.nngp),
                        ntk=None if st.ntk is None else f(st.ntk))

    def forward(self, lp: LayerPlan, params: tuple | None, a: Any) -> tuple[Any, Any]:
        n, c = a.shape[0], a.shape[-1]
        x = a.reshape(n, *lp.in_spatial, c)
        for k, m in self._mats(lp):
            x = _apply(np, x, m.astype(a.dtype), k + 1)
        return x.reshape(n, -1, c), None

    def backward(self, lp: LayerPlan, data: Any, d: Any, gram: Any) -> Any:
        kk, n, _, c = d.shape
        g = d.reshape(kk, n, *lp.out_spatial, c)
        for k, m in self._mats(lp):
            g = _apply(np, g, m.T.astype(d.dtype), k + 2)
        return g.reshape(kk, n, -1, c)

    def feature(self, lp: LayerPlan, draws: tuple[Any, ...], psi: Any, xi: Any, xp: ModuleType
                ) -> tuple[Any, Any]:
        mats = [(k, xp.asarray(m, dtype=psi.dtype)) for k, m in self._mats(lp)]

        def f(a: Any) -> Any:
            for k, m in mats:
                a = _apply(xp, a, m, k + 1)
            return a

        return f(psi), None if xi is None else f(xi)

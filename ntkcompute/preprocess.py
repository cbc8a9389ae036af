"""Preprocessing the kernel literature uses: per-channel standardisation (Arora et al. 2019),
ZCA whitening with a regularisation strength and horizontal-flip symmetrisation of a kernel
(Shankar et al. 2020, "Neural kernels without tangents", Sec. 4).

Each is fit on training inputs only and then applied to every input, so test data never
shapes the transform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .validate import as_input

__all__ = ["MAX_ZCA_DIM", "ZCA", "Standardize", "check_preprocess", "fit_preprocess",
           "flip_symmetrized"]

#: Most input dimensions (H·W·C) ZCA whitens: it decomposes a d x d covariance, O(d³).
MAX_ZCA_DIM = 1 << 14


@dataclass(frozen=True)
class Standardize:
    """``(x - mean) / std`` per channel (the last axis), both from the training inputs."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: Any) -> Standardize:
        x = as_input(x, "x", np.float64)
        axes = tuple(range(x.ndim - 1))
        std = x.std(axis=axes)
        return cls(x.mean(axis=axes), np.where(std > 0, std, 1.0))

    def __call__(self, x: Any) -> np.ndarray:
        return (as_input(x, "x", np.float64) - self.mean) / self.std


@dataclass(frozen=True)
class ZCA:
    """ZCA whitening of whole inputs (flattened), regularised:
    ``x ↦ (x - μ) V diag((λ + ε)^-½) Vᵀ`` with ``Σ = V diag(λ) Vᵀ`` the training inputs'
    covariance and ``ε = strength · mean(λ)`` (strength 0: full whitening; large: close to
    centring and a scale). Shankar et al. 2020 report their best CIFAR-10 kernels with
    whole-image ZCA (their Table 2)."""

    mean: np.ndarray
    matrix: np.ndarray  # (d, d), symmetric
    shape: tuple[int, ...]

    @classmethod
    def fit(cls, x: Any, strength: float = 0.1) -> ZCA:
        """From training inputs ``x`` ``(n, ...)``; refuses more than :data:`MAX_ZCA_DIM`
        dimensions or a strength that is not a finite number >= 0 (naming the field)."""
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or \
                not np.isfinite(strength) or strength < 0:
            raise InputError(f"must be a finite number >= 0, got {strength!r}",
                             field="strength")
        x = as_input(x, "x", np.float64)
        d = int(np.prod(x.shape[1:]))
        if d > MAX_ZCA_DIM:
            raise InputError(f"inputs of {d} dimensions, more than {MAX_ZCA_DIM}: ZCA "
                             "decomposes a d x d covariance", field="x")
        flat = x.reshape(len(x), d)
        mean = flat.mean(axis=0)
        c = flat - mean
        lam, v = np.linalg.eigh(c.T @ c / len(x))
        lam = np.maximum(lam, 0.0)
        eps = strength * float(lam.mean())
        if eps == 0.0 and lam.min() <= 0.0:
            raise InputError("the inputs' covariance is singular: full whitening (strength "
                             "0) divides by 0; give a strength > 0", field="strength")
        return cls(mean, (v / np.sqrt(lam + eps)) @ v.T, tuple(x.shape[1:]))

    def __call__(self, x: Any) -> np.ndarray:
        x = as_input(x, "x", np.float64)
        if tuple(x.shape[1:]) != self.shape:
            raise InputError(f"inputs of shape (n, {', '.join(map(str, self.shape))}) "
                             f"expected, got {x.shape}", field="x")
        flat = x.reshape(len(x), -1) - self.mean
        return (flat @ self.matrix).reshape(x.shape)


def flip(x: Any) -> Any:
    """A horizontal flip of inputs ``(n, *spatial, C)``: the last spatial axis reversed
    (NumPy or CuPy)."""
    return x[..., ::-1, :].copy()


def _flip(x: np.ndarray) -> np.ndarray:
    """A horizontal flip: the last spatial axis (W of NHWC, T of a sequence) reversed."""
    if x.ndim < 3:
        raise InputError(f"flips need (n, *spatial, channels) inputs, got shape {x.shape}",
                         field="x1")
    return flip(x)


def flip_symmetrized(kernel_fn: Callable[..., dict[str, Any]], x1: Any, x2: Any | None = None,
                     *, plain: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``(K(x, x') + K(x, flip x')) / 2``: the kernel of flip-augmented training, without
    augmenting the data (which would make the Gram 4x larger).

    ``kernel_fn(x1, x2, **kwargs)`` is e.g. :func:`ntkcompute.kernel` with its architecture
    bound (``functools.partial(nc.kernel, arch)``). For an architecture whose kernel a flip of
    both inputs leaves unchanged (convolutions, pooling, dense readouts on pooled features),
    ``K(x, flip x') = K(flip x, x')`` and this equals the average over all four flips; with
    ``x2`` omitted, the cross term ``K(X, flip X)`` is symmetrised as ``(C + Cᵀ) / 2``, so
    the result is exactly symmetric. ``plain``, ``kernel_fn(x1, x2)`` already computed (e.g.
    to compare against), is reused instead of computed again.
    """
    x1 = np.asarray(x1)
    sym = x2 is None
    if plain is None:
        plain = kernel_fn(x1, None if sym else x2, **kwargs)
    cross = kernel_fn(x1, _flip(x1 if sym else np.asarray(x2)), **kwargs)
    out = {}
    for name, k in plain.items():
        if name not in ("ntk", "nngp"):  # a family's depths, variants, b_stds
            out[name] = k
            continue
        c = cross[name]
        if sym:  # (a family's stacks: every member's last two axes)
            c = (c + np.swapaxes(c, -1, -2)) / 2
        out[name] = (k + c) / 2
    return out


def check_preprocess(options: Mapping[str, Any] | None, shape: tuple[int, ...]
                     ) -> dict[str, Any] | None:
    """A job's ``preprocess`` options, checked before any work for inputs of ``shape``
    ``(n, ...)``: ``{"zca": strength >= 0 or None, "standardize": bool, "flip": bool}``
    (None or all off: None; ``flip``, the flip-symmetrised kernel, needs a spatial axis).
    Raises :class:`InputError` naming ``preprocess.<key>``."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise InputError(f"must be an object, got {options!r}", field="preprocess")
    extra = set(options) - {"zca", "standardize", "flip"}
    if extra:
        raise InputError(f"unknown keys {sorted(extra)} (zca, standardize, flip)",
                         field="preprocess")
    zca, std = options.get("zca"), options.get("standardize", False)
    flip = options.get("flip", False)
    if not isinstance(flip, bool):
        raise InputError(f"must be true or false, got {flip!r}", field="preprocess.flip")
    if flip and len(shape) < 3:
        raise InputError(f"flips need (n, *spatial, channels) inputs, got shape {shape}",
                         field="preprocess.flip")
    if zca is not None:
        if isinstance(zca, bool) or not isinstance(zca, (int, float)) or \
                not np.isfinite(zca) or zca < 0:
            raise InputError(f"must be a finite number >= 0, got {zca!r}",
                             field="preprocess.zca")
        d = int(np.prod(shape[1:]))
        if d > MAX_ZCA_DIM:
            raise InputError(f"inputs of {d} dimensions, more than {MAX_ZCA_DIM}: ZCA "
                             "decomposes a d x d covariance", field="preprocess.zca")
    if not isinstance(std, bool):
        raise InputError(f"must be true or false, got {std!r}", field="preprocess.standardize")
    if zca is None and not std and not flip:
        return None
    out = {"zca": None if zca is None else float(zca), "standardize": std}
    if flip:  # (absent when off: jobs made before flips keep their identity)
        out["flip"] = True
    return out


def fit_preprocess(options: Mapping[str, Any] | None, train: Any
                   ) -> Callable[[Any], np.ndarray] | None:
    """The input transform of checked ``preprocess`` options fit on the training inputs
    ``train``: ZCA (if ``zca``), then per-channel standardisation (if ``standardize``), as
    float64; None without such options (``flip`` acts on the kernel, not the inputs)."""
    options = check_preprocess(options, np.shape(train))
    if options is None or (options["zca"] is None and not options["standardize"]):
        return None
    steps: list[Callable[[Any], np.ndarray]] = []
    x = as_input(train, "x", np.float64)
    if options["zca"] is not None:
        steps.append(ZCA.fit(x, options["zca"]))
        x = steps[-1](x)
    if options["standardize"]:
        steps.append(Standardize.fit(x))

    def transform(v: Any) -> np.ndarray:
        v = as_input(v, "x", np.float64)
        for step in steps:
            v = step(v)
        return v

    return transform

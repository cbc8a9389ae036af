"""Random features for the NTK and NNGP of fully-connected ReLU nets (Zandieh et al. 2021,
"Scaling Neural Tangent Kernels via Sketching and Random Features", NTK random features).

``Φ(x) ∈ R^D`` with ``E⟨Φ(x), Φ(x')⟩ ≈ Θ(x, x')`` in the conventions of
:func:`ntkcompute.kernel` (stax NTK parameterization, ``W_std``, ``b_std``), so kernel
regression costs O(n·D²) and the data never meet pairwise. Layer by layer, with ψ the NNGP
features (⟨ψ, ψ'⟩ ≈ K) and ξ the NTK features (⟨ξ, ξ'⟩ ≈ Θ):

* inputs: ``ψ = x / sqrt(d)`` (K₀ = ⟨x, x'⟩ / d), no ξ yet (Θ₀ = 0);
* dense: ``ψ ← [W_std ψ ; b_std]`` (K' = W² K + b²), ``ξ ← [W_std ξ ; ψ]`` (Θ' = W² Θ + K');
* relu: with one Gaussian matrix G (m × dim ψ), ``ψ ← relu(Gψ)/sqrt(m)`` (arc-cosine features
  of order 1, ⟨·,·⟩ → Σ = E relu(u) relu(v)) and ``φ̇ = step(Gψ)/sqrt(m)`` (order 0, → Σ̇);
  ``ξ ← TensorSRHT(ξ, φ̇)``, a sketch of ξ ⊗ φ̇ whose inner products estimate Θ·Σ̇ without
  forming the tensor product.

TensorSRHT(a, b) = sqrt(D₁D₂/m) · (H S₁ a)[i_k] · (H S₂ b)[j_k], k < m, with S random sign
diagonals, H the orthonormal Walsh–Hadamard transform of size D (a power of two ≥ the input
dimension) and (i_k, j_k) uniform random coordinates: E over the signs gives exactly
⟨a, a'⟩⟨b, b'⟩ (Ahle et al. 2020; Zandieh et al. 2021, Sec. 4).

Every random draw comes from ``seed`` alone, before any data is seen, so a row's features do
not depend on which other rows share its batch or tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import array_module
from .errors import InputError
from .spec import Architecture, Dense, Identity, Relu, parse_arch
from .validate import as_input, check_get, resolve_dtype


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def fwht(xp: Any, a: Any) -> Any:
    """Orthonormal Walsh–Hadamard transform of the rows of ``a`` (n, D), D a power of two:
    log2(D) butterfly passes, O(n D log D)."""
    n, d = a.shape
    h = 1
    while h < d:
        v = a.reshape(n, d // (2 * h), 2, h)
        a = xp.stack((v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]), axis=2).reshape(n, d)
        h *= 2
    return a / math.sqrt(d)


@dataclass(frozen=True)
class TensorSRHT:
    """A sketch of a ⊗ b (a ∈ R^d1, b ∈ R^d2) into R^m; inner products preserved in
    expectation."""

    d1: int
    d2: int
    m: int
    signs1: np.ndarray  # (D1,) ±1
    signs2: np.ndarray  # (D2,) ±1
    rows1: np.ndarray  # (m,) in [0, D1)
    rows2: np.ndarray  # (m,) in [0, D2)

    @classmethod
    def draw(cls, rng: np.random.Generator, d1: int, d2: int, m: int) -> TensorSRHT:
        p1, p2 = _pow2(d1), _pow2(d2)
        return cls(d1, d2, m, rng.choice([-1.0, 1.0], p1), rng.choice([-1.0, 1.0], p2),
                   rng.integers(0, p1, m), rng.integers(0, p2, m))

    def __call__(self, a: Any, b: Any) -> Any:
        """(n, d1), (n, d2) -> (n, m)."""
        xp = array_module(a)
        out = []
        for x, signs, rows in ((a, self.signs1, self.rows1), (b, self.signs2, self.rows2)):
            p = signs.shape[0]
            padded = xp.zeros((x.shape[0], p), dtype=x.dtype)
            padded[:, :x.shape[1]] = x * xp.asarray(signs[:x.shape[1]], dtype=x.dtype)
            out.append(fwht(xp, padded)[:, xp.asarray(rows)])
        scale = math.sqrt(self.signs1.shape[0] * self.signs2.shape[0] / self.m)
        return out[0] * out[1] * scale


@dataclass(frozen=True)
class _ReluDraw:
    gauss: np.ndarray  # (m, dim ψ_in)
    sketch: TensorSRHT


@dataclass(frozen=True)
class FeatureMap:
    """Seeded random features of an FC ReLU architecture for inputs of dimension ``d``.

    ``dims`` gives the feature dimension of each kernel: ``{"ntk": D, "nngp": D'}``.
    """

    arch: Architecture
    d: int
    m: int
    seed: int
    draws: tuple[_ReluDraw, ...] = field(repr=False)
    dims: dict[str, int] = field(default_factory=dict)

    def __call__(self, x: Any, get: tuple[str, ...] | str = ("ntk", "nngp"),
                 dtype: Any = None) -> dict[str, Any]:
        """Features of the rows of ``x`` (n, d): ``{"ntk": (n, D), "nngp": (n, D')}``."""
        get = check_get(get)
        dt = resolve_dtype(dtype, x)
        x = as_input(x, "x", dt)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise InputError(f"must be (n, {self.d}), got shape {tuple(x.shape)}", field="x")
        xp = array_module(x)
        psi, xi = x / math.sqrt(self.d), None
        draws = iter(self.draws)
        for layer in self.arch.layers:
            if isinstance(layer, Dense):
                parts = [layer.W_std * psi]
                if layer.b_std:
                    parts.append(xp.full((x.shape[0], 1), layer.b_std, dtype=dt))
                psi = xp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
                xi = psi if xi is None else xp.concatenate([layer.W_std * xi, psi], axis=1)
            elif isinstance(layer, Relu):
                draw = next(draws)
                z = psi @ xp.asarray(draw.gauss.T, dtype=dt)
                scale = 1.0 / math.sqrt(self.m)
                dphi = (z > 0).astype(dt) * scale
                psi = xp.maximum(z, 0) * scale
                xi = draw.sketch(xi, dphi)
        out = {"ntk": xi, "nngp": psi}
        return {k: out[k] for k in get}


def feature_map(arch: Architecture | dict | str, d: int, m: int, seed: int = 0
                ) -> FeatureMap:
    """Draw the random features of ``arch`` (Dense / ReLU / Identity layers, NTK
    parameterization, starting with Dense) for inputs of dimension ``d``.

    ``m`` is the number of arc-cosine features per ReLU layer and the sketch dimension; the
    NTK features have dimension ``2m + 1`` (``m + 1`` without biases in the last layer).

    Raises:
        InputError: an unsupported layer or parameterization, or m, d < 1.
    """
    spec = parse_arch(arch)
    if spec.parameterization != "ntk":
        raise InputError("random features follow the NTK parameterization",
                         field="parameterization")
    for field_name, v in (("m", m), ("d", d)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"must be a positive integer, got {v!r}", field=field_name)
    rng = np.random.default_rng(seed)
    draws = []
    dim_psi, dim_xi = d, 0
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Dense):
            dim_psi += 1 if layer.b_std else 0
            dim_xi = dim_psi + dim_xi
        elif isinstance(layer, Relu):
            if dim_xi == 0:
                raise InputError("a relu must follow a dense layer", field="type", layer=i)
            draws.append(_ReluDraw(rng.standard_normal((m, dim_psi)),
                                   TensorSRHT.draw(rng, dim_xi, m, m)))
            dim_psi, dim_xi = m, m
        elif not isinstance(layer, Identity):
            raise InputError(f"random features cover dense, relu and identity layers (FC ReLU "
                             f"nets); use the exact kernel for {layer.type!r}", field="type",
                             layer=i)
    if not isinstance(spec.layers[0], Dense):
        raise InputError("the first layer must be dense", field="type", layer=0)
    return FeatureMap(spec, d, m, seed, tuple(draws), {"ntk": dim_xi, "nngp": dim_psi})


def features(arch: Architecture | dict | str, x: Any, m: int, seed: int = 0,
             get: tuple[str, ...] | str = ("ntk", "nngp"), dtype: Any = None
             ) -> dict[str, Any]:
    """``feature_map(arch, x.shape[1], m, seed)(x)``: NTK/NNGP random features of x (n, d)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2:
        raise InputError(f"must be (n, d), got shape {shape}", field="x")
    return feature_map(arch, int(shape[1]), m, seed)(x, get, dtype)

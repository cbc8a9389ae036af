"""Random features for the NTK and NNGP of ReLU nets, fully connected and convolutional
(Zandieh et al. 2021, "Scaling Neural Tangent Kernels via Sketching and Random Features").

``Φ(x) ∈ R^D`` with ``E⟨Φ(x), Φ(x')⟩ ≈ Θ(x, x')`` in the conventions of
:func:`ntkcompute.kernel` (stax NTK parameterization, ``W_std``, ``b_std``), so kernel
regression costs O(n·D²) and the data never meet pairwise. Every spatial position p carries
its own features, ψ_p for the NNGP (⟨ψ_p, ψ'_q⟩ ≈ K[p, q]) and ξ_p for the NTK
(⟨ξ_p, ξ'_q⟩ ≈ Θ[p, q]), so the full spatial covariance that pooling needs is there without
ever pairing positions. One rule per layer, each the kernel rule of :mod:`ntkcompute.kernels`
read as an identity between inner products:

* inputs: ``ψ_p = x_p / sqrt(C)`` (K₀ = ⟨x_p, x'_q⟩ / C), no ξ yet (Θ₀ = 0);
* dense: ``ψ ← [W_std ψ ; b_std]`` (K' = W² K + b²), ``ξ ← [W_std ξ ; ψ']`` (Θ' = W² Θ + K');
* conv: the same with ``W_std ψ`` replaced by the window's features side by side,
  ``(W_std / sqrt|F|) [ψ_{s p + d}]_{d ∈ F}`` (zeros where padded): their inner product is
  the window average ``(W²/|F|) Σ_d K[s p + d, s q + d]`` of the Conv rule;
* relu: with one random matrix G (m × dim ψ), the same at every position (a random conv),
  ``ψ ← relu(Gψ)/sqrt(m)`` (arc-cosine features of order 1, ⟨·,·⟩ → E relu(u) relu(v)) and
  ``φ̇ = step(Gψ)/sqrt(m)`` (order 0, → Σ̇); ``ξ ← TensorSRHT(ξ, φ̇)``, a sketch of ξ ⊗ φ̇
  whose inner products estimate Θ·Σ̇ without forming the tensor product. G's rows are
  Gaussian, or rotated cross-polytopes where dim ψ is small (:func:`relu_directions`);
* avg_pool / global_avg_pool: the average of the features over the window / all positions
  (linear, so exact: ⟨mean ψ, mean ψ'⟩ = mean over (p, q) of K[p, q]);
* flatten: ``[ψ_p]_p / sqrt(P)`` (⟨·,·⟩ = mean_p K[p, p]), projected to m coordinates by an
  SRHT when P·dim ψ exceeds m.

For conv nets this is the random-feature form of the paper's CNTK sketch: where the paper
approximates the arc-cosine kernels by polynomials and sketches them with PolySketch, we use
the exact arc-cosine random features (a random ReLU conv, one BLAS product per layer) and
TensorSRHT, the same primitives as the FC map; the error falls like m^-1/2 (tests/, bench/).

TensorSRHT(a, b) = sqrt(D₁D₂/m) · (H S₁ a)[i_k] · (H S₂ b)[j_k], k < m, with S random sign
diagonals, H the orthonormal Walsh–Hadamard transform of size D (a power of two ≥ the input
dimension) and (i_k, j_k) uniform random coordinates: E over the signs gives exactly
⟨a, a'⟩⟨b, b'⟩ for any coordinates (Ahle et al. 2020; Zandieh et al. 2021, Sec. 4). The i_k
(and the j_k) are drawn without replacement, in rounds of D when m > D, as the SRHT of
Tropp 2011 restricts to distinct coordinates: a repeated coordinate only adds variance.

Exact norms (``exact_norms``, on by default where affordable). On images the Gram of these
features is nearly rank one (CNTK-GAP-2 on digits: the top eigenvalue carries all but 1e-5
of ‖K‖²_F), and every position shares each layer's draws, so the plain estimator's error is
one random number, the scale of ΦΦᵀ, common to every entry: ‖ΦΦᵀ - K‖_F/‖K‖_F is
half-normal with heavy tails over seeds (0.007 to 0.59 at m = 256), not an average over
positions or rows. So each row is rescaled to its exact norms, ⟨Φ(x), Φ(x)⟩ = Θ(x, x) and
⟨Ψ(x), Ψ(x)⟩ = K(x, x), from the exact kernel's self pass of that row alone
(:func:`ntkcompute.infinite.self_pass`: O(depth) per FC row, the P × P self-covariance of one
image for GAP): the features then estimate only the cosines, ΦΦᵀ = sqrt(Θ_ii Θ_jj) ĉos_ij,
as the arc-cosine kernel factors into norms times a function of the angle (Cho & Saul 2009)
and as Arora et al. 2019 and the paper's CNTK sketch carry exact per-pixel norms. This ratio
estimator is consistent with an O(1/m) bias (< 0.1% at m = 32 on digits, at the noise level at
m = 128); ``exact_norms=False`` keeps the plain, exactly unbiased estimator.

Every random draw comes from ``seed`` alone, before any data is seen, so a row's features do
not depend on which other rows share its batch or tile.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import array_module
from .errors import InputError
from .infinite import bytes_per_pair, self_pass
from .kernels.spatial import _pad, shifted_sum
from .plan import LayerPlan, Plan, Window, make_plan
from .spec import (
    Architecture,
    AvgPool,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    Identity,
    Relu,
    parse_arch,
)
from .validate import as_input, check_get, resolve_dtype

#: Revision of the estimator: the same (arch, m, seed) gives other features under another
#: one. 2: exact norms, cross-polytope directions, coordinates without replacement (issue 15).
#: Stored feature jobs record it, and one written by another revision is not resumed.
ESTIMATOR_VERSION = 2
#: Working memory of one FeatureMap call (bytes); rows are processed in chunks that fit it.
DEFAULT_MEMORY = 512 << 20
#: ``exact_norms=None`` uses the exact norms when one row's exact self pass (float64) needs at
#: most this many bytes: always for FC nets and flatten readouts, for GAP up to ~2900 positions.
EXACT_NORMS_MAX_BYTES = DEFAULT_MEMORY
#: Floating-point operations per float of the self pass's state, per layer (for row_flops).
_SELF_FLOPS = 40
#: A ReLU layer's directions are drawn as rotated cross-polytopes when its input dimension d
#: is at most this (and 2d <= m): the QR factorisations then cost O(m d²) once per map.
ORTHO_MAX_DIM = 1024


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=32)
def hadamard(b: int) -> np.ndarray:
    """The orthonormal Sylvester–Hadamard matrix of size b (a power of two), symmetric."""
    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(b)


def _block(big: int) -> int:
    """The block size b = 2^⌈log2(big)/2⌉ that :func:`_srht_rows` splits H_big into."""
    return 1 << (big.bit_length() // 2)


def _srht_macs(d: int) -> int:
    """Multiply-adds of :func:`_srht_rows` per row of dimension d."""
    big = _pow2(d)
    b = _block(big)
    return d * b + big * -(-d // b)


def _coords(rng: np.random.Generator, p: int, m: int) -> np.ndarray:
    """(m,) coordinates of [0, p) drawn without replacement, in rounds of p when m > p.

    Each is uniform on [0, p), which is all the sketches' unbiasedness asks of them; within a
    round none repeats, so every Hadamard coordinate is used ⌊m/p⌋ or ⌈m/p⌉ times and m = p
    keeps all of them (the sketch is then an isometry).
    """
    full, rest = divmod(m, p)
    parts = [rng.permutation(p) for _ in range(full)]
    if rest:
        parts.append(rng.choice(p, rest, replace=False))
    return np.concatenate(parts)


def relu_directions(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    """The (m, d) random directions G of a ReLU layer's arc-cosine features.

    When ``2d <= m`` (and d <= :data:`ORTHO_MAX_DIM`), the rows ±√d·q_i of randomly rotated
    cross-polytopes: Haar orthonormal frames (q_i) of R^d (QR of a Gaussian matrix, signs
    fixed so the frame is Haar), each row taken with its negative; otherwise i.i.d. standard
    normal rows. Every row is marginally √d times a uniform direction and relu, step are
    positively homogeneous, so E relu(g·a) relu(g·b) and E step(g·a) step(g·b) are those of
    a Gaussian g (E|g|² = d): the features stay unbiased. A full cross-polytope is a
    spherical 3-design: Σ_i relu(√d q_i·a)² + relu(-√d q_i·a)² = d|a|² and half of its steps
    fire, whatever a, so the order-1 norms and order-0 counts of a low-dimensional layer (a
    conv's first window: |F|·C coordinates) are exact instead of χ²-like.
    """
    if 2 * d > m or d > ORTHO_MAX_DIM:
        return rng.standard_normal((m, d))
    half = (m + 1) // 2
    frames = []
    for _ in range(-(-half // d)):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        frames.append((q * np.sign(np.diag(r))).T)  # rows: a Haar orthonormal frame
    rows = np.concatenate(frames)[:half] * math.sqrt(d)
    return np.concatenate([rows, -rows])[:m]


def _srht_rows(xp: Any, x: Any, signs: np.ndarray, rows: np.ndarray) -> Any:
    """``(H S x)[:, rows]`` for the rows of x (n, d): S = diag(signs) and H the orthonormal
    Walsh–Hadamard transform of size D = len(signs), x zero-padded to D.

    H_D = H_a ⊗ H_b with b = 2^⌈log2(D)/2⌉, so ``(H x)[i_a b + i_b] = Σ_j H_a[i_a, j]
    (X H_b)[j, i_b]`` for X = x as (a, b): two BLAS products, the first over only the blocks
    x fills (the zero padding is never touched), O(d·b + D·d/b) per row instead of the
    butterflies' log2(D) passes over memory.
    """
    n, d = x.shape
    big = signs.shape[0]
    b = _block(big)
    a = big // b
    used = -(-d // b)  # blocks of b coordinates that x reaches
    hb = xp.asarray(hadamard(b), dtype=x.dtype)
    ha = xp.asarray(hadamard(a)[:, :used].T, dtype=x.dtype)  # (used, a)
    xs = xp.zeros((n, used * b), dtype=x.dtype)
    xs[:, :d] = x * xp.asarray(signs[:d], dtype=x.dtype)
    y = (xs.reshape(n * used, b) @ hb).reshape(n, used, b).transpose(0, 2, 1)  # (n, b, used)
    y = (y.reshape(n * b, used) @ ha).reshape(n, b * a)  # (H x)[i_a b + i_b] at i_b a + i_a
    rows = np.asarray(rows)
    return y[:, xp.asarray((rows % b) * a + rows // b)]


@dataclass(frozen=True)
class SRHT:
    """A subsampled randomized Hadamard transform R^d → R^m; E⟨Sa, Sb⟩ = ⟨a, b⟩."""

    d: int
    m: int
    signs: np.ndarray  # (D,) ±1
    rows: np.ndarray  # (m,) in [0, D), without replacement (:func:`_coords`)

    @classmethod
    def draw(cls, rng: np.random.Generator, d: int, m: int) -> SRHT:
        p = _pow2(d)
        return cls(d, m, rng.choice([-1.0, 1.0], p), _coords(rng, p, m))

    def __call__(self, a: Any) -> Any:
        """(n, d) -> (n, m)."""
        xp = array_module(a)
        return _srht_rows(xp, a, self.signs, self.rows) * math.sqrt(self.signs.shape[0] / self.m)


@dataclass(frozen=True)
class TensorSRHT:
    """A sketch of a ⊗ b (a ∈ R^d1, b ∈ R^d2) into R^m; inner products preserved in
    expectation."""

    d1: int
    d2: int
    m: int
    signs1: np.ndarray  # (D1,) ±1
    signs2: np.ndarray  # (D2,) ±1
    rows1: np.ndarray  # (m,) in [0, D1), without replacement in rounds (:func:`_coords`)
    rows2: np.ndarray  # (m,) in [0, D2), the same, drawn independently of rows1

    @classmethod
    def draw(cls, rng: np.random.Generator, d1: int, d2: int, m: int) -> TensorSRHT:
        p1, p2 = _pow2(d1), _pow2(d2)
        return cls(d1, d2, m, rng.choice([-1.0, 1.0], p1), rng.choice([-1.0, 1.0], p2),
                   _coords(rng, p1, m), _coords(rng, p2, m))

    def __call__(self, a: Any, b: Any) -> Any:
        """(n, d1), (n, d2) -> (n, m)."""
        xp = array_module(a)
        scale = math.sqrt(self.signs1.shape[0] * self.signs2.shape[0] / self.m)
        return (_srht_rows(xp, a, self.signs1, self.rows1)
                * _srht_rows(xp, b, self.signs2, self.rows2) * scale)


# --- one rule per layer: (step, ψ, ξ, xp) -> (ψ', ξ'), arrays (n, *spatial, dim) ----------------


def _cat(xp: Any, parts: list[Any], axis: int = -1) -> Any:
    return xp.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]


def _with_bias(xp: Any, a: Any, b_std: float | None) -> Any:
    if not b_std:
        return a
    return _cat(xp, [a, xp.full((*a.shape[:-1], 1), b_std, dtype=a.dtype)])


def _affine(xp: Any, psi: Any, xi: Any, linear: Callable[[Any], Any], layer: Any
            ) -> tuple[Any, Any]:
    psi = _with_bias(xp, linear(psi), layer.b_std)
    return psi, (psi if xi is None else _cat(xp, [linear(xi), psi]))


def _patches(xp: Any, a: Any, win: Window) -> Any:
    """(n, *S, D) -> (n, *out, |F| D): each output position's window, side by side."""
    for k, (lo, hi) in enumerate(win.pad):
        if lo or hi:
            a = _pad(xp, a, (k + 1,), (lo, hi), win.circular)
    parts = []
    for offs in itertools.product(*(range(f) for f in win.size)):
        idx = [slice(d, d + s * (o - 1) + 1, s)
               for d, s, o in zip(offs, win.strides, win.out, strict=True)]
        parts.append(a[(slice(None), *idx)])
    return _cat(xp, parts)


@dataclass(frozen=True)
class _Step:
    lp: LayerPlan
    draws: tuple[Any, ...] = ()


def _dense(st: _Step, psi: Any, xi: Any, xp: Any) -> tuple[Any, Any]:
    w = st.lp.layer.W_std
    return _affine(xp, psi, xi, lambda a: w * a, st.lp.layer)


def _conv(st: _Step, psi: Any, xi: Any, xp: Any) -> tuple[Any, Any]:
    win = st.lp.window
    scale = st.lp.layer.W_std / math.sqrt(math.prod(win.size))
    return _affine(xp, psi, xi, lambda a: scale * _patches(xp, a, win), st.lp.layer)


def _relu(st: _Step, psi: Any, xi: Any, xp: Any) -> tuple[Any, Any]:
    gauss, sketch = st.draws
    m = gauss.shape[0]
    lead = psi.shape[:-1]
    # one (n·P, d) x (d, m) product: an N-d @ runs as n·P/rows small ones
    z = psi.reshape(-1, psi.shape[-1]) @ xp.asarray(gauss.T, dtype=psi.dtype)
    scale = 1.0 / math.sqrt(m)
    xi = sketch(xi.reshape(-1, xi.shape[-1]), (z > 0).astype(psi.dtype) * scale)
    return (xp.maximum(z, 0) * scale).reshape(*lead, m), xi.reshape(*lead, m)


def _avg_pool(st: _Step, psi: Any, xi: Any, xp: Any) -> tuple[Any, Any]:
    win = st.lp.window
    scale = 1.0 / math.prod(win.size)

    def pool(a: Any) -> Any:
        for k in range(len(win.size)):
            a = shifted_sum(xp, a, (k + 1,), win.size[k], win.strides[k], win.pad[k],
                            win.out[k], win.circular)
        return a * scale

    return pool(psi), None if xi is None else pool(xi)


def _global_avg_pool(st: _Step, psi: Any, xi: Any, xp: Any) -> tuple[Any, Any]:
    axes = tuple(range(1, psi.ndim - 1))
    return psi.mean(axis=axes), None if xi is None else xi.mean(axis=axes)


def _flatten(st: _Step, psi: Any, xi: Any, xp: Any) -> tuple[Any, Any]:
    if psi.ndim == 2:
        return psi, xi
    out = []
    for a, proj in zip((psi, xi), st.draws, strict=True):
        if a is None:
            out.append(a)
            continue
        a = a.reshape(a.shape[0], -1) / math.sqrt(math.prod(a.shape[1:-1]))
        out.append(a if proj is None else proj(a))
    return out[0], out[1]


def _identity(st: _Step, psi: Any, xi: Any, xp: Any) -> tuple[Any, Any]:
    return psi, xi


_RULES: dict[type, Callable[[_Step, Any, Any, Any], tuple[Any, Any]]] = {
    Dense: _dense, Conv: _conv, Relu: _relu, AvgPool: _avg_pool,
    GlobalAvgPool: _global_avg_pool, Flatten: _flatten, Identity: _identity,
}


def _rescale(xp: Any, z: Any, target: Any) -> Any:
    """Rows of ``z`` (n, D) scaled to squared norms ``target`` (n,); zero rows stay zero."""
    got = (z * z).sum(axis=1)
    ok = got > 0
    return z * xp.sqrt(xp.where(ok, target / xp.where(ok, got, 1), 0))[:, None]


@dataclass(frozen=True)
class FeatureMap:
    """Seeded random features of a ReLU architecture for inputs of shape ``shape`` (one row:
    ``(d,)`` or ``(*spatial, C)``).

    ``dims`` gives the feature dimension of each kernel: ``{"ntk": D, "nngp": D'}``.
    ``row_bytes`` is the peak working memory per row and byte of dtype, ``row_flops`` the
    floating-point operations per row (for sizing tiles). ``exact_norms``: whether each row's
    features are rescaled to their exact squared norms Θ(x, x), K(x, x) (module docstring),
    from the exact self pass of ``plan``.
    """

    arch: Architecture
    shape: tuple[int, ...]
    m: int
    seed: int
    steps: tuple[_Step, ...] = field(repr=False)
    dims: dict[str, int] = field(default_factory=dict)
    row_bytes: int = 0
    row_flops: int = 0
    exact_norms: bool = False
    plan: Plan | None = field(default=None, repr=False)

    def __call__(self, x: Any, get: tuple[str, ...] | str = ("ntk", "nngp"),
                 dtype: Any = None, memory: int = DEFAULT_MEMORY) -> dict[str, Any]:
        """Features of the rows of ``x`` (n, *shape): ``{"ntk": (n, D), "nngp": (n, D')}``.

        Rows are processed in chunks whose working set fits ``memory`` bytes.
        """
        get = check_get(get)
        dt = resolve_dtype(dtype, x)
        x = as_input(x, "x", dt)
        if tuple(x.shape[1:]) != self.shape:
            raise InputError(f"must be (n, {', '.join(map(str, self.shape))}), got shape "
                             f"{tuple(x.shape)}", field="x")
        xp = array_module(x)
        per = max(1, memory // (self.row_bytes * dt.itemsize))
        parts = [self._rows(xp, x[i:i + per], get, memory) for i in range(0, x.shape[0], per)]
        return {k: _cat(xp, [p[k] for p in parts], axis=0) for k in get}

    def _rows(self, xp: Any, x: Any, get: tuple[str, ...], memory: int) -> dict[str, Any]:
        """The features ``get`` of the rows x (n, *shape): {kind: (n, dims[kind])}."""
        psi, xi = x / math.sqrt(self.shape[-1]), None
        for st in self.steps:
            psi, xi = _RULES[type(st.lp.layer)](st, psi, xi, xp)
        out = {"nngp": psi, "ntk": xi}
        if self.exact_norms and self.plan is not None:
            exact = self_pass(self.plan, x, want_ntk="ntk" in get, memory=memory)
            out = {k: _rescale(xp, out[k], getattr(exact, k)) for k in get}
        return out


def feature_map(arch: Architecture | dict | str, d: int | tuple[int, ...], m: int,
                seed: int = 0, exact_norms: bool | None = None) -> FeatureMap:
    """Draw the random features of ``arch`` for inputs of one row's shape ``d``: an int
    (vectors) or ``(*spatial, C)`` (images, NHWC without the batch axis).

    Layers: dense, conv, relu, avg_pool, global_avg_pool, flatten, identity, in the NTK
    parameterization (FC ReLU nets, CNTK-GAP, CNTK-V, Myrtle). ``m`` is the number of
    arc-cosine features per ReLU layer and the sketch dimension. A net that ends in a dense
    layer after its last ReLU (FC nets; CNTK-GAP, CNTK-V and Myrtle, whose GAP averages and
    whose flatten projects to m) has NTK features of dimension ``2m + 1`` and NNGP features
    of dimension ``m + 1`` with a bias in that dense layer, ``2m`` and ``m`` without one
    (a flatten over at most m values is not projected, and keeps P·m); ``.dims`` has them
    for any net.

    ``exact_norms``: rescale each row's features to the exact Θ(x, x) and K(x, x) (module
    docstring): ``True``, ``False`` (the plain estimator, unbiased), or ``None``: when one
    row's exact self pass needs at most :data:`EXACT_NORMS_MAX_BYTES` (FC nets and flatten
    readouts always; a GAP or avg_pool net's self pass holds P² values per row).

    Raises:
        InputError: an unsupported layer or parameterization, a layer that does not fit the
            input shape, or m, d < 1.
    """
    spec = parse_arch(arch)
    if spec.parameterization != "ntk":
        raise InputError("random features follow the NTK parameterization",
                         field="parameterization")
    shape = (d,) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) else d
    for field_name, v in (("m", m), *(("d", s) for s in shape)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"must be a positive integer, got {v!r}", field=field_name)
    shape = tuple(int(s) for s in shape)
    for i, layer in enumerate(spec.layers):
        if type(layer) not in _RULES:
            raise InputError(f"random features cover dense, conv, relu, avg_pool, "
                             f"global_avg_pool, flatten and identity layers; use the exact "
                             f"kernel for {layer.type!r}", field="type", layer=i)
    plan = make_plan(spec, (1, *shape))
    rng = np.random.default_rng(seed)
    steps = []
    dim_psi, dim_xi = shape[-1], 0
    p_in = math.prod(shape[:-1])
    row, flops = p_in * dim_psi, 0
    for lp in plan.layers:
        layer, draws = lp.layer, ()
        p_out = math.prod(lp.out_spatial)
        if isinstance(layer, (Dense, Conv)):
            fan = math.prod(lp.window.size) if isinstance(layer, Conv) else 1
            dim_psi = fan * dim_psi + (1 if layer.b_std else 0)
            dim_xi = dim_psi + fan * dim_xi
        elif isinstance(layer, Relu):
            draws = (relu_directions(rng, m, dim_psi), TensorSRHT.draw(rng, dim_xi, m, m))
            # the sketch's blocks and its gathered rows (m per block)
            # the sketch of ξ (the larger input): its blocks, both products, the sampled rows
            row = max(row, p_in * (3 * dim_xi + 2 * _pow2(dim_xi) + 3 * m))
            flops += 2 * p_in * (m * dim_psi + _srht_macs(dim_xi) + _srht_macs(m))
            dim_psi, dim_xi = m, m
        elif isinstance(layer, Flatten) and lp.in_spatial:
            draws = tuple(SRHT.draw(rng, p_in * dd, m) if p_in * dd > m else None
                          for dd in (dim_psi, dim_xi))
            row = max(row, p_in * 3 * (dim_psi + dim_xi))
            dim_psi, dim_xi = (min(m, p_in * dd) for dd in (dim_psi, dim_xi))
        steps.append(_Step(lp, draws))
        row = max(row, 2 * (p_in + p_out) * (dim_psi + dim_xi))
        p_in = p_out
    if exact_norms is None:
        exact_norms = bytes_per_pair(plan, 8) <= EXACT_NORMS_MAX_BYTES
    elif not isinstance(exact_norms, (bool, np.bool_)):
        raise InputError(f"must be true, false or null, got {exact_norms!r}",
                         field="exact_norms")
    if exact_norms:  # the self pass: its working set, and ~_SELF_FLOPS per state value
        row = max(row, bytes_per_pair(plan, 1))
        flops += _SELF_FLOPS * plan.max_state_size * len(plan.layers)
    return FeatureMap(spec, shape, m, seed, tuple(steps), {"ntk": dim_xi, "nngp": dim_psi},
                      row, flops, bool(exact_norms), plan)


def features(arch: Architecture | dict | str, x: Any, m: int, seed: int = 0,
             get: tuple[str, ...] | str = ("ntk", "nngp"), dtype: Any = None,
             exact_norms: bool | None = None) -> dict[str, Any]:
    """``feature_map(arch, x.shape[1:], m, seed, exact_norms)(x)``: NTK/NNGP random features
    of x (n, d) or (n, *spatial, C): ``{"ntk": (n, D), "nngp": (n, D')}``."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        raise InputError(f"must be (n, d) or (n, *spatial, C), got shape {shape}", field="x")
    return feature_map(arch, tuple(int(s) for s in shape[1:]), m, seed,
                       exact_norms)(x, get, dtype)

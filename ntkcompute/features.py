"""Random features for the NTK and NNGP of ReLU nets, fully connected and convolutional
(Zandieh et al. 2021, "Scaling Neural Tangent Kernels via Sketching and Random Features").

``Φ(x) ∈ R^D`` with ``E⟨Φ(x), Φ(x')⟩ ≈ Θ(x, x')`` in the conventions of
:func:`ntkcompute.kernel` (stax NTK parameterization, ``W_std``, ``b_std``), so kernel
regression costs O(n·D²) and the data never meet pairwise. Every spatial position p carries
its own features, ψ_p for the NNGP (⟨ψ_p, ψ'_q⟩ ≈ K[p, q]) and ξ_p for the NTK
(⟨ξ_p, ξ'_q⟩ ≈ Θ[p, q]), so the full spatial covariance that pooling needs is there without
ever pairing positions. One rule per layer (its ``feature`` in :mod:`ntkcompute.layers`), each
the layer's kernel rule read as an identity between inner products:

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

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import array_module
from .errors import InputError
from .infinite import bytes_per_pair, self_pass
from .kernels.sketch import (
    ORTHO_MAX_DIM,
    SRHT,
    TensorSRHT,
    _block,
    _coords,
    _pow2,
    _srht_macs,
    _srht_rows,
    cat,
    hadamard,
    relu_directions,
)
from .layers import registered, rule_of, rule_of_class
from .layers.registry import FeatureDims
from .plan import LayerPlan, Plan, make_plan
from .spec import Architecture, parse_arch
from .validate import as_input, check_get, resolve_dtype

__all__ = ["DEFAULT_MEMORY", "ESTIMATOR_VERSION", "EXACT_NORMS_MAX_BYTES", "ORTHO_MAX_DIM",
           "SRHT", "FeatureMap", "TensorSRHT", "_block", "_coords", "_pow2", "_srht_macs",
           "_srht_rows", "feature_map", "features", "hadamard", "relu_directions"]

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


@dataclass(frozen=True)
class _Step:
    """One layer of a feature map: its plan row and its random draws."""

    lp: LayerPlan
    draws: tuple[Any, ...] = ()


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
        return {k: cat(xp, [p[k] for p in parts], axis=0) for k in get}

    def _rows(self, xp: Any, x: Any, get: tuple[str, ...], memory: int) -> dict[str, Any]:
        """The features ``get`` of the rows x (n, *shape): {kind: (n, dims[kind])}."""
        psi, xi = x / math.sqrt(self.shape[-1]), None
        for st in self.steps:
            psi, xi = rule_of(st.lp.layer).feature(st.lp, st.draws, psi, xi, xp)
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
        if getattr(layer, "trainable", True) is False:
            raise InputError("random features of a layer with fixed weights (trainable: "
                             "false) are not implemented; use the exact kernel",
                             field="trainable", layer=i)
        if not rule_of(layer).has_features:
            covered = [c.model_fields["type"].default for c in registered()
                       if rule_of_class(c).has_features]
            raise InputError(f"random features cover {', '.join(covered[:-1])} and "
                             f"{covered[-1]} layers; use the exact kernel for {layer.type!r}",
                             field="type", layer=i)
    plan = make_plan(spec, (1, *shape))
    rng = np.random.default_rng(seed)
    steps = []
    p_in = math.prod(shape[:-1])
    dims = FeatureDims(psi=shape[-1], xi=0, p_in=p_in, row=p_in * shape[-1], flops=0)
    for lp in plan.layers:
        dims.p_in = p_in
        draws = rule_of(lp.layer).feature_draws(lp, rng, m, dims)
        p_out = math.prod(lp.out_spatial)
        steps.append(_Step(lp, draws))
        dims.row = max(dims.row, 2 * (p_in + p_out) * (dims.psi + dims.xi))
        p_in = p_out
    row, flops, dim_psi, dim_xi = dims.row, dims.flops, dims.psi, dims.xi
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

"""GlobalSelfAttention rule (stax.GlobalSelfAttention; Hron et al. 2020, "Infinite attention").

With ``QK = W_query_std W_key_std``, ``OV = W_out_std W_value_std`` and ``b² = b_std²``:

* ``linear_scaling`` (logits divided by the key width): the logits converge to the
  deterministic ``QK S(x)``, ``S(x)[i, j]`` the input's self-covariance between positions i and
  j, so the attention weights ``G(x) = f(QK S(x))`` (f = softmax over the key positions j, or
  identity / abs / relu) are fixed per input, and

      K'  = OV² G(x) K G(x')ᵀ + b²
      Θ'  = OV² (G(x) Θ G(x')ᵀ + 2 G(x) K G(x')ᵀ) + b²

  (the 2: gradients of W_value and W_out; those of W_query, W_key vanish in the limit).
* square-root scaling, identity mechanism only: the logits stay Gaussian, and with
  ``|K|² = sum_{j,j'} K[j, j']²`` and ``<K, Θ> = sum_{j,j'} K[j, j'] Θ[j, j']`` per pair,

      K'  = (QK OV)² |K|² K + b²
      Θ'  = (QK OV)² (2 <K, Θ> K + |K|² (Θ + 4K)) + b²

Positions are flattened to ``P``; states enter and leave in the full layout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .state import Array, State

if TYPE_CHECKING:
    from ..plan import LayerPlan


def _to_matrix(a: Array, d: int, nb: int) -> Array:
    """Full layout ``(S1, S1', .., Sd, Sd') + B`` -> ``B + (P, P')``."""
    spatial = a.shape[:2 * d]
    perm = [*range(2 * d, 2 * d + nb), *range(0, 2 * d, 2), *range(1, 2 * d, 2)]
    p = math.prod(spatial[0::2])
    return a.transpose(perm).reshape(*a.shape[2 * d:], p, p)


def _from_matrix(xp, m: Array, spatial: tuple[int, ...], nb: int) -> Array:
    d = len(spatial)
    a = m.reshape(*m.shape[:nb], *spatial, *spatial)
    perm = [x for k in range(d) for x in (nb + k, nb + d + k)] + list(range(nb))
    return xp.ascontiguousarray(a.transpose(perm))


def mechanism(xp, name: str, logits: Array) -> Array:
    """``attention_mechanism`` applied to logits whose last axis is the key position."""
    if name == "SOFTMAX":
        g = xp.exp(logits - logits.max(axis=-1, keepdims=True))
        g /= g.sum(axis=-1, keepdims=True)
        return g
    if name == "ABS":
        return xp.abs(logits)
    if name == "RELU":
        return xp.maximum(logits, 0)
    return logits


def weights(xp, lp: LayerPlan, cov: Array) -> Array:
    """Attention weights ``(n, P, P)`` from self-covariances ``(n, *S, *S)``."""
    layer = lp.layer
    n, p = cov.shape[0], math.prod(lp.in_spatial)
    logits = (layer.W_query_std * layer.W_key_std) * cov.reshape(n, p, p)
    return mechanism(xp, layer.attention_mechanism, logits)


def global_self_attention(lp: LayerPlan, st: State, xp, ca: Array | None,
                          cb: Array | None) -> State:
    """``ca``/``cb``: self-covariances ``(n, *S, *S)`` of the pairs' first/second inputs
    (``None`` under square-root scaling, which does not need them)."""
    layer = lp.layer
    d, nb = len(st.spatial), st.nb
    ov2 = (layer.W_out_std * layer.W_value_std) ** 2
    b2 = layer.b_std**2 if layer.b_std is not None else 0.0
    k = _to_matrix(st.nngp, d, nb)
    t = None if st.ntk is None else _to_matrix(st.ntk, d, nb)
    if layer.linear_scaling:
        g1 = weights(xp, lp, ca)
        g2 = g1 if cb is ca else weights(xp, lp, cb)  # the self pass: the same inputs
        g1 = g1[:, None] if nb == 2 else g1  # (n1, 1, P, P) against pairs (n1, n2, P, P)
        g2t = xp.swapaxes(g2, -1, -2)

        def sandwich(m: Array) -> Array:
            return (g1 @ m) @ g2t

        gk = sandwich(k)
        ntk = None
        if t is not None:
            ntk = sandwich(t)
            ntk += 2 * gk
            ntk *= ov2
            ntk += b2
        nngp = gk
        nngp *= ov2
        nngp += b2
    else:
        c = (layer.W_query_std * layer.W_key_std) ** 2 * ov2
        kk = (k * k).sum(axis=(-1, -2), keepdims=True)
        nngp = c * kk * k + b2
        ntk = None
        if t is not None:
            kt = (k * t).sum(axis=(-1, -2), keepdims=True)
            ntk = c * (2 * kt * k + kk * (t + 4 * k)) + b2
    return st.with_(nngp=_from_matrix(xp, nngp, st.spatial, nb),
                    ntk=None if ntk is None else _from_matrix(xp, ntk, st.spatial, nb),
                    full=True)

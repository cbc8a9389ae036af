"""The one error type users see for a bad architecture or bad data."""

from __future__ import annotations


class InputError(ValueError):
    """An architecture spec or input array that cannot be used.

    Attributes:
        field: the offending field, e.g. ``"window_shape"``, ``"type"``, ``"x2"``.
        layer: index of the offending layer in ``arch.layers``, or the path of a nested one
            (``"layers[2].branches[1][0]"``); ``None`` for data errors.
        reason: the human-readable explanation without the location prefix.
    """

    def __init__(self, reason: str, *, field: str, layer: int | str | None = None) -> None:
        self.reason = reason
        self.field = field
        self.layer = layer
        super().__init__(f"{self.location}: {reason}")

    @property
    def location(self) -> str:
        if self.layer is None:
            return self.field
        where = self.layer if isinstance(self.layer, str) else f"layers[{self.layer}]"
        return f"{where}.{self.field}"


class NotPositiveDefinite(InputError):
    """``K + λI`` is not positive definite (or not finite), so a solver cannot solve it.

    Raised by every solver at the first sign (CG: a direction with ``pᵀAp ≤ 0`` beyond
    rounding, a non-finite or exploding residual; Cholesky and eigendecompositions: a
    negative pivot or eigenvalue; the Nyström factorisation: a negative Schur complement).
    ``field`` is ``"lambda"``: raising λ is one remedy; recomputing the kernel in float64 the
    other. The message names the evidence, the likely cause and the remedy.

    Attributes:
        evidence: what was observed, e.g. ``"pᵀAp = -3.1e-04·‖p‖² at iteration 7"``.
        min_eigenvalue: an estimate (or upper bound) of λmin(K) when known, else ``None``.
        iteration: the CG iteration it was seen at, else ``None``.
    """

    def __init__(self, evidence: str, *, lam: float | None = None,
                 min_eigenvalue: float | None = None, iteration: int | None = None,
                 finite: bool = True, scale: float | None = None,
                 exact: bool = False) -> None:
        """``scale`` (mean diag K, when known) expresses λmin relative to it; ``exact``: the
        eigenvalue was computed (else it is an upper bound, e.g. a Rayleigh quotient)."""
        self.evidence = evidence
        self.min_eigenvalue = min_eigenvalue
        self.iteration = iteration
        if not finite:
            cause = ("the kernel or the targets hold non-finite values, or the products "
                     "overflowed")
            remedy = "verify the kernel (ntk verify) and check the targets' scale"
        else:
            cause = ("the kernel has negative eigenvalues, typically rounding in a float32 "
                     "kernel")
            if lam is not None:
                cause += f", and λ = {lam:.3g} is too small to lift them"
            remedy = "compute the kernel in float64 (dtype=float64), or raise λ"
            if min_eigenvalue is not None and min_eigenvalue < 0:
                rel = "=" if exact else "≤"
                remedy += f" above -λmin(K); λmin(K) {rel} {min_eigenvalue:.3g}"
                if scale:
                    remedy += f" ({min_eigenvalue / scale:.3g}·mean(diag K))"
        super().__init__(f"K + λI is not positive definite: {evidence}; likely cause: "
                         f"{cause}; remedy: {remedy}", field="lambda")

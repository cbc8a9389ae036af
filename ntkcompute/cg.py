"""Preconditioned conjugate gradients for ``(K + λI) X = B`` with many right-hand sides.

All columns of ``B`` (one per class for one-hot labels) share every product with ``K``;
each column keeps its own step sizes (column-wise CG, not block CG, so one column's
convergence never disturbs another's). Vectors are float64 whatever the kernel's dtype.
The residual is recomputed from scratch every ``true_residual_every`` iterations, which
stops the recursively updated residual drifting away from ``B - A X`` in long solves.

Several λ are solved in the same loop (block over λ and classes): ``lam`` may be a list,
and every iteration then costs one product ``K @ V`` with ``V`` of shape (n, k·L).

Preconditioners: ``None``, :class:`Jacobi`, :class:`Nystrom` (rank-r pivoted Cholesky of
K, applied through the Woodbury identity: Harbrecht et al. 2012; Gardner et al. 2018,
GPyTorch; Meanti et al. 2020, Falkon) and :class:`RandomizedNystrom` (Frangella, Tropp and
Udell 2023, "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44(2): one
block product ``K Ω`` with a Gaussian test matrix per sketch, the rank doubled until the
estimated preconditioned condition number ``(λ̂_ℓ + λ) / λ`` is small: :func:`randomized_nystrom`).

Mixed precision: ``cg(..., fast_matvec=f)`` runs the iterations' products through ``f``
(e.g. float32 products of a float32 kernel) and keeps everything else in float64; the
residual is replaced by one computed with the exact ``matvec`` every
``true_residual_every`` iterations, and convergence is declared only on such a residual.

Every solver here checks that it is solving a positive definite system and stops at the
first sign it is not, raising :class:`~ntkcompute.errors.NotPositiveDefinite` with the
evidence, the likely cause and the remedy (never a silent run to ``maxiter``, never a
library error): CG tests the curvature ``pᵀAp`` of every direction (for SPD ``A`` it is at
least ``λmin(A)·‖p‖²``; a value below zero beyond rounding is a direction of negative
curvature, and its Rayleigh quotient bounds ``λmin`` from above), the residual's finiteness
and growth; the preconditioners test the diagonal and the pivoted Cholesky's Schur
complement (Haynsworth inertia: a negative Schur diagonal means K has a negative eigenvalue).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
from scipy.linalg.blas import dtrsm

from .errors import NotPositiveDefinite
from .regression import absolute_lambdas

Matvec = Callable[[np.ndarray], np.ndarray]  # (n, k) -> (n, k): K @ V (without λ)


@dataclass
class CGResult:
    x: np.ndarray  # (n, k) solution
    iterations: int
    converged: bool
    residuals: list[float] = field(default_factory=list)  # max relative residual per iteration


#: Curvature ``pᵀAp / ‖p‖²`` counts as negative below ``-CURVATURE_ROUNDING · n^½ · ε ·
#: qmax`` (qmax: the largest curvature seen, a lower bound on ‖A‖): the rounding of a
#: float64 product with n terms is ~n^½ ε ‖A‖ (Higham 2002, §3.1, probabilistic bound).
CURVATURE_ROUNDING = 64.0
#: A residual this many times its smallest value so far (and above its start) is divergence:
#: CG's residual may oscillate on an SPD system, by at most ~2 sqrt(κ) (κ ≤ 1e12 here).
RESIDUAL_GROWTH = 1e7


def _check_diagonal(diag: np.ndarray, lam: float) -> np.ndarray:
    """The kernel diagonal as float64, refused when non-finite or with ``K_ii + λ ≤ 0``
    (a kernel's diagonal is a variance: never negative)."""
    d = np.asarray(diag, dtype=np.float64)
    if not np.isfinite(d).all():
        raise NotPositiveDefinite(f"the diagonal has {int((~np.isfinite(d)).sum())} "
                                  "non-finite values", lam=lam, finite=False)
    if d.size and (d + lam).min() <= 0:
        i = int(np.argmin(d))
        raise NotPositiveDefinite(f"diagonal entry {i} is {d[i]:.3g}", lam=lam,
                                  min_eigenvalue=float(d[i]),
                                  scale=float(np.mean(np.abs(d))) or None)
    return d


def _column_lams(lam: float | np.ndarray) -> np.ndarray:
    """λ as a float64 array: one value, or one per column of the residual block."""
    return np.atleast_1d(np.asarray(lam, dtype=np.float64))


class Jacobi:
    """``diag(K) + λ`` as preconditioner; ``lam`` one λ or one per residual column."""

    def __init__(self, diag: np.ndarray, lam: float | np.ndarray) -> None:
        lams = _column_lams(lam)
        d = _check_diagonal(diag, float(lams.min()))
        self.inv = 1.0 / (d[:, None] + lams[None, :])  # (n, 1) or (n, columns)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        return self.inv * r


def pivoted_cholesky(diag: np.ndarray, column: Callable[[int], np.ndarray], rank: int,
                     tol: float = 1e-12, lam: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy pivoted Cholesky: ``L`` (n, r) with ``K ≈ L Lᵀ`` from ``rank`` columns of K.

    ``column(j)`` returns column j of K (n,). Stops early when the largest remaining
    diagonal falls below ``tol`` times the largest initial one. Returns ``(L, pivots)``.

    A diagonal of the Schur complement ``K - L Lᵀ`` below ``-√tol · max diag`` means K has
    a negative eigenvalue beyond rounding (Haynsworth inertia additivity): with ``λ = 0``
    that raises; with ``λ > 0`` the factorisation stops there (whether ``K + λI`` is
    positive definite is then for CG's curvature test to find). Raises
    :class:`NotPositiveDefinite` also on a non-finite diagonal or column.
    """
    d = _check_diagonal(diag, lam).copy()
    n = d.shape[0]
    rank = min(rank, n)
    L = np.zeros((n, rank))
    pivots = []
    scale = d.max() if n else 0.0
    for m in range(rank):
        j = int(np.argmax(d))
        if d[j] <= tol * scale:
            L = L[:, :m]
            break
        pivots.append(j)
        raw = np.asarray(column(j), dtype=np.float64)
        if not np.isfinite(raw).all():
            raise NotPositiveDefinite(f"column {j} has {int((~np.isfinite(raw)).sum())} "
                                      "non-finite values", lam=lam, finite=False)
        col = raw - L[:, :m] @ L[j, :m]
        L[:, m] = col / np.sqrt(d[j])
        d -= L[:, m] ** 2
        d[j] = 0.0
        low = int(np.argmin(d))
        if d[low] < -np.sqrt(tol) * scale:  # K is indefinite beyond rounding
            if lam <= 0:
                raise NotPositiveDefinite(
                    f"pivoted Cholesky's Schur complement has diagonal {d[low]:.3g} at row "
                    f"{low} after {m + 1} pivots, so K has a negative eigenvalue", lam=lam)
            # K + λI may still be positive definite: keep the exact factor of the (positive
            # definite) pivot block so far; CG's curvature test decides about K + λI.
            L = L[:, :m + 1]
            break
    return L, np.array(pivots, dtype=int)


class Nystrom:
    """``P = L Lᵀ + λ I`` with ``L`` from :func:`pivoted_cholesky`; ``P⁻¹`` by Woodbury:
    ``P⁻¹ v = (v - L (λ I + LᵀL)⁻¹ Lᵀ v) / λ``."""

    def __init__(self, L: np.ndarray, lam: float | np.ndarray) -> None:
        lams = _column_lams(lam)
        if lams.min() <= 0:
            raise ValueError("the Nystrom preconditioner needs λ > 0")
        if not np.isfinite(L).all():
            raise NotPositiveDefinite("the Nyström factor has non-finite values",
                                      lam=float(lams.min()), finite=False)
        self.L = L
        self.lam = lam if np.ndim(lam) == 0 else lams
        self.lams = lams
        G = L.T @ L
        # one Cholesky factor per distinct λ (a block over λ has a few)
        self.factors = {v: sla.cho_factor(v * np.eye(L.shape[1]) + G, lower=True)
                        for v in np.unique(lams)}
        self.factor = self.factors[float(lams[0])]

    def __call__(self, r: np.ndarray) -> np.ndarray:
        if len(self.factors) == 1:  # one λ for every column
            lam = float(self.lams[0])
            return (r - self.L @ sla.cho_solve(self.factors[lam], self.L.T @ r)) / lam
        Lr = self.L.T @ r
        out = np.empty_like(Lr)
        for v, f in self.factors.items():
            cols = self.lams == v
            out[:, cols] = sla.cho_solve(f, Lr[:, cols])
        return (r - self.L @ out) / self.lams


#: Default target of :func:`randomized_nystrom`: grow the sketch until the estimated
#: condition number of the preconditioned system, ``(λ̂_ℓ + λ) / λ``, is at most this.
NYSTROM_TARGET = 50.0


class RandomizedNystrom:
    """Frangella, Tropp and Udell's (2023) Nyström preconditioner from ``K ≈ U Λ̂ Uᵀ``:

    ``P⁻¹ = (λ̂_ℓ + λ) U (Λ̂ + λI)⁻¹ Uᵀ + (I - U Uᵀ)`` (their eq. 1.2; ``λ̂_ℓ`` the smallest
    of the ℓ sketched eigenvalues). ``U`` (n, ℓ) has orthonormal columns and ``s`` ≥ 0, so
    ``P⁻¹`` is symmetric positive definite for every λ > 0. ``lam`` is one λ or one per
    residual column (a block over λ shares one sketch). ``history`` lists the adaptive
    growth as ``(rank, condition estimate)``.
    """

    def __init__(self, U: np.ndarray, s: np.ndarray, lam: float | np.ndarray,
                 history: list[tuple[int, float]] | None = None) -> None:
        lams = _column_lams(lam)
        if lams.min() <= 0:
            raise ValueError("the Nystrom preconditioner needs λ > 0")
        if not (np.isfinite(U).all() and np.isfinite(s).all()):
            raise NotPositiveDefinite("the Nyström sketch has non-finite values",
                                      lam=float(lams.min()), finite=False)
        self.U, self.s, self.lams = U, np.maximum(s, 0.0), lams
        self.history = history or []
        tail = float(self.s[-1]) if self.s.size else 0.0
        # (λ̂_ℓ + λ)/(λ̂_i + λ) - 1 on the sketched directions, per column: (ℓ, columns)
        self.gain = (tail + lams[None, :]) / (self.s[:, None] + lams[None, :]) - 1.0

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @property
    def condition(self) -> float:
        """The estimate ``(λ̂_ℓ + λ) / λ`` of the preconditioned condition number (worst λ)."""
        lam = float(self.lams.min())
        return (float(self.s[-1]) + lam) / lam if self.s.size else float("inf")

    def with_lam(self, lam: float | np.ndarray) -> RandomizedNystrom:
        """The same sketch for other λ (or one λ per column)."""
        return RandomizedNystrom(self.U, self.s, lam, self.history)

    def __call__(self, r: np.ndarray) -> np.ndarray:
        W = self.U.T @ r
        return r + self.U @ (W * self.gain)


def _times_inverse(X: np.ndarray, R: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """``X R⁻¹`` for X (n, ℓ) float64 and R (ℓ, ℓ) upper triangular: one BLAS ``trsm`` on
    X's own buffer (``overwrite``) or a copy, as ``(R⁻ᵀ Xᵀ)ᵀ`` in Fortran order, so nothing
    is transposed in memory (3.4x faster than ``solve_triangular(R, X.T, trans="T").T``
    at n = 20 000, ℓ = 400; the same values)."""
    X = (np.asarray(X, dtype=np.float64, order="C") if overwrite
         else np.array(X, dtype=np.float64, order="C"))
    return dtrsm(1.0, R, X.T, side=0, lower=0, trans_a=1, overwrite_b=1).T


def nystrom_sketch(omega: np.ndarray, Y: np.ndarray, lam: float = 0.0,
                   scale: float | None = None, eps: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 2.1 of Frangella, Tropp and Udell (2023): ``K ≈ U diag(s) Uᵀ`` from a test
    matrix ``omega`` (n, ℓ) and ``Y = K omega``, with the shift ``ν = √n·ε·‖Y‖`` that makes
    it stable in floating point. ``omega`` need not be orthonormal: with ``Ω = QR``,
    ``K Q = Y R⁻¹``, so the sketch can grow by appending Gaussian columns.

    Checks (Cauchy interlacing: ``λmin(QᵀKQ) ≥ λmin(K)``): a non-finite ``Y`` raises
    :class:`NotPositiveDefinite`, and so does ``QᵀKQ + λI`` with an eigenvalue ≤ 0 (then
    ``K + λI`` is not positive definite); a ``QᵀKQ`` indefinite beyond the shift but lifted
    by λ keeps only its positive part (the preconditioner stays positive definite; whether
    ``K + λI`` is, is CG's curvature test to find). ``eps``: the products' unit roundoff
    (float64's by default; float32's for a sketch taken with float32 products).
    """
    Y = np.asarray(Y, dtype=np.float64)
    n = Y.shape[0]
    if not np.isfinite(Y).all():
        raise NotPositiveDefinite(f"the Nyström sketch K·Ω has {int((~np.isfinite(Y)).sum())}"
                                  " non-finite values", lam=lam, finite=False)
    omega = np.asarray(omega, dtype=np.float64)
    # Ω = Q R by Cholesky QR (two GEMMs; a Gaussian Ω is well conditioned): Q = Ω R⁻¹ and
    # K Q = Y R⁻¹
    Rq = sla.cholesky(omega.T @ omega, lower=False)
    Q = _times_inverse(omega, Rq)
    Y = _times_inverse(Y, Rq)
    eps = np.finfo(np.float64).eps if eps is None else eps
    nu = np.sqrt(n) * eps * float(np.linalg.norm(Y))
    Yv = Y + nu * Q
    M = Q.T @ Yv
    M = (M + M.T) / 2
    try:
        C = sla.cholesky(M, lower=False)
        B = _times_inverse(Yv, C, overwrite=True)
    except np.linalg.LinAlgError:
        w, W = np.linalg.eigh(M)
        low = float(w[0]) - nu
        if low + lam <= 0:
            raise NotPositiveDefinite(
                f"the Nyström sketch QᵀKQ has eigenvalue {low:.3g} (Cauchy interlacing: "
                "λmin(K) is at most that)", lam=lam, min_eigenvalue=low, exact=False,
                scale=scale) from None
        keep = w > nu
        B = (Yv @ W[:, keep]) / np.sqrt(w[keep])
    # B = U Σ Vᵀ through the eigenvalues of BᵀB (GEMMs; an SVD of the tall B costs several
    # times more): U = B V Σ⁻¹, kept where σ² > max(ν, 1e-10 σ₁²) so U stays orthonormal
    # to ~1e-6 on the directions that matter (σ² near λ, far above that floor)
    w, V = np.linalg.eigh(B.T @ B)
    w, V = w[::-1], V[:, ::-1]
    keep = w > max(nu, 1e-10 * float(w[0]) if w.size else 0.0)
    w, V = w[keep], V[:, keep]
    U = (B @ V) / np.sqrt(w)
    return U, np.maximum(w - nu, 0.0)


def cg_iterations(condition: float, tol: float) -> float:
    """CG's bound on iterations to reduce the error ``tol``-fold at condition number κ:
    ``½ √κ ln(2 / tol)``."""
    return 0.5 * np.sqrt(max(condition, 1.0)) * np.log(2.0 / tol)


def randomized_nystrom(matmat: Matvec, n: int, lam: float | np.ndarray, *, rank: int = 100,
                       max_rank: int | None = None, target: float = NYSTROM_TARGET,
                       tol: float = 1e-8,
                       iteration_seconds: float | Callable[[], float] | None = None,
                       seed: int = 0,
                       scale: float | None = None, single: bool = False
                       ) -> RandomizedNystrom:
    """The adaptive randomized Nyström preconditioner (Frangella, Tropp, Udell 2023, §5.4).

    Sketches K with ``rank`` Gaussian columns (one product ``matmat(Ω)``, (n, ℓ): a single
    round trip for a distributed kernel), then doubles the sketch (appending columns, so
    each doubling costs one product of the new columns only) while the estimated
    preconditioned condition number ``(λ̂_ℓ + λ) / λ`` of the worst λ exceeds ``target``,
    up to ``max_rank`` (default ``min(n, 2000)``). The rank so follows λ and the spectrum's
    tail: a kernel whose eigenvalues all exceed λ needs a large sketch, a fast-decaying one
    stops at the first.

    ``iteration_seconds`` (the time of one CG iteration, None: ignore; or a function
    returning it) stops the growth once the next doubling would cost more time than it
    saves: its cost is the last product's time per column times the new columns plus the
    last factorisation's time scaled by ``(2ℓ/ℓ)²`` (it is O(nℓ²)), its saving the drop in
    CG's iteration bound (:func:`cg_iterations`) if the estimate falls by the same factor
    as at the last doubling. (A flat "3x the last step" overpriced the product, which a
    wider block runs more efficiently: on a CNTK-V at n = 20 000 it stopped at rank 400,
    146 iterations, 38 s, where 800 takes 95 iterations, 32 s.) ``single``: ``matmat``
    multiplies in float32 (the stabilising shift then uses float32's roundoff).
    """
    eps = float(np.finfo(np.float32 if single else np.float64).eps)
    lams = _column_lams(lam)
    lo = float(lams.min())
    if lo <= 0:
        raise ValueError("the Nystrom preconditioner needs λ > 0")
    cap = min(n, max_rank if max_rank is not None else 2000)
    ell = max(1, min(rank, cap))
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((n, ell))
    t = time.perf_counter()
    Y = np.asarray(matmat(omega), dtype=np.float64)
    product, new_cols = time.perf_counter() - t, ell
    history: list[tuple[int, float]] = []
    while True:
        t = time.perf_counter()
        U, s = nystrom_sketch(omega, Y, lo, scale, eps)
        factor_seconds = time.perf_counter() - t
        kappa = (float(s[-1]) + lo) / lo
        history.append((ell, kappa))
        grow = min(ell, cap - ell)
        if kappa <= target or grow <= 0:
            break
        sec = iteration_seconds() if callable(iteration_seconds) else iteration_seconds
        if sec:
            # the next step: a product of `grow` new columns (priced by the last product,
            # per column) and a factorisation of the whole sketch (O(n ℓ²): priced by the
            # last one); its saving: CG's bound if κ falls as much as at the last doubling
            cost = product * grow / new_cols + factor_seconds * ((ell + grow) / ell) ** 2
            fall = kappa / history[-2][1] if len(history) > 1 else 0.5
            saving = cg_iterations(kappa, tol) - cg_iterations(kappa * min(fall, 1.0), tol)
            if cost > saving * sec:
                break
        new = rng.standard_normal((n, grow))
        t = time.perf_counter()
        Y = np.hstack([Y, np.asarray(matmat(new), dtype=np.float64)])
        product, new_cols = time.perf_counter() - t, grow
        omega = np.hstack([omega, new])
        ell += grow
    return RandomizedNystrom(U, s, lam, history)


def cg(matvec: Matvec, B: np.ndarray, lam: float | list[float], *, tol: float = 1e-8,
       maxiter: int = 1000, precond: Callable[[np.ndarray], np.ndarray] | None = None,
       x0: np.ndarray | None = None, true_residual_every: int = 50,
       callback: Callable[[int, float], None] | None = None,
       scale: float | None = None, relative: bool = False,
       fast_matvec: Matvec | None = None,
       pair_matvec: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
       | None = None) -> CGResult:
    """Solve ``(K + λI) X = B`` column by column, sharing each ``K @ V``.

    Args:
        matvec: ``V (n, k) -> K V``, the kernel's product (λ is added here).
        B: (n,) or (n, k) right-hand sides.
        lam: ridge λ >= 0, absolute unless ``relative`` (then a multiple of ``scale``); or a
            list of L > 1 values, solved in the same loop (block over λ): every iteration is
            one product with (n, k·L) columns, each column keeping its own step sizes and
            convergence, and ``x`` is (L, n, k) (or (L, n)). ``precond`` then sees the
            columns λ-major (column ``l·k + j`` is class j at λ l) and must be built for
            those per-column λ (:class:`Jacobi`, :class:`Nystrom` and
            :class:`RandomizedNystrom` take an array of them).
        tol: stop when every column's ``||B - A X|| / ||B||`` is below ``tol``.
        maxiter: iteration cap.
        precond: ``R (n, k) -> M⁻¹ R``.
        x0: warm start (n, k), or (L, n, k) for a block over λ.
        true_residual_every: recompute ``R = B - A X`` this often.
        callback: ``callback(iteration, max_relative_residual)``.
        scale: mean(diag K), if known: the error message then gives λ relative to it.
        relative: λ is a multiple of ``scale`` (which is then required), the convention of
            :func:`ntkcompute.regression.absolute_lambdas`.
        fast_matvec: a cheaper, less accurate product (float32) for the iterations; the true
            residuals (every ``true_residual_every`` iterations, and before declaring
            convergence) use ``matvec``.
        pair_matvec: ``(P, X) -> (fast K P, exact K X)`` in one call (a distributed kernel
            does both in one round trip); without it, two calls.

    Returns:
        :class:`CGResult` with ``x`` of B's shape (with a leading λ axis for L > 1).

    Raises:
        NotPositiveDefinite: at the iteration where a search direction has negative
            curvature beyond rounding, a product or residual is non-finite, or the residual
            grows ``RESIDUAL_GROWTH``-fold (CG on an indefinite system diverges).
    """
    lams = absolute_lambdas(lam, relative, scale)
    B = np.asarray(B, dtype=np.float64)
    vector = B.ndim == 1
    B1 = B[:, None] if vector else B
    n, k = B1.shape
    L = len(lams)
    B2 = np.tile(B1, (1, L)) if L > 1 else B1
    lam_col = np.repeat(np.asarray(lams, dtype=np.float64), k)  # λ-major columns
    exact = matvec
    fast = fast_matvec or matvec

    def pair(P: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if pair_matvec is not None:
            a, b = pair_matvec(P, X)
        elif fast_matvec is None:  # one product of both blocks
            ab = np.asarray(exact(np.hstack([P, X])), dtype=np.float64)
            a, b = ab[:, :P.shape[1]], ab[:, P.shape[1]:]
        else:
            a, b = fast(P), exact(X)
        return (np.asarray(a, dtype=np.float64) + lam_col * P,
                np.asarray(b, dtype=np.float64) + lam_col * X)

    def A(V: np.ndarray, product: Matvec) -> np.ndarray:
        return np.asarray(product(V), dtype=np.float64) + lam_col * V

    def lam_of(cols: np.ndarray) -> float:
        return float(lam_col[cols].min())

    if x0 is None:
        X = np.zeros_like(B2)
        R = B2.copy()
    else:
        x0 = np.asarray(x0, dtype=np.float64)
        if L > 1 and x0.ndim == B.ndim + 1:  # one start per λ
            X = np.hstack([v.reshape(n, k) for v in x0])
        else:
            X = np.tile(x0.reshape(n, k), (1, L))
        R = B2 - A(X, exact)
    bnorm = np.linalg.norm(B2, axis=0)
    bnorm[bnorm == 0] = 1.0
    Z = precond(R) if precond else R
    P = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    rel = np.linalg.norm(R, axis=0) / bnorm
    res = [float(rel.max())]
    rounding = CURVATURE_ROUNDING * np.sqrt(n) * np.finfo(np.float64).eps
    qmax = 0.0
    it = 0
    true = True  # R is a true residual (computed from X with the exact product)
    while (res[-1] > tol or not true) and it < maxiter:
        it += 1
        if it % true_residual_every == 0:  # K P and K X in one call
            AP, AX = pair(P, X)
        else:
            AP, AX = A(P, fast), None
        if not np.isfinite(AP).all():
            raise NotPositiveDefinite(f"K·p is not finite at iteration {it}",
                                      lam=lam_of(~np.isfinite(AP).all(0)), iteration=it,
                                      finite=False)
        pap = np.einsum("ij,ij->j", P, AP)
        pp = np.einsum("ij,ij->j", P, P)
        q = pap / np.where(pp > 0, pp, 1.0)  # Rayleigh quotients of the directions
        qmax = max(qmax, float(q.max(initial=0.0)))
        bad = (pp > 0) & (q < -rounding * qmax)
        if bad.any():
            qmin = float(q[bad].min())
            lb = float(lam_col[bad][np.argmin(q[bad])])
            raise NotPositiveDefinite(
                f"CG found a direction of negative curvature, pᵀ(K + λI)p = {qmin:.3g}·‖p‖², "
                f"at iteration {it}", lam=lb, min_eigenvalue=qmin - lb, iteration=it,
                scale=scale)
        active = pap > 0
        alpha = np.where(active, rz / np.where(active, pap, 1.0), 0.0)
        if AX is not None:  # A(X + αP) = AX + α AP: a true residual, no extra product
            R = B2 - AX - alpha * AP
            true = True
        else:
            R -= alpha * AP
            true = fast_matvec is None
        X += alpha * P
        rel = np.linalg.norm(R, axis=0) / bnorm
        if not true and rel.max() <= tol:  # confirm with the exact product before stopping
            R = B2 - A(X, exact)
            rel = np.linalg.norm(R, axis=0) / bnorm
            true = True
        res.append(float(rel.max()))
        if not np.isfinite(res[-1]):
            raise NotPositiveDefinite(f"the residual is not finite at iteration {it}",
                                      lam=lam_of(~np.isfinite(rel)), iteration=it,
                                      finite=False)
        if res[-1] > max(RESIDUAL_GROWTH * min(res), res[0]):
            raise NotPositiveDefinite(
                f"the residual grew to {res[-1]:.3g} (from at best {min(res):.3g}) at "
                f"iteration {it}: CG diverges", lam=lam_of(rel >= res[-1]), iteration=it,
                scale=scale)
        if callback:
            callback(it, res[-1])
        if res[-1] <= tol and true:
            break
        Z = precond(R) if precond else R
        rz_new = np.einsum("ij,ij->j", R, Z)
        beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        beta[~active] = 0.0  # breakdown (pᵀAp <= 0 in rounding): restart along Z
        moving = rel > tol  # converged columns stop moving
        P = (Z + beta * P) * moving
        rz = rz_new
    if L > 1:
        x = np.stack([X[:, i * k:(i + 1) * k] for i in range(L)])
        x = x[..., 0] if vector else x
    else:
        x = X[:, 0] if vector else X
    return CGResult(x=x, iterations=it, converged=res[-1] <= tol and true, residuals=res)

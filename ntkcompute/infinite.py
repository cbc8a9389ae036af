"""Exact infinite-width NNGP and NTK Gram matrices, tiled over pairs under a memory budget.

``kernel(arch, x1, x2)`` runs in three steps:

1. ``make_plan``: validate the architecture against the input shape and decide, per layer,
   whether pairs need the full spatial covariance or only its diagonal.
2. ``self_pass``: once per input, the statistics some layers read off the input itself: the
   variances each nonlinearity and layer_norm normalise by, attention's self-covariances.
3. ``pair_block``: a block of pairs (rows of x1 x rows of x2) pushed through every layer;
   blocks are sized from the memory budget, run on a thread pool, and only the upper
   triangle of blocks is computed when ``x2`` is omitted.

``self_pass`` and ``pair_block`` are the units the Dask workers call on tiles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from threadpoolctl import threadpool_limits

from .backend import array_module, tune_allocator
from .kernels import inputs, propagate
from .plan import Plan, make_plan
from .spec import Architecture, parse_arch
from .validate import as_input, check_get, check_pair, resolve_dtype

#: Default working-memory budget for one kernel() call, all threads together (bytes).
DEFAULT_MEMORY = 1024 * 2**20
#: Working set of one CPU block: blocks that stay in cache run ~2x faster than big ones
#: (bench/kernels.py); the memory budget only caps it. GPUs take blocks as big as allowed.
CPU_BLOCK_BYTES = 16 * 2**20
# Arrays of one state's size alive at once in the worst rule (the ReLU family holds the old
# K and Θ, the product of variances, r, θ and one temporary); measured in tests/test_memory.
_LIVE_ARRAYS = 8


@dataclass(frozen=True)
class SelfCov:
    """Per-input quantities from the self pass, rows aligned with the inputs.

    ``variances[j]``: the statistic of the j-th layer of ``plan.self_indices``: ``(n, *spatial)``
    variances at its input, or ``(n, *spatial, *spatial)`` self-covariances (attention).
    ``nngp`` / ``ntk``: ``(n,)`` the kernel diagonal k(x_i, x_i) (``ntk`` may be ``None``).
    """

    variances: tuple[Any, ...]
    nngp: Any
    ntk: Any

    def rows(self, sl: slice) -> SelfCov:
        return SelfCov(tuple(v[sl] for v in self.variances), self.nngp[sl],
                       None if self.ntk is None else self.ntk[sl])


def bytes_per_pair(plan: Plan, itemsize: int) -> int:
    """Peak working memory of one pair (or one input in the self pass), in bytes: the worst
    rule's arrays, plus K and Θ of each other open branch."""
    return plan.max_state_size * itemsize * (_LIVE_ARRAYS + 2 * (plan.max_slots - 1))


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _map(fn: Callable[[Any], Any], items: list, threads: int) -> Iterator[Any]:
    """``fn`` over ``items`` in order, on ``threads`` threads when there is more than one
    item: then with one BLAS thread per thread, since OpenBLAS's own pool (as many threads
    as cores by default) contends with ours (a second thread gave 1.1x with it, 1.6x
    without, on a 32x32 CNTK-GAP here)."""
    if threads == 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        yield from pool.map(fn, items)


def self_pass(plan: Plan, x: Any, *, want_ntk: bool = True,
              memory: int = DEFAULT_MEMORY, threads: int = 1) -> SelfCov:
    """Run every input paired with itself; ``x`` of shape ``(n, *spatial, C)``.

    ``memory``: bytes one chunk of inputs may use; ``threads``: chunks run concurrently
    (the inputs are split into at least that many). Each input's statistics are computed
    on their own, so the result does not depend on the chunking."""
    xp = array_module(x)

    def one(sl: slice) -> tuple:
        st = inputs.self_input(xp, x[sl], plan.input_full, want_ntk, plan.pattern)
        st, variances = propagate.run(plan, st, xp)
        return (*variances, st.nngp, st.ntk)

    *variances, nngp, ntk = by_chunks(one, x, bytes_per_pair(plan, x.dtype.itemsize), memory,
                                      threads)
    return SelfCov(tuple(variances), nngp, ntk)


def by_chunks(fn: Callable[[slice], tuple], x: Any, per_row: int, memory: int,
              threads: int) -> list[Any]:
    """``fn`` over chunks of the rows of ``x`` (at most ``memory // per_row`` rows each, at
    least ``threads`` chunks, run concurrently), its results concatenated field by field
    (a ``None`` field stays ``None``)."""
    per = max(1, memory // per_row)
    if threads > 1:
        per = min(per, -(-x.shape[0] // threads))
    parts = list(_map(fn, _chunks(x.shape[0], per), threads))
    cat = array_module(x).concatenate
    return [None if first is None else cat([p[j] for p in parts])
            for j, first in enumerate(parts[0])]


def pair_block(plan: Plan, x1: Any, x2: Any, s1: SelfCov, s2: SelfCov, *,
               want_ntk: bool = True) -> tuple[Any, Any]:
    """``(nngp, ntk)``, each ``(len(x1), len(x2))``, for rows x1, x2 and their self-covs."""
    xp = array_module(x1)
    st = inputs.pair_input(xp, x1, x2, plan.input_full, want_ntk, plan.pair_identity,
                          plan.pattern)
    st, _ = propagate.run(plan, st, xp, (s1.variances, s2.variances))
    return st.nngp, st.ntk


def block_budget(xp: Any, memory: int, threads: int) -> int:
    """Bytes one block may use: the budget split over threads, capped on the CPU."""
    budget = max(1, memory // max(1, threads))
    return min(budget, CPU_BLOCK_BYTES) if xp.__name__ == "numpy" else budget


def block_size(plan: Plan, itemsize: int, budget: int) -> int:
    """Side ``b`` of the square pair blocks: the largest with ``b * b`` pairs in ``budget``.

    Blocks lie on a fixed grid (multiples of ``b`` from 0), so any tiling of the Gram matrix
    into multiples of ``b`` computes every entry exactly as one in-process call does.
    """
    return block_side(bytes_per_pair(plan, itemsize), budget)


def block_side(per_pair: int, budget: int) -> int:
    """The largest ``b`` with ``b * b`` pairs of ``per_pair`` bytes in ``budget`` (>= 1)."""
    return max(1, math.isqrt(max(1, budget // per_pair)))


def _blocks(n1: int, n2: int, b: int, symmetric: bool) -> Iterator[tuple[slice, slice]]:
    rows = _chunks(n1, b)
    if symmetric:
        for i, r in enumerate(rows):
            for c in rows[i:]:
                yield r, c
    else:
        for r in rows:
            for c in _chunks(n2, b):
                yield r, c


def gram(plan: Plan, x1: Any, x2: Any, s1: SelfCov, s2: SelfCov, *, symmetric: bool,
         get: tuple[str, ...], block: int, threads: int = 1,
         progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Gram matrices between validated rows ``x1``, ``x2`` given their self-covariances.

    ``symmetric`` (x2 is x1) computes blocks on and above the diagonal and mirrors them, so
    the result is exactly symmetric. ``block`` is the side of the square block grid.
    """
    want_ntk = "ntk" in get

    def pair(r: slice, c: slice) -> list[tuple[Any, Any]]:
        return [pair_block(plan, x1[r], x2[c], s1.rows(r), s2.rows(c), want_ntk=want_ntk)]

    out = assemble(pair, x1.shape[0], x2.shape[0], None, symmetric=symmetric, get=get,
                   block=block, dtype=x1.dtype, xp=array_module(x1), threads=threads,
                   progress=progress)
    return {k: v[0] for k, v in out.items()}


def assemble(pair: Callable[[slice, slice], Any], n1: int, n2: int,
             members: int | dict[str, int] | None, *, symmetric: bool, get: tuple[str, ...],
             block: int, dtype: Any, xp: Any, threads: int = 1,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Gram matrices ``{name: (members, n1, n2)}`` (``members`` None: one; a dict: a count
    per name) from the pair blocks ``pair(rows, cols)``: a ``(nngp, ntk)`` per member, or
    ``{name: [a block per member]}``, on a grid of side ``block``; ``symmetric`` computes
    blocks on and above the diagonal and mirrors them exactly."""
    from .products import transpose_into  # (numba: loaded with the first kernel, not the
    # package, which the CLI and the API import for specs only)

    blocks = list(_blocks(n1, n2, block, symmetric))
    counts = members if isinstance(members, dict) else \
        {"nngp": members or 1, "ntk": members or 1}
    out = {k: xp.empty((counts[k], n1, n2), dtype=dtype) for k in ("nngp", "ntk")
           if k in get}

    def work(rc: tuple[slice, slice]) -> None:
        r, c = rc
        vals = pair(r, c)
        if not isinstance(vals, dict):
            vals = {"nngp": [v[0] for v in vals], "ntk": [v[1] for v in vals]}
        for name, arr in out.items():
            for i, val in enumerate(vals[name]):
                if symmetric and r == c:  # keep the upper triangle, mirror it: symmetric
                    val = xp.triu(val) + xp.triu(val, 1).T
                arr[i, r, c] = val
                if symmetric and r != c:
                    transpose_into(arr[i, c, r], val)

    for done, _ in enumerate(_map(work, blocks, threads), 1):
        if progress:
            progress(done, len(blocks))
    return out


def checked_inputs(x1: Any, x2: Any | None, dtype: Any) -> tuple[Any, Any, bool]:
    """``(x1, x2, symmetric)``: validated inputs of ``dtype`` (x2 omitted: x1 itself)."""
    x1 = as_input(x1, "x1", dtype)
    symmetric = x2 is None
    x2 = x1 if symmetric else as_input(x2, "x2", dtype)
    check_pair(x1, x2)
    return x1, x2, symmetric


def thread_count(xp: Any, threads: int | None) -> int:
    """Blocks computed at once: ``threads``, by default the CPU count for NumPy (whose
    allocator is tuned here, once) and 1 for CuPy."""
    if xp.__name__ == "numpy":
        tune_allocator()
    if threads is None:
        threads = (os.cpu_count() or 1) if xp.__name__ == "numpy" else 1
    return max(1, int(threads))


def kernel(arch: Architecture | dict | str, x1: Any, x2: Any | None = None, *,
           get: tuple[str, ...] | str = ("ntk", "nngp"), dtype: Any = None,
           memory: int = DEFAULT_MEMORY, threads: int | None = None,
           progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Infinite-width NTK and NNGP Gram matrices of ``arch`` between the rows of x1 and x2.

    Args:
        arch: an :class:`Architecture`, or its dict / JSON form.
        x1: ``(n1, d)`` vectors or ``(n1, *spatial, C)`` images (NHWC), NumPy or CuPy.
        x2: ``(n2, ...)`` with x1's trailing shape; omitted means x2 = x1 (symmetric: only
            blocks on and above the diagonal are computed, the rest mirrored exactly).
        get: which kernels to return, ``"ntk"`` and/or ``"nngp"`` (computed in one pass).
        dtype: float32 or float64 for the computation and result (default: x1's float dtype).
        memory: working-memory budget in bytes for all threads together; work is split into
            blocks of pairs that fit it.
        threads: blocks (and chunks of the self pass) computed concurrently (default: CPU
            count for NumPy, 1 for CuPy); with more than one, BLAS runs one thread per block
            for the call (threadpoolctl).
        progress: called as ``progress(blocks_done, blocks_total)``.

    Returns:
        ``{"ntk": (n1, n2), "nngp": (n1, n2)}`` restricted to ``get``, arrays of the inputs'
        array module.

    Raises:
        InputError: the architecture does not fit the data, or the data is unusable.
    """
    arch = parse_arch(arch)
    get = check_get(get)
    x1, x2, symmetric = checked_inputs(x1, x2, resolve_dtype(dtype, x1, arch))
    dt = x1.dtype
    plan = make_plan(arch, tuple(x1.shape))
    xp = array_module(x1)
    want_ntk = "ntk" in get
    threads = thread_count(xp, threads)
    budget = block_budget(xp, memory, threads)
    s1 = self_pass(plan, x1, want_ntk=want_ntk, memory=budget, threads=threads)
    s2 = s1 if symmetric else self_pass(plan, x2, want_ntk=want_ntk, memory=budget,
                                        threads=threads)
    return gram(plan, x1, x2, s1, s2, symmetric=symmetric, get=get,
                block=block_size(plan, dt.itemsize, budget), threads=threads,
                progress=progress)

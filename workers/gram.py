"""``compute_gram``: a Gram matrix as a Dask job over tiles, stored in Zarr, resumable.

Stages: the inputs are written to the job's group in row chunks of one tile (with a checksum
per chunk); one self-covariance task per chunk; one task per tile (i <= j only for a
symmetric job), each depending on the self tasks of its row and column chunks. A tile
already marked done whose input chunks are unchanged is not recomputed, so rerunning a job
finishes only what is missing, and fixing some rows of the data recomputes only the tiles
that touch them.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from distributed import Client, Future, as_completed

import ntkcompute
from ntkcompute.errors import InputError
from ntkcompute.families import FamilyPlan, make_family, make_family_plan
from ntkcompute.infinite import (
    DEFAULT_MEMORY,
    block_budget,
    block_side,
    bytes_per_pair,
)
from ntkcompute.lifecycle import Status, eta_seconds
from ntkcompute.plan import Plan, make_plan
from ntkcompute.preprocess import check_preprocess, fit_preprocess
from ntkcompute.spec import Architecture, parse_arch
from ntkcompute.validate import check_get, check_pair, check_shape, resolve_dtype

from . import tasks
from .cluster import get_client, shutdown
from .store import (
    CorruptChunk,
    Verified,
    axis_names,
    check_chunk,
    chunks_of,
    create_array,
    job_meta,
    kernel_array,
    member_axes,
    open_group,
    read,
    selection,
    set_status,
    sha256,
    write_array,
)
from .store import storage_options as resolve_options
from .verify import Damage, verify_job

#: Target seconds of work per tile: the scheduler costs ~5 ms a task, so >= 0.5 s keeps its
#: overhead under 1%; a few seconds keeps progress and resume fine-grained.
TILE_SECONDS = 1.5
#: Rough CPU cost of one state element through one layer (NumPy, measured 3-10 ns here).
SECONDS_PER_ELEMENT = 5e-9


class GramJobError(RuntimeError):
    """A tile or self-covariance task failed; the message is that task's error."""


def _cost_per_pair(plan: Plan) -> float:
    elements = 0
    for lp in plan.layers:
        p = math.prod(lp.in_spatial) if lp.in_spatial else 1
        elements += p ** (2 if lp.in_full else 1)
        if lp.self_stat == "cov":  # attention: two (P, P) matrix products per pair
            elements += 2 * p**3
    return max(elements, 1) * SECONDS_PER_ELEMENT


def choose_tile(plan: Plan, n: int, itemsize: int, memory: int, block: int,
                n_kernels: int = 2) -> int:
    """Tile side: ~TILE_SECONDS of work, outputs within a quarter of ``memory``, a multiple
    of ``block`` (so tiles reproduce the in-process block grid exactly), and the rows split
    into chunks of nearly equal size (edge chunks are stored padded to a full chunk)."""
    t = math.sqrt(TILE_SECONDS / _cost_per_pair(plan))
    t = max(1.0, min(t, math.sqrt(memory / 4 / (itemsize * n_kernels))))
    chunks = max(1, math.ceil(n / t))
    t = math.ceil(n / chunks)
    return max(block, math.ceil(t / block) * block)


def _as_array(x: Any, field: str) -> np.ndarray | zarr.Array:
    if isinstance(x, str):
        return open_group(x, mode="r")["x"]
    if isinstance(x, zarr.Array):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"not an array: {e}", field=field) from None


def _erred_on(key: Any, dask_scheduler: Any = None) -> tuple[str, str | None] | None:
    """(the task that raised, the worker it ran on) for failed task ``key``: itself, or the
    dependency its error came from."""
    ts = dask_scheduler.tasks.get(key)
    if ts is None:
        return None
    blame = getattr(ts, "exception_blame", None) or ts
    workers = sorted(getattr(blame, "erred_on", None) or ())
    return str(blame.key), workers[-1] if workers else None


class GramJob:
    """Handle on a running or finished tiled Gram job.

    Attributes: ``url``, ``tiles_total``, ``tiles_done`` (including tiles reused from an
    earlier run), ``tiles_reused``, ``tiles_computed`` (this run), ``status``
    (running / succeeded / failed), ``error``, ``failures`` (each failed tile task: ``{"tile",
    "task", "worker", "error"}``: the task that raised, itself or a dependency, and the worker
    it ran on, as the scheduler saw them).
    """

    def __init__(self, url: str, group: zarr.Group, client: Client, cluster: Any,
                 futures: list[Future], tiles_total: int, tiles_reused: int) -> None:
        self.url = url
        self.group = group
        self._client, self._cluster = client, cluster
        self._futures = futures
        self._keys = [f.key for f in futures]
        self.tiles_total = tiles_total
        self.tiles_reused = tiles_reused
        self.tiles_computed = 0
        self.status = Status.RUNNING
        self.error: str | None = None
        self.failures: list[dict[str, str | None]] = []
        self._t0 = time.time()
        self._cancelled = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    @property
    def tiles_done(self) -> int:
        return self.tiles_reused + self.tiles_computed

    def progress(self) -> dict[str, Any]:
        """``{"done", "total", "eta_seconds", "status"}``; ETA from this run's tile rate."""
        with self._lock:
            done, computed = self.tiles_done, self.tiles_computed
        eta = eta_seconds(time.time() - self._t0, computed, self.tiles_total - done)
        return {"done": done, "total": self.tiles_total, "eta_seconds": eta,
                "status": self.status}

    def _watch(self) -> None:
        try:
            for fut in as_completed([f for f in self._futures if f.key.startswith("tile")]):
                if fut.status == "cancelled":  # the Dask future's own state
                    continue
                if fut.status == "error":
                    exc = fut.exception()
                    task, worker = self._erred_on(fut.key) or (str(fut.key), None)
                    failure = {"tile": str(fut.key), "task": task, "worker": worker,
                               "error": f"{type(exc).__name__}: {exc}"}
                    with self._lock:
                        self.failures.append(failure)
                        if self.error is None:
                            self.error = f"{fut.key}: {type(exc).__name__}: {exc}"
                else:
                    with self._lock:
                        self.tiles_computed += 1
            self.status = (Status.CANCELLED if self._cancelled else
                           Status.FAILED if self.error else Status.SUCCEEDED)
        except Exception as e:
            self.error = self.error or f"{type(e).__name__}: {e}"
            self.status = Status.FAILED
        finally:
            set_status(self.group, self.status, error=self.error, finished=time.time())
            self._futures = []  # every tile has ended: let the workers drop their results
            self._done.set()

    def _erred_on(self, key: Any) -> tuple[str, str | None] | None:
        """:func:`_erred_on` on the scheduler (None if it cannot say)."""
        try:
            return self._client.run_on_scheduler(_erred_on, key=key)
        except Exception:
            return None

    def cancel(self) -> None:
        """Stop the job: queued tiles are dropped, finished tiles stay (rerun to resume)."""
        self._cancelled = True
        self._client.cancel(self._futures)

    def stop(self, timeout: float = 60.0) -> bool:
        """Cancel, then wait until no worker holds any task of this job (a cancelled task
        already running finishes, and writes its chunks, before the worker drops it): after
        True, nothing of this run writes to the store any more."""
        self.cancel()
        keys = self._keys
        deadline = time.monotonic() + timeout
        clean = 0
        # ``Client.cancel`` goes out on the batched stream unacknowledged, and the scheduler's
        # compute and free messages reach a worker on another stream than ``Client.run``: so
        # first the scheduler must have forgotten every key, then two worker checks 0.2 s
        # apart must find none held.
        while clean < 2:
            held = self._client.run_on_scheduler(tasks.scheduler_keys, keys)
            if not held:
                held = any(self._client.run(tasks.known_keys, keys).values())
            clean = 0 if held else clean + 1
            if clean < 2:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.2 if clean else 0.1)
        return True

    def wait(self, timeout: float | None = None, progress: bool = False) -> GramJob:
        """Block until every tile is done; raise :class:`GramJobError` if one failed.
        ``progress``: :meth:`watch` it meanwhile."""
        if progress:
            self.watch(timeout=timeout)
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.url} not finished after {timeout} s")
        self.close()
        if self.status in (Status.FAILED, Status.CANCELLED):
            raise GramJobError(self.error or "cancelled")
        return self

    def watch(self, stop: threading.Event | None = None, timeout: float | None = None,
              disable: bool = False) -> None:
        """A tqdm bar of tiles on stderr until the job ends, ``stop`` is set or ``timeout``
        seconds pass; one ETA, the job's own (this run's tile rate, not tqdm's over reused
        tiles too)."""
        from tqdm import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} tiles [{elapsed}{postfix}]"
        with tqdm(total=self.tiles_total, initial=self.tiles_reused, bar_format=fmt,
                  disable=disable) as bar:
            while not self._done.wait(0.2):
                p = self.progress()
                bar.update(p["done"] - bar.n)
                if p["eta_seconds"] is not None:
                    bar.set_postfix_str(f"ETA {p['eta_seconds']:.0f}s", refresh=False)
                if (stop is not None and stop.is_set()) or (
                        deadline is not None and time.monotonic() > deadline):
                    return
            bar.update(self.tiles_done - bar.n)

    def close(self) -> None:
        """Release the embedded LocalCluster, if this job started one."""
        if self._cluster is not None:
            shutdown(self._client, self._cluster)
            self._cluster = None

    @property
    def arrays(self) -> dict[str, zarr.Array]:
        """The job's Zarr arrays (``ntk`` and/or ``nngp``), readable at any time."""
        return {k: self.group[k] for k in ("ntk", "nngp") if k in self.group}

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Every stored array, read through its checksums (:class:`CorruptChunk` if one
        fails)."""
        return {k: read(v) for k, v in self.arrays.items()}

    @property
    def depths(self) -> list[int] | None:
        """A family job's member depths, the ``depth`` coordinate (None for one network)."""
        return job_meta(self.group).get("depths")

    @property
    def variants(self) -> list[int] | None:
        """A family job's variants (fixed bottom blocks), the ``variant`` coordinate of its
        NTK (None without)."""
        return job_meta(self.group).get("variants")

    @property
    def b_stds(self) -> list[float] | None:
        """A family job's bias grid, the ``b_std`` coordinate (None without)."""
        return job_meta(self.group).get("b_stds")

    def member(self, depth: int, variant: int | None = None, b_std: float | None = None
               ) -> dict[str, np.ndarray]:
        """Member ``depth`` (and ``variant``, ``b_std``, for a family with variants or a bias
        grid) of a family job: ``{"ntk", "nngp"}`` as (n1, n2) arrays, read through their
        checksums."""
        return {k: read(kernel_array(self.group, k, depth, variant, b_std))
                for k in self.arrays}

    def to_dask(self) -> dict[str, Any]:
        """``{"ntk", "nngp"}`` as lazy ``(n1, n2)`` dask arrays (a family's ``(D, n1, n2)``,
        its NTK with variants ``(D, V, n1, n2)``),
        one chunk per tile, readable while the job runs: a tile not done yet reads as NaN, a
        damaged chunk raises :class:`CorruptChunk` when computed."""
        import dask.array as da

        return {name: da.from_array(Verified(arr), chunks=arr.chunks, asarray=False,
                                    name=f"{name}-{self.url}-{id(self)}", fancy=False)
                for name, arr in self.arrays.items()}

    def to_xarray(self) -> Any:
        """The kernels as an ``xarray.Dataset`` over dims ``i`` (x1's rows) and ``j`` (x2's,
        or x1's again), ``depth`` first for a family job and ``variant`` after it for its
        NTK with variants, with coordinates and each array's attrs, read lazily through the
        checksums (:meth:`to_dask`); ``xarray.open_zarr(job.url)`` opens the same arrays
        unverified."""
        import xarray as xr

        meta = job_meta(self.group)
        dims = {k: (*member_axes(meta, k)[1], "i", "j") for k in self.arrays}
        coords = {d: read(self.group[d]) for ds in dims.values() for d in ds}
        return xr.Dataset({k: xr.DataArray(v, dims=dims[k], attrs=dict(self.group[k].attrs))
                           for k, v in self.to_dask().items()},
                          coords=coords, attrs={"ntkcompute": meta})


def _store_input(g: zarr.Group, name: str, x: Any, dtype: np.dtype, tile: int, *,
                 checksum: bool = True, force: frozenset[int] = frozenset(),
                 rows: str = "i") -> list[str]:
    """Write ``x`` to ``g[name]`` chunk by chunk where it differs (or its chunk index is in
    ``force``: found damaged); return chunk checksums."""
    n = x.shape[0]
    if name in g and g[name].shape == tuple(x.shape) and g[name].dtype == dtype \
            and g[name].chunks[0] == tile:
        arr = g[name]
    else:
        arr = create_array(g, name, tuple(x.shape), (tile, *x.shape[1:]), dtype,
                           checksum=checksum, overwrite=True, dims=axis_names(rows, x.ndim))
    old = job_meta(g).get(f"{name}_chunks", [])
    sums = []
    for k, start in enumerate(range(0, n, tile)):
        rows = slice(start, min(start + tile, n))
        block = read(x, rows) if isinstance(x, zarr.Array) else np.asarray(x[rows])
        if block.dtype.kind not in "fiu":
            raise InputError(f"must be real numbers, got dtype {block.dtype}", field=name)
        block = block.astype(dtype, copy=False)
        s = sha256(block)
        if k >= len(old) or old[k] != s or k in force:
            arr[rows] = block
        sums.append(s)
    return sums


#: Identity keys a Gram job records only when it has them (stored jobs keep their identity).
OPTIONAL_IDENTITY = ("depths", "variants", "b_stds", "preprocess")


def same_job(g: zarr.Group, store: str, identity: dict[str, Any]) -> dict[str, Any]:
    """The metadata of the job already in ``g`` (empty if none); InputError (field
    ``store``) if it is a different job."""
    old = job_meta(g)
    diff = [k for k, v in identity.items() if old and old.get(k) != v]
    # the keys a job has only when it uses them: absent on one side, present on the other
    # is another job too (a plain job into a family's store, a family without its grid)
    diff += [k for k in OPTIONAL_IDENTITY if old and k not in identity
             and old.get(k) is not None]
    if diff:
        raise InputError(f"{store} holds a different job (differs in {diff}); use a new "
                         "store URL", field="store")
    return old


def changed_chunks(old: dict[str, Any], name: str, sums: list[str]) -> list[bool]:
    """Per row chunk of input ``name``: is it new or different since the earlier run?"""
    before = old.get(f"{name}_chunks") or []
    return [k >= len(before) or before[k] != s for k, s in enumerate(sums)]


def _marker(g: zarr.Group, path: str, shape: tuple[int, ...], checksum: bool = True,
            dims: tuple[str, ...] | None = None) -> zarr.Array:
    if path in g and g[path].shape == shape:
        return g[path]
    return create_array(g, path, shape, (1,) * len(shape), "uint8", checksum=checksum,
                        overwrite=True, dims=dims)


def read_marks(marks: zarr.Array, sel: Any = None) -> np.ndarray:
    """``marks[sel]`` of a marker array as booleans; a marker chunk that fails its
    checksum reads as not done (the tile is recomputed rather than trusted)."""
    try:
        return read(marks, sel, missing_ok=True).astype(bool)
    except CorruptChunk:
        sl = selection(marks, sel)
        out = np.zeros(tuple(s.stop - s.start for s in sl), dtype=bool)
        for coords in chunks_of(marks, sl):
            if check_chunk(marks, coords, missing_ok=True) is None:
                out[tuple(k - s.start for k, s in zip(coords, sl, strict=True))] = \
                    bool(marks[coords])
        return out


@dataclass(frozen=True)
class JobPlan:
    """A validated Gram job: what ``compute_gram`` would run, before anything is written."""

    spec: Architecture
    get: tuple[str, ...]
    dtype: np.dtype
    plan: Plan | FamilyPlan
    block: int
    tile: int
    n1: int
    n2: int

    @property
    def depths(self) -> list[int] | None:
        """A family job's member depths (None for one network)."""
        return list(self.plan.depths) if isinstance(self.plan, FamilyPlan) else None

    @property
    def variants(self) -> list[int] | None:
        """A family job's variants (None without)."""
        variants = self.plan.variants if isinstance(self.plan, FamilyPlan) else None
        return None if variants is None else list(variants)

    @property
    def b_stds(self) -> list[float] | None:
        """A family job's bias grid (None without)."""
        b_stds = self.plan.b_stds if isinstance(self.plan, FamilyPlan) else None
        return None if b_stds is None else list(b_stds)


def plan_job(arch: Architecture | dict | str, x1: Any, x2: Any | None = None, *,
             get: tuple[str, ...] | str = ("ntk", "nngp"), dtype: Any = None,
             memory: int = DEFAULT_MEMORY, tile: int | None = None,
             depths: list[int] | None = None,
             variants: list[int] | None = None,
             b_stds: list[float] | None = None, flip: bool = False) -> JobPlan:
    """Check a Gram job (spec, shapes, dtype, budget, tile) without running it.

    ``x1``/``x2`` need only ``shape`` and ``dtype`` (NumPy, Zarr or memory-mapped arrays).
    ``depths``: a family job (:func:`ntkcompute.kernel_family`): ``arch`` has one top-level
    ``repeat``, and every member's kernels come from one pass, in float64; ``variants``
    (with ``depths``): the NTK of each member with its first v blocks fixed too; ``b_stds``
    (with ``depths``): every member for each value of every layer's ``b_std``; ``flip``: the
    flip-symmetrised kernel, whose tile tasks hold three blocks of every matrix at once
    (tiles are sized for them).

    Raises:
        InputError: naming the offending field (``layers[i].*``, ``x1``, ``x2``, ``get``,
            ``dtype``, ``memory``, ``tile``, ``depths``, ``variants``, ``b_stds``).
    """
    spec = parse_arch(arch)
    get = check_get(get)
    dt = resolve_dtype(np.float64 if depths is not None and dtype is None else dtype, x1, spec)
    if depths is not None and dt != np.float64:  # (the family pass has no float32
        # refinement of near pairs)
        raise InputError("a kernel family is computed in float64", field="dtype")
    check_shape(x1.shape, "x1")
    if x2 is not None:
        check_shape(x2.shape, "x2")
        check_pair(x1, x2)
    for field, value in (("variants", variants), ("b_stds", b_stds)):
        if value is not None and depths is None:
            raise InputError(f"{field} are members of a kernel family: give depths too",
                             field=field)
    if depths is None:
        plan = make_plan(spec, tuple(x1.shape))
        per_pair = bytes_per_pair(plan, dt.itemsize)
    else:
        plan = make_family_plan(make_family(spec, depths, variants, b_stds), tuple(x1.shape))
        per_pair = plan.bytes_per_pair(dt.itemsize)
    if per_pair > memory:
        raise InputError(f"one pair needs {per_pair} bytes, more than the budget {memory}",
                         field="memory")
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    meta = {"depths": depths, "variants": None if depths is None else variants,
            "b_stds": None if depths is None else b_stds}
    members = sum(math.prod(member_axes(meta, name)[0]) for name in get) * (3 if flip else 1)
    # a block past the matrix is one block either way (and keeps tiles, and the Zarr chunks
    # that are one tile each, no larger than the matrix)
    budget = block_budget(np, memory, 1)
    block = min(block_side(per_pair, budget), max(n1, n2))
    if tile is None:
        tile = choose_tile(plan, max(n1, n2), dt.itemsize, memory, block, members)
    elif isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0:
        raise InputError(f"must be a positive integer, got {tile!r}", field="tile")
    tile = min(tile, max(n1, n2))
    tile_bytes = tile * tile * dt.itemsize * members
    if tile_bytes > memory:
        raise InputError(f"a {tile} x {tile} tile of {list(get)} ({members} matrices"
                         f"{', flip-symmetrised: 3 blocks each' if flip else ''}) needs "
                         f"{tile_bytes} bytes, more than the per-task budget {memory}",
                         field="tile")
    return JobPlan(spec, get, dt, plan, block, tile, n1, n2)


def compute_gram(arch: Architecture | dict | str, x1: Any, x2: Any | None = None, *,
                 store: str, tile: int | None = None, client: Client | None = None,
                 scheduler: str | None = None, get: tuple[str, ...] | str = ("ntk", "nngp"),
                 dtype: Any = None, memory: int = DEFAULT_MEMORY,
                 storage_options: dict | None = None, checksums: bool = True,
                 verify: bool = False, depths: list[int] | None = None,
                 variants: list[int] | None = None,
                 b_stds: list[float] | None = None,
                 preprocess: dict | None = None) -> GramJob:
    """Start (or resume) the tiled Gram job of ``arch`` on x1 (and x2) into ``store``.

    Args:
        arch: architecture spec (object, dict or JSON).
        x1, x2: NumPy arrays, Zarr arrays, or dataset URLs (see ``write_dataset``);
            ``x2=None`` is the symmetric train Gram.
        store: URL of the job's Zarr group (local path or fsspec URL).
        tile: tile side (rows = columns); default from the memory budget and the
            architecture's cost, rounded to the kernel's block grid.
        client / scheduler: an existing Dask client, or a scheduler address to join
            (also ``$NTK_SCHEDULER_ADDRESS``); default an embedded LocalCluster.
        get, dtype: as for :func:`ntkcompute.kernel`.
        memory: working-memory budget of one task in bytes (tile outputs included).
        storage_options: fsspec options for the store (default ``$NTK_STORAGE_OPTIONS``).
        checksums: a CRC-32C per chunk of every array the job creates (verified on
            every read); off only to measure what they cost.
        verify: before resuming, check every chunk of the stored job on the workers
            (:func:`workers.verify_job`) and recompute exactly the damaged tiles, self
            statistics and input chunks, even of a finished job.
        depths: a family job (:func:`ntkcompute.kernel_family`; ``arch`` has one top-level
            ``repeat``): ``ntk``/``nngp`` are stored ``(D, n1, n2)``, member ``d`` at
            ``depths[d]`` (the ``depth`` coordinate), chunks ``(1, tile, tile)``; a tile task
            computes every member of its tile in one pass.
        variants: with ``depths``, the numbers of fixed bottom blocks
            (:func:`ntkcompute.kernel_family`): ``ntk`` is stored ``(D, V, n1, n2)``, chunks
            ``(1, 1, tile, tile)``, the ``variant`` coordinate; ``nngp`` stays ``(D, n1, n2)``.
        b_stds: with ``depths``, a bias grid (every layer's ``b_std`` set to each value):
            every kernel array gets a leading ``b_std`` axis (chunks 1 deep), and the self
            statistics a ``B`` axis after the rows.
        preprocess: ``{"zca": strength, "standardize": true}`` (either may be left out):
            the inputs are transformed before they are stored, by ZCA and/or per-channel
            standardisation fit on the training rows (x2 for a cross job, else x1;
            :mod:`ntkcompute.preprocess`), in the inputs' float dtype; ``"flip": true``
            stores the flip-symmetrised kernel ``(K(x, x') + K(x, flip x')) / 2``
            (symmetrised as ``ntkcompute.preprocess.flip_symmetrized`` does: each tile task
            computes the flipped blocks too, and the diagonal is the symmetrised kernel's);
            recorded in the job's identity.

    Returns:
        a :class:`GramJob`; call ``wait()`` for the result.

    Raises:
        InputError: bad spec, shapes, dtype, or a store that holds a different job.
    """
    a1 = _as_array(x1, "x1")
    a2 = None if x2 is None else _as_array(x2, "x2")
    prep = check_preprocess(preprocess, tuple(a1.shape))
    transform = None if prep is None else fit_preprocess(
        prep, np.asarray((a1 if a2 is None else a2)[...]))
    if transform is not None:  # fit on the training rows, applied to every input
        dtypes = [a.dtype if a.dtype.kind == "f" else np.dtype(np.float64)
                  for a in (a1, a2) if a is not None]
        a1 = transform(np.asarray(a1[...])).astype(dtypes[0], copy=False)
        a2 = None if a2 is None else transform(np.asarray(a2[...])).astype(dtypes[1],
                                                                             copy=False)
    jp = plan_job(arch, a1, a2, get=get, dtype=dtype, memory=memory, tile=tile,
                  depths=depths, variants=variants, b_stds=b_stds,
                  flip=bool(prep and prep.get("flip")))
    spec, get, dt, plan, block, tile = jp.spec, jp.get, jp.dtype, jp.plan, jp.block, jp.tile
    n1, n2 = jp.n1, jp.n2
    opts = resolve_options(storage_options)
    identity = {"spec": spec.model_dump(mode="json"), "dtype": dt.str, "get": list(get),
                "x_shape": list(a1.shape), "n1": n1, "n2": n2, "symmetric": a2 is None,
                "tile": tile, "block": block}
    if jp.depths is not None:  # (absent for one network: stored jobs keep their identity)
        identity["depths"] = jp.depths
    if jp.variants is not None:
        identity["variants"] = jp.variants
    if jp.b_stds is not None:
        identity["b_stds"] = jp.b_stds
    if prep is not None:
        identity["preprocess"] = prep
    g, old, cl, cluster, damage = begin_job(store, identity, opts, client, scheduler, verify)
    try:
        return _start_gram(g, store, identity, old, plan, a1, a2, cl, cluster, opts,
                           checksums, memory, damage)
    except BaseException:
        shutdown(cl, cluster)
        raise


def begin_job(store: str, identity: dict[str, Any], opts: dict | None, client: Client | None,
              scheduler: str | None, verify: bool
              ) -> tuple[zarr.Group, dict[str, Any], Client, Any, Damage]:
    """Open (or create) a job's group and check that it holds this job (``identity``), join
    the cluster (every worker with a :class:`workers.tasks.Planner`) and, with ``verify``,
    find what of an earlier run is damaged: ``(group, old metadata, client, cluster we
    own, damage)``."""
    g = open_group(store, mode="a", options=opts)
    old = same_job(g, store, identity)
    cl, cluster = get_client(client, scheduler)
    try:
        tasks.install(cl)
        damage = verify_job(store, client=cl, options=opts).damage() if verify and old \
            else Damage()
    except BaseException:
        shutdown(cl, cluster)
        raise
    return g, old, cl, cluster, damage


def _start_gram(g: zarr.Group, store: str, identity: dict[str, Any], old: dict[str, Any],
                plan: Plan | FamilyPlan, a1: Any, a2: Any | None, cl: Client, cluster: Any,
                opts: dict | None, checksum: bool, memory: int, damage: Damage) -> GramJob:
    n1, n2, tile, dt = identity["n1"], identity["n2"], identity["tile"], np.dtype(
        identity["dtype"])
    # Inputs, chunk checksums, and which chunks changed since an earlier run.
    sums1 = _store_input(g, "x1", a1, dt, tile, checksum=checksum,
                         force=damage.inputs.get("x1", frozenset()))
    sums2 = None if a2 is None else _store_input(g, "x2", a2, dt, tile, checksum=checksum,
                                                 force=damage.inputs.get("x2", frozenset()),
                                                 rows="j")
    t1, t2 = len(sums1), (len(sums1) if a2 is None else len(sums2))
    changed1 = changed_chunks(old, "x1", sums1)
    changed2 = changed1 if a2 is None else changed_chunks(old, "x2", sums2)

    depths, variants = identity.get("depths"), identity.get("variants")
    for name in identity["get"]:
        if name not in g:
            lead, lead_dims = member_axes(identity, name)
            attrs = {"kind": name, "dtype": dt.name, "architecture": identity["spec"],
                     "parameterization": identity["spec"]["parameterization"],
                     "symmetric": a2 is None, "tile": tile, "status": Status.RUNNING}
            if depths is not None:
                attrs["depths"] = depths
            if variants is not None and "variant" in lead_dims:
                attrs["variants"] = variants
            if identity.get("b_stds") is not None:
                attrs["b_stds"] = identity["b_stds"]
            create_array(g, name, (*lead, n1, n2), ((1,) * len(lead) + (tile, tile)), dt,
                         checksum=checksum, computed=True, dims=(*lead_dims, "i", "j"),
                         attrs=attrs)
    coords = [("i", np.arange(n1, dtype=np.int64)), ("j", np.arange(n2, dtype=np.int64))]
    if depths is not None:
        coords.append(("depth", np.asarray(depths, dtype=np.int64)))
    if variants is not None:
        coords.append(("variant", np.asarray(variants, dtype=np.int64)))
    if identity.get("b_stds") is not None:
        coords.append(("b_std", np.asarray(identity["b_stds"], dtype=np.float64)))
    for axis, values in coords:  # the coordinates: row numbers of x1 and x2, members' depths
        if axis not in g or g[axis].shape != values.shape:
            write_array(g, axis, values, tile, checksum=checksum, dims=(axis,))
    done = _marker(g, "done", (t1, t2), checksum, dims=("tile_i", "tile_j"))
    self_sets = [("x1", t1, changed1)] + ([] if a2 is None else [("x2", t2, changed2)])
    self_done = {}
    for which, t, changed in self_sets:
        sg = g.require_group(f"self/{which}")
        nrows = n1 if which == "x1" else n2
        rows = "i" if which == "x1" else "j"
        bias = () if identity.get("b_stds") is None else (len(identity["b_stds"]),)
        for j, lp in enumerate(plan.self_layers):
            shape = (nrows, *bias, *lp.self_shape)
            if f"var{j}" not in sg:
                create_array(sg, f"var{j}", shape, (tile, *shape[1:]), dt, checksum=checksum,
                             computed=True, dims=axis_names(rows, len(shape)))
        for name in ("diag_nngp", "diag_ntk"):  # a family's: (n, D), a column per member
            if name not in sg:
                lead, lead_dims = member_axes(identity, name[5:])
                create_array(sg, name, (nrows, *lead), (tile, *lead), dt, checksum=checksum,
                             computed=True, dims=(rows, *lead_dims))
        marks = _marker(sg, "done", (t,), checksum, dims=("tile_" + rows,))
        for k, ch in enumerate(changed):
            if ch or (which, k) in damage.self_chunks:
                marks[k] = 0
        self_done[which] = read_marks(marks)
    tile_done = read_marks(done)
    for i, j in zip(*np.nonzero(tile_done), strict=True):  # invalidate tiles on changed rows
        if changed1[i] or changed2[j] or (i, j) in damage.tiles:
            tile_done[i, j] = False
            done[i, j] = 0
    set_status(g, Status.RUNNING, **identity, x1_chunks=sums1, x2_chunks=sums2, threads=1,
               memory=memory, version=ntkcompute.__version__, error=None,
               started=time.time(), tiles_total=_tile_count(t1, t2, a2 is None),
               checksums=checksum)

    token = f"{abs(hash((store, time.time()))):x}"
    self_futs: dict[tuple[str, int], Any] = {}
    futures = []
    for which, t, _ in self_sets:
        for k in range(t):
            if not self_done[which][k]:
                f = cl.submit(tasks.self_task, store, which, k, options=opts,
                              key=f"self-{which}-{k}-{token}", pure=False)
                self_futs[(which, k)] = f
                futures.append(f)
    other = "x1" if a2 is None else "x2"
    reused = 0
    for i in range(t1):
        for j in range(i if a2 is None else 0, t2):
            if tile_done[i, j]:
                reused += 1
                continue
            deps = [f for f in (self_futs.get(("x1", i)), self_futs.get((other, j)))
                    if f is not None]
            futures.append(cl.submit(tasks.tile_task, store, i, j, *deps, options=opts,
                                     key=f"tile-{i}-{j}-{token}", pure=False))
    return GramJob(store, g, cl, cluster, futures, _tile_count(t1, t2, a2 is None), reused)


def _tile_count(t1: int, t2: int, symmetric: bool) -> int:
    return t1 * (t1 + 1) // 2 if symmetric else t1 * t2

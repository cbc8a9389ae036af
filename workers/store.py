"""Zarr v3 layout of datasets and kernel jobs, on any store a URL names.

A URL is a local path or any fsspec URL (``file://``, ``s3://``, ``memory://``, ...). Extra
fsspec options (credentials, endpoint) come from configuration, not code: the
``storage_options`` argument or the ``NTK_STORAGE_OPTIONS`` environment variable (JSON).

Every array is written with a CRC-32C checksum per chunk (Zarr v3's ``crc32c`` codec).
Computed arrays (kernels, self statistics, features, solves), which never hold a NaN, are
NaN-filled, so a chunk never written or deleted reads as NaN; for other arrays (inputs,
markers) a missing chunk is found by its key. :func:`read` turns a checksum failure, an
unreadable chunk or a missing one into :class:`CorruptChunk` naming the array and the
chunk, never into numbers.

Kernel job group (one per job), dimension names in brackets (what xarray reads)::

    <url>/            attrs["ntkcompute"]: spec, dtype, get, shapes, tile, block, checksums,
                      code version, status, error; consolidated metadata
      x1, x2          inputs, chunked by tile rows (x2 absent for a symmetric job)
                      [i | j, axis1, ...]
      i, j            (n1,), (n2,) int64 row numbers, the coordinates [i], [j]
      ntk, nngp       (n1, n2), chunks exactly (tile, tile), uncompressed [i, j]; attrs kind,
                      dtype, architecture, parameterization, symmetric, tile, status
                      (a family job: (D, n1, n2), chunks (1, tile, tile) [depth, i, j],
                      attrs and metadata ``depths``; one member is :func:`kernel_array`;
                      with variants, ``ntk`` is (D, V, n1, n2), chunks (1, 1, tile, tile)
                      [depth, variant, i, j], attrs and metadata ``variants``; with a
                      bias grid, ``b_std`` before every member axis [b_std, depth, ...],
                      metadata ``b_stds``: :func:`member_axes`)
      depth           a family job's (D,) member depths, the coordinate [depth]
      variant         a family job's (V,) variants (fixed bottom blocks) [variant]
      b_std           a family job's (B,) bias grid [b_std]
      done            (T1, T2) uint8, one chunk per tile: 1 once the tile's chunks are written
                      [tile_i, tile_j]
      self/x1/...     per-input self statistics: var<j> (n, *plan.self_layers[j].self_shape),
                      diag_nngp, diag_ntk (n,) (a family's (n, D) [i, depth], and
                      diag_ntk (n, D, V) [i, depth, variant] with variants; a bias grid
                      adds B after n to these and to every var<j>),
                      and done (T,) per row chunk

Dataset group: ``x`` (and ``y``) with attrs ``sha256``, as written by :func:`write_dataset`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from ntkcompute import families
from ntkcompute.errors import InputError

ATTR = "ntkcompute"


def storage_options(options: dict | None = None) -> dict | None:
    """Explicit options, else ``$NTK_STORAGE_OPTIONS`` (JSON), else None."""
    if options is not None:
        return options
    env = os.environ.get("NTK_STORAGE_OPTIONS")
    return json.loads(env) if env else None


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def open_group(url: str, mode: str = "a", options: dict | None = None) -> zarr.Group:
    """Open (or create, with ``mode="a"``) the Zarr group at ``url``."""
    opts = storage_options(options)
    # Never through consolidated metadata: it is a snapshot for readers (xarray), and a
    # job's arrays and attrs change after it is written (see :func:`consolidate`).
    if _is_local(url):
        return zarr.open_group(url.removeprefix("file://"), mode=mode, use_consolidated=False)
    return zarr.open_group(url, mode=mode, storage_options=opts, use_consolidated=False)


def consolidate(group: zarr.Group) -> None:
    """Write the group's consolidated metadata (every array's shape, dims and attrs in one
    document, which ``xarray.open_zarr`` reads first). Rewritten at each status change of a
    job, so a reader's snapshot is at most one status old; our own reads never use it."""
    with warnings.catch_warnings():  # "not part of the Zarr v3 spec": xarray reads it
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(group.store, path=group.path or None)


def sha256(a: np.ndarray, block_bytes: int = 1 << 24) -> str:
    """Checksum of an array's dtype, shape and C-order bytes, read ``block_bytes`` of rows at
    a time (a memory-mapped upload is never copied whole)."""
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    if a.ndim == 0:
        h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()
    step = max(1, block_bytes // max(1, a[:1].nbytes))
    for r in range(0, a.shape[0], step):
        h.update(np.ascontiguousarray(a[r:r + step]).data)
    return h.hexdigest()


class CorruptChunk(RuntimeError):
    """A stored chunk that is missing, unreadable or fails its checksum.

    ``array`` is the array's path inside its store (``"ntk"``, ``"self/x1/var0"``), ``chunk``
    its chunk coordinates: for a kernel array, the tile ``(i, j)``.
    """

    def __init__(self, array: str, chunk: tuple[int, ...], problem: str) -> None:
        self.array, self.chunk, self.problem = array, tuple(int(c) for c in chunk), problem
        super().__init__(f"{array} chunk {list(self.chunk)}: {problem}")

    def __reduce__(self) -> tuple:  # raised in Dask tasks: rebuilt from these, not args
        return CorruptChunk, (self.array, self.chunk, self.problem)


def create_array(group: zarr.Group, name: str, shape: tuple[int, ...],
                 chunks: tuple[int, ...], dtype: Any, *, checksum: bool = True,
                 computed: bool = False, overwrite: bool = False,
                 dims: tuple[str, ...] | None = None,
                 attrs: dict[str, Any] | None = None) -> zarr.Array:
    """``group[name]``, uncompressed, with a CRC-32C per chunk unless ``checksum=False``.
    ``computed``: values that are never NaN (kernels, statistics, features, solves): the
    array is NaN-filled, so a chunk never written reads as missing without a key lookup.
    ``dims``: Zarr v3 ``dimension_names`` (what xarray names the axes); ``attrs``: the
    array's own attributes."""
    dt = np.dtype(dtype)
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dt,
                              fill_value=np.nan if computed and dt.kind == "f" else 0,
                              compressors=[Crc32cCodec()] if checksum else None,
                              overwrite=overwrite, dimension_names=dims,
                              attributes=attrs)


def has_checksums(arr: zarr.Array) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in arr.compressors)


def _nan_filled(arr: zarr.Array) -> bool:
    return arr.dtype.kind == "f" and bool(np.isnan(arr.fill_value))


def _has_nan(a: np.ndarray) -> bool:
    # NaN propagates through a max-reduction: one vectorised pass, ~2x cheaper than
    # isfinite().all() or a sum here (computed arrays never hold an inf)
    return a.size > 0 and bool(np.isnan(a.max()))


def _present(arr: zarr.Array, coords: tuple[int, ...]) -> bool:
    return sync((arr.store_path / arr.metadata.encode_chunk_key(tuple(coords))).exists())


def selection(arr: zarr.Array, sel: Any) -> tuple[slice, ...]:
    """A selection of ``arr`` (None, a slice or a tuple of slices/ints) as one in-bounds
    slice per axis."""
    if sel is None or sel is Ellipsis:
        sel = ()
    if not isinstance(sel, tuple):
        sel = (sel,)
    out = []
    for s, n in itertools.zip_longest(sel, arr.shape, fillvalue=slice(None)):
        if isinstance(s, (int, np.integer)):
            k = int(s) + (n if s < 0 else 0)
            out.append(slice(k, k + 1))
        else:
            start, stop, step = s.indices(n)
            if step != 1:
                raise ValueError("verified reads take unit-step slices")
            out.append(slice(start, max(start, stop)))
    return tuple(out)


def chunks_of(arr: zarr.Array, sel: Any = None) -> Iterator[tuple[int, ...]]:
    """Coordinates of every chunk that the selection touches."""
    ranges = [range(s.start // c, math.ceil(s.stop / c)) if s.stop > s.start else range(0)
              for s, c in zip(selection(arr, sel), arr.chunks, strict=True)]
    return itertools.product(*ranges)


def chunk_region(arr: zarr.Array, coords: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(k * c, min((k + 1) * c, n))
                 for k, c, n in zip(coords, arr.chunks, arr.shape, strict=True))


def check_chunk(arr: zarr.Array, coords: tuple[int, ...], missing_ok: bool = False
                ) -> str | None:
    """What is wrong with one chunk (``"missing"``, ``"checksum mismatch"``, ...), or None.

    ``missing_ok``: a chunk never written is fine (markers, whose absent chunks read 0)."""
    region = chunk_region(arr, coords)
    try:
        block = arr[region]
    except Exception as e:  # the codec chain: a checksum that differs, a short chunk, ...
        return _problem(e)
    if missing_ok:
        return None
    if _nan_filled(arr):
        return "missing (never written, or deleted)" if _has_nan(block) else None
    return None if _present(arr, coords) else "missing (never written, or deleted)"


CHECKSUM_MISMATCH = "checksum mismatch (the chunk's bytes changed since they were written)"


def _problem(e: BaseException) -> str:
    text = str(e)
    if "checksum" in text.lower():
        return CHECKSUM_MISMATCH
    return f"unreadable ({type(e).__name__}; truncated or damaged)"


def read(arr: zarr.Array, sel: Any = None, *, missing_ok: bool = False) -> np.ndarray:
    """``arr[sel]``, verified: raises :class:`CorruptChunk` naming the first chunk under the
    selection that fails its checksum, cannot be decoded, or is missing (a NaN in a computed
    array; elsewhere, a chunk key that does not exist). ``sel``: None, a slice, or a tuple
    of unit-step slices / ints. ``missing_ok``: absent chunks read as the fill value
    (markers)."""
    if isinstance(arr, Member):
        sl = (*(slice(k, k + 1) for k in arr.index), *selection(arr, sel))
        return read(arr.arr, sl, missing_ok=missing_ok)[(0,) * len(arr.index)]
    sl = selection(arr, sel)
    out = _read_chunk_file(arr, sl)
    if out is None:
        try:
            out = arr[sl]
        except Exception:
            _raise_first_bad(arr, sl, missing_ok)
            raise
    if missing_ok or out.size == 0:
        return out
    if _nan_filled(arr):
        if _has_nan(out):
            _raise_first_bad(arr, sl, missing_ok)
    else:
        for coords in chunks_of(arr, sl):
            if not _present(arr, coords):
                raise CorruptChunk(arr.path, coords, "missing (never written, or deleted)")
    return out


def _read_into(f: Any, buf: Any) -> int:
    """Fill ``buf`` from the raw file ``f``; the bytes read (fewer only at the end of the
    file: one ``read`` returns at most ~2 GiB on Linux)."""
    view, got = memoryview(buf).cast("B"), 0
    while got < len(view):
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    return got


def _read_chunk_file(arr: zarr.Array, sl: tuple[slice, ...]) -> np.ndarray | None:
    """A selection that is exactly one chunk of a 1-D or 2-D array (or of a family's 3-D
    or 4-D kernel, chunked one member deep) in a local directory (bytes + CRC-32C, our layout),
    read straight from its file into a fresh array and verified; None for anything else
    (Zarr reads it). Through Zarr a 5120² float64 tile takes 0.2-0.7 s here (the file read
    into a bytes object, the checksum over it, a copy into the output); this is one
    ``readinto`` and one checksum pass.

    Zarr v3 stores edge chunks at the full chunk shape, so the file is the chunk's
    ``prod(chunks)`` values (the region's, then padding) and 4 checksum bytes. Raises
    :class:`CorruptChunk` on a checksum mismatch or a file of the wrong length; a missing
    file returns None, so Zarr's fill value decides (NaN: missing). :func:`read` checks the
    values (no NaN in a computed array) either way."""
    store, codecs = arr.store, getattr(arr.metadata, "codecs", ())  # (Zarr v2: none)
    if not (isinstance(store, LocalStore)
            and (arr.ndim in (1, 2) or all(c == 1 for c in arr.chunks[:-2]))
            and tuple(type(c) for c in codecs) == (BytesCodec, Crc32cCodec)
            and (arr.dtype.itemsize == 1 or codecs[0].endian.value == "little")):
        return None
    coords = tuple(s.start // c for s, c in zip(sl, arr.chunks, strict=True))
    if chunk_region(arr, coords) != sl:
        return None
    path = os.path.join(str(store.root), arr.path, arr.metadata.encode_chunk_key(coords))
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        return None
    full = np.empty(tuple(s.stop - s.start for s in sl), arr.dtype)
    out = full.reshape(full.shape[-2:]) if arr.ndim > 2 else full  # (one member: the
    # chunk is its 2-D tile)
    item, width = arr.dtype.itemsize, arr.chunks[-1]
    crc, used, short = 0, 0, False
    with f:
        rows = [out] if out.ndim == 1 or out.shape[1] == width else out
        pad = bytearray((width - out.shape[-1]) * item) if rows is out else bytearray()
        for row in rows:  # edge column chunk: each stored row is padded to the chunk width
            view = row.reshape(-1).view(np.uint8)  # (the checksum takes arrays, not views)
            got = _read_into(f, view)
            crc = google_crc32c.extend(crc, view[:got])
            got_pad = _read_into(f, pad) if pad else 0
            crc = google_crc32c.extend(crc, bytes(pad[:got_pad])) if pad else crc
            used += got + got_pad
            if got < view.size or got_pad < len(pad):
                short = True
                break
        rest = f.read()  # the bottom padding rows, then the checksum
    expected = math.prod(arr.chunks) * item - used
    if short or len(rest) != expected + 4:
        raise CorruptChunk(arr.path, coords, "unreadable (the chunk file has the wrong "
                           "length; truncated or damaged)")
    crc = google_crc32c.extend(crc, rest[:expected])
    if crc != int.from_bytes(rest[expected:], "little"):
        raise CorruptChunk(arr.path, coords, CHECKSUM_MISMATCH)
    return full


def _raise_first_bad(arr: zarr.Array, sl: tuple[slice, ...], missing_ok: bool) -> None:
    for coords in chunks_of(arr, sl):
        problem = check_chunk(arr, coords, missing_ok)
        if problem:
            raise CorruptChunk(arr.path, coords, problem)


def write_array(group: zarr.Group, name: str, a: np.ndarray, rows: int, *,
                checksum: bool = True, computed: bool = False,
                dims: tuple[str, ...] | None = None) -> zarr.Array:
    """Write ``a`` as ``group[name]`` chunked by ``rows`` rows (see :func:`create_array`)."""
    arr = create_array(group, name, a.shape, (rows, *a.shape[1:]), a.dtype,
                       checksum=checksum, computed=computed, overwrite=True, dims=dims)
    for r in range(0, a.shape[0], rows):  # chunk by chunk: a memory map is read once, lazily
        arr[r:r + rows] = a[r:r + rows]
    return arr


def write_dataset(url: str, x: np.ndarray, y: np.ndarray | None = None, *,
                  rows: int = 1024, options: dict | None = None,
                  checksum: bool = True) -> zarr.Group:
    """Store a dataset ``x`` (n, ...) and optional labels ``y`` (n, ...) as a Zarr group."""
    g = open_group(url, mode="w", options=options)
    x = np.asarray(x)
    write_array(g, "x", x, rows, checksum=checksum)
    meta = {"n": int(x.shape[0]), "x_shape": list(x.shape), "x_dtype": x.dtype.str,
            "x_sha256": sha256(x)}
    if y is not None:
        y = np.asarray(y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows, x has {x.shape[0]}")
        write_array(g, "y", y, rows, checksum=checksum)
        meta["y_sha256"] = sha256(y)
    g.attrs[ATTR] = meta
    return g


def read_dataset(url: str, options: dict | None = None) -> tuple[zarr.Array, zarr.Array | None]:
    """``(x, y)`` Zarr arrays of a dataset group (``y`` may be None)."""
    g = open_group(url, mode="r", options=options)
    return g["x"], (g["y"] if "y" in g else None)


def job_meta(group: zarr.Group) -> dict[str, Any]:
    return dict(group.attrs.get(ATTR, {}))


def set_meta(group: zarr.Group, **kw: Any) -> None:
    meta = job_meta(group)
    meta.update(kw)
    group.attrs[ATTR] = meta


def set_status(group: zarr.Group, status: str, **kw: Any) -> None:
    """A job's new ``status`` (and other metadata ``kw``) in its group's metadata and in the
    ``status`` attr of every array that carries one, then the consolidated metadata."""
    set_meta(group, status=str(status), **kw)
    for _, arr in group.arrays():
        if "status" in arr.attrs:
            arr.attrs["status"] = str(status)
    consolidate(group)


def axis_names(first: str, ndim: int) -> tuple[str, ...]:
    """``dimension_names`` of an input-shaped array: ``first`` for its rows, then ``axis1``
    ... (an image's H, W, C), shared by x1 and x2, whose trailing shapes agree."""
    return (first, *(f"axis{k}" for k in range(1, ndim)))


class Verified:
    """A Zarr array read through :func:`read` (checksums verified, a damaged chunk raised
    as :class:`CorruptChunk`, a chunk never written as NaN): what ``dask.array.from_array``
    wraps in :meth:`workers.gram.GramJob.to_dask`."""

    def __init__(self, arr: zarr.Array) -> None:
        self.arr, self.shape, self.dtype, self.ndim = arr, arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, sel: Any) -> np.ndarray:
        return read(self.arr, sel, missing_ok=True)


class Member:
    """Member ``index`` (a tuple: depth, and variant for a family's NTK with variants) of a
    family job's kernel array ``(D, n1, n2)`` or ``(D, V, n1, n2)``, read as an ``(n1, n2)``
    array: :func:`read` takes it wherever it takes a kernel array, and a damaged chunk is
    named with its full coordinates ``(*index, i, j)``."""

    def __init__(self, arr: zarr.Array, index: int | tuple[int, ...]) -> None:
        self.arr = arr
        self.index = tuple(int(k) for k in (index if isinstance(index, tuple) else (index,)))
        lead = len(self.index)
        self.shape, self.chunks = tuple(arr.shape[lead:]), tuple(arr.chunks[lead:])
        self.dtype, self.ndim, self.path, self.attrs = arr.dtype, 2, arr.path, arr.attrs


def member_axes(meta: dict, name: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The member axes before a job's kernel array ``name`` (``ntk`` / ``nngp``) and their
    dimension names: none for one network, ``(D,)`` [depth] for a family, ``(D, V)``
    [depth, variant] for the NTK of a family with variants (its NNGP has no variant axis:
    it does not depend on which layers are trained), and ``B`` [b_std] first with a bias
    grid."""
    return families.member_axes(meta.get("depths"), meta.get("variants"), meta.get("b_stds"),
                                name)


def _choice(values: list | None, value: Any, what: str, field: str) -> int | None:
    if values is None:
        if value is not None:
            raise InputError(f"this job has no {what}s", field=field)
        return None
    if value is None:
        raise InputError(f"this job is a family of {what}s {values}: name one", field=field)
    kinds = (int, float, np.integer, np.floating) if what == "b_std" else (int, np.integer)
    if isinstance(value, bool) or not isinstance(value, kinds) or value not in values:
        raise InputError(f"must be one of the family's {what}s {values}, got {value!r}",
                         field=field)
    return values.index(value)


def member_index(group: zarr.Group, depth: int | None, variant: int | None = None,
                 name: str = "ntk", b_std: float | None = None) -> tuple[int, ...] | None:
    """The member index of ``depth`` (and ``variant``, ``b_std``) in a family job's kernel
    array ``name`` (None for one network). ``variant`` is required for the NTK of a family
    with variants and ignored for its NNGP (the same for every variant); ``b_std`` is
    required for a family with a bias grid.

    Raises:
        InputError (field ``depth``, ``variant`` or ``b_std``): a family job without one, a
            value that is not a member, or one for a job that has no such axis.
    """
    meta = job_meta(group)
    depths, variants, b_stds = meta.get("depths"), meta.get("variants"), meta.get("b_stds")
    if depths is None and depth is not None:
        raise InputError("this job is one network, not a family of depths", field="depth")
    d = _choice(depths, depth, "depth", "depth")
    b = _choice(b_stds, b_std, "b_std", "b_std")
    head = () if b is None else (b,)
    if variants is not None and name != "ntk":
        return None if d is None else (*head, d)
    v = _choice(variants, variant, "variant", "variant")
    return None if d is None else (*head, d) if v is None else (*head, d, v)


def kernel_array(group: zarr.Group, name: str, depth: int | None = None,
                 variant: int | None = None, b_std: float | None = None
                 ) -> zarr.Array | Member:
    """The ``(n1, n2)`` kernel ``name`` of a job's group: the array itself, or member
    ``depth`` (and ``variant``, ``b_std``) of a family job (see :func:`member_index` for
    what is refused)."""
    index = member_index(group, depth, variant, name, b_std)
    arr = group[name]
    return arr if index is None else Member(arr, index)


def diagonal_of(group: zarr.Group, name: str, depth: int | None = None,
                variant: int | None = None, b_std: float | None = None) -> np.ndarray:
    """``self/x1/diag_<name>`` of a job's group, verified: ``(n,)``, a family's member
    ``depth`` (and ``variant``, ``b_std``)."""
    index = member_index(group, depth, variant, name, b_std)
    diag = read(group[f"self/x1/diag_{name}"])
    return diag if index is None else diag[(slice(None), *index)]


def remove_group(url: str, options: dict | None = None) -> None:
    """Delete the Zarr group at ``url`` and everything under it (missing is fine)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options(options) or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)

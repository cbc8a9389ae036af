"""Zarr v3 layout of datasets and kernel jobs, on any store a URL names.

A URL is a local path or any fsspec URL (``file://``, ``s3://``, ``memory://``, ...). Extra
fsspec options (credentials, endpoint) come from configuration, not code: the
``storage_options`` argument or the ``NTK_STORAGE_OPTIONS`` environment variable (JSON).

Kernel job group (one per job)::

    <url>/            attrs["ntkcompute"]: spec, dtype, get, shapes, tile, block, checksums,
                      code version, status, error
      x1, x2          inputs, chunked by tile rows (x2 absent for a symmetric job)
      ntk, nngp       (n1, n2), chunks exactly (tile, tile), uncompressed
      done            (T1, T2) uint8, one chunk per tile: 1 once the tile's chunks are written
      self/x1/...     per-input self statistics: var<j> (n, *plan.self_layers[j].self_shape),
                      diag_nngp, diag_ntk,
                      and done (T,) per row chunk

Dataset group: ``x`` (and ``y``) with attrs ``sha256``, as written by :func:`write_dataset`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
import zarr

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
    if _is_local(url):
        return zarr.open_group(url.removeprefix("file://"), mode=mode)
    return zarr.open_group(url, mode=mode, storage_options=opts)


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


def write_array(group: zarr.Group, name: str, a: np.ndarray, rows: int) -> zarr.Array:
    """Write ``a`` as ``group[name]`` chunked by ``rows`` rows, uncompressed."""
    arr = group.create_array(name, shape=a.shape, chunks=(rows, *a.shape[1:]), dtype=a.dtype,
                             fill_value=0, compressors=None, overwrite=True)
    for r in range(0, a.shape[0], rows):  # chunk by chunk: a memory map is read once, lazily
        arr[r:r + rows] = a[r:r + rows]
    return arr


def write_dataset(url: str, x: np.ndarray, y: np.ndarray | None = None, *,
                  rows: int = 1024, options: dict | None = None) -> zarr.Group:
    """Store a dataset ``x`` (n, ...) and optional labels ``y`` (n, ...) as a Zarr group."""
    g = open_group(url, mode="w", options=options)
    x = np.asarray(x)
    write_array(g, "x", x, rows)
    meta = {"n": int(x.shape[0]), "x_shape": list(x.shape), "x_dtype": x.dtype.str,
            "x_sha256": sha256(x)}
    if y is not None:
        y = np.asarray(y)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows, x has {x.shape[0]}")
        write_array(g, "y", y, rows)
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


def remove_group(url: str, options: dict | None = None) -> None:
    """Delete the Zarr group at ``url`` and everything under it (missing is fine)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options(options) or {}))
    if fs.exists(path):
        fs.rm(path, recursive=True)

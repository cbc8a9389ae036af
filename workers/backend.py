"""Gram matrices as tiled Dask jobs, for the estimators: ``NTKRegressor(backend=DaskBackend())``
runs every kernel an estimator needs on the cluster (the default client, or the one given),
through the Zarr store, and reads it back verified."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from typing import Any

import numpy as np
from distributed import Client

from .gram import compute_gram
from .jobs.layout import join
from .store import read


class DaskBackend:
    """``gram(arch, x1, x2=None, get)`` by :func:`workers.compute_gram`, and ``family(arch,
    x, depths, get)`` by one family job (``compute_gram(..., depths=...)``).

    Args:
        client: the Dask client (default: as every entry point finds one, see
            :func:`workers.cluster.get_client`).
        store: a directory or fsspec URL under which each kernel is kept as its own job
            (``<store>/<uuid>``); default a temporary directory removed after each read.
        tile, memory: as for :func:`workers.compute_gram`.
    """

    def __init__(self, client: Client | None = None, store: str | None = None,
                 tile: int | None = None, memory: int | None = None) -> None:
        self.client, self.store, self.tile, self.memory = client, store, tile, memory

    def __deepcopy__(self, memo: dict) -> DaskBackend:
        return self  # the cluster is shared by an estimator's clones

    def gram(self, arch: Any, x1: np.ndarray, x2: np.ndarray | None = None,
             get: str = "ntk") -> np.ndarray:
        """``(n1, n2)`` kernel ``get`` of ``arch`` between the rows of x1 and x2, computed
        in x1's dtype."""
        x1 = np.asarray(x1)
        return self._job(arch, x1, x2, get, dtype=x1.dtype)

    def family(self, arch: Any, x: np.ndarray, depths: list[int], get: str = "ntk",
               variants: list[int] | None = None,
               b_stds: list[float] | None = None) -> np.ndarray:
        """``(D, n, n)``: the train Gram ``get`` of every depth of a family, one family job
        (float64); with ``variants`` the NTK's ``(D, V, n, n)``, with ``b_stds`` ``B``
        first."""
        return self._job(arch, np.asarray(x), None, get, depths=list(depths),
                         variants=None if variants is None else list(variants),
                         b_stds=None if b_stds is None else list(b_stds))

    def _job(self, arch: Any, x1: np.ndarray, x2: np.ndarray | None, get: str,
             **kw: Any) -> np.ndarray:
        root = self.store or tempfile.mkdtemp(prefix="ntk-backend-")
        try:
            if self.memory is not None:
                kw["memory"] = self.memory
            job = compute_gram(arch, x1, x2, store=join(root, uuid.uuid4().hex), get=get,
                               tile=self.tile, client=self.client, **kw)
            return read(job.wait().arrays[get])
        finally:
            if self.store is None:
                shutil.rmtree(root, ignore_errors=True)

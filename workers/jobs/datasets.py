"""A service's datasets and its store probe, laid out by :mod:`workers.jobs.layout`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..store import open_group, write_dataset
from .layout import dataset_url, probe_url

#: Rows per chunk of a stored dataset: about this many bytes per chunk.
CHUNK_BYTES = 16 << 20


def store_dataset(store: str, dataset_id: str, x: np.ndarray, y: np.ndarray | None
                  ) -> tuple[str, dict[str, Any]]:
    """Write x (n, ...) and y into the store in ~16 MiB row chunks: ``(url, metadata)``."""
    url = dataset_url(store, dataset_id)
    rows = max(1, min(x.shape[0], CHUNK_BYTES // max(1, x[:1].nbytes)))
    g = write_dataset(url, x, y, rows=rows)
    return url, g.attrs["ntkcompute"]


def probe_store(store: str) -> None:
    """Write and close a scratch group: raises what the store raises if it is not writable."""
    g = open_group(probe_url(store), mode="w")
    g.attrs["t"] = time.time()

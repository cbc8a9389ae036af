"""Dask side of ntkcompute: tiled Gram matrices into Zarr, resumable tile by tile."""

from .gram import GramJob, GramJobError, compute_gram
from .store import read_dataset, write_dataset

__all__ = ["GramJob", "GramJobError", "compute_gram", "read_dataset", "write_dataset"]

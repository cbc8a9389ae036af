"""Dask side of ntkcompute: tiled Gram matrices into Zarr, resumable tile by tile."""

from .gram import GramJob, GramJobError, compute_gram
from .operator import DistributedKernel
from .solve import SolveResult, solve
from .store import read_dataset, write_dataset

__all__ = ["DistributedKernel", "GramJob", "GramJobError", "SolveResult", "compute_gram",
           "read_dataset", "solve", "write_dataset"]

"""Dask side of ntkcompute: tiled Gram matrices into Zarr, resumable tile by tile."""

from .backend import DaskBackend
from .features import compute_features, plan_features, solve_features
from .gram import GramJob, GramJobError, JobPlan, compute_gram, plan_job
from .operator import DistributedKernel
from .solve import SolveResult, select_by_validation, select_member, solve
from .store import CorruptChunk, read_dataset, write_dataset
from .verify import VerifyReport, verify_job

__all__ = ["CorruptChunk", "DaskBackend", "DistributedKernel", "GramJob", "GramJobError", "JobPlan",
           "SolveResult", "VerifyReport", "compute_features", "compute_gram", "plan_features",
           "plan_job", "read_dataset", "select_by_validation", "select_member", "solve",
           "solve_features", "verify_job", "write_dataset"]

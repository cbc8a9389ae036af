"""Request and response bodies of the REST API (pydantic; they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ntkcompute.lifecycle import Status
from ntkcompute.spec import Architecture

Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Labels = list[int] | list[Finite] | list[list[Finite]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    """Every 4xx/5xx body, an RFC 9457 problem (``application/problem+json``) with our
    ``field``: ``detail`` is ``"<field>: <reason>"``."""

    type: str = Field("about:blank", description="the kind of problem: its status's")
    title: str = Field(description="the status's phrase")
    status: int
    detail: str = Field(description="<field>: <reason>")
    field: str | None = Field(None, description="the request field at fault, if one is")
    instance: str | None = Field(None, description="the path asked")
    errors: list[dict] | None = Field(None, description="a 422 failing several validations: "
                                      "each {field, message}")


class DatasetOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "d-0123456789abcdef", "n": 2000, "shape": [2000, 32, 32, 3],
        "dtype": "float32", "y_shape": [2000], "sha256": "9f86d08188" + "0" * 54,
        "x_sha256": "2c26b46b68" + "0" * 54, "created": "2026-12-04T18:19:58.000000Z"}]})

    id: str
    n: int
    shape: list[int] = Field(description="shape of x")
    dtype: str = Field(description="dtype of x as stored")
    y_shape: list[int] | None = None
    sha256: str = Field(description="SHA-256 of the uploaded body (as `sha256sum` prints it)")
    x_sha256: str = Field(description="SHA-256 of x's dtype, shape and C-order bytes")
    created: datetime


class Preprocess(_Body):
    """Input transforms of a kernel job, fit on the train rows and applied to every input
    before the kernel (:mod:`ntkcompute.preprocess`): ZCA first, then standardisation."""

    zca: float | None = Field(None, ge=0, le=1e6, allow_inf_nan=False, description=(
        "whole-input ZCA whitening with this regularisation strength (ε = strength · "
        "mean eigenvalue; Shankar et al. 2020); at most 2^14 input dimensions"))
    standardize: bool = Field(False, description="per-channel standardisation (Arora et "
                              "al. 2019)")
    flip: bool = Field(False, description=(
        "store the flip-symmetrised kernel (K(x, x') + K(x, flip x')) / 2, horizontal-flip "
        "augmentation without a larger Gram (images or sequences; each tile also computes "
        "its flipped blocks)"))


_ARCH = {"layers": [
    {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": 1.414},
    {"type": "relu"}, {"type": "global_avg_pool"}, {"type": "dense", "W_std": 1.0}]}
_TIMES = {"created": "2026-12-04T18:20:00.125000Z", "started": "2026-12-04T18:20:00.500000Z",
          "finished": "2026-12-04T18:20:41.250000Z"}


class KernelRequest(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"train": "d-0123456789abcdef", "test": "d-fedcba9876543210", "arch": _ARCH,
         "kernels": ["ntk", "nngp"], "dtype": "float64"},
        {"train": "d-0123456789abcdef", "kernels": ["ntk"], "depths": [1, 2, 3],
         "arch": {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial",
                  "layers": [{"type": "dense"}, {"type": "relu"}]}},
                  {"type": "dense"}]}}]})

    train: str = Field(description="dataset id: the kernel's rows and columns")
    test: str | None = Field(None, description="dataset id: extra rows (test x train)")
    arch: Architecture
    kernels: list[Literal["ntk", "nngp"]] = Field(["ntk", "nngp"], min_length=1,
                                                  max_length=2)
    dtype: Literal["float32", "float64"] | None = Field(
        None, description="default: the dataset's float dtype, else float64")
    tile: int | None = Field(None, ge=1, le=1 << 20, description="tile side (default auto)")
    method: Literal["exact", "features"] = Field(
        "exact", description="exact Gram matrices, or NTK random features (ReLU nets with "
        "dense, conv, pooling and flatten layers; Zandieh et al. 2021): (n, D) feature "
        "arrays, D ~ 2m, instead of n x n kernels")
    m: int | None = Field(None, ge=1, le=1 << 16, description="features per layer "
                          "(method 'features')")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random-feature seed")
    depths: list[Annotated[int, Field(ge=1, le=1000)]] | None = Field(
        None, min_length=1, max_length=64, description=(
            "a kernel family (method 'exact'): arch has one top-level repeat, and the job "
            "computes the kernels of every listed repeat count (increasing) in one pass; "
            "blocks and solves then name a depth"))
    variants: list[Annotated[int, Field(ge=0, le=1000)]] | None = Field(
        None, min_length=1, max_length=64, description=(
            "with depths: the NTK of every member also with its stem and first v repeats "
            "fixed, for each listed v (increasing; 0: every layer trained; Arora et al. "
            "2020's fixed bottom layers), depths x variants <= 64 kernels; blocks and solves "
            "of the NTK then name a variant (the NNGP does not depend on it)"))
    b_stds: list[Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]] | None = Field(
        None, min_length=1, max_length=8, description=(
            "with depths: a bias grid, every member for each value of every layer's b_std "
            "(increasing; one family pass per value on a shared data pass), b_stds x depths "
            "x variants <= 64 kernels; blocks and solves then name a b_std"))
    preprocess: Preprocess | None = Field(None, description=(
        "input transforms fit on the train rows (method 'exact')"))


_KERNEL = {"id": "k-0123456789abcdef", "status": "succeeded", "train": "d-0123456789abcdef",
           "test": "d-fedcba9876543210", "kernels": ["ntk", "nngp"], "dtype": "float64",
           "tile": 512, "shape": {"train": [2000, 2000], "test": [1000, 2000]},
           "tiles_done": 18, "tiles_total": 18, "tiles_reused": 0, "eta_seconds": None,
           "error": None, **_TIMES, "method": "exact", "m": None, "seed": 0,
           "depths": None, "variants": None, "b_stds": None, "preprocess": None,
           "dashboard_url": "http://127.0.0.1:8787/status", "revision": 4}


class KernelSummary(BaseModel):
    """A kernel job as a list answers it (``GET /v1/kernels/{id}`` adds ``arch``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_KERNEL]})

    id: str
    status: Status
    train: str
    test: str | None = None
    kernels: list[str]
    dtype: str
    tile: int
    shape: dict[str, list[int]] = Field(description="part -> (rows, cols)")
    tiles_done: int
    tiles_total: int
    tiles_reused: int = Field(description="tiles found done in the store at the last start")
    eta_seconds: float | None = None
    error: str | None = None
    created: datetime = Field(description="ISO 8601, UTC")
    started: datetime | None = None
    finished: datetime | None = None
    method: str = "exact"
    m: int | None = None
    seed: int = 0
    depths: list[int] | None = Field(None, description="a family job's member depths")
    variants: list[int] | None = Field(None, description="a family job's NTK variants")
    b_stds: list[float] | None = Field(None, description="a family job's bias grid")
    preprocess: dict | None = Field(None, description="the input transforms")
    dashboard_url: str | None = Field(None, description=(
        "the Dask dashboard of the cluster the job runs on (the scheduler's status page)"))
    revision: int = Field(0, description="committed changes of the job (the id of its "
                          "latest event)")


class KernelOut(KernelSummary):
    """A kernel job: its summary and its architecture as planned."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**_KERNEL, "arch": _ARCH}]})

    arch: dict


class Analyses(_Body):
    times: list[NonNegative] | None = Field(None, max_length=1000, description=(
        "gradient-flow times t: test metrics of the network trained for t (direct solver)"))
    lr: float = Field(1.0, gt=0, allow_inf_nan=False)
    bound: bool = Field(False, description="Arora et al.'s sqrt(2 y'K^-1 y / n)")
    spectrum: int = Field(0, ge=0, le=1000, description="top-k eigenvalues of K")
    min_eigenvalue: bool = Field(False, description=(
        "λmin(K): exact (direct solver) or a Lanczos estimate over the stored kernel (cg)"))
    variance: bool = Field(False, description=(
        "predictive variance of every test output (direct solver, a job with a test set "
        "and the NNGP): the NNGP posterior's (kind nngp) or the gradient-flow ensemble's "
        "(kind ntk), per λ at t = ∞ (GET /v1/solves/{id}/variances) and at each of times"))


class Select(_Body):
    """Choose the member, kernel and λ by closed-form leave-one-out or GCV on the train
    rows (one eigendecomposition per member), then solve with the choice."""

    criterion: Literal["accuracy", "loo", "gcv", "validation"] | None = Field(
        None, description=(
            "leave-one-out accuracy (class labels; the default for them), mean squared "
            "leave-one-out residual (the default for real targets), GCV, or 'validation': "
            "each candidate fit by distributed CG on the rows kept and scored on a held-out "
            "split (any solver, any n: for kernels past NTK_MAX_DIRECT_N)"))
    validation: float = Field(0.2, gt=0, le=0.5, allow_inf_nan=False, description=(
        "criterion 'validation': the fraction held out (of each class for class labels)"))
    seed: int = Field(0, ge=0, le=2**32 - 1, description="draws the validation split")
    kinds: list[Literal["ntk", "nngp"]] | None = Field(
        None, min_length=1, max_length=2, description="kernels to score (default: kind)")
    depths: list[int] | None = Field(None, min_length=1, max_length=64, description=(
        "members of a family job to score (default: every member)"))
    variants: list[int] | None = Field(None, min_length=1, max_length=64, description=(
        "NTK variants of a family job with variants to score (default: every one)"))
    b_stds: list[float] | None = Field(None, min_length=1, max_length=8, description=(
        "values of a family job's bias grid to score (default: every one)"))
    times: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        None, min_length=1, max_length=1000, description=(
            "select gradient-flow time t instead of λ (the net trained for t; relative "
            "times are in units of 1 / (lr · mean diag K)); the solve is then that net's "
            "(coefficients K⁻¹(I - e^(-ηKt)) y), and lambdas is not used"))
    lr: float = Field(1.0, gt=0, allow_inf_nan=False, description="learning rate η of times")


class SolveRequest(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"kernel": "k-0123456789abcdef", "lambdas": [1e-4, 1e-2], "relative": True,
         "solver": "cg", "kind": "ntk"},
        {"kernel": "k-0123456789abcdef", "solver": "direct",
         "select": {"criterion": "loo", "kinds": ["ntk", "nngp"]},
         "analyses": {"spectrum": 10, "bound": True}}]})

    kernel: str = Field(description="kernel job id (must have succeeded)")
    labels: Labels | None = Field(
        None, description="(n,) integer classes or (n,)/(n, c) targets; default: the train "
        "dataset's y")
    test_labels: Labels | None = Field(
        None, description="labels of the test rows; default: the test dataset's y")
    lambdas: list[NonNegative] = Field([0.0], min_length=1, description=(
        "ridge λ values, each >= 0, absolute unless relative; at most NTK_MAX_LAMBDAS"))
    relative: bool = Field(False, description="λ values are multiples of mean(diag K) "
                           "(scale-free, as in Arora et al. 2019) instead of absolute")
    solver: Literal["cg", "direct"] = "cg"
    kind: Literal["ntk", "nngp"] = "ntk"
    tol: float = Field(1e-8, gt=0, lt=1, allow_inf_nan=False)
    maxiter: int = Field(1000, ge=1, le=100_000)
    preconditioner: Literal["nystrom", "randomized", "jacobi", "none"] = "nystrom"
    rank: int = Field(100, ge=1, le=10_000)
    analyses: Analyses = Field(default_factory=Analyses)
    depth: int | None = Field(None, description="the member of a family job to solve on "
                              "(required for a family, unless select)")
    variant: int | None = Field(None, description="with depth: the NTK variant of a family "
                                "job with variants (required for its NTK, unless select)")
    b_std: float | None = Field(None, allow_inf_nan=False, description=(
        "with depth: the value of a family job's bias grid (required for one, unless "
        "select)"))
    select: Select | None = Field(None, description=(
        "choose depth, variant, kernel and λ among the candidates (solver 'direct'; lambdas "
        "is the "
        "grid, default 15 relative values from 1e-6 to 10); the choice and the whole score "
        "table are in analyses.selection"))


_SOLVE = {"id": "s-0123456789abcdef", "kernel": "k-0123456789abcdef", "status": "succeeded",
          "error": None, "params": {"lambdas": [0.01], "relative": True, "solver": "cg",
                                    "kind": "ntk"},
          "metrics": {"per_lambda": [{"lambda": 0.01, "iterations": 41, "seconds": 0.8,
                                      "accuracy": 0.47}],
                      "best": {"lambda": 0.01, "accuracy": 0.47}},
          "created": _TIMES["created"], "finished": _TIMES["finished"],
          "dashboard_url": "http://127.0.0.1:8787/status", "revision": 3}


class SolveSummary(BaseModel):
    """A solve as a list answers it: its parameters without the label arrays, its metrics
    without the analyses (``GET /v1/solves/{id}`` has both)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SOLVE]})

    id: str
    kernel: str
    status: Status
    error: str | None = None
    params: dict
    metrics: dict | None = Field(None, description="per λ: iterations, seconds, accuracy/mse")
    created: datetime = Field(description="ISO 8601, UTC")
    finished: datetime | None = None
    dashboard_url: str | None = Field(None, description="the Dask dashboard of its cluster")
    revision: int = Field(0, description="committed changes of the solve (the id of its "
                          "latest event)")


class SolveOut(SolveSummary):
    """A solve: its parameters (labels included), metrics and analyses."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {**_SOLVE, "analyses": {"bound": 0.42}}]})

    analyses: dict | None = None


class Preview(BaseModel):
    """A stored kernel at a glance, for the web page: its leading ``block x block`` block as a
    ``size x size`` heatmap (block averages) and that block's eigenvalues."""

    kind: str
    n: int = Field(description="train rows of the job")
    block: int = Field(description="side m of the leading block K[:m, :m] shown")
    heatmap: list[list[float]] = Field(description="size x size averages of K[:m, :m]")
    eigenvalues: list[float] = Field(description="of K[:m, :m], descending")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
    workers: int | None = Field(None, description="workers the scheduler has")
    dashboard_url: str | None = Field(None, description=(
        "the Dask dashboard of the service's cluster (/readyz only)"))


class VerifyOut(BaseModel):
    """Every stored chunk of a kernel job read back through its checksum."""

    ok: bool = Field(description="no damaged chunk, and no lost marker in a finished job")
    status: Status
    parts: dict[str, dict] = Field(description=(
        "part (train, test) -> {ok, chunks_checked, bad: [{array, chunk, tile, problem}], "
        "pending: [tiles not marked done], seconds}"))


class Limits(BaseModel):
    """The service's configured limits (exceeding one is a 408, 413, 422 or 429), each
    checked before the work it bounds."""

    max_upload_bytes: int
    max_n: int
    max_block_bytes: int
    max_jobs_per_key: int
    max_dataset_bytes: int
    max_features: int
    max_compression_ratio: float
    max_json_bytes: int
    body_timeout: float
    max_classes: int
    max_lambdas: int
    max_solve_bytes: int
    max_direct_n: int = Field(description="most train rows of a direct solve or a selection")
    max_layers: int = Field(description="layers an architecture may expand to (repeat "
                            "multiplies)")
    max_nesting: int = Field(description="serial/parallel/repeat nesting depth")

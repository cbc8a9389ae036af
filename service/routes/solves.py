"""``/v1/solves``: kernel regression on a finished kernel job (one solve per λ), its
coefficients and test predictions as ``.npy``. A solve belongs to the key that asked."""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response

from workers.solve import LABEL_BOUND
from workers.store import CorruptChunk, open_group, read, read_dataset

from ..config import Settings
from ..db import Database, Dataset, Job, Solve
from ..deps import DB, Owner, RunnerDep, SettingsDep
from ..errors import ApiError
from ..schemas import SolveOut, SolveRequest
from .common import (
    ERRORS,
    Resource,
    add_list_get,
    admit,
    join,
    npy,
    npy_doc,
    redacted,
    span,
)
from .kernels import KERNELS

router = APIRouter(prefix="/v1/solves", tags=["solves"], responses=ERRORS)

LamIndex = Annotated[int | None, Query(ge=0, le=1000, description=(
    "which λ (index into lambdas); default all, stacked on axis 0"))]
SolveRows = Annotated[str | None, Query(max_length=40, description=(
    "a:b, rows of the coefficients (train rows, or features) / predictions (test rows)"))]
#: Most learning-curve values (times x eigendirections) one solve reports.
MAX_CURVE_VALUES = 100_000


def solve_out(r: Solve) -> SolveOut:
    """A solve as answered."""
    return SolveOut(id=r.id, kernel=r.kernel, status=r.status, error=redacted(r.error),
                    params=r.params,
                    metrics=r.metrics, analyses=r.analyses, created=r.created,
                    finished=r.finished)


SOLVES = Resource(Solve, "solve", solve_out)


@router.post("", status_code=202, response_model=SolveOut)
def submit_solve(req: SolveRequest, response: Response, key: Owner, db: DB,
                 runner: RunnerDep, settings: SettingsDep) -> SolveOut:
    """Kernel regression on a finished kernel job: one CG (or direct) solve per λ,
    predictions and metrics on its test set, optional analyses."""
    job = KERNELS.get(db, req.kernel, key)
    if job.status != "succeeded":
        raise ApiError(409, "kernel", f"kernel job is {job.status}, not succeeded")
    if req.kind not in job.kernels:
        raise ApiError(422, "kind", f"this job computed {job.kernels}, not {req.kind!r}")
    with db.session() as s:
        train, test = s.get(Dataset, job.train), s.get(Dataset, job.test or "")
    if len(req.lambdas) > settings.max_lambdas:
        raise ApiError(422, "lambdas", f"{len(req.lambdas)} values, more than the limit "
                       f"of {settings.max_lambdas} (NTK_MAX_LAMBDAS)")
    outputs = _check_labels(req.labels, train, "labels", job, settings.max_classes,
                            required=True)
    if job.test:
        _check_labels(req.test_labels, test, "test_labels", job, settings.max_classes,
                      required=False)
    elif req.test_labels is not None:
        raise ApiError(422, "test_labels", "the kernel job has no test set")
    rows = _coef_rows(job, req.kind) + (job.n_test or 0)
    stored = len(req.lambdas) * rows * outputs * 8
    if stored > settings.max_solve_bytes:
        raise ApiError(422, "labels", f"the solve would store {stored} bytes (λ count "
                       f"{len(req.lambdas)} x {rows} rows x {outputs} outputs x 8), more "
                       f"than the limit of {settings.max_solve_bytes} (NTK_MAX_SOLVE_BYTES)"
                       "; solve fewer λ or outputs at a time")
    curves = len(req.analyses.times or ()) * req.analyses.spectrum
    if curves > MAX_CURVE_VALUES:
        raise ApiError(422, "analyses.times", f"times x spectrum = {curves} learning-curve "
                       f"values, more than {MAX_CURVE_VALUES}")
    if job.method == "features" and (req.analyses.times or req.analyses.bound
                                     or req.analyses.spectrum):
        raise ApiError(422, "analyses", "not available for a features job (its solve is "
                       "ridge regression on the features)")
    if req.analyses.spectrum >= job.n_train:
        raise ApiError(422, "analyses.spectrum", f"must be < n = {job.n_train}")
    if req.analyses.times and (req.solver != "direct" or not job.test):
        raise ApiError(422, "analyses.times", "gradient-flow times need solver 'direct' "
                       "and a kernel job with a test set")
    sid = f"s-{uuid.uuid4().hex[:16]}"
    row = Solve(id=sid, owner=key, kernel=job.id, url=join(job.url, "solves", sid),
                params=req.model_dump(mode="json"), status="queued", created=time.time())
    out = solve_out(row)
    admit(db, settings, key, lambda s: s.add(row))
    runner.submit_solve(sid)
    response.headers["Location"] = f"/v1/solves/{sid}"
    return out


add_list_get(router, SOLVES, SolveOut, "solve")


@router.get("/{solve_id}/coefficients", responses=npy_doc("(L, n, c) or (n, c)"))
def coefficients(solve_id: str, key: Owner, db: DB, settings: SettingsDep,
                 lambda_index: LamIndex = None, rows: SolveRows = None) -> Response:
    """Dual coefficients α, ``(K + λI) α = Y``, as ``.npy``."""
    return _answer_array(db, settings, solve_id, key, "coefficients", lambda_index, rows)


@router.get("/{solve_id}/predictions", responses=npy_doc("(L, m, c) or (m, c)"))
def predictions(solve_id: str, key: Owner, db: DB, settings: SettingsDep,
                lambda_index: LamIndex = None, rows: SolveRows = None) -> Response:
    """Test predictions ``K(test, train) α`` as ``.npy``."""
    return _answer_array(db, settings, solve_id, key, "predictions", lambda_index, rows)


def _answer_array(db: Database, settings: Settings, solve_id: str, key: str, name: str,
                  lam: int | None, rows: str | None) -> Response:
    """The stored array ``name`` of the key's solve ``solve_id`` as ``.npy``."""
    return npy(_solve_array(SOLVES.get(db, solve_id, key), name, lam, rows, settings))


# math and store layout (to move to workers/jobs/) -------------------------------------
def _coef_rows(job: Job, kind: str) -> int:
    """Rows of one λ's coefficients: n, or a features job's feature count D."""
    if job.method != "features":
        return job.n_train
    meta = open_group(join(job.url, "train"), mode="r").attrs.get("ntkcompute", {})
    return int(meta.get("dims", {}).get(kind, job.n_train))


def _solve_array(row: Solve, name: str, lam: int | None, rows: str | None,
                 settings: Settings) -> np.ndarray:
    """The stored array ``name`` of a solve: every λ (or the one at ``lam``), ``rows``."""
    if row.status != "succeeded":
        raise ApiError(409, "solve_id", f"solve is {row.status}")
    g = open_group(row.url, mode="r")
    if name not in g:
        raise ApiError(404, name, "this solve has no test set, so no predictions")
    arr = g[name]
    if lam is not None and lam >= arr.shape[0]:
        raise ApiError(422, "lambda_index", f"must be < {arr.shape[0]} (the λ count)")
    lams = slice(0, arr.shape[0]) if lam is None else slice(lam, lam + 1)
    r = span(rows, arr.shape[1], "rows")
    nbytes = (lams.stop - lams.start) * (r.stop - r.start) * math.prod(arr.shape[2:]) * 8
    if nbytes > settings.max_block_bytes:
        raise ApiError(422, "lambda_index" if lam is None else "rows", f"{nbytes} bytes "
                       f"exceed the limit of {settings.max_block_bytes}; ask for one λ "
                       "(lambda_index) or fewer rows at a time")
    try:
        a = read(arr, (lams, r))
    except CorruptChunk as e:
        raise ApiError(409, "solve_id", f"{name} chunk {list(e.chunk)} is damaged: "
                       f"{e.problem}; run the solve again") from None
    return a if lam is None else a[0]


def _check_labels(given: list | None, ds: Dataset | None, field: str, job: Job,
                  max_classes: int, required: bool) -> int:
    """422 unless the labels (given, else the dataset's y) fit the kernel's rows, name at
    most ``max_classes`` classes and stay within ±``LABEL_BOUND``; returns the number of
    outputs (classes, or target columns). A dataset's (n, c) y is judged by its shape."""
    n = job.n_train if field == "labels" else job.n_test
    if given is None:
        if ds is None or ds.y_shape is None:
            if required:
                raise ApiError(422, field, "not given, and the dataset has no y")
            return 0
        if len(ds.y_shape) == 2:
            return int(ds.y_shape[1])
        y = read(read_dataset(ds.url)[1])
    else:
        try:
            y = np.asarray(given)
        except ValueError as e:
            raise ApiError(422, field, f"not a rectangular array: {e}") from None
    if y.ndim not in (1, 2) or y.shape[0] != n or (y.ndim == 2 and y.shape[1] == 0):
        raise ApiError(422, field, f"must be (n,) or (n, c) with n = {n}, got shape "
                       f"{list(y.shape)}")
    if y.dtype.kind not in "fiu":
        raise ApiError(422, field, f"must be numbers, got {y.dtype}")
    if y.dtype.kind in "iu" and y.ndim == 1:
        if y.min() < 0 or y.max() >= max_classes:
            raise ApiError(422, field, f"class labels must be in [0, {max_classes}) "
                           f"(NTK_MAX_CLASSES), got [{y.min()}, {y.max()}]")
        return int(y.max()) + 1
    if np.abs(y).max() > LABEL_BOUND:
        raise ApiError(422, field, f"targets must be within ±{LABEL_BOUND:g} (their squares "
                       "must not overflow); rescale them")
    return 1 if y.ndim == 1 else int(y.shape[1])

"""``/v1/solves``: kernel regression on a finished kernel job (one solve per λ), its
coefficients and test predictions as ``.npy``. A solve belongs to the key that asked."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Response

from ntkcompute.selection import DEFAULT_LAMBDAS
from workers.jobs import Status, layout, solves
from workers.solve import LABEL_BOUND

from .. import logs
from ..config import Settings
from ..db import Database, Dataset, Job, Solve, spec_of
from ..deps import DB, Owner, RunnerDep, SettingsDep
from ..errors import ApiError
from ..schemas import SolveOut, SolveRequest, SolveSummary
from .common import (
    LOCATION,
    Resource,
    add_events,
    add_list_get,
    admit,
    iso,
    npy,
    npy_doc,
    problems,
    redacted,
    store_errors,
)
from .kernels import KERNELS

router = APIRouter(prefix="/v1/solves", tags=["solves"])

LamIndex = Annotated[int | None, Query(ge=0, le=1000, description=(
    "which λ (index into lambdas); default all, stacked on axis 0"))]
SolveRows = Annotated[str | None, Query(max_length=40, description=(
    "a:b, rows of the coefficients (train rows, or features) / predictions (test rows)"))]
#: Most learning-curve values (times x eigendirections) one solve reports.
MAX_CURVE_VALUES = 100_000
#: Most candidates (λ x kinds x depths) a selection scores: its table is stored with the
#: solve's analyses.
MAX_SELECT_CANDIDATES = 4096


def solve_out(r: Solve, dashboard: str | None) -> SolveOut:
    """A solve as answered."""
    return SolveOut(**_fields(r, dashboard), params=r.params, analyses=r.analyses)


def solve_summary(r: Solve, dashboard: str | None) -> SolveSummary:
    """A solve as a list answers it: no label arrays, no analyses."""
    params = {k: v for k, v in r.params.items() if k not in ("labels", "test_labels")}
    return SolveSummary(**_fields(r, dashboard), params=params)


def _fields(r: Solve, dashboard: str | None) -> dict:
    return dict(id=r.id, kernel=r.kernel, status=r.status, error=redacted(r.error),
                metrics=r.metrics, created=iso(r.created), finished=iso(r.finished),
                dashboard_url=dashboard, revision=r.revision or 0)


SOLVES = Resource(Solve, "solve", solve_out, solve_summary)


@router.post("", status_code=202, response_model=SolveOut, operation_id="submit_solve",
             responses={202: {"headers": {"Location": LOCATION}},
                        **problems(400, 401, 404, 408, 409, 413, 422, 429)})
def submit_solve(req: SolveRequest, response: Response, key: Owner, db: DB,
                 runner: RunnerDep, settings: SettingsDep) -> SolveOut:
    """Kernel regression on a finished kernel job: one CG (or direct) solve per λ,
    predictions and metrics on its test set, optional analyses."""
    job = KERNELS.get(db, req.kernel, key)
    if job.status != Status.SUCCEEDED:
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
    spec = spec_of(job, train, test)
    params = req.model_dump(mode="json")
    if req.select is not None and "lambdas" not in req.model_fields_set:
        params["lambdas"] = list(DEFAULT_LAMBDAS)
    if req.select is not None and "relative" not in req.model_fields_set:
        params["relative"] = True  # a selection's grid (λ or t) is relative by default
    with store_errors():
        spec.kind.check_solve(spec, params)
    if req.solver == "direct" and job.n_train > settings.max_direct_n:
        raise ApiError(422, "solver", f"a direct solve holds the n x n kernel and its "
                       f"eigenvectors in memory; n = {job.n_train} is more than the limit of "
                       f"{settings.max_direct_n} (NTK_MAX_DIRECT_N): use solver 'cg'")
    if req.select is not None:
        grid = req.select.times or params["lambdas"]
        depths = len(req.select.depths or job.depths or [None])
        variants = len(req.select.variants or job.variants or [None])
        biases = len(req.select.b_stds or job.b_stds or [None])
        count = len(grid) * biases * sum(depths * (variants if kind == "ntk" else 1)
                                         for kind in req.select.kinds or [req.kind])
        if count > MAX_SELECT_CANDIDATES:
            raise ApiError(422, "select", f"{count} candidates (λ or t x kernels x b_stds x "
                           f"depths x variants), more than {MAX_SELECT_CANDIDATES}")
    rows = spec.kind.coefficient_rows(spec, req.kind) + (job.n_test or 0)
    kept = 1 if req.select is not None else len(req.lambdas)  # a selection solves one λ
    stored = kept * rows * outputs * 8
    if stored > settings.max_solve_bytes:
        raise ApiError(422, "labels", f"the solve would store {stored} bytes (λ count "
                       f"{kept} x {rows} rows x {outputs} outputs x 8), more "
                       f"than the limit of {settings.max_solve_bytes} (NTK_MAX_SOLVE_BYTES)"
                       "; solve fewer λ or outputs at a time")
    curves = len(req.analyses.times or ()) * req.analyses.spectrum
    if curves > MAX_CURVE_VALUES:
        raise ApiError(422, "analyses.times", f"times x spectrum = {curves} learning-curve "
                       f"values, more than {MAX_CURVE_VALUES}")
    if req.analyses.spectrum >= job.n_train:
        raise ApiError(422, "analyses.spectrum", f"must be < n = {job.n_train}")
    if req.analyses.times and (req.solver != "direct" or not job.test):
        raise ApiError(422, "analyses.times", "gradient-flow times need solver 'direct' "
                       "and a kernel job with a test set")
    if req.analyses.variance and (req.solver != "direct" or not job.test
                                  or "nngp" not in job.kernels):
        raise ApiError(422, "analyses.variance", "predictive variances need solver "
                       "'direct', a kernel job with a test set, and 'nngp' among its kernels")
    sid = f"s-{uuid.uuid4().hex[:16]}"
    row = Solve(id=sid, owner=key, kernel=job.id, url=layout.solve_url(job.url, sid),
                params=params, status=Status.QUEUED,
                created=time.time())
    out = solve_out(row, runner.dashboard_url)
    admit(db, settings, key, lambda s: s.add(row))
    logs.event("submitted", "solve", sid, key=key, n_train=job.n_train, method=req.solver)
    runner.submit_solve(sid)
    response.headers["Location"] = f"/v1/solves/{sid}"
    return out


add_list_get(router, SOLVES, SolveSummary, SolveOut, "solve")


add_events(router, SOLVES, "solve", description=(
    "The solve's status as Server-Sent Events, until its final state (event `end`)."))


@router.get("/{solve_id}/coefficients", operation_id="get_coefficients",
            responses={**npy_doc("(L, n, c) or (n, c)"), **problems(401, 404, 409, 422)})
def coefficients(solve_id: str, key: Owner, db: DB, settings: SettingsDep,
                 lambda_index: LamIndex = None, rows: SolveRows = None) -> Response:
    """Dual coefficients α, ``(K + λI) α = Y``, as ``.npy``."""
    return _answer_array(db, settings, solve_id, key, "coefficients", lambda_index, rows)


@router.get("/{solve_id}/predictions", operation_id="get_predictions",
            responses={**npy_doc("(L, m, c) or (m, c)"), **problems(401, 404, 409, 422)})
def predictions(solve_id: str, key: Owner, db: DB, settings: SettingsDep,
                lambda_index: LamIndex = None, rows: SolveRows = None) -> Response:
    """Test predictions ``K(test, train) α`` as ``.npy``."""
    return _answer_array(db, settings, solve_id, key, "predictions", lambda_index, rows)


@router.get("/{solve_id}/variances", operation_id="get_variances",
            responses={**npy_doc("(L, m)"), **problems(401, 404, 409, 422)})
def variances(solve_id: str, key: Owner, db: DB, settings: SettingsDep,
              lambda_index: LamIndex = None, rows: SolveRows = None) -> Response:
    """Predictive variances of the test outputs (``analyses.variance``) as ``.npy``."""
    return _answer_array(db, settings, solve_id, key, "variances", lambda_index, rows)


def _answer_array(db: Database, settings: Settings, solve_id: str, key: str, name: str,
                  lam: int | None, rows: str | None) -> Response:
    """The stored array ``name`` of the key's solve ``solve_id`` as ``.npy``."""
    row = SOLVES.get(db, solve_id, key)
    if row.status != Status.SUCCEEDED:
        raise ApiError(409, "solve_id", f"solve is {row.status}")
    with store_errors():
        return npy(solves.read_array(row.url, name, lam, rows, settings.max_block_bytes))


# bounds checked before the work ---------------------------------------------------------
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
        y = solves.labels_of(None, ds.url, field)
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

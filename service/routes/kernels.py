"""``/v1/kernels``: kernel jobs (train x train, and test x train) computed on the Dask
cluster and stored in Zarr: submit, list, get, cancel or purge, resume, verify, and blocks of
a stored kernel as ``.npy``. A job belongs to the key that submitted it."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response

from workers.jobs import (
    ACTIVE,
    Shape,
    Status,
    advance,
    can,
    kind_of,
    layout,
    verify_parts,
)

from .. import logs
from ..config import Settings
from ..db import Dataset, Job, Solve, spec_of
from ..deps import DB, Owner, RunnerDep, SettingsDep
from ..errors import ApiError
from ..schemas import KernelOut, KernelRequest, KernelSummary, Preview, VerifyOut
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
from .datasets import DATASETS

router = APIRouter(prefix="/v1/kernels", tags=["kernels"])

#: Largest leading block a preview decomposes (1024² float64: 8 MiB, ~0.2 s).
MAX_PREVIEW = 1024
#: plan_job's / plan_features' field -> the request's (others keep their names).
_JOB_FIELDS = {"x1": "train", "x": "train", "x2": "test", "get": "kernels", "memory": "arch"}


def kernel_summary(r: Job, dashboard: str | None) -> KernelSummary:
    """A kernel job as a list answers it: everything but its architecture."""
    return KernelSummary(**_fields(r, dashboard))


def kernel_out(r: Job, dashboard: str | None) -> KernelOut:
    """A kernel job as answered."""
    return KernelOut(**_fields(r, dashboard), arch=r.arch)


def _fields(r: Job, dashboard: str | None) -> dict[str, Any]:
    shape = {"train": [r.n_train, r.n_train]}
    if r.n_test is not None:
        shape["test"] = [r.n_test, r.n_train]
    return dict(id=r.id, status=r.status, train=r.train, test=r.test, kernels=r.kernels,
                dtype=r.dtype, tile=r.tile, shape=shape, tiles_done=r.tiles_done,
                tiles_total=r.tiles_total, tiles_reused=r.tiles_reused,
                eta_seconds=r.eta_seconds, error=redacted(r.error), created=iso(r.created),
                started=iso(r.started), finished=iso(r.finished),
                method=r.method or "exact", m=r.m, seed=r.seed or 0, depths=r.depths,
                variants=r.variants, b_stds=r.b_stds, preprocess=r.preprocess,
                dashboard_url=dashboard, revision=r.revision or 0)


KERNELS = Resource(Job, "kernel job", kernel_out, kernel_summary)


@router.post("", status_code=202, response_model=KernelOut, operation_id="submit_kernel",
             responses={202: {"headers": {"Location": LOCATION}},
                        **problems(400, 401, 404, 408, 413, 422, 429)})
def submit_kernel(req: KernelRequest, response: Response, key: Owner, db: DB,
                  runner: RunnerDep, settings: SettingsDep) -> KernelOut:
    """Start a kernel job: train x train (and test x train). 202 + ``Location``; poll
    ``GET /v1/kernels/{id}``. 422 when the architecture does not fit the data."""
    train = DATASETS.get(db, req.train, key)
    test = DATASETS.get(db, req.test, key) if req.test else None
    with store_errors(rename=_JOB_FIELDS):  # planned on the datasets' shapes: no data read
        planned = kind_of(req.method).plan(
            req.arch, _shape(train), _shape(test) if test else None,
            kernels=tuple(req.kernels), dtype=req.dtype, tile=req.tile,
            memory=settings.task_memory, m=req.m, seed=req.seed, depths=req.depths,
            variants=req.variants, b_stds=req.b_stds,
            preprocess=None if req.preprocess is None else req.preprocess.model_dump())
    jid = f"k-{uuid.uuid4().hex[:16]}"
    row = Job(id=jid, owner=key, train=train.id, test=test.id if test else None,
              n_train=train.n, n_test=test.n if test else None,
              url=layout.kernel_url(settings.store, jid), arch=planned.arch,
              kernels=planned.kernels, dtype=planned.dtype, tile=planned.tile,
              status=Status.QUEUED, method=req.method, m=req.m, seed=req.seed,
              depths=planned.depths, variants=planned.variants, b_stds=planned.b_stds,
              preprocess=planned.preprocess,
              tiles_done=0, tiles_total=0, tiles_reused=0, runs=0, created=time.time())
    out = kernel_out(row, runner.dashboard_url)
    out.model_dump_json()  # the answer can be produced before the job exists
    admit(db, settings, key, lambda s: s.add(row))
    logs.event("submitted", "kernel", jid, key=key, n_train=train.n,
               n_test=test.n if test else None, method=req.method)
    runner.submit_kernel(jid)
    response.headers["Location"] = f"/v1/kernels/{jid}"
    return out


add_list_get(router, KERNELS, KernelSummary, KernelOut, "kernel", description=(
    "Status (queued/running/succeeded/failed/cancelled), tiles done/total, ETA, error."))


@router.delete("/{kernel_id}", response_model=KernelOut, operation_id="cancel_kernel",
               responses={204: {"description": "purged"}, **problems(401, 404, 409, 422)})
def cancel_kernel(kernel_id: str, key: Owner, db: DB, runner: RunnerDep,
                  purge: Annotated[bool, Query(description=(
                      "also delete the job and its stored kernel"))] = False) -> Any:
    """Cancel a queued or running job (finished tiles stay; ``POST .../resume``
    continues). With ``purge=true`` the job and its arrays are deleted (204)."""
    row = KERNELS.get(db, kernel_id, key)
    if purge:
        with db.session() as s:
            busy = s.query(Solve).filter(Solve.kernel == row.id,
                                         Solve.status.in_(ACTIVE)).count()
        if busy:
            raise ApiError(409, "kernel_id", f"{busy} queued or running solve(s) read this "
                           "kernel; purge it once they finish")
        # stop the tasks, wait until none runs, then delete: a tile still running
        # would otherwise write its chunk after the delete
        if not runner.purge_kernel(row.id, row.url):
            raise ApiError(409, "kernel_id", "the job's tasks are still running after "
                           "60 s; it is cancelled, retry the purge shortly")
        with db.session() as s:
            s.query(Solve).filter(Solve.kernel == row.id).delete()
            s.delete(s.get(Job, row.id))
        return Response(status_code=204)
    if can("cancel", row.status):
        runner.cancel_kernel(row.id)
    return kernel_out(KERNELS.get(db, kernel_id, key), runner.dashboard_url)


add_events(router, KERNELS, "kernel", description=(
    "The job's progress as Server-Sent Events: its current state, then each change (tiles "
    "done, ETA, status) as it is committed, until the final state (event `end`)."))


@router.post("/{kernel_id}/resume", status_code=202, response_model=KernelOut,
             operation_id="resume_kernel", responses=problems(401, 404, 409, 429))
def resume_kernel(kernel_id: str, key: Owner, db: DB, runner: RunnerDep,
                  settings: SettingsDep) -> KernelOut:
    """Continue a failed or cancelled job, or repair a finished one: every stored chunk
    is verified first (on the workers), then exactly the tiles not done or found
    damaged are computed."""
    row = KERNELS.get(db, kernel_id, key)

    def requeue(s: Any) -> None:
        job = s.get(Job, row.id)
        if not can("resume", job.status):
            raise ApiError(409, "kernel_id", f"job is {job.status}; it is already running")
        job.status, job.error, job.finished = advance(job.status, "resume"), None, None

    admit(db, settings, key, requeue)
    runner.submit_kernel(row.id, verify=True)
    return kernel_out(KERNELS.get(db, kernel_id, key), runner.dashboard_url)


@router.post("/{kernel_id}/verify", response_model=VerifyOut, operation_id="verify_kernel",
             responses=problems(401, 404, 409))
def verify_kernel(kernel_id: str, key: Owner, db: DB, runner: RunnerDep) -> VerifyOut:
    """Read back every stored chunk of the job through its checksum, on the workers:
    lists each missing, truncated or altered tile (and lost ``done`` markers).
    ``POST .../resume`` recomputes exactly those."""
    row = KERNELS.get(db, kernel_id, key)
    with store_errors(row.id):
        parts = verify_parts(spec_of(row), row.status, client=runner.client)
    return VerifyOut(ok=all(p["ok"] for p in parts.values()), status=row.status,
                     parts=parts)


@router.get("/{kernel_id}/blocks", operation_id="get_block", responses={
    **npy_doc("the block as .npy"), **problems(401, 404, 409, 422)})
def get_block(kernel_id: str, key: Owner, db: DB, settings: SettingsDep,
              kind: Annotated[str, Query(pattern="^(ntk|nngp)$")] = "ntk",
              part: Annotated[str, Query(pattern="^(train|test)$",
                                         description="train x train or test x train")
                              ] = "train",
              rows: Annotated[str | None, Query(description="a:b (default all)",
                                                max_length=40)] = None,
              cols: Annotated[str | None, Query(description="c:d (default all)",
                                                max_length=40)] = None,
              depth: Annotated[int | None, Query(ge=1, le=1000, description=(
                  "the member of a family job (required for one)"))] = None,
              variant: Annotated[int | None, Query(ge=0, le=1000, description=(
                  "the NTK variant of a family job with variants (required for its "
                  "NTK)"))] = None,
              b_std: Annotated[float | None, Query(ge=0, le=1e6, allow_inf_nan=False,
                                                   description=(
                  "the value of a family job's bias grid (required for one)"))] = None
              ) -> Response:
    """A block of a stored kernel as ``.npy``; 409 until every tile under it is done,
    422 past the block-size limit or for a depth, variant or b_std the job does not have."""
    return npy(_block(KERNELS.get(db, kernel_id, key), settings, kind, part, rows, cols,
                      depth=depth, variant=variant, b_std=b_std))


@router.get("/{kernel_id}/preview", response_model=Preview, operation_id="kernel_preview",
            responses=problems(401, 404, 409, 422))
def kernel_preview(kernel_id: str, key: Owner, db: DB, settings: SettingsDep,
                   kind: Annotated[str, Query(pattern="^(ntk|nngp)$")] = "ntk",
                   size: Annotated[int, Query(ge=2, le=256, description=(
                       "heatmap side"))] = 96,
                   block: Annotated[int, Query(ge=2, le=MAX_PREVIEW, description=(
                       "side of the leading block shown"))] = 512,
                   depth: Annotated[int | None, Query(ge=1, le=1000)] = None,
                   variant: Annotated[int | None, Query(ge=0, le=1000)] = None,
                   b_std: Annotated[float | None, Query(ge=0, le=1e6,
                                                        allow_inf_nan=False)] = None
                   ) -> Preview:
    """The web page's view of a finished kernel: the leading ``block x block`` block of the
    train kernel as a ``size x size`` heatmap, and its eigenvalues (an ``m x m``
    eigendecomposition, m ≤ 1024). 409 until those tiles are done."""
    row = KERNELS.get(db, kernel_id, key)
    m = min(block, row.n_train)
    k = np.asarray(_block(row, settings, kind, "train", f"0:{m}", f"0:{m}", depth=depth,
                          variant=variant, b_std=b_std), dtype=np.float64)
    edges = np.linspace(0, m, min(size, m) + 1).astype(int)
    heat = np.add.reduceat(np.add.reduceat(k, edges[:-1], axis=0), edges[:-1], axis=1)
    heat /= np.outer(np.diff(edges), np.diff(edges))
    eig = np.linalg.eigvalsh((k + k.T) / 2)[::-1]
    return Preview(kind=kind, n=row.n_train, block=m, heatmap=heat.tolist(),
                   eigenvalues=eig.tolist())


def _block(row: Job, settings: Settings, kind: str, part: str, rows: str | None,
           cols: str | None, **member: Any) -> np.ndarray:
    """Rows ``rows`` and columns ``cols`` of the stored ``kind`` kernel of ``part`` (of the
    family ``member``: depth, variant, b_std); 422 for a kernel or part the job lacks, and
    the store's answers as HTTP (:func:`store_errors`)."""
    if kind not in row.kernels:
        raise ApiError(422, "kind", f"this job computed {row.kernels}, not {kind!r}")
    if part == "test" and not row.test:
        raise ApiError(422, "part", "this job has no test set")
    job = spec_of(row)
    with store_errors(row.id):
        return job.kind.read_block(job, kind, part, rows, cols, status=row.status,
                                   max_bytes=settings.max_block_bytes, **member)


def _shape(ds: Dataset) -> Shape:
    return Shape(tuple(ds.x_shape), np.dtype(ds.x_dtype))

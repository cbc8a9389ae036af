"""``/v1/kernels``: kernel jobs (train x train, and test x train) computed on the Dask
cluster and stored in Zarr: submit, list, get, cancel or purge, resume, verify, and blocks of
a stored kernel as ``.npy``. A job belongs to the key that submitted it."""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response

from ntkcompute.errors import InputError
from ntkcompute.spec import Architecture
from ntkcompute.validate import check_get
from workers import verify_job
from workers.features import plan_features
from workers.gram import plan_job, read_marks
from workers.store import CorruptChunk, open_group, read, read_dataset

from ..db import ACTIVE, Job, Solve
from ..deps import DB, Owner, RunnerDep, SettingsDep
from ..errors import ApiError
from ..schemas import KernelOut, KernelRequest, VerifyOut
from .common import (
    ERRORS,
    Resource,
    add_list_get,
    admit,
    damaged,
    join,
    npy,
    npy_doc,
    redacted,
    span,
)
from .datasets import DATASETS

router = APIRouter(prefix="/v1/kernels", tags=["kernels"], responses=ERRORS)

#: plan_job's / plan_features' field -> the request's (others keep their names).
_JOB_FIELDS = {"x1": "train", "x": "train", "x2": "test", "get": "kernels", "memory": "arch"}


def kernel_out(r: Job) -> KernelOut:
    """A kernel job as answered."""
    shape = {"train": [r.n_train, r.n_train]}
    if r.n_test is not None:
        shape["test"] = [r.n_test, r.n_train]
    return KernelOut(id=r.id, status=r.status, train=r.train, test=r.test, kernels=r.kernels,
                     dtype=r.dtype, tile=r.tile, shape=shape, tiles_done=r.tiles_done,
                     tiles_total=r.tiles_total, tiles_reused=r.tiles_reused,
                     eta_seconds=r.eta_seconds, error=redacted(r.error), created=r.created,
                     started=r.started, finished=r.finished, arch=r.arch,
                     method=r.method or "exact", m=r.m, seed=r.seed or 0)


KERNELS = Resource(Job, "kernel job", kernel_out)


@router.post("", status_code=202, response_model=KernelOut)
def submit_kernel(req: KernelRequest, response: Response, key: Owner, db: DB,
                  runner: RunnerDep, settings: SettingsDep) -> KernelOut:
    """Start a kernel job: train x train (and test x train). 202 + ``Location``; poll
    ``GET /v1/kernels/{id}``. 422 when the architecture does not fit the data."""
    train = DATASETS.get(db, req.train, key)
    test = DATASETS.get(db, req.test, key) if req.test else None
    xtr = read_dataset(train.url)[0]
    xte = read_dataset(test.url)[0] if test else None
    spec, get, dt, tile = _plan(req, xtr, xte, settings.task_memory)
    jid = f"k-{uuid.uuid4().hex[:16]}"
    row = Job(id=jid, owner=key, train=train.id, test=test.id if test else None,
              n_train=train.n, n_test=test.n if test else None,
              url=join(settings.store, "kernels", jid),
              arch=spec.model_dump(mode="json"), kernels=list(get), dtype=dt.name,
              tile=tile, status="queued", method=req.method, m=req.m, seed=req.seed,
              tiles_done=0, tiles_total=0, tiles_reused=0, runs=0, created=time.time())
    out = kernel_out(row)
    out.model_dump_json()  # the answer can be produced before the job exists
    admit(db, settings, key, lambda s: s.add(row))
    runner.submit_kernel(jid)
    response.headers["Location"] = f"/v1/kernels/{jid}"
    return out


add_list_get(router, KERNELS, KernelOut, "kernel", description=(
    "Status (queued/running/succeeded/failed/cancelled), tiles done/total, ETA, error."))


@router.delete("/{kernel_id}", response_model=KernelOut)
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
    if row.status in ACTIVE:
        runner.cancel_kernel(row.id)
    return kernel_out(KERNELS.get(db, kernel_id, key))


@router.post("/{kernel_id}/resume", status_code=202, response_model=KernelOut)
def resume_kernel(kernel_id: str, key: Owner, db: DB, runner: RunnerDep,
                  settings: SettingsDep) -> KernelOut:
    """Continue a failed or cancelled job, or repair a finished one: every stored chunk
    is verified first (on the workers), then exactly the tiles not done or found
    damaged are computed."""
    row = KERNELS.get(db, kernel_id, key)

    def requeue(s: Any) -> None:
        job = s.get(Job, row.id)
        if job.status in ACTIVE:
            raise ApiError(409, "kernel_id", f"job is {job.status}; it is already running")
        job.status, job.error, job.finished = "queued", None, None

    admit(db, settings, key, requeue)
    runner.submit_kernel(row.id, verify=True)
    return kernel_out(KERNELS.get(db, kernel_id, key))


@router.post("/{kernel_id}/verify", response_model=VerifyOut)
def verify_kernel(kernel_id: str, key: Owner, db: DB, runner: RunnerDep) -> VerifyOut:
    """Read back every stored chunk of the job through its checksum, on the workers:
    lists each missing, truncated or altered tile (and lost ``done`` markers).
    ``POST .../resume`` recomputes exactly those."""
    row = KERNELS.get(db, kernel_id, key)
    parts = _verify_parts(row, runner.client)
    return VerifyOut(ok=all(p["ok"] for p in parts.values()), status=row.status,
                     parts=parts)


@router.get("/{kernel_id}/blocks", responses=npy_doc("the block as .npy"))
def get_block(kernel_id: str, key: Owner, db: DB, settings: SettingsDep,
              kind: Annotated[str, Query(pattern="^(ntk|nngp)$")] = "ntk",
              part: Annotated[str, Query(pattern="^(train|test)$",
                                         description="train x train or test x train")
                              ] = "train",
              rows: Annotated[str | None, Query(description="a:b (default all)",
                                                max_length=40)] = None,
              cols: Annotated[str | None, Query(description="c:d (default all)",
                                                max_length=40)] = None) -> Response:
    """A block of a stored kernel as ``.npy``; 409 until every tile under it is done,
    422 past the block-size limit."""
    row = KERNELS.get(db, kernel_id, key)
    if kind not in row.kernels:
        raise ApiError(422, "kind", f"this job computed {row.kernels}, not {kind!r}")
    if part == "test" and not row.test:
        raise ApiError(422, "part", "this job has no test set")
    block = _feature_block if row.method == "features" else _exact_block
    return npy(block(row, kind, part, rows, cols, settings.max_block_bytes))


# math and store layout (to move to workers/jobs/) -------------------------------------
def _plan(req: KernelRequest, xtr: Any, xte: Any | None, task_memory: int
          ) -> tuple[Architecture, tuple[str, ...], np.dtype, int]:
    """``(spec, kernels, dtype, tile)`` of a job: planned by ``plan_features`` or
    ``plan_job`` on the inputs; 422 when the architecture does not fit them."""
    try:
        if req.method == "features":
            if req.m is None:
                raise ApiError(422, "m", "required with method 'features'")
            if xte is not None and tuple(xte.shape[1:]) != tuple(xtr.shape[1:]):
                raise InputError(f"trailing shape {tuple(xte.shape[1:])} does not match "
                                 f"the train set's {tuple(xtr.shape[1:])}", field="x2")
            fm, dt, tile = plan_features(req.arch, xtr, m=req.m, seed=req.seed,
                                         get=tuple(req.kernels), dtype=req.dtype,
                                         tile=req.tile)
            spec, get = fm.arch, check_get(tuple(req.kernels))
        else:
            jp = plan_job(req.arch, xtr, xte, get=tuple(req.kernels), dtype=req.dtype,
                          memory=task_memory, tile=req.tile)
            spec, get, dt, tile = jp.spec, jp.get, jp.dtype, jp.tile
    except InputError as e:
        raise ApiError.from_input(e, rename=_JOB_FIELDS) from None
    return spec, get, dt, tile


def _verify_parts(row: Job, client: Any) -> dict[str, dict[str, Any]]:
    """Each stored part's verification report (``<job>/train``, ``<job>/test``)."""
    parts = {}
    for part in ("train", "test") if row.test else ("train",):
        try:
            rep = verify_job(join(row.url, part), client=client)
        except (FileNotFoundError, KeyError):
            raise ApiError(409, "kernel_id", f"job is {row.status}; nothing stored yet"
                           ) from None
        parts[part] = rep.to_dict()
    return parts


def _exact_block(row: Job, kind: str, part: str, rows: str | None, cols: str | None,
                 max_bytes: int) -> np.ndarray:
    """The block ``K_part[rows, cols]`` of an exact job, read from its stored tiles."""
    try:
        g = open_group(join(row.url, part), mode="r")
        arr, done = g[kind], g["done"]
    except (FileNotFoundError, KeyError):
        raise ApiError(409, "kernel_id", f"job is {row.status}; nothing stored yet"
                       ) from None
    r = span(rows, arr.shape[0], "rows")
    c = span(cols, arr.shape[1], "cols")
    _check_block_size(r, c, arr.dtype.itemsize, max_bytes)
    t = row.tile
    tiles = (slice(r.start // t, math.ceil(r.stop / t)),
             slice(c.start // t, math.ceil(c.stop / t)))
    _check_marks(row, part, read_marks(done, tiles), tiles)
    return _read_part(row, part, arr, (r, c))


def _feature_block(row: Job, kind: str, part: str, rows: str | None, cols: str | None,
                   max_bytes: int) -> np.ndarray:
    """The kernel block of a features job: ``Φ_part[rows] Φ_train[cols]ᵀ``."""
    try:
        gp = open_group(join(row.url, part), mode="r")
        gt = open_group(join(row.url, "train"), mode="r")
        zp, zt = gp[kind], gt[kind]
    except (FileNotFoundError, KeyError):
        raise ApiError(409, "kernel_id", f"job is {row.status}; nothing stored yet"
                       ) from None
    r, c = span(rows, zp.shape[0], "rows"), span(cols, zt.shape[0], "cols")
    _check_block_size(r, c, zp.dtype.itemsize, max_bytes)
    t = row.tile
    for name, g, sp in ((part, gp, r), ("train", gt, c)):
        tiles = (slice(sp.start // t, math.ceil(sp.stop / t)),)
        _check_marks(row, name, read_marks(g["done"], tiles), tiles)
    return _read_part(row, part, zp, r) @ _read_part(row, "train", zt, c).T


def _check_block_size(r: slice, c: slice, itemsize: int, max_bytes: int) -> None:
    nbytes = (r.stop - r.start) * (c.stop - c.start) * itemsize
    if nbytes > max_bytes:
        raise ApiError(422, "rows", f"block of {nbytes} bytes exceeds the limit of "
                       f"{max_bytes}; ask for fewer rows/cols")


def _check_marks(row: Job, part: str, marks: np.ndarray, tiles: tuple[slice, ...]
                 ) -> None:
    """409 unless every tile under a block is marked done; in a finished job a tile
    that is not is named as damage (its marker was lost)."""
    if np.all(marks):
        return
    first = tuple(int(a + s.start) for a, s in zip(np.argwhere(~marks)[0], tiles,
                                                     strict=True))
    if row.status == "succeeded":
        raise damaged(CorruptChunk("done", first, "marker lost (the tile may be gone "
                                   "too)"), part, row.id)
    raise ApiError(409, "rows", f"job is {row.status}; some tiles of this block are "
                   "not computed yet")


def _read_part(row: Job, part: str, arr: Any, sel: Any) -> np.ndarray:
    try:
        return read(arr, sel)
    except CorruptChunk as e:
        raise damaged(e, part, row.id) from None

"""The REST API (``/v1``): datasets, kernel jobs, solves; ``/healthz`` and ``/readyz``.

Every request but the health checks carries ``Authorization: Bearer <key>``; every dataset
and job belongs to the key that made it and is invisible (404) to others. Errors are JSON
``{"detail": "<field>: <reason>", "field": ...}`` with a 4xx status; see README "REST API".
"""

from __future__ import annotations

import io
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import ntkcompute
from ntkcompute import spec as specs
from ntkcompute.errors import InputError
from ntkcompute.spec import is_union_tag
from ntkcompute.validate import check_get
from workers import verify_job
from workers.features import plan_features
from workers.gram import plan_job, read_marks
from workers.solve import LABEL_BOUND
from workers.store import CorruptChunk, open_group, read, read_dataset, remove_group, write_dataset

from . import uploads
from .bodies import BodyLimits
from .config import Settings
from .db import ACTIVE, Database, Dataset, Job, Solve
from .errors import PRIVATE, ApiError, not_found, redact
from .keys import check, ensure_keys
from .runner import Runner
from .schemas import (
    DatasetOut,
    Error,
    Health,
    KernelOut,
    KernelRequest,
    Limits,
    SolveOut,
    SolveRequest,
    VerifyOut,
)

log = logging.getLogger("ntkcompute.service")
NPY = "application/x-npy"
ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": Error} for c in (401, 404, 409, 413, 422, 429)}
_bearer = HTTPBearer(auto_error=False, description="an API key from `ntk keys create`")


def owner(request: Request,
          cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The id of the request's API key; 401 without a valid one."""
    if cred is None:
        raise ApiError(401, "Authorization", "missing bearer API key")
    kid, why = check(request.app.state.db, cred.credentials)  # one lookup, one hash
    if kid is None:
        log.info("401: %s key", why)
        raise ApiError(401, "Authorization", "unknown, revoked or expired API key")
    return kid


Owner = Annotated[str, Depends(owner)]
LamIndex = Annotated[int | None, Query(ge=0, le=1000, description=(
    "which λ (index into lambdas); default all, stacked on axis 0"))]
SolveRows = Annotated[str | None, Query(max_length=40, description=(
    "a:b, rows of the coefficients (train rows, or features) / predictions (test rows)"))]
#: Most learning-curve values (times x eigendirections) one solve reports.
MAX_CURVE_VALUES = 100_000
#: Seconds between two writes that probe the store for ``/readyz``.
STORE_PROBE_SECONDS = 30.0


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; the lifespan joins the Dask cluster and resumes unfinished jobs."""
    settings = settings or Settings.from_env()
    if "://" not in settings.store:
        Path(settings.store).mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(settings.db)
    if settings.api_keys:
        ensure_keys(db, settings.api_keys)
    runner = Runner(settings, db)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        uploads.clean_stale(settings.staging_dir())
        await run_in_threadpool(runner.start)
        yield
        await run_in_threadpool(runner.stop)

    app = FastAPI(title="ntkcompute", version=ntkcompute.__version__, lifespan=lifespan,
                  description="Exact NTK / NNGP / CNTK Gram matrices on a Dask cluster, "
                  "stored in Zarr, and kernel regression on them.")
    app.state.settings, app.state.db, app.state.runner = settings, db, runner
    app.add_middleware(BodyLimits, upload_bytes=settings.max_upload_bytes,
                       json_bytes=settings.max_json_bytes, timeout=settings.body_timeout)
    PRIVATE.update(settings.private_paths())

    # errors ----------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"detail": redact(e.detail), "field": e.field}, e.status,
                            headers=headers)

    @app.exception_handler(CorruptChunk)
    async def _corrupt(_r: Request, e: CorruptChunk) -> JSONResponse:
        log.error("damaged store chunk: %s", e)
        a = _damaged(e)
        return JSONResponse({"detail": redact(a.detail), "field": a.field}, 409)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        where = _loc(first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg')}" if where else
                             str(first.get("msg")), "field": where or None,
                             "errors": [{"field": _loc(x.get("loc", ())), "message": x.get("msg")}
                                        for x in errs]}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        # FastAPI's one 400 is a body it could not parse (e.g. JSON nested past the parser)
        field = "body" if e.status_code == 400 else None
        detail = f"body: {e.detail}" if field else str(e.detail)
        return JSONResponse({"detail": detail, "field": field}, e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, e: Exception) -> JSONResponse:
        if isinstance(e, ClientDisconnect):  # the client left (or BodyLimits refused it)
            return JSONResponse({"detail": "client disconnected", "field": None}, 400)
        log.exception("unhandled error")
        return JSONResponse({"detail": f"internal error: {type(e).__name__}", "field": None},
                            500)

    def _own(model: type, id_: str, key: str, kind: str) -> Any:
        with db.session() as s:
            row = s.get(model, id_)
            if row is None or row.owner != key:
                raise not_found(kind, id_)
            return row

    def _owned(model: type, key: str) -> list:
        with db.session() as s:
            return s.query(model).filter(model.owner == key).order_by(model.created).all()

    def _admit(key: str, apply: Any) -> None:
        """``apply(session)`` in the transaction that counts the key's active jobs; 429
        past the limit."""
        n = db.admit(key, settings.max_jobs_per_key, apply)
        if n is not None:
            raise ApiError(429, "max_jobs_per_key", f"this key has {n} queued or running "
                           f"jobs, the limit is {settings.max_jobs_per_key}; wait or cancel one")

    # health ----------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"],
             responses={503: {"model": Health}})
    def readyz() -> Any:
        """The Dask scheduler answers and the store is writable (probed by a write at most
        every ``STORE_PROBE_SECONDS``, not on every call)."""
        checks = runner.ready() if runner.client is not None else {"scheduler": "not started"}
        checks["store"] = _store_probe()
        ok = all(v.startswith("ok") for v in checks.values())
        body = Health(status="ok" if ok else "unavailable", checks=checks)
        return body if ok else JSONResponse(body.model_dump(), 503)

    @app.get("/v1/limits", response_model=Limits, tags=["health"], responses=ERRORS)
    def limits(key: Owner) -> Limits:
        """Every limit the service checks before the work it bounds (408, 413, 422, 429)."""
        return Limits(**settings.model_dump(include=set(Limits.model_fields)),
                      max_layers=specs.MAX_LAYERS, max_nesting=specs.MAX_NESTING)

    probe: dict[str, Any] = {"t": -math.inf, "result": ""}

    def _store_probe() -> str:
        if time.monotonic() - probe["t"] < STORE_PROBE_SECONDS:
            return probe["result"]
        try:
            g = open_group(_join(settings.store, "_readyz"), mode="w")
            g.attrs["t"] = time.time()
            result = "ok"
        except Exception as e:
            result = redact(f"not writable: {type(e).__name__}: {e}")
        probe.update(t=time.monotonic(), result=result)
        return result

    # datasets --------------------------------------------------------------------------
    upload_body = {"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "x": {"type": "string", "format": "binary"},
            "y": {"type": "string", "format": "binary"},
            "file": {"type": "string", "format": "binary"}}}}}}}

    @app.post("/v1/datasets", status_code=201, response_model=DatasetOut, tags=["datasets"],
              responses=ERRORS, openapi_extra=upload_body)
    async def upload(request: Request, response: Response, key: Owner) -> DatasetOut:
        """Upload x (and y): a raw ``.npy``/``.npz`` body, or multipart parts ``x``/``y``
        (``.npy``) or ``file`` (``.npz``). Streamed to the store; 413 past the size limit,
        422 for a malformed file, bad dtype, NaN/Inf, or y not matching x."""
        st = await uploads.stage(request, settings.staging_dir(), settings)
        try:
            out = await run_in_threadpool(_store_dataset, st, key)
        finally:
            st.cleanup()
        response.headers["Location"] = f"/v1/datasets/{out.id}"
        return out

    def _store_dataset(st: uploads.Staged, key: str) -> DatasetOut:
        arrs = uploads.arrays(st, settings)
        x, y = arrs["x"], arrs.get("y")
        uploads.check_arrays(x, y, settings)
        did = f"d-{uuid.uuid4().hex[:16]}"
        url = _join(settings.store, "datasets", did)
        rows = max(1, min(x.shape[0], (16 << 20) // max(1, x[:1].nbytes)))
        g = write_dataset(url, x, y, rows=rows)
        meta = g.attrs["ntkcompute"]
        row = Dataset(id=did, owner=key, url=url, n=int(x.shape[0]), x_shape=list(x.shape),
                      x_dtype=x.dtype.name, y_shape=None if y is None else list(y.shape),
                      sha256=st.sha256, x_sha256=meta["x_sha256"])
        with db.session() as s:
            s.add(row)
        return _dataset_out(row)

    @app.get("/v1/datasets", response_model=list[DatasetOut], tags=["datasets"],
             responses=ERRORS)
    def list_datasets(key: Owner) -> list[DatasetOut]:
        return [_dataset_out(r) for r in _owned(Dataset, key)]

    @app.get("/v1/datasets/{dataset_id}", response_model=DatasetOut, tags=["datasets"],
             responses=ERRORS)
    def get_dataset(dataset_id: str, key: Owner) -> DatasetOut:
        return _dataset_out(_own(Dataset, dataset_id, key, "dataset"))

    @app.delete("/v1/datasets/{dataset_id}", status_code=204, tags=["datasets"],
                responses=ERRORS)
    def delete_dataset(dataset_id: str, key: Owner) -> Response:
        """Delete a dataset. Kernel jobs keep their own copy of the inputs they read."""
        row = _own(Dataset, dataset_id, key, "dataset")
        with db.session() as s:
            busy = s.query(Job).filter(Job.status.in_(ACTIVE), (Job.train == row.id)
                                       | (Job.test == row.id)).count()
            if busy:
                raise ApiError(409, "dataset_id", f"{busy} queued or running kernel job(s) "
                               "read this dataset; cancel them first")
            s.delete(s.get(Dataset, row.id))
        remove_group(row.url)
        return Response(status_code=204)

    # kernel jobs -----------------------------------------------------------------------
    @app.post("/v1/kernels", status_code=202, response_model=KernelOut, tags=["kernels"],
              responses=ERRORS)
    def submit_kernel(req: KernelRequest, response: Response, key: Owner) -> KernelOut:
        """Start a kernel job: train x train (and test x train). 202 + ``Location``; poll
        ``GET /v1/kernels/{id}``. 422 when the architecture does not fit the data."""
        train = _own(Dataset, req.train, key, "dataset")
        test = _own(Dataset, req.test, key, "dataset") if req.test else None
        xtr = read_dataset(train.url)[0]
        xte = read_dataset(test.url)[0] if test else None
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
                              memory=settings.task_memory, tile=req.tile)
                spec, get, dt, tile = jp.spec, jp.get, jp.dtype, jp.tile
        except InputError as e:
            raise ApiError.from_input(e, rename=_JOB_FIELDS) from None
        jid = f"k-{uuid.uuid4().hex[:16]}"
        row = Job(id=jid, owner=key, train=train.id, test=test.id if test else None,
                  n_train=train.n, n_test=test.n if test else None,
                  url=_join(settings.store, "kernels", jid),
                  arch=spec.model_dump(mode="json"), kernels=list(get), dtype=dt.name,
                  tile=tile, status="queued", method=req.method, m=req.m, seed=req.seed,
                  tiles_done=0, tiles_total=0, tiles_reused=0, runs=0, created=time.time())
        out = _kernel_out(row)
        out.model_dump_json()  # the answer can be produced before the job exists
        _admit(key, lambda s: s.add(row))
        runner.submit_kernel(jid)
        response.headers["Location"] = f"/v1/kernels/{jid}"
        return out

    @app.get("/v1/kernels", response_model=list[KernelOut], tags=["kernels"],
             responses=ERRORS)
    def list_kernels(key: Owner) -> list[KernelOut]:
        return [_kernel_out(r) for r in _owned(Job, key)]

    @app.get("/v1/kernels/{kernel_id}", response_model=KernelOut, tags=["kernels"],
             responses=ERRORS)
    def get_kernel(kernel_id: str, key: Owner) -> KernelOut:
        """Status (queued/running/succeeded/failed/cancelled), tiles done/total, ETA, error."""
        return _kernel_out(_own(Job, kernel_id, key, "kernel job"))

    @app.delete("/v1/kernels/{kernel_id}", response_model=KernelOut, tags=["kernels"],
                responses=ERRORS)
    def cancel_kernel(kernel_id: str, key: Owner,
                      purge: Annotated[bool, Query(description=(
                          "also delete the job and its stored kernel"))] = False) -> Any:
        """Cancel a queued or running job (finished tiles stay; ``POST .../resume``
        continues). With ``purge=true`` the job and its arrays are deleted (204)."""
        row = _own(Job, kernel_id, key, "kernel job")
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
        return _kernel_out(_own(Job, kernel_id, key, "kernel job"))

    @app.post("/v1/kernels/{kernel_id}/resume", status_code=202, response_model=KernelOut,
              tags=["kernels"], responses=ERRORS)
    def resume_kernel(kernel_id: str, key: Owner) -> KernelOut:
        """Continue a failed or cancelled job, or repair a finished one: every stored chunk
        is verified first (on the workers), then exactly the tiles not done or found
        damaged are computed."""
        row = _own(Job, kernel_id, key, "kernel job")

        def requeue(s: Any) -> None:
            job = s.get(Job, row.id)
            if job.status in ACTIVE:
                raise ApiError(409, "kernel_id", f"job is {job.status}; it is already running")
            job.status, job.error, job.finished = "queued", None, None

        _admit(key, requeue)
        runner.submit_kernel(row.id, verify=True)
        return _kernel_out(_own(Job, kernel_id, key, "kernel job"))

    @app.post("/v1/kernels/{kernel_id}/verify", response_model=VerifyOut, tags=["kernels"],
              responses=ERRORS)
    def verify_kernel(kernel_id: str, key: Owner) -> VerifyOut:
        """Read back every stored chunk of the job through its checksum, on the workers:
        lists each missing, truncated or altered tile (and lost ``done`` markers).
        ``POST .../resume`` recomputes exactly those."""
        row = _own(Job, kernel_id, key, "kernel job")
        parts = {}
        for part in ("train", "test") if row.test else ("train",):
            try:
                rep = verify_job(_join(row.url, part), client=runner.client)
            except (FileNotFoundError, KeyError):
                raise ApiError(409, "kernel_id", f"job is {row.status}; nothing stored yet"
                               ) from None
            parts[part] = rep.to_dict()
        return VerifyOut(ok=all(p["ok"] for p in parts.values()), status=row.status,
                         parts=parts)

    @app.get("/v1/kernels/{kernel_id}/blocks", tags=["kernels"],
             responses={200: {"content": {NPY: {}}, "description": "the block as .npy"},
                        **ERRORS})
    def get_block(kernel_id: str, key: Owner,
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
        row = _own(Job, kernel_id, key, "kernel job")
        if kind not in row.kernels:
            raise ApiError(422, "kind", f"this job computed {row.kernels}, not {kind!r}")
        if part == "test" and not row.test:
            raise ApiError(422, "part", "this job has no test set")
        if row.method == "features":
            return _npy(_feature_block(row, kind, part, rows, cols))
        try:
            g = open_group(_join(row.url, part), mode="r")
            arr, done = g[kind], g["done"]
        except (FileNotFoundError, KeyError):
            raise ApiError(409, "kernel_id", f"job is {row.status}; nothing stored yet"
                           ) from None
        r = _span(rows, arr.shape[0], "rows")
        c = _span(cols, arr.shape[1], "cols")
        _check_block_size(r, c, arr.dtype.itemsize)
        t = row.tile
        tiles = (slice(r.start // t, math.ceil(r.stop / t)),
                 slice(c.start // t, math.ceil(c.stop / t)))
        _check_marks(row, part, read_marks(done, tiles), tiles)
        return _npy(_read_part(row, part, arr, (r, c)))

    def _check_marks(row: Job, part: str, marks: np.ndarray, tiles: tuple[slice, ...]
                     ) -> None:
        """409 unless every tile under a block is marked done; in a finished job a tile
        that is not is named as damage (its marker was lost)."""
        if np.all(marks):
            return
        first = tuple(int(a + s.start) for a, s in zip(np.argwhere(~marks)[0], tiles,
                                                         strict=True))
        if row.status == "succeeded":
            raise _damaged(CorruptChunk("done", first, "marker lost (the tile may be gone "
                                        "too)"), part, row.id)
        raise ApiError(409, "rows", f"job is {row.status}; some tiles of this block are "
                       "not computed yet")

    def _read_part(row: Job, part: str, arr: Any, sel: Any) -> np.ndarray:
        try:
            return read(arr, sel)
        except CorruptChunk as e:
            raise _damaged(e, part, row.id) from None

    def _check_block_size(r: slice, c: slice, itemsize: int) -> None:
        nbytes = (r.stop - r.start) * (c.stop - c.start) * itemsize
        if nbytes > settings.max_block_bytes:
            raise ApiError(422, "rows", f"block of {nbytes} bytes exceeds the limit of "
                           f"{settings.max_block_bytes}; ask for fewer rows/cols")

    def _feature_block(row: Job, kind: str, part: str, rows: str | None,
                       cols: str | None) -> np.ndarray:
        """The kernel block of a features job: ``Φ_part[rows] Φ_train[cols]ᵀ``."""
        try:
            gp = open_group(_join(row.url, part), mode="r")
            gt = open_group(_join(row.url, "train"), mode="r")
            zp, zt = gp[kind], gt[kind]
        except (FileNotFoundError, KeyError):
            raise ApiError(409, "kernel_id", f"job is {row.status}; nothing stored yet"
                           ) from None
        r, c = _span(rows, zp.shape[0], "rows"), _span(cols, zt.shape[0], "cols")
        _check_block_size(r, c, zp.dtype.itemsize)
        t = row.tile
        for name, g, span in ((part, gp, r), ("train", gt, c)):
            tiles = (slice(span.start // t, math.ceil(span.stop / t)),)
            _check_marks(row, name, read_marks(g["done"], tiles), tiles)
        return _read_part(row, part, zp, r) @ _read_part(row, "train", zt, c).T

    # solves ----------------------------------------------------------------------------
    @app.post("/v1/solves", status_code=202, response_model=SolveOut, tags=["solves"],
              responses=ERRORS)
    def submit_solve(req: SolveRequest, response: Response, key: Owner) -> SolveOut:
        """Kernel regression on a finished kernel job: one CG (or direct) solve per λ,
        predictions and metrics on its test set, optional analyses."""
        job = _own(Job, req.kernel, key, "kernel job")
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
        row = Solve(id=sid, owner=key, kernel=job.id, url=_join(job.url, "solves", sid),
                    params=req.model_dump(mode="json"), status="queued", created=time.time())
        out = _solve_out(row)
        _admit(key, lambda s: s.add(row))
        runner.submit_solve(sid)
        response.headers["Location"] = f"/v1/solves/{sid}"
        return out

    def _coef_rows(job: Job, kind: str) -> int:
        """Rows of one λ's coefficients: n, or a features job's feature count D."""
        if job.method != "features":
            return job.n_train
        meta = open_group(_join(job.url, "train"), mode="r").attrs.get("ntkcompute", {})
        return int(meta.get("dims", {}).get(kind, job.n_train))

    @app.get("/v1/solves", response_model=list[SolveOut], tags=["solves"], responses=ERRORS)
    def list_solves(key: Owner) -> list[SolveOut]:
        return [_solve_out(r) for r in _owned(Solve, key)]

    @app.get("/v1/solves/{solve_id}", response_model=SolveOut, tags=["solves"],
             responses=ERRORS)
    def get_solve(solve_id: str, key: Owner) -> SolveOut:
        return _solve_out(_own(Solve, solve_id, key, "solve"))

    def _solve_array(solve_id: str, key: str, name: str, lam: int | None,
                     rows: str | None) -> Response:
        row = _own(Solve, solve_id, key, "solve")
        if row.status != "succeeded":
            raise ApiError(409, "solve_id", f"solve is {row.status}")
        g = open_group(row.url, mode="r")
        if name not in g:
            raise ApiError(404, name, "this solve has no test set, so no predictions")
        arr = g[name]
        if lam is not None and lam >= arr.shape[0]:
            raise ApiError(422, "lambda_index", f"must be < {arr.shape[0]} (the λ count)")
        lams = slice(0, arr.shape[0]) if lam is None else slice(lam, lam + 1)
        r = _span(rows, arr.shape[1], "rows")
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
        return _npy(a if lam is None else a[0])

    @app.get("/v1/solves/{solve_id}/coefficients", tags=["solves"],
             responses={200: {"content": {NPY: {}}, "description": "(L, n, c) or (n, c)"},
                        **ERRORS})
    def coefficients(solve_id: str, key: Owner, lambda_index: LamIndex = None,
                     rows: SolveRows = None) -> Response:
        """Dual coefficients α, ``(K + λI) α = Y``, as ``.npy``."""
        return _solve_array(solve_id, key, "coefficients", lambda_index, rows)

    @app.get("/v1/solves/{solve_id}/predictions", tags=["solves"],
             responses={200: {"content": {NPY: {}}, "description": "(L, m, c) or (m, c)"},
                        **ERRORS})
    def predictions(solve_id: str, key: Owner, lambda_index: LamIndex = None,
                    rows: SolveRows = None) -> Response:
        """Test predictions ``K(test, train) α`` as ``.npy``."""
        return _solve_array(solve_id, key, "predictions", lambda_index, rows)

    return app


#: plan_job's / plan_features' field -> the request's (others keep their names).
_JOB_FIELDS = {"x1": "train", "x": "train", "x2": "test", "get": "kernels", "memory": "arch"}


def _loc(loc: Any) -> str:
    """("body", "arch", "layers", 0, "conv", "W_std") -> "arch.layers[0].W_std"; the tag
    pydantic adds after a layer's place (an index, or a repeat's ``layer``) is dropped."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for k, p in enumerate(parts):
        if isinstance(p, int):
            out += f"[{p}]"
        elif is_union_tag(parts, k):
            continue
        else:
            out += f".{p}" if out else str(p)
    return out




def _span(text: str | None, n: int, field: str) -> slice:
    if text is None or text == "":
        return slice(0, n)
    a, sep, b = text.partition(":")
    try:
        start = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else n
    except ValueError:
        raise ApiError(422, field, f"must be 'a:b' with integers, got {text!r}") from None
    if not sep or not 0 <= start < stop <= n:
        raise ApiError(422, field, f"must be 'a:b' with 0 <= a < b <= {n}, got {text!r}")
    return slice(start, stop)


def _npy(a: np.ndarray) -> Response:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return Response(buf.getvalue(), media_type=NPY)


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


def _damaged(e: CorruptChunk, part: str | None = None, job: str | None = None) -> ApiError:
    """409 naming a damaged chunk: for a kernel array or its markers, the tile ``(i, j)``."""
    what = "tile" if e.array in ("ntk", "nngp", "done") else "chunk"
    where = f"{part} " if part else ""
    hint = (f"; POST /v1/kernels/{job}/verify lists every damaged tile and "
            f"POST /v1/kernels/{job}/resume recomputes them") if job else ""
    return ApiError(409, "tile", f"{where}{what} {list(e.chunk)} of {e.array} is damaged: "
                    f"{e.problem}{hint}")


def _redact(text: str | None) -> str | None:
    """A stored error as answered: no server path (see :func:`service.errors.redact`)."""
    return None if text is None else redact(text)


def _dataset_out(r: Dataset) -> DatasetOut:
    return DatasetOut(id=r.id, n=r.n, shape=r.x_shape, dtype=r.x_dtype, y_shape=r.y_shape,
                      sha256=r.sha256, x_sha256=r.x_sha256, created=r.created)


def _kernel_out(r: Job) -> KernelOut:
    shape = {"train": [r.n_train, r.n_train]}
    if r.n_test is not None:
        shape["test"] = [r.n_test, r.n_train]
    return KernelOut(id=r.id, status=r.status, train=r.train, test=r.test, kernels=r.kernels,
                     dtype=r.dtype, tile=r.tile, shape=shape, tiles_done=r.tiles_done,
                     tiles_total=r.tiles_total, tiles_reused=r.tiles_reused,
                     eta_seconds=r.eta_seconds, error=_redact(r.error), created=r.created,
                     started=r.started, finished=r.finished, arch=r.arch,
                     method=r.method or "exact", m=r.m, seed=r.seed or 0)


def _solve_out(r: Solve) -> SolveOut:
    return SolveOut(id=r.id, kernel=r.kernel, status=r.status, error=_redact(r.error),
                    params=r.params,
                    metrics=r.metrics, analyses=r.analyses, created=r.created,
                    finished=r.finished)

"""``/v1/datasets``: upload x (and y), list, get, delete. A dataset belongs to the key that
uploaded it."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from workers.jobs import store_dataset
from workers.store import remove_group

from .. import uploads
from ..config import Settings
from ..db import ACTIVE, Database, Dataset, Job
from ..deps import DB, Owner, SettingsDep
from ..errors import ApiError
from ..schemas import DatasetOut
from .common import LOCATION, Resource, add_list_get, iso, problems

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

#: The upload's body as documented (the route reads the raw stream, not a model).
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "x": {"type": "string", "format": "binary"},
        "y": {"type": "string", "format": "binary"},
        "file": {"type": "string", "format": "binary"}}}}}}}


def dataset_out(r: Dataset, _dashboard: str | None = None) -> DatasetOut:
    """A dataset as answered."""
    return DatasetOut(id=r.id, n=r.n, shape=r.x_shape, dtype=r.x_dtype, y_shape=r.y_shape,
                      sha256=r.sha256, x_sha256=r.x_sha256, created=iso(r.created))


DATASETS = Resource(Dataset, "dataset", dataset_out)


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra=UPLOAD_BODY,
             operation_id="upload_dataset", responses={
                 201: {"headers": {"Location": LOCATION}},
                 **problems(401, 408, 413, 422)})
async def upload(request: Request, response: Response, key: Owner, db: DB,
                 settings: SettingsDep) -> DatasetOut:
    """Upload x (and y): a raw ``.npy``/``.npz`` body, or multipart parts ``x``/``y``
    (``.npy``) or ``file`` (``.npz``). Streamed to the store; 413 past the size limit,
    422 for a malformed file, bad dtype, NaN/Inf, or y not matching x."""
    st = await uploads.stage(request, settings.staging_dir(), settings)
    try:
        out = await run_in_threadpool(_store_dataset, st, key, db, settings)
    finally:
        st.cleanup()
    response.headers["Location"] = f"/v1/datasets/{out.id}"
    return out


add_list_get(router, DATASETS, DatasetOut, DatasetOut, "dataset")


@router.delete("/{dataset_id}", status_code=204, operation_id="delete_dataset",
               responses=problems(401, 404, 409))
def delete_dataset(dataset_id: str, key: Owner, db: DB) -> Response:
    """Delete a dataset. Kernel jobs keep their own copy of the inputs they read."""
    row = DATASETS.get(db, dataset_id, key)
    with db.session() as s:
        busy = s.query(Job).filter(Job.status.in_(ACTIVE), (Job.train == row.id)
                                   | (Job.test == row.id)).count()
        if busy:
            raise ApiError(409, "dataset_id", f"{busy} queued or running kernel job(s) "
                           "read this dataset; cancel them first")
        s.delete(s.get(Dataset, row.id))
    remove_group(row.url)
    return Response(status_code=204)


def _store_dataset(st: uploads.Staged, key: str, db: Database,
                   settings: Settings) -> DatasetOut:
    """Check the staged upload, write it to the store and record it."""
    arrs = uploads.arrays(st, settings)
    x, y = arrs["x"], arrs.get("y")
    uploads.check_arrays(x, y, settings)
    did = f"d-{uuid.uuid4().hex[:16]}"
    url, meta = store_dataset(settings.store, did, x, y)
    row = Dataset(id=did, owner=key, url=url, n=int(x.shape[0]), x_shape=list(x.shape),
                  x_dtype=x.dtype.name, y_shape=None if y is None else list(y.shape),
                  sha256=st.sha256, x_sha256=meta["x_sha256"])
    with db.session() as s:
        s.add(row)
    return dataset_out(row)

"""What the route modules share: the error responses they document, ownership (a row is
its key's or answered 404), the per-key job limit, the list/get pair every resource has,
the small response helpers (``.npy`` bodies), and the store's answers as HTTP errors.

No ``from __future__ import annotations`` here: :func:`add_list_get` builds its routes'
signatures at run time, and FastAPI reads them as objects."""

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import numpy as np
from fastapi import APIRouter, Path, Response
from sqlalchemy.orm import Session

from ntkcompute.errors import InputError
from workers.jobs import JobConflict, Missing, PartDamaged
from workers.store import CorruptChunk

from ..config import Settings
from ..db import Database, Dataset, Job, Solve
from ..deps import DB, Owner
from ..errors import ApiError, not_found, redact
from ..schemas import Error

NPY = "application/x-npy"
#: The error answers every ``/v1`` route documents (the body is always :class:`Error`).
ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": Error} for c in (401, 404, 409, 413, 422, 429)}

Row = TypeVar("Row", Dataset, Job, Solve)
Out = TypeVar("Out")


@dataclass(frozen=True)
class Resource(Generic[Row, Out]):
    """A table whose rows belong to an API key: another key's row is answered as missing
    (404), never as forbidden."""

    model: type[Row]
    #: its name in a 404: ``no dataset 'd-…'``
    kind: str
    #: the row as answered
    out: Callable[[Row], Out]

    def get(self, db: Database, id_: str, key: str) -> Row:
        """The row ``id_`` if ``key`` owns it; 404 otherwise."""
        with db.session() as s:
            row = s.get(self.model, id_)
            if row is None or row.owner != key:
                raise not_found(self.kind, id_)
            return row

    def rows(self, db: Database, key: str) -> list[Row]:
        """Every row ``key`` owns, oldest first."""
        with db.session() as s:
            m = self.model
            return s.query(m).filter(m.owner == key).order_by(m.created).all()


def add_list_get(router: APIRouter, res: Resource[Row, Out], schema: type, name: str,
                 description: str | None = None) -> None:
    """Add ``GET <prefix>`` (the key's rows, oldest first) and ``GET <prefix>/{<name>_id}``
    (one, 404 unless the key's) to ``router``, under the names hand-written routes
    ``list_<name>s`` / ``get_<name>`` would have (they make the OpenAPI operationIds);
    ``description`` documents the get."""
    id_param = f"{name}_id"

    def list_rows(key: Owner, db: DB) -> list[Any]:
        return [res.out(r) for r in res.rows(db, key)]

    def get_row(id_: Annotated[str, Path(alias=id_param)], key: Owner, db: DB) -> Any:
        return res.out(res.get(db, id_, key))

    router.add_api_route("", list_rows, methods=["GET"], name=f"list_{name}s",
                         response_model=list[schema])
    router.add_api_route(f"/{{{id_param}}}", get_row, methods=["GET"], name=f"get_{name}",
                         response_model=schema, description=description)


def admit(db: Database, settings: Settings, key: str,
          apply: Callable[[Session], None]) -> None:
    """``apply(session)`` in the transaction that counts the key's active jobs; 429
    past the limit."""
    n = db.admit(key, settings.max_jobs_per_key, apply)
    if n is not None:
        raise ApiError(429, "max_jobs_per_key", f"this key has {n} queued or running "
                       f"jobs, the limit is {settings.max_jobs_per_key}; wait or cancel one")


def npy(a: np.ndarray) -> Response:
    """``a`` as an ``.npy`` body."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return Response(buf.getvalue(), media_type=NPY)


def npy_doc(description: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route answering ``.npy`` (``description`` its shape)."""
    return {200: {"content": {NPY: {}}, "description": description}}


def damaged(e: CorruptChunk, part: str | None = None, job: str | None = None) -> ApiError:
    """409 naming a damaged chunk: for a kernel array or its markers, the tile ``(i, j)``."""
    what = "tile" if e.array in ("ntk", "nngp", "done") else "chunk"
    where = f"{part} " if part else ""
    hint = (f"; POST /v1/kernels/{job}/verify lists every damaged tile and "
            f"POST /v1/kernels/{job}/resume recomputes them") if job else ""
    return ApiError(409, "tile", f"{where}{what} {list(e.chunk)} of {e.array} is damaged: "
                    f"{e.problem}{hint}")


def redacted(text: str | None) -> str | None:
    """A stored error as answered: no server path (see :func:`service.errors.redact`)."""
    return None if text is None else redact(text)


@contextmanager
def store_errors(job: str | None = None, rename: dict[str, str] | None = None
                 ) -> Iterator[None]:
    """What a job's store answers instead of numbers, as HTTP: a bad request 422 (fields
    through ``rename``), not yet 409, absent 404, a damaged chunk 409 naming it (and, for
    kernel job ``job``, how to find and repair the rest)."""
    try:
        yield
    except InputError as e:
        raise ApiError.from_input(e, rename=rename) from None
    except JobConflict as e:
        raise ApiError(409, e.field, str(e)) from None
    except Missing as e:
        raise ApiError(404, e.field, str(e)) from None
    except PartDamaged as e:
        raise damaged(e.error, e.part, job) from None

"""What the route modules share: the error responses they document, ownership (a row is
its key's or answered 404), the per-key job limit, the list/get pair every resource has,
the small response helpers (``.npy`` bodies), and the store's answers as HTTP errors.

No ``from __future__ import annotations`` here: :func:`add_list_get` builds its routes'
signatures at run time, and FastAPI reads them as objects."""

import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from ntkcompute.errors import InputError
from workers.jobs import JobConflict, Missing, PartDamaged
from workers.store import CorruptChunk

from ..config import Settings
from ..db import FINAL, Database, Dataset, Job, Solve
from ..deps import DB, Dashboard, Owner
from ..errors import PROBLEM, ApiError, not_found, problem_body, redact
from ..events import state_of
from ..schemas import Error

NPY = "application/x-npy"
#: The ``Location`` header of a 201/202: the new resource's path.
LOCATION = {"description": "the path of the new resource", "schema": {"type": "string"}}
#: The ``Retry-After`` header of a 429 or 503.
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                               "schema": {"type": "integer"}}}
#: Most rows one page of a list answers, and the default.
MAX_PAGE, DEFAULT_PAGE = 1000, 100

#: What each error status means on a route that documents it (its OpenAPI description).
_MEANING = {
    400: "the body could not be parsed, or the client left while sending it",
    401: "no valid API key (`Authorization: Bearer <key>`)",
    404: "no such resource for this key",
    408: "the body stalled past NTK_BODY_TIMEOUT",
    409: "the resource is not in a state for this (not finished, already running, a "
         "damaged chunk)",
    413: "the body exceeds its size limit",
    422: "a field is invalid, or a size it implies is past a limit: `field` names it",
    429: "the key's queued and running jobs are at NTK_MAX_JOBS_PER_KEY; `Retry-After` says "
         "when to try again",
    503: "not ready: the scheduler or the store does not answer; `Retry-After`"}
_EXAMPLES = {
    401: ("Authorization", "missing bearer API key"),
    404: (None, "no kernel job 'k-0123456789abcdef'"),
    409: ("kernel", "kernel job is running, not succeeded"),
    413: ("body", "the body exceeds the limit of 2097152 bytes (NTK_MAX_JSON_BYTES)"),
    422: ("arch.layers[0].W_std", "Input should be greater than 0")}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route's error statuses: each an RFC 9457 problem
    (``application/problem+json``, :class:`Error`) with its meaning and an example."""
    out: dict[int | str, dict[str, Any]] = {}
    for c in codes:
        field, reason = _EXAMPLES.get(c, (None, _MEANING[c]))
        example = problem_body(c, f"{field}: {reason}" if field else reason, field)
        out[c] = {"model": Error, "description": _MEANING[c],
                  "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Error"},
                                        "example": example}}}
        if c in (429, 503):
            out[c]["headers"] = RETRY_AFTER
    return out


#: Seconds an event stream waits for a change before it reads the row itself (a write by
#: another replica of the service).
EVENTS_RECHECK_SECONDS = 2.0
#: The ``responses`` of an event stream route (``text/event-stream``).
EVENTS_DOC: dict[int | str, dict[str, Any]] = {200: {
    "description": "`text/event-stream`: one `state` event per change of the row, in order "
    "(`id`: its revision; `data`: {id, revision, status, tiles_done, tiles_total, "
    "tiles_reused, eta_seconds, tiles_per_second, error, started, finished}), the last "
    "(its final state) as event `end`; comments keep the stream alive",
    "content": {"text/event-stream": {"schema": {"type": "string"}, "example": (
        'event: state\nid: 3\ndata: {"id": "k-0123456789abcdef", "revision": 3, '
        '"status": "running", "tiles_done": 4, "tiles_total": 10, ...}\n\n')}}}}


#: Most event streams one key may hold open at once (each holds a connection and reads its
#: row every EVENTS_RECHECK_SECONDS): past it, 429.
MAX_STREAMS_PER_KEY = 16


@contextmanager
def stream_slot(db: Database, key: str) -> Iterator[None]:
    """One of the key's :data:`MAX_STREAMS_PER_KEY` event streams while the block runs; 429
    (field ``events``) when it has them all open."""
    if not db.changes.open_stream(key, MAX_STREAMS_PER_KEY):
        raise ApiError(429, "events", f"this key has {MAX_STREAMS_PER_KEY} event streams "
                       "open; close one", headers={"Retry-After": "5"})
    try:
        yield
    finally:
        db.changes.close_stream(key)


async def event_stream(db: Database, model: type, id_: str, last_event_id: str | None
                       ) -> AsyncIterator[ServerSentEvent]:
    """The ``state`` events of row ``id_`` (a :class:`Job` or :class:`Solve`) from its current
    revision (or the one after ``Last-Event-ID``), until its final state, sent as ``end``.

    States come from the database's change log (:mod:`service.events`) as they are committed;
    a revision missing there is read from the row (then the stream skips to its state)."""
    def read() -> tuple[int, dict[str, Any]] | None:
        with db.session() as s:
            row = s.get(model, id_)
            return None if row is None else (row.revision or 0, state_of(row))

    found = await run_in_threadpool(read)
    if found is None:  # purged before the stream began
        return
    # after the revision the client saw last, else from the row's current one
    last = int(last_event_id) if (last_event_id or "").isdigit() else found[0] - 1
    pending = db.changes.after(id_, last)
    if not pending or pending[0][0] != last + 1:  # not all in the log: the row's state
        pending = [found] if found[0] > last else []
    while True:
        for rev, state in pending:
            final = state["status"] in FINAL
            yield ServerSentEvent(event="end" if final else "state", id=str(rev),
                                  data=_progress(id_, rev, state))
            last = rev
            if final:
                return
        pending = await db.changes.wait(id_, last, EVENTS_RECHECK_SECONDS)
        if not pending or pending[0][0] != last + 1:
            found = await run_in_threadpool(read)
            if found is None:  # purged
                return
            if not pending or found[0] >= pending[0][0]:
                pending = [found] if found[0] > last else []
            pending = [p for p in pending if p[0] > last]


def _progress(id_: str, revision: int, state: dict[str, Any]) -> dict[str, Any]:
    """An event's data: the state with ISO times and the throughput since the start."""
    out: dict[str, Any] = {"id": id_, "revision": revision, **state}
    if "tiles_done" in state:
        ran = (state.get("finished") or time.time()) - (state.get("started") or time.time())
        new = state["tiles_done"] - (state.get("tiles_reused") or 0)
        out["tiles_per_second"] = new / ran if state.get("started") and ran > 0 else None
    if state.get("error") is not None:
        out["error"] = redact(state["error"])
    for k in ("started", "finished"):
        if k in out:
            out[k] = None if out[k] is None else iso(out[k]).isoformat()
    return out


def iso(t: float | None) -> datetime | None:
    """An epoch time as stored, as answered: an ISO 8601 UTC datetime."""
    return None if t is None else datetime.fromtimestamp(t, UTC)


Row = TypeVar("Row", Dataset, Job, Solve)
Out = TypeVar("Out")


@dataclass(frozen=True)
class Resource(Generic[Row, Out]):
    """A table whose rows belong to an API key: another key's row is answered as missing
    (404), never as forbidden."""

    model: type[Row]
    #: its name in a 404: ``no dataset 'd-…'``
    kind: str
    #: the row as answered, given the Dask dashboard's URL (jobs link it)
    out: Callable[[Row, str | None], Out]

    def get(self, db: Database, id_: str, key: str) -> Row:
        """The row ``id_`` if ``key`` owns it; 404 otherwise."""
        with db.session() as s:
            row = s.get(self.model, id_)
            if row is None or row.owner != key:
                raise not_found(self.kind, id_)
            return row

    #: the row as a list answers it (no label arrays, no architecture)
    summary: Callable[[Row, str | None], Any] | None = None

    def page(self, db: Database, key: str, limit: int, offset: int) -> tuple[list[Row], int]:
        """``limit`` rows ``key`` owns from ``offset``, oldest first (ties by id: a stable
        order), and how many it owns."""
        with db.session() as s:
            m = self.model
            q = s.query(m).filter(m.owner == key)
            return q.order_by(m.created, m.id).offset(offset).limit(limit).all(), q.count()


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows per page")]
Offset = Annotated[int, Query(ge=0, le=2**53, description="rows to skip")]


def add_list_get(router: APIRouter, res: Resource[Row, Out], summary: type, schema: type,
                 name: str, description: str | None = None) -> None:
    """Add ``GET <prefix>`` (a page of the key's rows as ``summary``, oldest first, with
    ``Link`` headers and ``X-Total-Count``) and ``GET <prefix>/{<name>_id}`` (one as
    ``schema``, 404 unless the key's) to ``router``; their operationIds are ``list_<name>s``
    and ``get_<name>``; ``description`` documents the get."""
    id_param = f"{name}_id"

    def list_rows(key: Owner, db: DB, dash: Dashboard, request: Request, response: Response,
                  limit: Limit = DEFAULT_PAGE, offset: Offset = 0) -> list[Any]:
        rows, total = res.page(db, key, limit, offset)
        response.headers["X-Total-Count"] = str(total)
        if links := page_links(request, limit, offset, total):
            response.headers["Link"] = links
        return [(res.summary or res.out)(r, dash) for r in rows]

    def get_row(id_: Annotated[str, Path(alias=id_param)], key: Owner, db: DB,
                dash: Dashboard) -> Any:
        return res.out(res.get(db, id_, key), dash)

    pages = {"headers": {
        "Link": {"description": 'RFC 8288 links to the `first`, `prev`, `next` and `last` '
                 'pages (`<...?limit=100&offset=100>; rel="next"`)',
                 "schema": {"type": "string"}},
        "X-Total-Count": {"description": "rows in all pages", "schema": {"type": "integer"}}}}
    router.add_api_route("", list_rows, methods=["GET"], name=f"list_{name}s",
                         operation_id=f"list_{name}s", response_model=list[summary],
                         responses={200: pages, **problems(401, 422)},
                         summary=f"List {res.kind}s",
                         description=f"A page of this key's {res.kind}s, oldest first; "
                         "follow `Link: rel=\"next\"`.")
    router.add_api_route(f"/{{{id_param}}}", get_row, methods=["GET"], name=f"get_{name}",
                         operation_id=f"get_{name}", response_model=schema,
                         responses=problems(401, 404), summary=f"Get a {res.kind}",
                         description=description)


def add_events(router: APIRouter, res: Resource[Row, Out], name: str,
               description: str) -> None:
    """Add ``GET <prefix>/{<name>_id}/events`` (operationId ``<name>_events``): the row's
    changes as Server-Sent Events (:func:`event_stream`). The key's row (404 otherwise) and
    one of its :data:`MAX_STREAMS_PER_KEY` streams (429 past them) are taken before the
    stream starts; the slot is freed when it ends."""
    id_param = f"{name}_id"

    def owned(id_: Annotated[str, Path(alias=id_param)], key: Owner,
              db: DB) -> Iterator[Row]:
        row = res.get(db, id_, key)
        with stream_slot(db, key):
            yield row

    async def events(row: Annotated[Any, Depends(owned)], db: DB,
                     last_event_id: Annotated[str | None, Header(
                         max_length=20, description="resume after this revision")] = None
                     ) -> AsyncIterator[ServerSentEvent]:
        async for e in event_stream(db, res.model, row.id, last_event_id):
            yield e

    router.add_api_route(f"/{{{id_param}}}/events", events, methods=["GET"],
                         name=f"{name}_events", operation_id=f"{name}_events",
                         response_class=EventSourceResponse, description=description,
                         responses={**EVENTS_DOC, **problems(401, 404, 429)})


def page_links(request: Request, limit: int, offset: int, total: int) -> str:
    """The ``Link`` header of a page: ``first``, ``prev``, ``next``, ``last`` (RFC 8288),
    each the request's URL with its own ``offset``."""
    last = max(0, (total - 1) // limit * limit)
    rels = {"first": 0, "last": last}
    if offset > 0:
        rels["prev"] = max(0, min(offset - limit, last))
    if offset + limit < total:
        rels["next"] = offset + limit
    url = request.url
    return ", ".join(
        f'<{url.path}?{_query(url.query, limit, o)}>; rel="{rel}"'
        for rel, o in sorted(rels.items(), key=lambda kv: ("first", "prev", "next",
                                                             "last").index(kv[0])))


def _query(query: str, limit: int, offset: int) -> str:
    from urllib.parse import parse_qsl, urlencode

    kept = [(k, v) for k, v in parse_qsl(query) if k not in ("limit", "offset")]
    return urlencode([*kept, ("limit", limit), ("offset", offset)])


def admit(db: Database, settings: Settings, key: str,
          apply: Callable[[Session], None]) -> None:
    """``apply(session)`` in the transaction that counts the key's active jobs; 429
    past the limit."""
    n = db.admit(key, settings.max_jobs_per_key, apply)
    if n is not None:
        raise ApiError(429, "max_jobs_per_key", f"this key has {n} queued or running "
                       f"jobs, the limit is {settings.max_jobs_per_key}; wait or cancel one",
                       headers={"Retry-After": str(retry_after(db, key))})


def retry_after(db: Database, key: str) -> int:
    """Seconds until one of the key's jobs is likely to have ended: the shortest ETA of its
    running kernel jobs (1 s to 1 h), else 30 s."""
    with db.session() as s:
        etas = [e for (e,) in s.query(Job.eta_seconds).filter(
            Job.owner == key, Job.status == "running", Job.eta_seconds.is_not(None))]
    return int(min(3600, max(1, min(etas)))) if etas else 30


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

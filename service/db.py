"""Job database: API keys, datasets, kernel jobs, solves (SQLAlchemy; SQLite by default).

Array data never enters the database: rows hold ids, shapes, status and the store URLs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    Integer,
    String,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from workers.jobs import ACTIVE, FINAL, JobSpec, Status, advance, can

from .events import ChangeLog, state_of

__all__ = ["ACTIVE", "FINAL", "ApiKey", "Database", "Dataset", "Job", "Solve", "spec_of"]


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An API key: the public id and the SHA-256 of its secret (the secret is never stored).

    Times are epoch seconds; ``revoked``/``expires``/``rotated`` are None when not set (and in
    rows of databases older than these columns, as is ``source``, read as ``"cli"``).
    """

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[float] = mapped_column(Float, default=time.time)
    revoked: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: "cli" (``ntk keys create``) or "env" (``NTK_API_KEYS``, which then sets its secret)
    source: Mapped[str] = mapped_column(String(8), default="cli")
    rotated: Mapped[float | None] = mapped_column(Float, nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(32), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    n: Mapped[int] = mapped_column(Integer)
    x_shape: Mapped[list] = mapped_column(JSON)
    x_dtype: Mapped[str] = mapped_column(String(16))
    y_shape: Mapped[list | None] = mapped_column(JSON, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64))
    x_sha256: Mapped[str] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Float, default=time.time)


class Job(Base):
    """A kernel job: train x train, plus test x train when a test set is given."""

    __tablename__ = "kernel_jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(32), index=True)
    train: Mapped[str] = mapped_column(String(40))
    test: Mapped[str | None] = mapped_column(String(40), nullable=True)
    n_train: Mapped[int] = mapped_column(Integer)
    n_test: Mapped[int | None] = mapped_column(Integer, nullable=True)
    url: Mapped[str] = mapped_column(String(2000))
    arch: Mapped[dict] = mapped_column(JSON)
    kernels: Mapped[list] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(16))
    tile: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED, index=True)
    error: Mapped[str | None] = mapped_column(String(4000), nullable=True)
    tiles_done: Mapped[int] = mapped_column(Integer, default=0)
    tiles_total: Mapped[int] = mapped_column(Integer, default=0)
    tiles_reused: Mapped[int] = mapped_column(Integer, default=0)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    started: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    runs: Mapped[int] = mapped_column(Integer, default=0)
    method: Mapped[str] = mapped_column(String(16), default="exact")
    m: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    #: a family job's member depths (None: one network)
    depths: Mapped[list | None] = mapped_column(JSON, nullable=True)
    #: a family job's variants (fixed bottom blocks of its NTK; None: none)
    variants: Mapped[list | None] = mapped_column(JSON, nullable=True)
    #: a family job's bias grid (None: none)
    b_stds: Mapped[list | None] = mapped_column(JSON, nullable=True)
    #: input transforms fit on the train rows ({zca, standardize}; None: none)
    preprocess: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    #: committed writes to this row (its event stream's ids; None in older rows: 0)
    revision: Mapped[int | None] = mapped_column(Integer, default=0, nullable=True)


class Solve(Base):
    __tablename__ = "solves"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(32), index=True)
    kernel: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(String(2000))
    params: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED, index=True)
    error: Mapped[str | None] = mapped_column(String(4000), nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    analyses: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: committed writes to this row (its event stream's ids; None in older rows: 0)
    revision: Mapped[int | None] = mapped_column(Integer, default=0, nullable=True)


class Database:
    """Engine + session factory; tables are created on first use. A SQLite file and its
    directory are private to the service's user (0600 / 0700).

    Every transaction that writes a job or solve row increments its ``revision`` once and,
    once committed, records the new state in :attr:`changes` (the event streams' source)."""

    def __init__(self, url: str) -> None:
        kw: dict[str, Any] = {}
        path = None
        if url.startswith("sqlite"):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kw)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.changes = ChangeLog()
        event.listen(self._sessions, "before_flush", _bump_revisions)
        event.listen(self._sessions, "after_commit", self._record_changes)
        event.listen(self._sessions, "after_rollback", lambda s: s.info.pop(_CHANGED, None))
        self._admit = threading.Lock()
        if path and path != ":memory:":
            for f in (path, f"{path}-wal", f"{path}-shm"):
                if os.path.exists(f):
                    os.chmod(f, 0o600)

    def admit(self, owner: str, limit: int, apply: Callable[[Session], None]) -> int | None:
        """Run ``apply`` (which adds a job or solve of ``owner``, or requeues one) only if
        the key has fewer than ``limit`` queued or running kernel jobs and solves; returns
        the count found when it has not (``apply`` not run), else None.

        The count and ``apply`` are one transaction that first locks the key's row (``SELECT
        ... FOR UPDATE`` on PostgreSQL); SQLite has one writer at a time and this process
        admits one request at a time, so concurrent submits cannot both see room for one.
        """
        with self._admit, self.session() as s:
            s.execute(select(ApiKey.id).where(ApiKey.id == owner).with_for_update())
            n = sum(s.scalar(select(func.count()).select_from(m).where(
                m.owner == owner, m.status.in_(ACTIVE))) or 0 for m in (Job, Solve))
            if n >= limit:
                return n
            apply(s)
        return None

    def _add_missing_columns(self) -> None:
        """Bring a database made by an older version up to date: columns added since are
        added (NULL in old rows, which the code reads as their defaults)."""
        insp = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in insp.get_columns(table.name)}
                for col in table.columns:
                    if col.name not in have:
                        kind = col.type.compile(self.engine.dialect)
                        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {col.name} "
                                          f"{kind}"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def transition(self, model: type[Base], id_: str, event: str, **values: Any) -> bool:
        """Move a job's or solve's status by ``event`` of the lifecycle table
        (:data:`workers.jobs.TRANSITIONS`) and set ``values`` in the same transaction; False,
        with nothing written, if the row is gone or the table does not allow the event from
        its status (a job cancelled meanwhile does not become succeeded)."""
        with self.session() as s:
            row = s.get(model, id_)
            if row is None or not can(event, row.status):
                return False
            row.status = advance(row.status, event)
            for k, v in values.items():
                setattr(row, k, v)
        return True

    def _record_changes(self, session: Session) -> None:
        for id_, row in session.info.pop(_CHANGED, {}).items():
            self.changes.record(id_, row.revision, state_of(row))

    def job_spec(self, jid: str, active: bool = False) -> tuple[JobSpec, Job] | None:
        """A kernel job as the workers run it, with its row; None if it is gone (or, with
        ``active``, no longer queued or running). A deleted dataset's URL is None."""
        with self.session() as s:
            job = s.get(Job, jid)
            if job is None or (active and job.status not in ACTIVE):
                return None
            train = s.get(Dataset, job.train)
            test = s.get(Dataset, job.test) if job.test else None
            return spec_of(job, train, test), job

    def update(self, model: type[Base], id_: str, **values: Any) -> None:
        with self.session() as s:
            row = s.get(model, id_)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)


_CHANGED = "ntk_changed"


def _bump_revisions(session: Session, _ctx: Any, _instances: Any) -> None:
    """Before a flush: each job or solve row added or changed in this transaction, the first
    time it is flushed, gets its next revision."""
    changed = session.info.setdefault(_CHANGED, {})
    for row in (*session.new, *session.dirty):
        if isinstance(row, (Job, Solve)) and row.id not in changed and (
                row in session.new or session.is_modified(row)):
            row.revision = (row.revision or 0) + 1
            changed[row.id] = row


def spec_of(job: Job, train: Dataset | None = None, test: Dataset | None = None) -> JobSpec:
    """The kernel job ``job`` as its kind reads it. The inputs' URLs come from the dataset
    rows given (None where not given or deleted): only a start and a solve's stored labels
    need them, reads of the stored kernel do not."""
    return JobSpec(url=job.url, method=job.method, train=train and train.url,
                   test=test and test.url, has_test=bool(job.test), n_train=job.n_train,
                   arch=job.arch, kernels=tuple(job.kernels), dtype=job.dtype, tile=job.tile,
                   m=job.m, seed=job.seed,
                   depths=None if job.depths is None else tuple(job.depths),
                   variants=None if job.variants is None else tuple(job.variants),
                   b_stds=None if job.b_stds is None else tuple(job.b_stds),
                   preprocess=job.preprocess)


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the job monitor's writes
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()

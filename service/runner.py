"""The service's job engine: kernel jobs and solves run on one Dask client; the database is the
source of truth for what should run, the store's tile markers for what is already done.

A kernel job is one or two parts (``train`` = train x train, ``test`` = test x train) that
its kind (:mod:`workers.jobs`, ``exact`` or ``features``) starts as :class:`workers.GramJob`
handles. A monitor thread copies their progress into the job's row twice a second; every
status change goes through the lifecycle table (``Database.transition``). On start, every job
left queued or running by a previous process is queued and started again: a kind reuses every
tile marked done, so a restart loses only tiles in flight.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any
from urllib.parse import urlsplit

from ntkcompute.errors import InputError
from workers import GramJob
from workers.cluster import dashboard_url, get_client, security_from, shutdown
from workers.jobs import ACTIVE, progress, solves
from workers.store import CorruptChunk, remove_group

from . import logs
from .config import Settings
from .db import Database, Job, Solve

log = logging.getLogger("ntkcompute.service")

POLL_SECONDS = 0.5
#: The path the embedded cluster serves its dashboard under and the service proxies.
DASHBOARD_PREFIX = "/dashboard"
#: Longest wait for the scheduler's answer to a readiness check.
READY_SECONDS = 5.0
#: How long a cancelled job's parts are kept for a purge to wait on their running tasks
#: (tiles are sized to take seconds).
STOPPING_SECONDS = 600.0


def _ping(dask_scheduler: Any = None) -> int:
    return len(dask_scheduler.workers)


class Runner:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.client: Any = None
        #: the scheduler dashboard's status page (None without one), once started: the
        #: service's own ``/dashboard/status`` where it proxies the dashboard
        self.dashboard_url: str | None = None
        #: ``http://host:port`` of a dashboard served under :data:`DASHBOARD_PREFIX`, which
        #: ``/dashboard`` proxies (None: not proxied)
        self.dashboard_upstream: str | None = None
        self._cluster: Any = None
        self._active: dict[str, tuple[float, dict[str, GramJob]]] = {}
        self._starting: dict[str, Future] = {}  # start threads in flight, by job
        # cancelled or failed jobs' parts, for a purge to wait on: (when, parts)
        self._stopping: dict[str, tuple[float, list[GramJob]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._starts = ThreadPoolExecutor(2, thread_name_prefix="ntk-start")
        self._solves = ThreadPoolExecutor(2, thread_name_prefix="ntk-solve")
        self._monitor = threading.Thread(target=self._watch, daemon=True, name="ntk-monitor")

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Join (or start) the Dask cluster, then resume every unfinished job."""
        st = self.settings
        self.client, self._cluster = get_client(
            scheduler=st.scheduler, n_workers=st.workers,
            security=security_from(st.tls_ca_file, st.tls_cert, st.tls_key, env=False),
            reuse_default=False, dashboard_address=st.dashboard,
            dashboard_prefix=DASHBOARD_PREFIX)
        link = dashboard_url(self.client)
        if link and self._cluster is not None:
            # the embedded cluster serves it under our prefix: proxied at the same path
            where = urlsplit(link)
            self.dashboard_upstream = f"{where.scheme}://{where.netloc}"
            link = f"{DASHBOARD_PREFIX}/status"
        self.dashboard_url = st.dashboard_url or link
        self._monitor.start()
        with self.db.session() as s:
            jobs = [j.id for j in s.query(Job).filter(Job.status.in_(ACTIVE))]
            solves = [v.id for v in s.query(Solve).filter(Solve.status.in_(ACTIVE))]
        for model, ids in ((Job, jobs), (Solve, solves)):
            for id_ in ids:  # left running by the process before this one: queued again
                self.db.transition(model, id_, "requeue")
        for jid in jobs:
            log.info("resuming kernel job %s", jid)
            self.submit_kernel(jid)
        for sid in solves:
            self.submit_solve(sid)

    def stop(self) -> None:
        """Stop watching; unfinished jobs stay queued/running in the DB for the next start."""
        self._stop.set()
        self._starts.shutdown(wait=False, cancel_futures=True)
        self._solves.shutdown(wait=False, cancel_futures=True)
        shutdown(self.client, self._cluster, own_client=True)

    def ready(self) -> dict[str, str]:
        """Scheduler reachable (and how many workers it has), answered within
        :data:`READY_SECONDS` (a client reconnecting to a lost scheduler would wait longer)."""
        if self.client.status != "running":
            return {"scheduler": f"unreachable: the client is {self.client.status}"}
        try:
            n = self.client.sync(self.client._run_on_scheduler, _ping,
                                 callback_timeout=READY_SECONDS)
        except Exception as e:
            return {"scheduler": f"unreachable: {type(e).__name__}: {e}"}
        return {"scheduler": f"ok ({n} workers)"}

    # kernel jobs -----------------------------------------------------------------------
    def submit_kernel(self, jid: str, verify: bool = False) -> None:
        """Start (or resume) a job in the background; ``verify``: check every stored chunk
        first and recompute exactly the damaged ones (an explicit resume)."""
        with self._lock:
            self._starting[jid] = self._starts.submit(self._start_kernel, jid, verify)

    def _start_kernel(self, jid: str, verify: bool) -> None:
        try:
            self._start_parts(jid, verify)
        finally:  # after the parts are registered (a purge waits for this, then for them)
            with self._lock:
                self._starting.pop(jid, None)

    def _start_parts(self, jid: str, verify: bool) -> None:
        parts: dict[str, GramJob] = {}
        try:
            found = self.db.job_spec(jid, active=True)
            if found is None:  # cancelled or purged before it started
                return
            job, row = found
            job.kind.start(job, parts, client=self.client, memory=self.settings.task_memory,
                           verify=verify)
        except Exception as e:
            with self._lock:  # the train part may have started before the test part failed
                self._cancel_parts(jid, parts)
            self._fail_kernel(jid, e)
            return
        reused = sum(p.tiles_reused for p in parts.values())
        total = sum(p.tiles_total for p in parts.values())
        with self._lock:
            started = self.db.transition(
                Job, jid, "start", started=time.time(), finished=None, error=None,
                runs=row.runs + 1, tiles_total=total, tiles_reused=reused, tiles_done=reused)
            if not started:  # cancelled or purged while starting
                self._cancel_parts(jid, parts)
                return
            self._active[jid] = (time.time(), parts)
        logs.event("started", "kernel", jid, tiles=total, tiles_reused=reused,
                   workers=self._workers(), method=row.method or "exact")

    def _fail_kernel(self, jid: str, e: BaseException) -> None:
        if not isinstance(e, (InputError, CorruptChunk)):
            log.error("kernel job %s failed to start:\n%s", jid, traceback.format_exc())
        if self.db.transition(Job, jid, "fail", error=f"{type(e).__name__}: {e}",
                              finished=time.time()):
            logs.event("failed", "kernel", jid, logging.ERROR, error=f"{type(e).__name__}: {e}")

    def cancel_kernel(self, jid: str) -> None:
        """Mark the job cancelled and cancel its tasks; finished tiles stay. A task already
        running on a worker runs to its end (see :meth:`purge_kernel`)."""
        with self._lock:
            if self.db.transition(Job, jid, "cancel", finished=time.time(), eta_seconds=None):
                logs.event("cancelled", "kernel", jid)
            entry = self._active.pop(jid, None)
            if entry is not None:
                self._cancel_parts(jid, entry[1])

    def _cancel_parts(self, jid: str, parts: dict[str, GramJob]) -> None:
        """Cancel a job's parts and keep them for a purge to wait on (the lock held)."""
        for p in parts.values():
            p.cancel()
        self._stopping[jid] = (time.time(), list(parts.values()))

    def purge_kernel(self, jid: str, url: str, timeout: float = 60.0) -> bool:
        """Cancel the job, wait until its start and every task of it have ended (a cancelled
        task that already runs would write its tile after the delete), then delete its
        arrays. False, with nothing deleted, if tasks are still running after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self.cancel_kernel(jid)
        with self._lock:
            start = self._starting.get(jid)
        if start is not None:
            wait_futures([start], timeout=max(0.0, deadline - time.monotonic()))
            if not start.done():
                return False
        with self._lock:
            parts = self._stopping.get(jid, (0.0, []))[1]
        for p in parts:
            if not p.stop(max(0.0, deadline - time.monotonic())):
                return False
        with self._lock:
            self._stopping.pop(jid, None)
        remove_group(url)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                items = list(self._active.items())
                for jid in [j for j, (t, _) in self._stopping.items()
                            if time.time() - t > STOPPING_SECONDS]:
                    del self._stopping[jid]
            for jid, (t0, parts) in items:
                try:
                    self._update(jid, t0, parts)
                except Exception:
                    log.exception("monitoring job %s", jid)

    def _update(self, jid: str, t0: float, parts: dict[str, GramJob]) -> None:
        pr = progress(parts, t0)
        values: dict[str, Any] = {"tiles_done": pr.tiles_done, "eta_seconds": pr.eta_seconds}
        if pr.event == "fail":
            with self._lock:
                self._cancel_parts(jid, parts)
            values["error"] = pr.error
        if pr.event is not None:
            values["finished"] = time.time()
        with self._lock:
            if jid not in self._active:  # cancelled meanwhile
                return
            if pr.event is None:
                self.db.update(Job, jid, **values)
                return
            del self._active[jid]
            ended = self.db.transition(Job, jid, pr.event, **values)
        if ended:
            self._log_end(jid, t0, parts, pr.event, pr.error)

    def _log_end(self, jid: str, t0: float, parts: dict[str, GramJob], event: str,
                 error: str | None) -> None:
        """The lifecycle lines of a job that ended: each failed tile, then finished/failed
        with its time, tiles computed and kernel entries per second."""
        seconds = time.time() - t0
        tiles = sum(p.tiles_computed for p in parts.values())
        if event == "fail":
            for p in parts.values():
                for f in p.failures:
                    logs.event("tile_failed", "kernel", jid, logging.WARNING, **f)
            logs.event("failed", "kernel", jid, logging.ERROR, seconds=seconds, tiles=tiles,
                       error=error)
            return
        with self.db.session() as s:
            entries = _entries(s.get(Job, jid))
        logs.event("finished", "kernel", jid, seconds=seconds, tiles=tiles, entries=entries,
                   entries_per_second=entries / seconds if seconds > 0 else None)

    def _workers(self) -> int | None:
        """How many workers the cluster has now (None if the scheduler does not say)."""
        try:
            return len(self.client.scheduler_info().get("workers", {}))
        except Exception:
            return None

    # solves ----------------------------------------------------------------------------
    def submit_solve(self, sid: str) -> None:
        self._solves.submit(self._run_solve, sid)

    def _run_solve(self, sid: str) -> None:
        t0 = time.time()
        try:
            if not self.db.transition(Solve, sid, "start"):
                return
            logs.event("started", "solve", sid, workers=self._workers())
            with self.db.session() as s:
                row = s.get(Solve, sid)
                p, url = row.params, row.url
            found = self.db.job_spec(row.kernel)
            if found is None:
                raise InputError("its kernel job was deleted", field="kernel")
            job = found[0]
            labels = solves.labels_of(p.get("labels"), job.train, "labels")
            test_labels = solves.labels_of(p.get("test_labels"), job.test, "test_labels",
                                           required=False) if job.has_test else None
            results = job.kind.solve(job, labels, test_labels, p, client=self.client)
            metrics, analyses = solves.save(url, results)
            if self.db.transition(Solve, sid, "succeed", metrics=metrics, analyses=analyses,
                                  finished=time.time()):
                logs.event("finished", "solve", sid, seconds=time.time() - t0)
        except Exception as e:
            if not isinstance(e, InputError):
                log.error("solve %s failed:\n%s", sid, traceback.format_exc())
            if self.db.transition(Solve, sid, "fail", error=f"{type(e).__name__}: {e}",
                                  finished=time.time()):
                logs.event("failed", "solve", sid, logging.ERROR, seconds=time.time() - t0,
                           error=f"{type(e).__name__}: {e}")


def _entries(row: Job | None) -> int:
    """How many kernel entries a job stores: (n² + m n) per kernel and member."""
    if row is None:
        return 0
    members = len(row.b_stds or [0]) * len(row.depths or [0])
    per = sum(members * (len(row.variants or [0]) if k == "ntk" else 1) for k in row.kernels)
    return (row.n_train * row.n_train + (row.n_test or 0) * row.n_train) * per

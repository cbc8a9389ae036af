"""The service's job engine: kernel jobs and solves run on one Dask client; the database is the
source of truth for what should run, the store's tile markers for what is already done.

A kernel job is one or two :func:`workers.compute_gram` jobs (``<job>/train``, and
``<job>/test`` = test x train). A monitor thread copies their progress into the job's row
twice a second. On start, every job left queued or running by a previous process is started
again: ``compute_gram`` reuses every tile marked done, so a restart loses only tiles in flight.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import numpy as np

from ntkcompute.errors import InputError
from workers import GramJob, compute_features, compute_gram, solve_features
from workers import solve as run_solve
from workers.cluster import get_client, security_from, shutdown
from workers.store import CorruptChunk, open_group, read, read_dataset, remove_group, write_array

from .config import Settings
from .db import ACTIVE, Database, Dataset, Job, Solve

log = logging.getLogger("ntkcompute.service")

POLL_SECONDS = 0.5
#: How long a cancelled job's parts are kept for a purge to wait on their running tasks
#: (tiles are sized to take seconds).
STOPPING_SECONDS = 600.0


def _ping(dask_scheduler: Any = None) -> int:
    return len(dask_scheduler.workers)


class Runner:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.client: Any = None
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
            security=security_from(st.tls_ca_file, st.tls_cert, st.tls_key, env=False))
        self._monitor.start()
        with self.db.session() as s:
            jobs = [j.id for j in s.query(Job).filter(Job.status.in_(ACTIVE))]
            solves = [v.id for v in s.query(Solve).filter(Solve.status.in_(ACTIVE))]
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
        """Scheduler reachable (and how many workers it has)."""
        try:
            n = self.client.run_on_scheduler(_ping)
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
        try:
            with self.db.session() as s:
                job = s.get(Job, jid)
                if job is None or job.status not in ACTIVE:
                    return
                train = s.get(Dataset, job.train)
                test = s.get(Dataset, job.test) if job.test else None
                if train is None or (job.test and test is None):
                    raise InputError("a dataset of this job was deleted", field="train")
            common = dict(arch=job.arch, tile=job.tile, client=self.client,
                          get=tuple(job.kernels), dtype=job.dtype, verify=verify)
            parts: dict[str, GramJob] = {}
            if job.method == "features":  # one feature map for train and test rows
                feats = dict(m=job.m, seed=job.seed, **common)
                for part, ds in (("train", train), ("test", test)):
                    if ds is not None:
                        parts[part] = compute_features(x=ds.url, store=f"{job.url}/{part}",
                                                       **feats)
            else:
                common["memory"] = self.settings.task_memory
                parts["train"] = compute_gram(x1=train.url, store=f"{job.url}/train", **common)
                if test is not None:
                    parts["test"] = compute_gram(x1=test.url, x2=train.url,
                                                 store=f"{job.url}/test", **common)
        except Exception as e:
            with self._lock:
                started = list(locals().get("parts", {}).values())
                for p in started:  # the train part started, the test part failed
                    p.cancel()
                self._stopping[jid] = (time.time(), started)
            self._fail_kernel(jid, e)
            return
        with self._lock, self.db.session() as s:
            job = s.get(Job, jid)
            if job is None or job.status not in ACTIVE:  # cancelled or purged while starting
                for p in parts.values():
                    p.cancel()
                self._stopping[jid] = (time.time(), list(parts.values()))
                return
            job.status, job.started, job.finished = "running", time.time(), None
            job.error, job.runs = None, job.runs + 1
            job.tiles_total = sum(p.tiles_total for p in parts.values())
            job.tiles_reused = sum(p.tiles_reused for p in parts.values())
            job.tiles_done = job.tiles_reused
            self._active[jid] = (time.time(), parts)

    def _fail_kernel(self, jid: str, e: BaseException) -> None:
        if not isinstance(e, (InputError, CorruptChunk)):
            log.error("kernel job %s failed to start:\n%s", jid, traceback.format_exc())
        self.db.update(Job, jid, status="failed", error=f"{type(e).__name__}: {e}",
                       finished=time.time())

    def cancel_kernel(self, jid: str) -> None:
        """Mark the job cancelled and cancel its tasks; finished tiles stay. A task already
        running on a worker runs to its end (see :meth:`purge_kernel`)."""
        with self._lock:
            self.db.update(Job, jid, status="cancelled", finished=time.time(),
                           eta_seconds=None)
            entry = self._active.pop(jid, None)
            if entry is not None:
                for p in entry[1].values():
                    p.cancel()
                self._stopping[jid] = (time.time(), list(entry[1].values()))

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
        done = sum(p.tiles_done for p in parts.values())
        computed = sum(p.tiles_computed for p in parts.values())
        total = sum(p.tiles_total for p in parts.values())
        left = total - done
        eta = (time.time() - t0) / computed * left if computed else None
        statuses = {name: p.status for name, p in parts.items()}
        values: dict[str, Any] = {"tiles_done": done, "eta_seconds": eta}
        if "failed" in statuses.values():
            errors = [f"{n}: {p.error}" for n, p in parts.items() if p.error]
            for p in parts.values():
                p.cancel()
            with self._lock:
                self._stopping[jid] = (time.time(), list(parts.values()))
            values.update(status="failed", error="; ".join(errors), finished=time.time(),
                          eta_seconds=None)
        elif all(v == "succeeded" for v in statuses.values()):
            values.update(status="succeeded", finished=time.time(), eta_seconds=0.0)
        with self._lock:
            if jid not in self._active:  # cancelled meanwhile
                return
            if "status" in values:
                del self._active[jid]
            self.db.update(Job, jid, **values)

    # solves ----------------------------------------------------------------------------
    def submit_solve(self, sid: str) -> None:
        self._solves.submit(self._run_solve, sid)

    def _run_solve(self, sid: str) -> None:
        try:
            with self.db.session() as s:
                row = s.get(Solve, sid)
                job = s.get(Job, row.kernel)
                train = s.get(Dataset, job.train)
                test = s.get(Dataset, job.test) if job.test else None
                row.status = "running"
            p = row.params
            labels = _labels(p.get("labels"), train, "labels")
            test_labels = _labels(p.get("test_labels"), test, "test_labels", required=False) \
                if test is not None else None
            results = self._solve_all(job, p, labels, test_labels)
            metrics, analyses = self._save(row.url, results)
            self.db.update(Solve, sid, status="succeeded", metrics=metrics,
                           analyses=analyses, finished=time.time())
        except Exception as e:
            if not isinstance(e, InputError):
                log.error("solve %s failed:\n%s", sid, traceback.format_exc())
            self.db.update(Solve, sid, status="failed", error=f"{type(e).__name__}: {e}",
                           finished=time.time())

    def _solve_all(self, job: Job, p: dict, labels: np.ndarray,
                   test_labels: np.ndarray | None) -> list:
        an = p.get("analyses") or {}
        kw = dict(solver=p["solver"], name=p["kind"], tol=p["tol"], maxiter=p["maxiter"],
                  preconditioner=None if p["preconditioner"] == "none" else p["preconditioner"],
                  rank=min(p["rank"], job.n_train), cross=f"{job.url}/test" if job.test else None,
                  test_labels=test_labels, client=self.client, save=None, lr=an.get("lr", 1.0))
        lams = list(p["lambdas"])
        relative = bool(p.get("relative"))
        if job.method == "features":
            return [solve_features(f"{job.url}/train", labels, lams if len(lams) > 1
                                   else lams[0], name=p["kind"],
                                   test=f"{job.url}/test" if job.test else None,
                                   test_labels=test_labels, tol=p["tol"],
                                   maxiter=p["maxiter"], client=self.client,
                                   relative=relative)]
        kw["relative"] = relative
        analysis = dict(times=an.get("times"), bound=an.get("bound", False),
                        spectrum_k=an.get("spectrum", 0),
                        min_eig=an.get("min_eigenvalue", False))
        if p["solver"] == "direct":  # one eigendecomposition serves every λ
            return [run_solve(f"{job.url}/train", labels, lams if len(lams) > 1 else lams[0],
                              **kw, **analysis)]
        # CG: one solve per λ, warm-started from the previous λ; analyses once
        out, x0 = [], None
        for i, lam in enumerate(lams):
            r = run_solve(f"{job.url}/train", labels, lam, x0=x0, **kw,
                          **(analysis if i == 0 else {}))
            x0 = r.coefficients
            out.append(r)
        return out

    def _save(self, url: str, results: list) -> tuple[dict, dict]:
        """Write coefficients (L, n, c) and predictions (L, m, c) under the solve's URL."""
        g = open_group(url, mode="w")
        coefs = np.concatenate([r.coefficients if r.coefficients.ndim == 3
                                else r.coefficients[None] for r in results])
        write_array(g, "coefficients", coefs, 1, computed=True)
        if results[0].predictions is not None:
            preds = np.concatenate([r.predictions if r.predictions.ndim == 3
                                    else r.predictions[None] for r in results])
            write_array(g, "predictions", preds, 1, computed=True)
        per = []
        for r in results:
            sweep = r.metrics.get("per_lambda")
            for k, lam in enumerate(r.lams):
                m = sweep[k] if sweep else dict(r.metrics)
                per.append({"lambda": lam, "solver": r.solver, "iterations": r.iterations,
                            "converged": r.converged, "seconds": r.seconds, **m})
        metrics: dict[str, Any] = {"per_lambda": per}
        if "definiteness" in results[0].analyses:  # eigenvalues clamped or negative
            metrics["definiteness"] = results[0].analyses["definiteness"]
        scored = [m for m in per if "accuracy" in m] or [m for m in per if "mse" in m]
        if scored:
            key = "accuracy" if "accuracy" in scored[0] else "mse"
            pick = max if key == "accuracy" else min
            metrics["best"] = pick(scored, key=lambda m: m[key])
        return metrics, results[0].analyses


def _labels(given: list | None, ds: Dataset | None, field: str, required: bool = True
            ) -> np.ndarray | None:
    if given is not None:
        return np.asarray(given)
    y = read_dataset(ds.url)[1] if ds is not None else None
    if y is None:
        if required:
            raise InputError("not given, and the train dataset has no y", field=field)
        return None
    return np.asarray(read(y))

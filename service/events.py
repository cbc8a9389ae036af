"""Every change of a kernel job's or solve's row, in order, for its Server-Sent Events stream.

Each committed write to a ``jobs`` or ``solves`` row increments its ``revision`` once
(:class:`service.db.Database` does so for every session); the new state is recorded here
under that revision, and the event streams of ``GET /v1/kernels/{id}/events`` and ``GET
/v1/solves/{id}/events`` send each recorded state once, in revision order, as it happens.
A revision this process did not record (a write by another replica of the service, or one
older than the log keeps) is read from the database instead: a stream then skips to the
row's current state, never sends a stale one.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict, deque
from typing import Any

#: The columns of a job's or solve's row an event carries (those the row has).
STATE_FIELDS = ("status", "tiles_done", "tiles_total", "tiles_reused", "eta_seconds", "error",
                "started", "finished")


def state_of(row: Any) -> dict[str, Any]:
    """The progress columns of a job or solve row (epoch seconds as stored)."""
    return {f: getattr(row, f) for f in STATE_FIELDS if hasattr(row, f)}


class ChangeLog:
    """The recent states of every job and solve, by revision, and waiting for the next.

    Thread-safe: written by whatever thread commits (the job monitor, the request threads),
    awaited by event streams on the event loop. Keeps the last ``keep`` states of the last
    ``jobs`` rows written."""

    def __init__(self, keep: int = 256, jobs: int = 4096) -> None:
        self.keep, self.jobs = keep, jobs
        self._lock = threading.Lock()
        self._log: OrderedDict[str, deque[tuple[int, dict[str, Any]]]] = OrderedDict()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._streams: dict[str, int] = {}  # open event streams per key

    def open_stream(self, owner: str, most: int) -> bool:
        """Count one more open event stream of key ``owner``; False (not counted) when it
        already has ``most``."""
        with self._lock:
            if self._streams.get(owner, 0) >= most:
                return False
            self._streams[owner] = self._streams.get(owner, 0) + 1
            return True

    def close_stream(self, owner: str) -> None:
        with self._lock:
            left = self._streams.get(owner, 1) - 1
            if left > 0:
                self._streams[owner] = left
            else:
                self._streams.pop(owner, None)

    def record(self, id_: str, revision: int, state: dict[str, Any]) -> None:
        """``id_`` is now at ``revision`` with ``state``; wake its streams."""
        with self._lock:
            log = self._log.get(id_)
            if log is None:
                log = self._log[id_] = deque(maxlen=self.keep)
                while len(self._log) > self.jobs:
                    self._log.popitem(last=False)
            self._log.move_to_end(id_)
            log.append((revision, dict(state)))
            waiters = list(self._waiters.get(id_, ()))
        for loop, ev in waiters:
            loop.call_soon_threadsafe(ev.set)

    def after(self, id_: str, revision: int) -> list[tuple[int, dict[str, Any]]]:
        """The recorded states of ``id_`` newer than ``revision``, oldest first."""
        with self._lock:
            return [(r, dict(s)) for r, s in self._log.get(id_, ()) if r > revision]

    async def wait(self, id_: str, revision: int, timeout: float
                   ) -> list[tuple[int, dict[str, Any]]]:
        """:meth:`after`, waiting up to ``timeout`` seconds for one when there is none yet."""
        ev, loop = asyncio.Event(), asyncio.get_running_loop()
        with self._lock:
            self._waiters.setdefault(id_, set()).add((loop, ev))
        try:
            newer = self.after(id_, revision)
            if not newer:
                try:
                    await asyncio.wait_for(ev.wait(), timeout)
                except TimeoutError:
                    pass
                newer = self.after(id_, revision)
            return newer
        finally:
            with self._lock:
                waiters = self._waiters.get(id_, set())
                waiters.discard((loop, ev))
                if not waiters:
                    self._waiters.pop(id_, None)

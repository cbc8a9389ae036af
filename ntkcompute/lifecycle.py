"""The one job lifecycle: a kernel job's or a solve's status, and the transitions between them.

Every place that keeps a status uses these values and moves it only through :func:`advance`:
the service's database rows, the worker-side job handles (:class:`workers.GramJob`), the
store's metadata, and the client. It lives here, in the pure package, because the client
(``ntkcompute.client``) reads it too; :mod:`workers.jobs` re-exports it.

========== ===================== ============================================
event      from                  to
========== ===================== ============================================
start      queued                running
succeed    running               succeeded
fail       queued, running       failed
cancel     queued, running       cancelled
resume     failed, cancelled,    queued  (a finished job: repair damage)
           succeeded
requeue    running               queued  (the service restarted under it)
purge      any (cancels first)   — the job and its arrays are deleted
========== ===================== ============================================
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A job's or a solve's status; a ``str``, so it is stored and sent as its value."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Statuses of a job that should run (and is counted against a key's limit).
ACTIVE: tuple[Status, ...] = (Status.QUEUED, Status.RUNNING)
#: Statuses a job ends in.
FINAL: tuple[Status, ...] = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

#: event -> (statuses it may leave, status it enters); purge is not a status (the row goes).
TRANSITIONS: dict[str, tuple[tuple[Status, ...], Status]] = {
    "start": ((Status.QUEUED,), Status.RUNNING),
    "succeed": ((Status.RUNNING,), Status.SUCCEEDED),
    "fail": (ACTIVE, Status.FAILED),
    "cancel": (ACTIVE, Status.CANCELLED),
    "resume": (FINAL, Status.QUEUED),
    "requeue": ((Status.RUNNING,), Status.QUEUED),
}


class IllegalTransition(ValueError):
    """An event that the table does not allow from the current status."""

    def __init__(self, event: str, status: str) -> None:
        allowed = ", ".join(TRANSITIONS[event][0]) if event in TRANSITIONS else "nothing"
        super().__init__(f"cannot {event} a job that is {status} (only from {allowed})")
        self.event, self.status = event, status


def can(event: str, status: str) -> bool:
    """Whether ``event`` is allowed from ``status``."""
    return event in TRANSITIONS and status in TRANSITIONS[event][0]


def advance(status: str, event: str) -> Status:
    """The status after ``event``; :class:`IllegalTransition` if the table forbids it."""
    if not can(event, status):
        raise IllegalTransition(event, status)
    return TRANSITIONS[event][1]


def ended(status: str) -> bool:
    """Whether ``status`` is final (succeeded, failed or cancelled)."""
    return status in FINAL


def eta_seconds(elapsed: float, computed: int, left: int) -> float | None:
    """Seconds left at this run's rate: ``elapsed / computed · left`` (None before the first
    tile of this run; reused tiles do not count toward the rate)."""
    return elapsed / computed * left if computed else None

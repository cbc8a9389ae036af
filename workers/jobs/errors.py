"""What a job's store can answer instead of numbers; the service maps each to one HTTP status."""

from __future__ import annotations

from ..store import CorruptChunk


class JobConflict(Exception):
    """The job's state does not allow the read yet (HTTP 409): nothing stored, tiles pending."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotStored(JobConflict):
    """The job has written nothing yet (or its group is gone)."""

    def __init__(self, status: str) -> None:
        super().__init__("kernel_id", f"job is {status}; nothing stored yet")


class Missing(LookupError):
    """An array the job does not have (HTTP 404): a solve without a test set has no
    predictions."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PartDamaged(Exception):
    """A stored chunk of part ``part`` failed its check: named, never served as numbers."""

    def __init__(self, part: str | None, error: CorruptChunk) -> None:
        super().__init__(f"{part}: {error}" if part else str(error))
        self.part, self.error = part, error

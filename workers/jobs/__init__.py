"""Jobs as the service runs them: one lifecycle, two kinds, one store layout.

- :mod:`ntkcompute.lifecycle` (re-exported here): ``Status``, the transition table.
- :mod:`.kinds`: the job-kind protocol and its two kinds, ``exact`` and ``features``.
- :mod:`.layout`: where datasets, kernel parts and solves live in the store.
- :mod:`.progress`: a job's progress over its parts and the event it is ready for.
- :mod:`.solves`, :mod:`.datasets`: a solve's and a dataset's arrays.
"""

from ntkcompute.lifecycle import (
    ACTIVE,
    FINAL,
    TRANSITIONS,
    IllegalTransition,
    Status,
    advance,
    can,
    ended,
    eta_seconds,
)

from . import layout, solves
from .datasets import probe_store, store_dataset
from .errors import JobConflict, Missing, NotStored, PartDamaged
from .kinds import (
    KINDS,
    JobKind,
    JobSpec,
    Planned,
    Shape,
    kind_of,
    span,
    verify_parts,
)
from .progress import Progress, progress

__all__ = ["ACTIVE", "FINAL", "KINDS", "TRANSITIONS", "IllegalTransition", "JobConflict",
           "JobKind", "JobSpec", "Missing", "NotStored", "PartDamaged", "Planned", "Progress",
           "Shape", "Status", "advance", "can", "ended", "eta_seconds", "kind_of", "layout",
           "probe_store", "progress", "solves", "span", "store_dataset", "verify_parts"]

"""The routes outside the resources: ``/healthz`` (the process is up), ``/readyz`` (it can
work: the Dask scheduler answers, the store is writable) and ``/v1/limits``."""

from __future__ import annotations

import math
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ntkcompute import spec as specs
from workers.jobs import probe_store

from ..deps import Owner, RunnerDep, SettingsDep
from ..errors import redact
from ..schemas import Health, Limits
from .common import RETRY_AFTER, problems

#: What a 503 from ``/readyz`` asks a client to wait (``Retry-After``).
READY_RETRY_SECONDS = 5
#: Seconds between two writes that probe the store for ``/readyz``.
STORE_PROBE_SECONDS = 30.0

router = APIRouter(tags=["health"])


class StoreProbe:
    """Whether the store is writable, by a write to its probe group at most every
    :data:`STORE_PROBE_SECONDS` (the last answer in between). One per app, on
    ``app.state.store_probe``."""

    def __init__(self) -> None:
        self.t, self.result = -math.inf, ""

    def __call__(self, store: str) -> str:
        if time.monotonic() - self.t < STORE_PROBE_SECONDS:
            return self.result
        try:
            probe_store(store)
            result = "ok"
        except Exception as e:
            result = redact(f"not writable: {type(e).__name__}: {e}")
        self.t, self.result = time.monotonic(), result
        return result


async def get_store_probe(request: Request) -> StoreProbe:
    """The app's :class:`StoreProbe`."""
    return request.app.state.store_probe


@router.get("/healthz", response_model=Health, operation_id="healthz")
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, operation_id="readyz", responses={
    503: {"model": Health, "description": "not ready: the scheduler or the store does not "
          "answer; `Retry-After`", "headers": RETRY_AFTER}})
def readyz(runner: RunnerDep, settings: SettingsDep,
           probe: Annotated[StoreProbe, Depends(get_store_probe)]) -> Any:
    """The Dask scheduler answers and the store is writable (probed by a write at most
    every ``STORE_PROBE_SECONDS``, not on every call)."""
    checks = runner.ready() if runner.client is not None else {"scheduler": "not started"}
    checks["store"] = probe(settings.store)
    ok = all(v.startswith("ok") for v in checks.values())
    found = re.match(r"ok \((\d+) workers\)", checks.get("scheduler", ""))
    body = Health(status="ok" if ok else "unavailable", checks=checks,
                  workers=int(found.group(1)) if found else None,
                  dashboard_url=runner.dashboard_url)
    return body if ok else JSONResponse(body.model_dump(), 503,
                                        headers={"Retry-After": str(READY_RETRY_SECONDS)})


@router.get("/v1/limits", response_model=Limits, operation_id="get_limits",
            responses=problems(401))
def limits(key: Owner, settings: SettingsDep) -> Limits:
    """Every limit the service checks before the work it bounds (408, 413, 422, 429)."""
    return Limits(**settings.model_dump(include=set(Limits.model_fields)),
                  max_layers=specs.MAX_LAYERS, max_nesting=specs.MAX_NESTING)

"""The routes' dependencies, typed for ``Annotated`` parameters: the caller's API key
(:data:`Owner`), the database (:data:`DB`), the job runner (:data:`RunnerDep`), the
settings (:data:`SettingsDep`) and the Dask dashboard's URL (:data:`Dashboard`). Each is
read from ``request.app.state``, where :func:`service.app.create_app` puts them; a route
module holds no state of its own."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from .config import Settings
from .db import Database
from .errors import ApiError
from .keys import check
from .runner import Runner

log = logging.getLogger("ntkcompute.service")
_bearer = HTTPBearer(auto_error=False, description="an API key from `ntk keys create`")


async def get_db(conn: HTTPConnection) -> Database:
    """The app's job database (for a request or a WebSocket)."""
    return conn.app.state.db


async def get_runner(conn: HTTPConnection) -> Runner:
    """The app's runner (kernel jobs and solves on the Dask client)."""
    return conn.app.state.runner


async def get_settings(request: Request) -> Settings:
    """The settings the app was made with."""
    return request.app.state.settings


async def get_dashboard(request: Request) -> str | None:
    """The Dask dashboard's URL (None until the runner joined a cluster that serves one)."""
    return request.app.state.runner.dashboard_url


DB = Annotated[Database, Depends(get_db)]
Dashboard = Annotated[str | None, Depends(get_dashboard)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def owner(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
          db: DB) -> str:
    """The id of the request's API key; 401 without a valid one."""
    if cred is None:
        raise ApiError(401, "Authorization", "missing bearer API key")
    kid, why = check(db, cred.credentials)  # one lookup, one hash
    if kid is None:
        log.info("401: %s key", why)
        raise ApiError(401, "Authorization", "unknown, revoked or expired API key")
    return kid


#: The caller's API key id; every dataset, job and solve belongs to one.
Owner = Annotated[str, Depends(owner)]

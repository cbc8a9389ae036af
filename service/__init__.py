"""REST front end of ntkcompute: FastAPI over ``workers`` and ``ntkcompute``.

Modules: ``app`` (the app factory: state, middleware, error bodies, lifespan), ``routes``
(the REST routes, an ``APIRouter`` per resource), ``deps`` (the routes' dependencies: the
caller's API key, the DB, the runner, the settings), ``schemas`` (request/response models),
``uploads`` (streamed dataset uploads), ``runner`` (kernel jobs and solves on the Dask client,
resume on start), ``db`` (SQLAlchemy tables), ``keys`` (hashed API keys), ``config``
(``NTK_*`` settings), ``server`` (uvicorn). Its ``ntk serve/keys/submit/status/fetch``
commands are :mod:`ntkcli.serve`.
"""

from typing import Any

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    # imported on first use: `ntk keys` and the other CLI commands need neither FastAPI
    # nor Dask, and start in a fraction of the time
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .config import Settings

        return Settings
    raise AttributeError(f"module 'service' has no attribute {name!r}")

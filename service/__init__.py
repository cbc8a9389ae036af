"""REST front end of ntkcompute: FastAPI over ``workers`` and ``ntkcompute``.

Modules: ``app`` (routes, auth, error bodies), ``schemas`` (request/response models),
``uploads`` (streamed dataset uploads), ``runner`` (kernel jobs and solves on the Dask client,
resume on start), ``db`` (SQLAlchemy tables), ``keys`` (hashed API keys), ``config``
(``NTK_*`` settings), ``server`` (uvicorn), ``cli`` (``ntk serve/keys/submit/status/fetch``).
"""

from .app import create_app
from .config import Settings

__all__ = ["Settings", "create_app"]

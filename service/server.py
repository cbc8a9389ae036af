"""Run the service: uvicorn serving :func:`service.app.create_app` (``ntk serve``)."""

from __future__ import annotations

import os

import uvicorn

from . import logs
from .app import create_app
from .config import Settings


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; unfinished jobs resume at the next start.

    The listening socket is bound before the application starts up, so the port is held from
    the first moment. Everything the service and its embedded workers create (the SQLite file,
    the store's directories and chunks, staged uploads) is private to its user: umask 077."""
    os.umask(0o077)
    logs.configure(log_level, settings.log_format)
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level,
                            log_config=None, timeout_graceful_shutdown=10)
    # Bind before the lifespan starts the embedded cluster: its scheduler, workers and nannies
    # take random ports and could otherwise take ours while the cluster starts; and a busy port
    # fails here at once instead of after a cluster was started for nothing.
    sock = config.bind_socket()
    uvicorn.Server(config).run(sockets=[sock])

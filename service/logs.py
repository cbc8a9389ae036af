"""The service's logs: one line per job lifecycle event with its fields, as text or JSON.

``NTK_LOG_FORMAT=json`` (``ntk serve --log-format json``) writes every line as one JSON object
(python-json-logger): ``{"time", "level", "logger", "message", "event", "job", ...}``; the
default text format appends the same fields as ``key=value``. Lifecycle lines
(:func:`event`): ``submitted``, ``started``, ``tile_failed`` (the tile, the task that raised
and the worker it ran on, the error), ``finished`` (``seconds``, ``tiles``, ``entries_per_second``),
``failed``, ``cancelled``, for kernel jobs and solves alike.

Access-log lines of the routes a waiting client or a dashboard calls over and over (``GET`` of
one job or solve, its event stream, ``/readyz``, ``/healthz``) are at DEBUG; every other
request stays at INFO.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pythonjsonlogger.json import JsonFormatter

log = logging.getLogger("ntkcompute.service")

#: The fields of a lifecycle line, in the order the text format shows them.
FIELDS = ("event", "kind", "job", "key", "status", "seconds", "tiles", "tiles_reused",
          "entries", "entries_per_second", "workers", "tile", "task", "worker", "error",
          "n_train", "n_test", "method")
#: ``METHOD path`` of the requests whose access lines are at DEBUG: polling and probes.
POLLING = re.compile(r"^GET /(readyz|healthz|v1/(kernels|solves)/[\w-]+(/events)?)$")


def event(name: str, kind: str, job: str, level: int = logging.INFO, **fields: Any) -> None:
    """One lifecycle line: ``kind`` ("kernel" or "solve") job ``job`` reached ``name``."""
    msg = f"{kind} {job} {name.replace('_', ' ')}"
    log.log(level, msg, extra={"event": name, "kind": kind, "job": job, **fields})


class _TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` (the lifecycle fields a line has)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={_short(getattr(record, k))}" for k in FIELDS
                 if k not in ("event", "kind", "job") and getattr(record, k, None) is not None]
        return f"{line} {' '.join(extra)}" if extra else line


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = str(v)
    return repr(text) if " " in text else text


class _PollingAtDebug(logging.Filter):
    """uvicorn's access lines of :data:`POLLING` requests become DEBUG lines (dropped unless
    the access logger is at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5:
            _client, method, path, _version, status = args[:5]
            record.method, record.path, record.status = method, str(path), status
            if POLLING.match(f"{method} {str(path).split('?')[0]}"):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send the service's, uvicorn's and distributed's lines to stderr in ``fmt`` ("text" or
    "json") at ``level``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(  # "time": ISO 8601, UTC
            "%(levelname)s %(name)s %(message)s", timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level.upper())
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _PollingAtDebug) for f in access.filters):
        access.addFilter(_PollingAtDebug())

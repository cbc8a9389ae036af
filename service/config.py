"""Service configuration: one pydantic model, read from ``NTK_*`` environment variables.

The same names are used by ``ntk serve`` flags, docker-compose and Kubernetes manifests
(``ENV`` below is the single list of them).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

#: field -> environment variable.
ENV = {
    "store": "NTK_STORE",
    "db": "NTK_DB_URL",
    "scheduler": "NTK_SCHEDULER_ADDRESS",
    "workers": "NTK_WORKERS",
    "staging": "NTK_STAGING_DIR",
    "max_upload_bytes": "NTK_MAX_UPLOAD_BYTES",
    "max_n": "NTK_MAX_N",
    "max_block_bytes": "NTK_MAX_BLOCK_BYTES",
    "max_jobs_per_key": "NTK_MAX_JOBS_PER_KEY",
    "task_memory": "NTK_TASK_MEMORY",
    "api_keys": "NTK_API_KEYS",
}


class Settings(BaseModel):
    """What the service stores where, which cluster it uses, and its limits."""

    store: str = Field("ntk-data/store", description="URL of the Zarr root (path or fsspec)")
    db: str = Field("sqlite:///ntk-data/ntk.db", description="SQLAlchemy URL of the job DB")
    scheduler: str | None = Field(None, description="Dask scheduler; None: embedded cluster")
    workers: int | None = Field(None, ge=1, description="embedded cluster worker processes")
    staging: str | None = Field(None, description="local dir for uploads in flight "
                                "(default: beside the SQLite file, or the system temp dir)")
    max_upload_bytes: int = Field(4 << 30, ge=1, description="largest upload body (413)")
    max_n: int = Field(200_000, ge=1, description="most rows in a dataset (422)")
    max_block_bytes: int = Field(256 << 20, ge=1, description="largest block download (422)")
    max_jobs_per_key: int = Field(4, ge=1, description="queued+running jobs per key (429)")
    task_memory: int = Field(1 << 30, ge=1 << 20, description="bytes per Dask task")
    api_keys: str | None = Field(None, description="tokens to accept, comma separated "
                                 "(registered hashed at start; e.g. from a Secret)")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then ``NTK_*`` variables, then explicit overrides (not None)."""
        values: dict[str, object] = {
            f: os.environ[e] for f, e in ENV.items() if os.environ.get(e)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def staging_dir(self) -> Path:
        if self.staging:
            p = Path(self.staging)
        elif self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            p = Path(self.db.removeprefix("sqlite:///")).parent / "staging"
        else:
            import tempfile

            p = Path(tempfile.gettempdir()) / "ntk-staging"
        p.mkdir(parents=True, exist_ok=True)
        return p

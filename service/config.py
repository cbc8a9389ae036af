"""Service configuration: one pydantic model, read from ``NTK_*`` environment variables.

The same names are used by ``ntk serve`` flags, docker-compose and Kubernetes manifests
(``ENV`` below is the single list of them).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from workers.cluster import TLS_ENV

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
    "max_dataset_bytes": "NTK_MAX_DATASET_BYTES",
    "max_features": "NTK_MAX_FEATURES",
    "max_compression_ratio": "NTK_MAX_COMPRESSION_RATIO",
    "max_json_bytes": "NTK_MAX_JSON_BYTES",
    "body_timeout": "NTK_BODY_TIMEOUT",
    "max_classes": "NTK_MAX_CLASSES",
    "max_lambdas": "NTK_MAX_LAMBDAS",
    "max_solve_bytes": "NTK_MAX_SOLVE_BYTES",
    "max_direct_n": "NTK_MAX_DIRECT_N",
    **TLS_ENV,  # NTK_TLS_CA_FILE, NTK_TLS_CERT, NTK_TLS_KEY: the workers' own names
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
    # uploads: decided from the .npy header and the zip directory, before anything inflates
    max_dataset_bytes: int = Field(4 << 30, ge=1, description="largest decompressed x plus "
                                   "y of one dataset (422)")
    max_features: int = Field(1 << 20, ge=1, description="most values per row of x, the "
                              "product of its trailing axes (422)")
    max_compression_ratio: float = Field(
        100.0, ge=1, description="largest decompressed / compressed size of an .npz member "
        "past 64 MiB decompressed (422): a zip bomb is refused from its directory")
    # request bodies
    max_json_bytes: int = Field(2 << 20, ge=1024, description="largest JSON request body "
                                "(413)")
    body_timeout: float = Field(30.0, gt=0, description="seconds a request body may stall "
                                "between chunks (408)")
    # solves: every array a solve stores or serves is bounded before it runs
    max_classes: int = Field(1000, ge=2, description="most classes integer labels may name "
                             "(422)")
    max_lambdas: int = Field(32, ge=1, description="most λ values in one solve (422)")
    max_solve_bytes: int = Field(256 << 20, ge=1, description="largest stored solve output: "
                                 "λ count x (n + m) x outputs x 8 bytes (422)")
    max_direct_n: int = Field(20_000, ge=1, description="most train rows a direct solve or a "
                              "selection decomposes in memory (its n x n float64 kernel and "
                              "eigenvectors, ~3 n² x 8 bytes, in the service process; 422: "
                              "use solver 'cg')")
    # TLS for Dask comms with an external scheduler (all three, or none)
    tls_ca_file: str | None = Field(None, description="CA certificate (PEM) of the cluster")
    tls_cert: str | None = Field(None, description="this client's certificate (PEM)")
    tls_key: str | None = Field(None, description="this client's private key (PEM)")

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Defaults, then ``NTK_*`` variables, then explicit overrides (not None)."""
        values: dict[str, object] = {
            f: os.environ[e] for f, e in ENV.items() if os.environ.get(e)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def private_paths(self) -> dict[str, str]:
        """Server locations that answers must not show, with what to show instead."""
        out = {}
        for value, shown in ((self.store, "<store>"), (str(self.staging_dir()), "<staging>")):
            out[value] = shown
            if "://" not in value:
                out[str(Path(value).resolve())] = shown
                out[f"file://{Path(value).resolve()}"] = shown
        if self.db.startswith("sqlite:///"):
            out[str(Path(self.db.removeprefix("sqlite:///")).resolve().parent)] = "<db>"
        return out

    def staging_dir(self) -> Path:
        if self.staging:
            p = Path(self.staging)
        elif self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            p = Path(self.db.removeprefix("sqlite:///")).parent / "staging"
        else:
            import tempfile

            p = Path(tempfile.gettempdir()) / "ntk-staging"
        p.mkdir(parents=True, exist_ok=True, mode=0o700)
        return p

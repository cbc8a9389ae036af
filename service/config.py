"""Service configuration: one pydantic-settings model, read from ``NTK_*`` environment
variables, a ``.env`` file, and ``NTK_*_FILE`` secret files.

Precedence, first wins: values passed to the constructor (``ntk serve`` flags), the
environment (``NTK_STORE=...``), ``NTK_<NAME>_FILE`` (the file's content, trailing newline
dropped: Docker and Kubernetes secrets, e.g. ``NTK_API_KEYS_FILE=/run/secrets/api-keys``),
the ``.env`` file of the working directory (or ``$NTK_ENV_FILE``), the defaults. Empty
variables are ignored. The same names are used by ``ntk serve`` flags, docker-compose and
Kubernetes manifests (``ENV`` below is the single list of them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from workers.cluster import TLS_ENV

#: Fields whose variable is not ``NTK_<FIELD>``.
_RENAMED = {"db": "NTK_DB_URL", "scheduler": "NTK_SCHEDULER_ADDRESS",
            "staging": "NTK_STAGING_DIR"}
assert all(v == f"NTK_{f.upper()}" for f, v in TLS_ENV.items())  # the workers' own names


def _env(name: str) -> str:
    return _RENAMED.get(name, f"NTK_{name.upper()}")


class _SecretFiles(PydanticBaseSettingsSource):
    """``NTK_<NAME>_FILE`` -> the field ``<name>``: the file's content (one trailing newline
    dropped), for secrets mounted as files."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        path = os.environ.get(f"{_env(field_name)}_FILE")
        if not path:
            return None, field_name, False
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"{_env(field_name)}_FILE: cannot read {path}: "
                             f"{e.strerror or e}") from None
        return text.removesuffix("\n"), field_name, False

    def __call__(self) -> dict[str, Any]:
        out = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                out[key] = value
        return out


class Settings(BaseSettings):
    """What the service stores where, which cluster it uses, and its limits."""

    model_config = SettingsConfigDict(env_prefix="NTK_", env_file=".env",
                                      env_ignore_empty=True, extra="ignore",
                                      populate_by_name=True)

    store: str = Field("ntk-data/store", description="URL of the Zarr root (path or fsspec)")
    db: str = Field("sqlite:///ntk-data/ntk.db", validation_alias="NTK_DB_URL",
                    description="SQLAlchemy URL of the job DB")
    scheduler: str | None = Field(None, validation_alias="NTK_SCHEDULER_ADDRESS",
                                  description="Dask scheduler; None: embedded cluster")
    workers: int | None = Field(None, ge=1, description="embedded cluster worker processes")
    staging: str | None = Field(None, validation_alias="NTK_STAGING_DIR", description=(
        "local dir for uploads in flight (default: beside the SQLite file, or the system "
        "temp dir)"))
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
    log_format: Literal["text", "json"] = Field("text", description=(
        "log lines as text, or one JSON object each (service.logs)"))
    # the Dask dashboard
    dashboard: str | None = Field("127.0.0.1:8787", description=(
        "host:port of the embedded cluster's Bokeh dashboard (loopback by default; a busy "
        "port falls back to a free one; 'none': no dashboard)"))
    dashboard_url: str | None = Field(None, description=(
        "the dashboard URL answers link to instead of the scheduler's own (e.g. where a "
        "proxy publishes an external scheduler's dashboard)"))
    # TLS for Dask comms with an external scheduler (all three, or none)
    tls_ca_file: str | None = Field(None, description="CA certificate (PEM) of the cluster")
    tls_cert: str | None = Field(None, description="this client's certificate (PEM)")
    tls_key: str | None = Field(None, description="this client's private key (PEM)")

    @field_validator("dashboard")
    @classmethod
    def _no_dashboard(cls, v: str | None) -> str | None:
        return None if v is None or v.strip().lower() in ("", "none") else v

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _SecretFiles(settings_cls), dotenv_settings

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """The settings with explicit overrides (those not None) first, then the environment,
        secret files, ``.env`` (``$NTK_ENV_FILE`` if set) and defaults."""
        return cls(_env_file=os.environ.get("NTK_ENV_FILE") or ".env",
                   **{k: v for k, v in overrides.items() if v is not None})

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


#: field -> environment variable (``NTK_<NAME>_FILE`` reads a secret file for any of them).
ENV = {name: _env(name) for name in Settings.model_fields}

"""Which Dask cluster a job runs on: the one given, the one at a scheduler address, or an
embedded ``LocalCluster`` of worker processes; and the mutual TLS its comms use.

Anyone who can talk to a Dask scheduler or worker can run code there, so comms are TLS with
certificates from the cluster's own CA (``ntk certs``) on both sides. The three files come
from ``NTK_TLS_CA_FILE``, ``NTK_TLS_CERT`` and ``NTK_TLS_KEY`` (or the ``--tls-*`` flags);
the embedded cluster uses throwaway in-memory certificates on loopback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from distributed import Client, LocalCluster, Security, default_client

from ntkcompute.errors import InputError

#: Scheduler address to join instead of starting a LocalCluster (e.g. tls://10.0.0.5:8786).
SCHEDULER_ENV = "NTK_SCHEDULER_ADDRESS"

#: TLS file -> environment variable (service.config.ENV takes these names from here).
TLS_ENV = {"tls_ca_file": "NTK_TLS_CA_FILE", "tls_cert": "NTK_TLS_CERT",
           "tls_key": "NTK_TLS_KEY"}
_FLAGS = {"tls_ca_file": "--tls-ca-file", "tls_cert": "--tls-cert", "tls_key": "--tls-key"}


class TLSFiles(NamedTuple):
    """The PEM files a Dask process presents: the cluster CA, its certificate and key."""

    ca_file: str
    cert: str
    key: str


def tls_files(ca_file: str | None = None, cert: str | None = None, key: str | None = None,
              env: bool = True) -> TLSFiles | None:
    """The TLS files given, each falling back to its ``NTK_TLS_*`` variable when ``env``.

    None when none is set; an :class:`InputError` naming the missing one when only some
    are, or naming a file that cannot be read.
    """
    given = {"tls_ca_file": ca_file, "tls_cert": cert, "tls_key": key}
    if env:
        given = {f: v or os.environ.get(TLS_ENV[f]) or None for f, v in given.items()}
    if not any(given.values()):
        return None
    for f, v in given.items():
        if not v:
            raise InputError(f"{_FLAGS[f]} (${TLS_ENV[f]}) is missing: give all three of "
                             "--tls-ca-file, --tls-cert and --tls-key, or none", field=f)
    for f, v in given.items():
        try:
            with open(v, "rb") as fh:
                fh.read(1)
        except OSError as e:
            raise InputError(f"cannot read {_FLAGS[f]} {v}: {e.strerror or e}",
                             field=f) from None
    return TLSFiles(str(given["tls_ca_file"]), str(given["tls_cert"]), str(given["tls_key"]))


def make_security(ca_file: str | Path, cert: str | Path, key: str | Path) -> Security:
    """A ``distributed.Security`` that presents ``cert``/``key`` in every role (client,
    scheduler, worker), trusts only peers signed by ``ca_file`` and refuses plain comms."""
    ca_file, cert, key = str(ca_file), str(cert), str(key)
    return Security(require_encryption=True, tls_ca_file=ca_file,
                    tls_client_cert=cert, tls_client_key=key,
                    tls_scheduler_cert=cert, tls_scheduler_key=key,
                    tls_worker_cert=cert, tls_worker_key=key)


def security_from(ca_file: str | None = None, cert: str | None = None,
                  key: str | None = None, env: bool = True) -> Security | None:
    """:func:`make_security` of :func:`tls_files` (None when no TLS file is set)."""
    files = tls_files(ca_file, cert, key, env=env)
    return make_security(*files) if files else None


def check_address(address: str, security: Security | None) -> str:
    """The scheduler address to connect to: a bare ``host:port`` gets ``tls://`` when
    ``security`` requires encryption; a ``tls://`` address without security, or a plain one
    with it, is an InputError (field "scheduler") rather than a connect error later."""
    tls = security is not None and bool(security.require_encryption)
    scheme, sep, _ = address.partition("://")
    if not sep:
        return f"tls://{address}" if tls else address
    if scheme == "tls" and security is None:
        raise InputError(f"{address} needs TLS: set NTK_TLS_CA_FILE, NTK_TLS_CERT and "
                         "NTK_TLS_KEY (or pass --tls-ca-file, --tls-cert and --tls-key) to "
                         "the files made by `ntk certs`", field="scheduler")
    if scheme != "tls" and tls:
        raise InputError(f"{address} is not a tls:// address but TLS files are set: the "
                         "client refuses plain comms; use tls://", field="scheduler")
    return address


def get_client(client: Client | None = None, scheduler: str | None = None,
               n_workers: int | None = None, memory_limit: str | int = "auto",
               security: Security | None = None, reuse_default: bool = True
               ) -> tuple[Client, LocalCluster | None]:
    """``(client, cluster_we_own)``; the second is None unless a LocalCluster was started.

    Joining ``scheduler`` (default ``$NTK_SCHEDULER_ADDRESS``) uses ``security``, else the
    ``NTK_TLS_*`` files when set. The embedded LocalCluster always speaks TLS on loopback
    with ``Security.temporary()`` certificates that exist only in this process's memory.

    Which cluster, first match: ``client``; ``scheduler``; the process's default
    ``distributed.Client`` (the last one created and not closed, as dask itself finds one);
    ``$NTK_SCHEDULER_ADDRESS``; else a new embedded LocalCluster (``reuse_default=False``
    skips the default client: the service runs the cluster it is configured for). Workers
    are processes with one thread each: the kernel code is NumPy-bound and a process per
    core scales it (bench/gram.py).
    """
    if client is not None:
        return client, None
    if not scheduler and reuse_default:
        try:
            return default_client(), None
        except ValueError:  # no default client in this process
            pass
    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        if security is None:
            security = security_from()
        address = check_address(address, security)
        return Client(address, security=security), None
    security = Security.temporary()
    cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                           processes=True, memory_limit=memory_limit, dashboard_address=None,
                           host="127.0.0.1", protocol="tls://", security=security)
    return Client(cluster, security=security), cluster


def shutdown(client: Client | None, cluster: LocalCluster | None, *,
             own_client: bool = False) -> None:
    """Close what :func:`get_client` started: ``client`` and then ``cluster`` when
    ``cluster`` is not None (an embedded LocalCluster and the client on it).

    With ``cluster`` None the client is the caller's or one on a running scheduler; it is
    left open unless ``own_client``, and the scheduler and its workers are never touched.
    """
    if client is not None and (cluster is not None or own_client):
        client.close()
    if cluster is not None:
        cluster.close()

"""Which Dask cluster a job runs on: the one given, the one at a scheduler address, or an
embedded ``LocalCluster`` of worker processes; and the mutual TLS its comms use.

Anyone who can talk to a Dask scheduler or worker can run code there, so comms are TLS with
certificates from the cluster's own CA (``ntk certs``) on both sides. The three files come
from ``NTK_TLS_CA_FILE``, ``NTK_TLS_CERT`` and ``NTK_TLS_KEY`` (or the ``--tls-*`` flags);
the embedded cluster uses throwaway in-memory certificates on loopback.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

from dask.system import CPU_COUNT
from distributed import Client, LocalCluster, Security, default_client
from distributed.system import MEMORY_LIMIT

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


def _own_cgroups() -> list[tuple[str, str]]:
    """``(controllers, path)`` of this process's cgroups (``/proc/self/cgroup``; v2's
    controllers are "")."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def _cgroup_files(controller: str, name: str) -> list[Path]:
    """The file ``name`` of this process's ``controller`` cgroup and of each of its
    ancestors (v1 hierarchies mounted as /sys/fs/cgroup/<controllers>, or v2's unified one):
    a limit holds for the processes of every cgroup below it."""
    root = Path("/sys/fs/cgroup")
    out = []
    for controllers, path in _own_cgroups():
        names = controllers.split(",") if controllers else []
        if controllers and controller not in names:
            continue
        mounts = [root / controllers, *(root / n for n in names)] if controllers else [root]
        for mount in mounts:
            if not mount.is_dir() or (not controllers and not (mount / "cgroup.controllers")
                                      .exists()):
                continue
            p = Path(path)
            while True:
                out.append(mount / str(p).lstrip("/") / name)
                if p == p.parent:
                    break
                p = p.parent
            break
    return out


def usable_cores() -> int:
    """The cores this process may use: ``dask.system.CPU_COUNT`` (the host's, its CPU
    affinity, the root cgroup's quota) and the CPU quota of its own cgroup and every ancestor
    (``cpu.cfs_quota_us / cpu.cfs_period_us`` in cgroup v1, ``cpu.max`` in v2), rounded up;
    at least 1. A container or a ``systemd-run -p CPUQuota=`` unit sets the latter."""
    count = CPU_COUNT
    for quota in _cgroup_files("cpu", "cpu.cfs_quota_us"):
        try:
            q, period = int(quota.read_text()), int(
                (quota.parent / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if q > 0 and period > 0:
            count = min(count, math.ceil(q / period))
    for cpu_max in _cgroup_files("cpu", "cpu.max"):
        try:
            q, period = cpu_max.read_text().split()
        except (OSError, ValueError):
            continue
        if q != "max" and int(period) > 0:
            count = min(count, math.ceil(int(q) / int(period)))
    return max(1, count)


def usable_memory() -> int:
    """The bytes this process may use: ``distributed.system.MEMORY_LIMIT`` (the host's, the
    root cgroup's, RLIMIT_RSS) and the memory limit of its own cgroup and every ancestor
    (``memory.limit_in_bytes`` in cgroup v1, ``memory.max`` in v2)."""
    limit = MEMORY_LIMIT
    for name in ("memory.limit_in_bytes", "memory.max"):
        for f in _cgroup_files("memory", name):
            try:
                text = f.read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) > 0:
                limit = min(limit, int(text))
    return limit


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
               security: Security | None = None, reuse_default: bool = True,
               dashboard_address: str | None = None, dashboard_prefix: str = "/"
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
    core scales it (bench/gram.py); as many as :func:`usable_cores` (the cores this process may
    use: its affinity and its cgroup's CPU quota) unless ``n_workers``, and with
    ``memory_limit="auto"`` each gets an equal share of :func:`usable_memory`.
    ``dashboard_address`` (``host:port``) serves the embedded scheduler's Bokeh dashboard
    there (None: no dashboard; a busy port falls back to a free one, see
    :func:`dashboard_url`), its pages under ``dashboard_prefix`` (``/dashboard``: what a
    proxy at that path forwards unchanged).
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
    n = n_workers or usable_cores()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           memory_limit=usable_memory() // n if memory_limit == "auto"
                           else memory_limit,
                           dashboard_address=dashboard_address,
                           scheduler_kwargs={"http_prefix": dashboard_prefix},
                           host="127.0.0.1", protocol="tls://", security=security)
    return Client(cluster, security=security), cluster


def dashboard_url(client: Client) -> str | None:
    """The URL of the status page of ``client``'s scheduler dashboard, None when it serves
    none (its scheduler runs without bokeh, or with the dashboard off)."""
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # an unreachable scheduler has no dashboard to link
        return None


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

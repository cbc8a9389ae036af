"""Which Dask cluster a job runs on: the one given, the one at a scheduler address, or an
embedded ``LocalCluster`` of worker processes."""

from __future__ import annotations

import os

from distributed import Client, LocalCluster

#: Scheduler address to join instead of starting a LocalCluster (e.g. tcp://10.0.0.5:8786).
SCHEDULER_ENV = "NTK_SCHEDULER_ADDRESS"


def get_client(client: Client | None = None, scheduler: str | None = None,
               n_workers: int | None = None, memory_limit: str | int = "auto"
               ) -> tuple[Client, LocalCluster | None]:
    """``(client, cluster_we_own)``; the second is None unless a LocalCluster was started.

    Workers are processes with one thread each: the kernel code is NumPy-bound and a
    process per core scales it (bench/gram.py).
    """
    if client is not None:
        return client, None
    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        return Client(address), None
    cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                           processes=True, memory_limit=memory_limit, dashboard_address=None)
    return Client(cluster), cluster

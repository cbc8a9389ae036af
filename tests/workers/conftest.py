import pytest
from distributed import Client, LocalCluster


@pytest.fixture(scope="module")
def client():
    """A real scheduler and two worker processes (with nannies), shared by a test module."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()

import pytest

from workers.cluster import get_client


@pytest.fixture(scope="module")
def client():
    """A real scheduler and two worker processes (with nannies), shared by a test module:
    the embedded cluster, mutual TLS with certificates that exist only in memory."""
    c, cluster = get_client(n_workers=2, reuse_default=False)
    assert c.scheduler.address.startswith("tls://")
    yield c
    c.close()
    cluster.close()

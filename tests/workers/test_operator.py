"""The distributed kernel operator: products over stored tiles equal the dense matrix's."""

import numpy as np
import pytest

import workers
from ntkcompute import architectures as A


@pytest.fixture(scope="module", params=["float64", "float32"])
def job(client, tmp_path_factory, request):
    # 5 x 5 tiles of 64 rows, the last one short (300 = 4 x 64 + 44)
    x = np.random.default_rng(0).standard_normal((300, 6))
    j = workers.compute_gram(A.fc(2), x, store=str(tmp_path_factory.mktemp("op") / "k"),
                             client=client, tile=64, get="ntk", dtype=request.param).wait()
    K = j.to_numpy()["ntk"]
    assert K.dtype == request.param
    return j.url, K


@pytest.mark.parametrize("symmetric", [None, False])
@pytest.mark.parametrize("precision", ["double", "single"])
def test_products_equal_the_dense_kernel(client, job, symmetric, precision):
    # a float32 kernel's double products are its stored values' products in float64
    url, K = job
    K = K.astype(np.float64)
    op = workers.DistributedKernel(client, url, symmetric=symmetric, precision=precision)
    info = op.info()
    assert len(info) == 2 and all(i["cached"] for i in info)
    # a symmetric Gram is held by its upper triangle: 15 of the 25 tiles
    assert sum(i["tiles"] for i in info) == (15 if symmetric is None else 25)
    assert op.symmetric is (symmetric is None)
    V = np.random.default_rng(1).standard_normal((300, 3))
    ref = K @ V
    scale = np.abs(ref).max()
    assert np.abs(op.matvec(V) - ref).max() / scale < 1e-14
    assert np.abs(op.matvec(V[:, 1]) - ref[:, 1]).max() / scale < 1e-14
    single = op.matvec(V, "single")
    assert single.dtype == np.float64
    assert np.abs(single - ref).max() / scale < 1e-5  # float32 products
    assert np.abs(single - ref).max() / scale > 1e-12  # (V is rounded to float32 too)
    fast, exact = op.pair(V[:, :2], V)
    assert np.abs(fast - ref[:, :2]).max() / scale < 1e-5
    assert np.abs(exact - ref).max() / scale < 1e-14
    assert np.array_equal(op.diagonal(), np.diag(K))
    for j in (0, 63, 64, 200, 299):  # tile edges, inside the short tile
        assert np.array_equal(op.column(j), K[:, j])

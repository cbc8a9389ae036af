"""A stored kernel opened the PyData way: xarray.open_zarr and dask.array.from_zarr on the
job's group (dims, coordinates, attrs, consolidated metadata), NaN where tiles are not done,
GramJob.to_dask / to_xarray, and the default Dask client reused."""

import time

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import workers
from ntkcompute import architectures as A
from ntkcompute.infinite import kernel
from workers.gram import GramJobError
from workers.store import CorruptChunk


def test_xarray_and_dask_open_a_finished_kernel(tmp_path, client):
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((11, 4)), rng.standard_normal((7, 4))
    spec = A.fc(2, b_std=0.1)
    url = str(tmp_path / "cross")
    job = workers.compute_gram(spec, x1, x2, store=url, tile=4, client=client).wait()
    ref = kernel(spec, x1, x2)

    ds = xr.open_zarr(url)  # consolidated metadata: one read of every array's metadata
    assert ds["ntk"].dims == ("i", "j") and ds["x1"].dims == ("i", "axis1")
    assert ds["x2"].dims == ("j", "axis1") and ds["done"].dims == ("tile_i", "tile_j")
    assert ds["i"].values.tolist() == list(range(11)) and ds["j"].values.tolist() == \
        list(range(7))
    attrs = ds["ntk"].attrs
    assert (attrs["kind"], attrs["status"], attrs["symmetric"], attrs["tile"]) == \
        ("ntk", "succeeded", False, 4)
    assert attrs["architecture"]["layers"][0]["b_std"] == 0.1
    assert attrs["parameterization"] == "ntk" and attrs["dtype"] == "float64"
    assert ds["nngp"].attrs["kind"] == "nngp"
    assert np.abs(ds["ntk"].values - ref["ntk"]).max() < 1e-12 * np.abs(ref["ntk"]).max()
    assert np.array_equal(da.from_zarr(url, component="nngp").compute(), ds["nngp"].values)
    assert np.array_equal(ds.sel(i=3, j=5)["ntk"].values, ref["ntk"][3, 5])

    lazy = job.to_dask()
    assert lazy["ntk"].chunks == ((4, 4, 3), (4, 3))
    assert np.array_equal(lazy["ntk"].compute(), ds["ntk"].values)
    full = job.to_xarray()
    assert full["ntk"].attrs["status"] == "succeeded"
    assert np.array_equal(full["nngp"].values, ds["nngp"].values)

    # a damaged chunk: xarray reads raw bytes, to_dask reads through the checksums
    chunk = tmp_path / "cross" / "ntk" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[8] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunk, match=r"ntk chunk \[1, 0\]"):
        job.to_dask()["ntk"].compute()


def test_unfinished_tiles_read_as_nan_and_the_status_says_so(tmp_path, client):
    x = np.random.default_rng(1).standard_normal((16, 24, 24, 3))
    url = str(tmp_path / "partial")
    job = workers.compute_gram(A.cntk(3), x, store=url, tile=2, client=client,
                               get="ntk")
    while job.tiles_done == 0:
        time.sleep(0.02)
    assert job.stop()
    with pytest.raises(GramJobError):
        job.wait(60)
    ds = xr.open_zarr(url)
    assert ds["ntk"].attrs["status"] == "cancelled"
    done = ds["done"].values.astype(bool)
    ntk = ds["ntk"].values
    upper = np.triu(np.ones_like(done))  # a symmetric job's tiles: on and above the diagonal
    assert 0 < done[upper].sum() < upper.sum()  # some done, some not: the test means something
    for i, j in np.ndindex(done.shape):
        block = ntk[2 * i:2 * i + 2, 2 * j:2 * j + 2]
        if done[i, j] or done[j, i]:  # a symmetric job writes a tile and its mirror
            assert np.isfinite(block).all(), (i, j)
        else:
            assert np.isnan(block).all(), (i, j)
    assert np.array_equal(np.isnan(job.to_dask()["ntk"].compute()), np.isnan(ntk))


def test_a_call_without_a_client_uses_the_default_one(tmp_path, client):
    from distributed import default_client

    assert default_client() is client  # the module's cluster, the last client made
    x = np.random.default_rng(2).standard_normal((6, 3))
    job = workers.compute_gram(A.fc(1), x, store=str(tmp_path / "g"), tile=3)
    assert job._client is client and job._cluster is None  # no LocalCluster of its own
    job.wait(60)
    assert client.status == "running"  # and it was not closed by the job

"""Store integrity: every chunk checksummed, damage named and never served, and a verified
resume that recomputes exactly the damaged tiles (real Zarr on disk, real Dask workers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import workers
from ntkcompute import architectures as A
from tests.damage import flip_bit, truncate
from workers.store import CorruptChunk, read


def chunk_file(store: str, array: str, *coords: int) -> Path:
    return Path(store, array, "c", *map(str, coords))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((60, 6)), rng.standard_normal((30, 6))


def test_damage_is_named_verified_and_repaired_exactly(client, tmp_path, data):
    x, _ = data
    store = str(tmp_path / "job")
    job = workers.compute_gram(A.fc(2), x, store=store, tile=20, client=client).wait()
    original = job.to_numpy()
    assert job.tiles_total == 6
    g = zarr.open_group(store, mode="r")
    assert all(workers.store.has_checksums(g[k]) for k in ("ntk", "nngp", "done", "x1",
                                                             "self/x1/diag_ntk"))
    assert workers.verify_job(store, client=client).ok

    chunk_file(store, "ntk", 0, 1).unlink()          # a deleted tile (upper half)
    truncate(chunk_file(store, "nngp", 2, 1))        # a truncated mirror tile
    flip_bit(chunk_file(store, "ntk", 2, 2))         # one flipped bit
    chunk_file(store, "done", 1, 1).unlink()         # a lost marker
    flip_bit(chunk_file(store, "self/x1/diag_ntk", 1), at=2)  # a self statistic
    flip_bit(chunk_file(store, "x1", 2, 0), at=3)    # a stored input chunk

    with pytest.raises(CorruptChunk) as e:
        read(g["ntk"])
    assert e.value.array == "ntk" and e.value.chunk in ((0, 1), (2, 2))
    with pytest.raises(CorruptChunk) as e:
        read(g["nngp"], (slice(40, 60), slice(20, 40)))
    assert (e.value.array, e.value.chunk) == ("nngp", (2, 1))
    assert "checksum" in e.value.problem or "unreadable" in e.value.problem
    with pytest.raises(CorruptChunk, match=r"ntk chunk \[0, 1\]: missing"):
        read(g["ntk"], (slice(0, 20), slice(20, 40)))
    np.testing.assert_array_equal(read(g["ntk"], (slice(0, 20), slice(0, 20))),
                                  original["ntk"][:20, :20])  # the rest still reads

    rep = workers.verify_job(store, client=client)
    assert not rep.ok and rep.pending == [[1, 1]]
    bad = {(b["array"], tuple(b["chunk"])) for b in rep.bad}
    assert bad == {("ntk", (0, 1)), ("nngp", (2, 1)), ("ntk", (2, 2)),
                   ("self/x1/diag_ntk", (1,)), ("x1", (2, 0))}
    assert {tuple(b["tile"]) for b in rep.bad if b["array"] in ("ntk", "nngp")} == \
        {(0, 1), (1, 2), (2, 2)}  # tiles named canonically (i <= j)

    # a solve on the damaged kernel fails naming the tile, it never solves zeros
    with pytest.raises(CorruptChunk):
        workers.solve(store, np.arange(60) % 3, 1e-2, solver="direct", save=None)

    fixed = workers.compute_gram(A.fc(2), x, store=store, tile=20, client=client,
                                 verify=True).wait()
    # the three damaged tiles and the tile of the lost marker; nothing else
    assert (fixed.tiles_computed, fixed.tiles_reused) == (4, 2)
    again = fixed.to_numpy()
    for k in ("ntk", "nngp"):
        assert np.array_equal(again[k], original[k])  # bit-identical
    assert workers.verify_job(store, client=client).ok


def test_cross_and_features_jobs_verify_too(client, tmp_path, data):
    x, xt = data
    store = str(tmp_path / "cross")
    workers.compute_gram(A.fc(2), xt, x, store=store, tile=16, client=client).wait()
    flip_bit(chunk_file(store, "ntk", 1, 3))
    flip_bit(chunk_file(store, "self/x2/diag_nngp", 2), at=1)
    rep = workers.verify_job(store, client=client)
    assert {(b["array"], tuple(b["chunk"])) for b in rep.bad} == {
        ("ntk", (1, 3)), ("self/x2/diag_nngp", (2,))}
    ref = workers.compute_gram(A.fc(2), xt, x, store=str(tmp_path / "ref"), tile=16,
                               client=client).wait().to_numpy()
    fixed = workers.compute_gram(A.fc(2), xt, x, store=store, tile=16, client=client,
                                 verify=True).wait()
    assert fixed.tiles_computed == 1
    assert np.array_equal(fixed.to_numpy()["ntk"], ref["ntk"])

    fstore = str(tmp_path / "feat")
    job = workers.compute_features(A.fc(2), x, store=fstore, m=64, tile=16,
                                   client=client).wait()
    feats = job.to_numpy()
    chunk_file(fstore, "ntk", 2, 0).unlink()
    rep = workers.verify_job(fstore, client=client)
    assert [(b["array"], b["chunk"]) for b in rep.bad] == [("ntk", [2, 0])]
    fixed = workers.compute_features(A.fc(2), x, store=fstore, m=64, tile=16, client=client,
                                     verify=True).wait()
    assert (fixed.tiles_computed, fixed.tiles_reused) == (1, 3)
    assert np.array_equal(fixed.to_numpy()["ntk"], feats["ntk"])


def test_unchecked_store_still_finds_missing_chunks(client, tmp_path, data):
    """checksums=False (the benchmark's baseline) drops the CRC, not the NaN fill."""
    x, _ = data
    store = str(tmp_path / "plain")
    workers.compute_gram(A.fc(2), x, store=store, tile=20, client=client,
                         checksums=False).wait()
    g = zarr.open_group(store, mode="r")
    assert not workers.store.has_checksums(g["ntk"])
    chunk_file(store, "ntk", 1, 2).unlink()
    with pytest.raises(CorruptChunk, match="missing"):
        read(g["ntk"])


def test_cli_verify_and_gram_verify(tmp_path, data):
    """`ntk verify STORE` exits 1 naming the damage; `ntk gram --verify` repairs it."""
    import json
    import subprocess
    import sys

    x, _ = data
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "arch.json").write_text(json.dumps(A.fc(2)))
    store = str(tmp_path / "cli")
    ntk = [sys.executable, "-m", "ntkcli"]
    gram = [*ntk, "gram", "--arch", str(tmp_path / "arch.json"), "--x1",
            str(tmp_path / "x.npy"), "--out", store, "--tile", "20", "--quiet"]
    subprocess.run(gram, check=True, capture_output=True)
    original = zarr.open_group(store, mode="r")["ntk"][...]
    flip_bit(chunk_file(store, "ntk", 1, 2))
    r = subprocess.run([*ntk, "verify", store], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert [(b["array"], b["chunk"]) for b in report["bad"]] == [("ntk", [1, 2])]
    r = subprocess.run([*gram, "--verify"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["computed"] == 1
    assert np.array_equal(zarr.open_group(store, mode="r")["ntk"][...], original)
    assert subprocess.run([*ntk, "verify", store], capture_output=True).returncode == 0


@pytest.mark.parametrize("shape,chunks", [((50, 46), (20, 16)), ((45,), (20,)),
                                          ((3, 50, 46), (1, 20, 16))])
def test_a_whole_chunk_read_from_its_file_equals_zarr_and_is_verified(tmp_path, shape, chunks):
    # whole-chunk reads of a local array go straight to the chunk file (store.py); the edge
    # chunks are stored padded to the chunk shape, and the checksum covers the padding too
    g = zarr.open_group(str(tmp_path / "g"), mode="w")
    a = workers.store.create_array(g, "k", shape, chunks, "float64", computed=True)
    values = np.random.default_rng(3).standard_normal(shape)
    a[...] = values
    for coords in workers.store.chunks_of(a):
        region = workers.store.chunk_region(a, coords)
        assert workers.store._read_chunk_file(a, region) is not None  # the direct path
        got = read(a, region)
        assert got.flags.c_contiguous and np.array_equal(got, values[region])
    last = tuple(len(range(0, n, c)) - 1 for n, c in zip(shape, chunks, strict=True))
    path = chunk_file(str(tmp_path / "g"), "k", *last)
    size = path.stat().st_size
    flip_bit(path, at=size - 4 - 3)  # inside the padding: the data read is intact
    with pytest.raises(CorruptChunk, match="checksum") as e:
        read(a, workers.store.chunk_region(a, last))
    assert e.value.chunk == last
    flip_bit(path, at=size - 4 - 3)  # undone: reads again
    read(a, workers.store.chunk_region(a, last))
    truncate(path, lose=9)
    with pytest.raises(CorruptChunk, match="unreadable"):
        read(a, workers.store.chunk_region(a, last))
    path.unlink()
    with pytest.raises(CorruptChunk, match="missing"):
        read(a, workers.store.chunk_region(a, last))

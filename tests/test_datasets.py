"""Bundled and shared datasets load, and the Arora et al. preprocessing is what it says."""

import numpy as np

from ntkcompute.datasets import digits, standardize


def test_standardize_uses_train_statistics_for_every_split(rng):
    train = rng.integers(0, 256, (50, 4, 4, 3)).astype(np.uint8)
    test = rng.integers(0, 256, (20, 4, 4, 3)).astype(np.uint8)
    tr, te = standardize(train, test)
    np.testing.assert_allclose(tr.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(tr.std(axis=(0, 1, 2)), 1, rtol=1e-12)
    mu = (train / 255.0).mean(axis=(0, 1, 2))
    sd = (train / 255.0).std(axis=(0, 1, 2))
    np.testing.assert_allclose(te, (test / 255.0 - mu) / sd, rtol=1e-12)
    # the same image gets the same values whichever split it is in
    np.testing.assert_allclose(standardize(train, train[:5])[1], tr[:5], rtol=1e-12)


def test_digits_shape_and_range():
    x, y = digits()
    assert x.shape == (1797, 8, 8, 1) and y.shape == (1797,)
    assert x.min() == 0 and x.max() == 1


def test_mnist_splits_read_the_shared_files(tmp_path):
    import gzip

    import pytest

    from ntkcompute.datasets import mnist

    x, y = mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and y.shape == (10000,)
    assert x.max() == 255 and sorted(np.unique(y)) == list(range(10))
    assert 800 < np.bincount(y).min() and np.bincount(y).max() < 1200
    xt, yt = mnist("train", 100)
    assert xt.shape == (100, 28, 28) and yt.shape == (100,)
    assert not np.array_equal(xt[:10], x[:10])  # two different sets
    with pytest.raises(ValueError, match="split"):
        mnist("validation")
    bad = tmp_path / "mnist"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0c\x01" + bytes(8)))
    with pytest.raises(ValueError, match="IDX"):
        mnist("test", root=tmp_path)

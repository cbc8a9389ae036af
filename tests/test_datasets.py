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

"""Preprocessing: per-channel standardisation, ZCA whitening, flip-symmetrised kernels."""

import functools

import numpy as np
import pytest

import ntkcompute as nc
from ntkcompute import InputError
from ntkcompute import architectures as A
from ntkcompute.preprocess import ZCA, Standardize, flip_symmetrized


def test_standardize_is_fit_on_train_only(rng):
    xtr, xte = rng.normal(3, 2, (50, 4, 4, 3)), rng.normal(3, 2, (20, 4, 4, 3))
    s = Standardize.fit(xtr)
    z = s(xtr)
    assert np.allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    assert np.allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-12)
    assert np.allclose(s(xte), (xte - xtr.mean(axis=(0, 1, 2))) / xtr.std(axis=(0, 1, 2)))


def test_zca_whitens_and_its_strength_regularises(rng):
    mix = rng.standard_normal((12, 12))
    x = rng.standard_normal((400, 2, 2, 3)) @ mix[:3, :3]  # correlated channels
    flat = x.reshape(400, -1)
    for strength, want in ((0.0, None), (0.5, 0.5)):
        z = ZCA.fit(x, strength)(x).reshape(400, -1)
        cov = np.cov(z.T, bias=True)
        lam = np.linalg.eigvalsh(np.cov(flat.T, bias=True))
        if want is None:  # full whitening: identity covariance
            assert np.abs(cov - np.eye(12)).max() < 1e-10
        else:  # eigenvalues λ / (λ + ε), ε = strength · mean λ
            assert np.allclose(np.sort(np.linalg.eigvalsh(cov)),
                               np.sort(lam / (lam + want * lam.mean())), atol=1e-10)
    zca = ZCA.fit(x, 0.1)
    assert np.allclose(zca.matrix, zca.matrix.T)  # ZCA: the symmetric whitening
    with pytest.raises(InputError) as e:
        zca(rng.standard_normal((3, 12)))
    assert e.value.field == "x"


@pytest.mark.parametrize("strength,field", [(-1.0, "strength"), (np.nan, "strength"),
                                            ("0.1", "strength"), (0.0, "strength")])
def test_zca_refusals(rng, strength, field):
    x = rng.standard_normal((5, 4, 4, 1))  # 16 dimensions, 5 inputs: singular covariance
    with pytest.raises(InputError) as e:
        ZCA.fit(x, strength)
    assert e.value.field == field


def test_zca_dimension_is_bounded_before_the_work():
    with pytest.raises(InputError, match="dimensions") as e:
        ZCA.fit(np.zeros((2, 128, 128, 3)))
    assert e.value.field == "x"


@pytest.mark.parametrize("arch", [A.cntk(2, "global_avg_pool", b_std=0.1),
                                  A.cntk(2, "flatten", b_std=0.1)], ids=["gap", "flatten"])
def test_flip_symmetrized_is_the_kernel_of_the_flip_augmented_data(rng, arch):
    """For conv nets ½(K(x,x') + K(x, flip x')) is the average over all four flips: the
    kernel of training on the data and its mirror images (the 2n x 2n Gram, averaged)."""
    x1, x2 = rng.standard_normal((5, 4, 5, 2)), rng.standard_normal((3, 4, 5, 2))
    kern = functools.partial(nc.kernel, arch)
    flip = lambda x: x[..., ::-1, :]  # noqa: E731
    for a, b in ((x1, None), (x1, x2)):
        got = flip_symmetrized(kern, a, b)
        bb = a if b is None else b
        aug = kern(np.concatenate([a, flip(a)]), np.concatenate([bb, flip(bb)]))
        for g in ("ntk", "nngp"):
            n1, n2 = len(a), len(bb)
            k = aug[g]
            want = (k[:n1, :n2] + k[:n1, n2:] + k[n1:, :n2] + k[n1:, n2:]) / 4
            assert np.abs(got[g] - want).max() <= 1e-12 * np.abs(want).max()
            if b is None:
                assert np.array_equal(got[g], got[g].T)
                assert np.linalg.eigvalsh(got[g]).min() > -1e-10 * np.abs(got[g]).max()
        # the plain kernel, passed in, is reused (not recomputed) with the same result
        calls = []

        def counted(*args, calls=calls, **kw):
            calls.append(1)
            return kern(*args, **kw)

        again = flip_symmetrized(counted, a, b, plain=kern(a, b))
        assert len(calls) == 1
        for g in ("ntk", "nngp"):
            assert np.array_equal(again[g], got[g])

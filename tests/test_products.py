"""The compiled narrow products equal BLAS's, remainders and fallbacks included."""

import numpy as np
import pytest

from ntkcompute import products


@pytest.mark.parametrize("k_dtype,dtype,tol", [(np.float64, np.float64, 1e-13),
                                               (np.float32, np.float32, 1e-5),
                                               (np.float32, np.float64, 1e-13)])
@pytest.mark.parametrize("shape", [(64, 48, 12), (67, 50, 10), (13, 9, 1), (40, 31, 32)])
def test_matmul_and_transpose_equal_blas(rng, k_dtype, dtype, tol, shape):
    # R, C: rows not a multiple of 4 or 8, columns not a multiple of 4; a float32 K with
    # float64 V is multiplied in float64 (to 1e-13 of the float64 product of its values)
    R, C, Q = shape
    K = rng.standard_normal((R, C)).astype(k_dtype)
    V = rng.standard_normal((C, Q)).astype(dtype)
    W = rng.standard_normal((R, Q)).astype(dtype)
    ref = K.astype(np.float64) @ V.astype(np.float64)
    got = products.matmul(K, V)
    assert got.dtype == dtype and got.shape == (R, Q)
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    ref_t = K.T.astype(np.float64) @ W.astype(np.float64)
    got_t = products.matmul_t(K, W)
    assert got_t.dtype == dtype and got_t.shape == (C, Q)
    assert np.abs(got_t - ref_t).max() <= tol * np.abs(ref_t).max()
    rows, cols = products.matmul_sym(K, V, W)  # both in one pass
    assert rows.dtype == cols.dtype == dtype
    assert rows.shape == (R, Q) and cols.shape == (C, Q)
    assert np.abs(rows - ref).max() <= tol * np.abs(ref).max()
    assert np.abs(cols - ref_t).max() <= tol * np.abs(ref_t).max()
    assert products.compiled(K, V)  # these shapes take the compiled loops


def test_other_shapes_and_dtypes_go_to_blas(rng):
    K = rng.standard_normal((20, 20))
    wide = rng.standard_normal((20, products.MAX_COLUMNS + 1))
    assert not products.compiled(K, wide)
    assert not products.compiled(K, wide[:, :4].astype(np.float32))  # a float32 V
    assert products.compiled(K.astype(np.float32), wide[:, :4])  # float32 K, float64 V
    assert not products.compiled(np.asfortranarray(K), wide[:, :4])
    np.testing.assert_allclose(products.matmul(K, wide), K @ wide, rtol=1e-13)
    np.testing.assert_allclose(products.matmul_t(K, wide), K.T @ wide, rtol=1e-13)
    rows, cols = products.matmul_sym(K, wide, 2 * wide)
    np.testing.assert_allclose(rows, K @ wide, rtol=1e-13)
    np.testing.assert_allclose(cols, 2 * K.T @ wide, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transpose_into_a_strided_view_equals_numpy(rng, dtype):
    out = np.zeros((90, 120), dtype)
    src = rng.standard_normal((37, 70)).astype(dtype)  # not multiples of the block
    products.transpose_into(out[5:75, 40:77], src)
    ref = np.zeros_like(out)
    ref[5:75, 40:77] = src.T
    assert np.array_equal(out, ref)  # the same values, nothing outside the view touched
    with pytest.raises(ValueError):  # shapes that don't match: NumPy's own error
        products.transpose_into(np.zeros((3, 2)), np.ones((3, 2)))

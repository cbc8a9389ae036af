"""Separable window sums against the k1*k2-term definition."""

import itertools

import numpy as np
import pytest

from ntkcompute.kernels.spatial import conv_window_sum, pool_window_sum
from ntkcompute.plan import _window


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
@pytest.mark.parametrize("size,strides", [((3, 3), (1, 1)), ((2, 3), (2, 1)), ((3, 1), (2, 2))])
def test_full_conv_window_sum(rng, padding, size, strides):
    H, W = 5, 4
    a = rng.standard_normal((H, H, W, W, 2, 3))  # batch axes last
    win = _window("layers[0]", "filter_shape", (H, W), list(size), list(strides), padding, (1, 1))
    out = conv_window_sum(np, a, True, win)
    ref = np.zeros((win.out[0], win.out[0], win.out[1], win.out[1], 2, 3))

    def pos(o, d, k):
        q = win.strides[k] * o + d - win.pad[k][0]
        n = (H, W)[k]
        if win.circular:
            return q % n
        return q if 0 <= q < n else None

    for oh, oh2, ow, ow2 in itertools.product(range(win.out[0]), range(win.out[0]),
                                              range(win.out[1]), range(win.out[1])):
        for dh, dw in itertools.product(range(size[0]), range(size[1])):
            h, h2 = pos(oh, dh, 0), pos(oh2, dh, 0)
            w, w2 = pos(ow, dw, 1), pos(ow2, dw, 1)
            if None not in (h, h2, w, w2):
                ref[oh, oh2, ow, ow2] += a[h, h2, w, w2]
    np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13)


def test_pool_window_sum_independent_offsets(rng):
    a = rng.standard_normal((4, 4, 3, 3, 1))
    win = _window("layers[0]", "window_shape", (4, 3), [2, 2], [2, 1], "VALID", (1, 1))
    out = pool_window_sum(np, a, win)
    ref = np.zeros((2, 2, 2, 2, 1))
    for o, o2, p, p2 in itertools.product(range(2), range(2), range(2), range(2)):
        for d, d2, e, e2 in itertools.product(range(2), range(2), range(2), range(2)):
            ref[o, o2, p, p2] += a[2 * o + d, 2 * o2 + d2, p + e, p2 + e2]
    np.testing.assert_allclose(out, ref, rtol=1e-13)

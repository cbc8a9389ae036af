"""The client's streamed .npy upload body is byte-identical to np.save's file."""

import io

import numpy as np
import pytest

from ntkcompute.client import _NpyStream


@pytest.mark.parametrize("a", [
    np.arange(24.0).reshape(2, 3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    np.arange(20).reshape(4, 5)[:, ::2],  # not contiguous: copied once
    np.array([3, 1, 2], dtype=np.int64),
])
@pytest.mark.parametrize("block", [7, 1 << 20])
def test_stream_equals_np_save(a, block):
    ref = io.BytesIO()
    np.save(ref, a)
    s = _NpyStream(a, block_bytes=block)
    got = b"".join(iter(lambda: s.read(13), b""))
    assert got == ref.getvalue() and s.size == len(got)
    np.testing.assert_array_equal(np.load(io.BytesIO(got)), a)

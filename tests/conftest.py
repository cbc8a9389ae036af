import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _compiled_kernels():
    """Compile the fused CPU kernels once, before any test starts worker processes: on a
    fresh clone each of them would otherwise compile its own copy at the same time."""
    from ntkcompute.kernels import fused

    fused.warm(parallel=True)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def conv_net(depth, readout="global_avg_pool", w=2**0.5, b=None, padding="SAME", act="relu"):
    layers = []
    for _ in range(depth):
        layers += [{"type": "conv", "filter_shape": [3, 3], "padding": padding, "W_std": w,
                    "b_std": b}, {"type": act}]
    layers += [{"type": readout}, {"type": "dense", "W_std": w, "b_std": b}]
    return {"layers": layers}


def fc_family(w=1.5, b=0.1):
    """An FC ReLU net with one top-level repeat: a kernel family's spec (depth = its n)."""
    dense = {"type": "dense", "W_std": w, "b_std": b}
    return {"layers": [{"type": "repeat", "n": 1, "layer": {"type": "serial", "layers": [
        dense, {"type": "relu"}]}}, dense]}


def fc_net(depth, w=1.5, b=0.2, act="relu"):
    layers = []
    for _ in range(depth):
        layers += [{"type": "dense", "W_std": w, "b_std": b}, {"type": act}]
    layers += [{"type": "dense", "W_std": w, "b_std": b}]
    return {"layers": layers}

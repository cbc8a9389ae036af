"""Named architectures from the literature, as spec dicts (usable anywhere a spec is)."""

from __future__ import annotations

import math
from typing import Any

SQRT2 = math.sqrt(2.0)


def fc(depth: int, W_std: float = SQRT2, b_std: float | None = 0.0,
       act: str = "relu") -> dict[str, Any]:
    """``depth`` hidden Dense + activation layers and a Dense readout."""
    layers: list[dict[str, Any]] = []
    for _ in range(depth):
        layers += [{"type": "dense", "W_std": W_std, "b_std": b_std}, {"type": act}]
    layers.append({"type": "dense", "W_std": W_std, "b_std": b_std})
    return {"layers": layers}


def cntk(depth: int, readout: str = "global_avg_pool", W_std: float = SQRT2,
         b_std: float | None = None) -> dict[str, Any]:
    """Arora et al. 2019 CNTK: ``depth`` x [3x3 SAME conv, ReLU], then GAP or flatten, Dense.

    ``readout="global_avg_pool"`` is CNTK-GAP, ``"flatten"`` is CNTK-V.
    """
    layers: list[dict[str, Any]] = []
    for _ in range(depth):
        layers += [{"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": W_std,
                    "b_std": b_std}, {"type": "relu"}]
    layers += [{"type": readout}, {"type": "dense", "W_std": W_std, "b_std": b_std}]
    return {"layers": layers}


def myrtle(depth: int = 5, W_std: float = SQRT2, b_std: float | None = 0.0) -> dict[str, Any]:
    """Shankar et al. 2020 Myrtle kernels (as in neural-tangents' examples), depth 5, 7 or 10;
    for 32x32 inputs."""
    factor = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}[depth]
    conv = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": W_std,
            "b_std": b_std}
    pool = {"type": "avg_pool", "window_shape": [2, 2], "strides": [2, 2]}
    layers: list[dict[str, Any]] = []
    layers += [conv, {"type": "relu"}] * factor[0] + [pool]
    layers += [conv, {"type": "relu"}] * factor[1] + [pool]
    layers += [conv, {"type": "relu"}] * factor[2] + [pool] * 3
    layers += [{"type": "flatten"}, {"type": "dense", "W_std": W_std, "b_std": b_std}]
    return {"layers": layers}


def resnet(blocks: int = 2, readout: str = "flatten", W_std: float = SQRT2,
           b_std: float | None = None) -> dict[str, Any]:
    """Residual CNTK: a 3x3 SAME conv stem, ``blocks`` pre-activation residual blocks
    ``x + conv(relu(conv(relu(x))))`` (stax's WideResnet block without downsampling), ReLU,
    then ``readout`` ("flatten" or "global_avg_pool") and a Dense readout: ``1 + 2 blocks``
    convolutions, the same count as ``cntk(1 + 2 blocks, readout)``."""
    conv = {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "W_std": W_std,
            "b_std": b_std}
    branch = [{"type": "relu"}, conv, {"type": "relu"}, conv]
    block = {"type": "serial", "layers": [
        {"type": "fan_out", "num": 2},
        {"type": "parallel", "branches": [[{"type": "identity"}], branch]},
        {"type": "fan_in_sum"}]}
    return {"layers": [conv, {"type": "repeat", "layer": block, "n": blocks}, {"type": "relu"},
                       {"type": readout}, {"type": "dense", "W_std": W_std, "b_std": b_std}]}

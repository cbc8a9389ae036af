"""``ntk solve`` on stores of ``ntk gram``: a cross store made the wrong way round (``--x1
train --x2 test``) is refused before the solve, exit 2 in one line that says how to make it;
the flags of a remote solve are refused on a store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntkcompute import architectures as A

NTK = [sys.executable, "-m", "ntkcli"]


def ntk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NTK, *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """train.npy (40 rows), test.npy (25 rows), labels, and three `ntk gram` stores: train
    (40 x 40), cross (test x train, 25 x 40) and wrong (train x test, 40 x 25)."""
    d = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(8)
    np.save(d / "train.npy", rng.standard_normal((40, 5)))
    np.save(d / "test.npy", rng.standard_normal((25, 5)))
    np.save(d / "y.npy", rng.integers(0, 2, 40))
    np.save(d / "yt.npy", rng.integers(0, 2, 25))
    (d / "arch.json").write_text(json.dumps(A.fc(2)))
    for out, x1, x2 in (("train", "train", None), ("cross", "test", "train"),
                        ("wrong", "train", "test")):
        r = ntk("gram", "--arch", str(d / "arch.json"), "--x1", str(d / f"{x1}.npy"),
                *(["--x2", str(d / f"{x2}.npy")] if x2 else []), "--out", str(d / out),
                "--quiet")
        assert r.returncode == 0, r.stderr
    return d


def _solve(d: Path, *extra: str) -> subprocess.CompletedProcess:
    return ntk("solve", "--kernel", str(d / "train"), "--labels", str(d / "y.npy"),
               "--lambda", "1e-3", "--solver", "direct", *extra)


def test_a_train_x_test_cross_store_exits_2_before_solving(stores):
    r = _solve(stores, "--cross", str(stores / "wrong"), "--test-labels", str(stores / "yt.npy"))
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert line.startswith("ntk solve: cross:") and "--x1 test --x2 train" in line, line
    assert "(40, 25)" in line
    assert not (stores / "train" / "solves").exists()  # refused before any solve was saved
    ok = _solve(stores, "--cross", str(stores / "cross"), "--test-labels", str(stores / "yt.npy"))
    assert ok.returncode == 0, ok.stderr
    assert 0 <= json.loads(ok.stdout)["metrics"]["accuracy"] <= 1


def test_test_labels_of_the_wrong_length_exit_2(stores):
    r = _solve(stores, "--cross", str(stores / "cross"), "--test-labels", str(stores / "y.npy"))
    assert r.returncode == 2 and r.stderr.startswith("ntk solve: test_labels:"), r.stderr


@pytest.mark.parametrize("extra", [["--wait"], ["--url", "http://127.0.0.1:1"], []])
def test_remote_only_flags_and_missing_labels_on_a_store_exit_2(stores, extra):
    args = ["solve", "--kernel", str(stores / "train"), "--lambda", "1e-3", *extra]
    if extra:
        args += ["--labels", str(stores / "y.npy")]
    r = ntk(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (extra[0] if extra else "labels") in r.stderr


def test_bad_lambda_and_times_exit_2_naming_the_flag(stores):
    for flag, value in (("--lambda", "1e-3,big"), ("--times", "0,soon")):
        args = ["solve", "--kernel", str(stores / "train"), "--labels", str(stores / "y.npy"),
                "--lambda", "1e-3", flag, value]
        r = ntk(*args)
        assert r.returncode == 2 and flag in r.stderr and repr(value) in r.stderr, r.stderr


def test_plot_a_kernel_store_and_its_solve(stores, tmp_path):
    """``ntk plot``: a store's heatmap and spectrum; a saved solve's spectrum, learning
    curves and GD error; a missing solve exits 2 in one line."""
    from matplotlib.image import imread

    d = stores
    r = ntk("solve", "--kernel", str(d / "train"), "--labels", str(d / "y.npy"),
            "--lambda", "1e-3", "--solver", "direct", "--cross", str(d / "cross"),
            "--test-labels", str(d / "yt.npy"), "--times", "0,0.1,1,10", "--spectrum", "5",
            "--save", "p")
    assert r.returncode == 0, r.stderr
    for extra, panels in (([], ["heatmap", "spectrum"]),
                          (["--solve", "p"], ["spectrum", "learning_curves", "gd_error"])):
        out = tmp_path / f"{len(extra)}.png"
        p = ntk("plot", str(d / "train"), "--out", str(out), *extra)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["panels"] == panels
        img = imread(out)
        assert img.shape[1] > 400 * len(panels) and img[..., :3].std() > 0.05
    bad = ntk("plot", str(d / "train"), "--solve", "nope", "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "nope" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad = ntk("plot", str(d / "cross"), "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "cross kernel" in bad.stderr

#!/usr/bin/env bash
# The GPU check of issue 17, for a lent device machine (the device tool's `run`), < 8 min:
#   conformance of the CUDA kernels against the CPU path, every bench workload timed on the
#   GPU, CNTK-GAP-21 next to nt's published V100 time, a tiled job on a GPU worker.
# The device image has CuPy, numba and numba-cuda but not our pure-Python dependencies, and
# reaches no index: `bench/gpu.sh --download` (here, with pip's index reachable) puts their
# wheels in .whl/ (git-ignored: carry it), and the run installs them from there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
PKGS="pydantic pydantic-core annotated-types typing-inspection typing-extensions
      dask distributed zarr numcodecs donfig crc32c fsspec tqdm cloudpickle partd locket
      toolz msgpack sortedcontainers tblib zict tornado psutil click jinja2 markupsafe pyyaml
      urllib3 packaging"
if [ "${1:-}" = "--download" ]; then
    mkdir -p .whl
    # shellcheck disable=SC2086
    $PY -m pip download -q --dest .whl --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any $PKGS
    exit 0
fi
if [ -d .whl ]; then
    # shellcheck disable=SC2086
    $PY -m pip install -q --no-index --find-links .whl --no-deps $PKGS 2>/dev/null || \
        $PY -m pip install -q --no-index --find-links .whl $PKGS
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 450 $PY bench/gpu.py

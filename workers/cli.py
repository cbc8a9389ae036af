"""The ``ntk`` command line.

    ntk gram --arch arch.json --x1 train.npy [--x2 test.npy] --out STORE [--tile T]
             [--scheduler tcp://host:8786] [--dtype float32] [--memory BYTES] [--get ntk]

``--x1``/``--x2`` take ``.npy`` files, ``.npz`` files (array ``x``) or dataset URLs written by
``workers.write_dataset``. Rerunning the same command resumes the job.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ntkcompute.errors import InputError


def _load(arg: str) -> Any:
    p = Path(arg)
    if p.suffix == ".npy" and p.exists():
        return np.load(p, mmap_mode="r")
    if p.suffix == ".npz" and p.exists():
        return np.load(p)["x"]
    return arg  # a dataset URL


def _gram(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from workers import GramJobError, compute_gram

    arch = json.loads(Path(args.arch).read_text())
    job = compute_gram(arch, _load(args.x1), _load(args.x2) if args.x2 else None,
                       store=args.out, tile=args.tile, scheduler=args.scheduler,
                       get=tuple(args.get.split(",")), dtype=args.dtype, memory=args.memory)
    with tqdm(total=job.tiles_total, unit="tile", disable=args.quiet) as bar:
        bar.update(job.tiles_reused)
        shown = job.tiles_reused
        while True:
            p = job.progress()
            bar.update(p["done"] - shown)
            shown = p["done"]
            if p["status"] != "running":
                break
            time.sleep(0.2)
    try:
        job.wait()
    except GramJobError as e:
        print(f"ntk gram: job failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"store": args.out, "tiles": job.tiles_total,
                      "reused": job.tiles_reused, "computed": job.tiles_computed,
                      "arrays": {k: list(v.shape) for k, v in job.arrays.items()}}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ntk", description="ntkcompute command line")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gram", help="compute a Gram matrix on a Dask cluster into Zarr")
    g.add_argument("--arch", required=True, help="architecture spec (JSON file)")
    g.add_argument("--x1", required=True, help=".npy, .npz (array x) or dataset URL")
    g.add_argument("--x2", help="second inputs (cross kernel); omit for the symmetric Gram")
    g.add_argument("--out", required=True, help="URL of the job's Zarr group")
    g.add_argument("--tile", type=int, default=None, help="tile side (default: automatic)")
    g.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (default $NTK_SCHEDULER_ADDRESS or local)")
    g.add_argument("--dtype", default=None, choices=["float32", "float64"])
    g.add_argument("--memory", type=int, default=1 << 30, help="bytes per task")
    g.add_argument("--get", default="ntk,nngp", help="ntk,nngp (comma separated)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_gram)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"ntk {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

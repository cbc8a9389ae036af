"""``ntk`` subcommands of the service and its client.

    ntk serve [--scheduler ADDRESS] [--store URL] [--db URL] [--host H] [--port P]
    ntk keys create [--name NAME] [--db URL]
    ntk submit --arch arch.json --train x.npy [--train-labels y.npy]
               [--test x_test.npy] [--test-labels y_test.npy] [--kernels ntk,nngp]
               [--dtype float32] [--wait]
    ntk status ID                      (a kernel job k-... or a solve s-...)
    ntk fetch ID --out K.npy [--kind ntk] [--part train|test] [--rows a:b] [--cols c:d]
    ntk fetch SOLVE_ID --out P.npy [--what predictions|coefficients]

Client commands read the service from ``--url``/``$NTK_URL`` and the key from
``--api-key``/``$NTK_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ntkcompute.errors import InputError


def _client(args: argparse.Namespace) -> Any:
    from ntkcompute.client import Client

    if not args.api_key:
        raise InputError("no API key: pass --api-key or set NTK_API_KEY", field="api_key")
    return Client(args.url, args.api_key)


def _npy(path: str | None, field: str) -> np.ndarray | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {path}", field=field)
    return np.load(p, mmap_mode="r") if p.suffix == ".npy" else np.load(p)["x"]


def _serve(args: argparse.Namespace) -> int:
    from .config import Settings
    from .server import serve

    settings = Settings.from_env(store=args.store, db=args.db, scheduler=args.scheduler,
                                 workers=args.workers)
    serve(settings, args.host, args.port, args.log_level)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .config import Settings
    from .db import Database
    from .keys import create_key

    db = Database(Settings.from_env(db=args.db).db)
    print(create_key(db, args.name))
    return 0


def _submit(args: argparse.Namespace) -> int:
    try:
        arch = json.loads(Path(args.arch).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read the architecture JSON: {e}", field="arch") from None
    with _client(args) as c:
        train = c.upload(_npy(args.train, "train"), _npy(args.train_labels, "train_labels"))
        test = c.upload(_npy(args.test, "test"), _npy(args.test_labels, "test_labels")) \
            if args.test else None
        job = c.kernel(train, arch, test=test, kernels=tuple(args.kernels.split(",")),
                       dtype=args.dtype, tile=args.tile)
        if args.wait:
            job.wait(progress=not args.quiet)
        print(json.dumps(job.refresh()))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = (c.get_solve(args.id) if args.id.startswith("s-") else c.job(args.id)).info
    print(json.dumps(info, indent=1))
    return 0 if info["status"] not in ("failed", "cancelled") else 1


def _span(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    a, _, b = text.partition(":")
    return int(a), int(b)


def _fetch(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.id.startswith("s-"):
            s = c.get_solve(args.id)
            a = s.predictions() if args.what == "predictions" else s.coefficients()
        else:
            job = c.job(args.id)
            if args.rows or args.cols:
                a = job.block(args.kind, _span(args.rows), _span(args.cols), args.part)
            else:
                a = job.to_numpy(args.kind, args.part)
    np.save(args.out, a)
    print(json.dumps({"out": args.out, "shape": list(a.shape), "dtype": a.dtype.name}))
    return 0


def register(sub: Any) -> None:
    """Add the service subcommands to the ``ntk`` parser's subparsers."""
    s = sub.add_parser("serve", help="run the REST service")
    s.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (default $NTK_SCHEDULER_ADDRESS; none: an "
                   "embedded LocalCluster)")
    s.add_argument("--store", default=None, help="Zarr root URL (default $NTK_STORE)")
    s.add_argument("--db", default=None, help="SQLAlchemy URL (default $NTK_DB_URL)")
    s.add_argument("--workers", type=int, default=None, help="embedded cluster processes")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_serve)

    k = sub.add_parser("keys", help="manage API keys")
    ks = k.add_subparsers(dest="keys_command", required=True)
    kc = ks.add_parser("create", help="make an API key and print it (shown once)")
    kc.add_argument("--name", default="")
    kc.add_argument("--db", default=None, help="SQLAlchemy URL (default $NTK_DB_URL)")
    kc.set_defaults(func=_keys)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("NTK_URL", "http://127.0.0.1:8000"))
        p.add_argument("--api-key", default=os.environ.get("NTK_API_KEY"))

    m = sub.add_parser("submit", help="upload data and start a kernel job on the service")
    client_args(m)
    m.add_argument("--arch", required=True, help="architecture spec (JSON file)")
    m.add_argument("--train", required=True, help=".npy or .npz (array x)")
    m.add_argument("--train-labels", help=".npy labels (integer classes or targets)")
    m.add_argument("--test", help=".npy or .npz test inputs")
    m.add_argument("--test-labels", help=".npy test labels")
    m.add_argument("--kernels", default="ntk,nngp")
    m.add_argument("--dtype", default=None, choices=["float32", "float64"])
    m.add_argument("--tile", type=int, default=None)
    m.add_argument("--wait", action="store_true", help="wait, with a progress bar")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_submit)

    st = sub.add_parser("status", help="status of a kernel job (k-...) or solve (s-...)")
    client_args(st)
    st.add_argument("id")
    st.set_defaults(func=_status)

    f = sub.add_parser("fetch", help="download a kernel (block) or a solve's arrays as .npy")
    client_args(f)
    f.add_argument("id")
    f.add_argument("--out", required=True)
    f.add_argument("--kind", choices=["ntk", "nngp"], default="ntk")
    f.add_argument("--part", choices=["train", "test"], default="train")
    f.add_argument("--rows", help="a:b")
    f.add_argument("--cols", help="c:d")
    f.add_argument("--what", choices=["predictions", "coefficients"], default="predictions")
    f.set_defaults(func=_fetch)


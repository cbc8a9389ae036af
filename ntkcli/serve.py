"""The ``ntk`` commands of the service and its client (``service``, ``ntkcompute.client``).

    ntk serve [--scheduler ADDRESS] [--store URL] [--db URL] [--host H] [--port P]
              [--tls-ca-file ca.pem --tls-cert client.pem --tls-key client-key.pem]
    ntk keys create [--name NAME] [--expires DURATION|DATE] [--db URL]
    ntk keys list [--json] [--db URL]
    ntk keys revoke ID [--db URL]
    ntk keys rotate ID [--db URL]
    ntk submit --arch arch.json --train x.npy [--train-labels y.npy]
               [--test x_test.npy] [--test-labels y_test.npy] [--kernels ntk,nngp]
               [--dtype float32] [--depths 1,2,3 [--variants 0,1] [--b-stds 0,1]]
               [--zca 0.1] [--standardize] [--flip] [--wait]
    ntk solve --kernel k-... --lambda 1e-3 [--labels y.npy] [--wait] ...
                                       (a solve of a kernel job; prints its id s-...)
    ntk status ID                      (a kernel job k-... or a solve s-...)
    ntk fetch ID --out K.npy [--kind ntk] [--part train|test] [--rows a:b] [--cols c:d]
                             [--depth D [--variant V] [--b-std B]]
    ntk fetch SOLVE_ID --out P.npy [--what predictions|coefficients|variances]
    ntk verify KERNEL_JOB_ID | STORE   (exit 1 if a chunk is damaged; resume repairs it)

Client commands read the service from ``--url``/``$NTK_URL`` and the key from
``--api-key``/``$NTK_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from ntkcompute.errors import InputError
from ntkcompute.lifecycle import Status

from .inputs import float_list, int_list, load_array, preprocess_args, preprocess_of, read_arch
from .local import add_client_arguments, add_tls_arguments


def _client(args: argparse.Namespace) -> Any:
    from ntkcompute.client import Client

    if not args.api_key:
        raise InputError("no API key: pass --api-key or set NTK_API_KEY", field="api_key")
    return Client(args.url, args.api_key)


def _serve(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.server import serve
    from workers.cluster import check_address, security_from

    settings = Settings.from_env(store=args.store, db=args.db, scheduler=args.scheduler,
                                 workers=args.workers, tls_ca_file=args.tls_ca_file,
                                 tls_cert=args.tls_cert, tls_key=args.tls_key,
                                 log_format=args.log_format, dashboard=args.dashboard)
    # bad TLS flags or a tls:// scheduler without them: exit 2 now, not at cluster start
    security = security_from(settings.tls_ca_file, settings.tls_cert, settings.tls_key,
                             env=False)
    if settings.scheduler:
        check_address(settings.scheduler, security)
    serve(settings, args.host, args.port, args.log_level)
    return 0


def _when(t: float | None) -> str:
    """Epoch seconds as a short UTC time for the keys table; "-" for None."""
    from datetime import datetime, timezone

    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _keys(args: argparse.Namespace) -> int:
    """``ntk keys create|list|revoke|rotate``: straight on the database, no service needed."""
    import sys
    import time

    from service.config import Settings
    from service.db import Database
    from service.keys import create_key, list_keys, parse_expires, revoke, rotate

    db = Database(Settings.from_env(db=args.db).db)
    cmd = args.keys_command
    if cmd == "create":
        expires = parse_expires(args.expires) if args.expires else None
        print(create_key(db, args.name, expires=expires))
    elif cmd == "list":
        rows = list_keys(db)
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        head = ("ID", "NAME", "SOURCE", "STATUS", "CREATED", "EXPIRES", "REVOKED", "ROTATED")
        table = [head] + [(r["id"], r["name"], r["source"], r["status"], _when(r["created"]),
                           _when(r["expires"]), _when(r["revoked"]), _when(r["rotated"]))
                          for r in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
        for row in table:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    elif cmd == "revoke":
        if not revoke(db, args.id):
            raise InputError(f"no API key with id {args.id!r}", field="id")
        print(f"revoked {args.id}")
    elif cmd == "rotate":
        token = rotate(db, args.id)
        row = next(r for r in list_keys(db) if r["id"] == args.id)
        if row["source"] == "env":
            print(f"ntk keys rotate: {args.id} comes from NTK_API_KEYS: put the new token there "
                  "too, or the next service start restores the listed secret", file=sys.stderr)
        if row["expires"] is not None and row["expires"] <= time.time():
            print(f"ntk keys rotate: {args.id} expired at {_when(row['expires'])}; the new "
                  "token is refused as well", file=sys.stderr)
        print(token)
    return 0


def _submit(args: argparse.Namespace) -> int:
    arch = read_arch(args.arch)
    with _client(args) as c:
        train = c.upload(load_array(args.train, "train"),
                         load_array(args.train_labels, "train_labels"))
        test = c.upload(load_array(args.test, "test"), load_array(args.test_labels,
                                                                   "test_labels")) \
            if args.test else None
        job = c.kernel(train, arch, test=test, kernels=tuple(args.kernels.split(",")),
                       dtype=args.dtype, tile=args.tile, depths=args.depths,
                       variants=args.variants, b_stds=args.b_stds,
                       preprocess=preprocess_of(args))
        if args.wait:
            job.wait(progress=not args.quiet)
        print(json.dumps(job.refresh()))
    return 0


def remote_solve(args: argparse.Namespace) -> int:
    """``ntk solve --kernel k-...``: a solve of the service's kernel job (``POST
    /v1/solves``); prints the solve as created (its id ``s-...`` for ``ntk status`` and ``ntk
    fetch``), or with ``--wait`` as it ended, metrics included. Flags that only mean
    something on a store (``--cross``, ``--save``, ``--scheduler``) are refused: the service
    predicts on the job's own test set."""
    for flag, given in (("--cross", args.cross), ("--save", args.save),
                        ("--scheduler", args.scheduler)):
        if given:
            raise InputError(f"is for a solve on a store of `ntk gram`; a kernel job of the "
                             f"service ({args.kernel}) predicts on its own test set and keeps "
                             "its solves itself", field=flag)
    labels = load_array(args.labels, "labels")
    test_labels = load_array(args.test_labels, "test_labels")
    with _client(args) as c:
        s = c.solve(args.kernel, args.lam, labels=None if labels is None else np.asarray(labels),
                    test_labels=None if test_labels is None else np.asarray(test_labels),
                    relative=args.relative, solver=args.solver, kind=args.name, tol=args.tol,
                    maxiter=args.maxiter, preconditioner=args.precond, rank=args.rank,
                    times=args.times, bound=args.bound, spectrum=args.spectrum,
                    min_eigenvalue=args.min_eigenvalue, variance=args.variance,
                    depth=args.depth, variant=args.variant, b_std=args.b_std)
        if args.wait:
            s.wait(progress=True)  # its status line on stderr, from the solve's event stream
    print(json.dumps(s.info))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = (c.get_solve(args.id) if args.id.startswith("s-") else c.job(args.id)).info
    print(json.dumps(info, indent=1))
    return 0 if info["status"] not in (Status.FAILED, Status.CANCELLED) else 1


#: ``ntk list WHAT``: the columns of each list's table.
_COLUMNS = {"kernels": ("id", "status", "tiles_done", "tiles_total", "method", "created"),
            "solves": ("id", "kernel", "status", "created"),
            "datasets": ("id", "n", "shape", "dtype", "created")}


def _list(args: argparse.Namespace) -> int:
    """``ntk list kernels|solves|datasets``: every row of the key's list, oldest first, page
    after page (the client follows the ``Link`` headers); a table, or JSON lines."""
    with _client(args) as c:
        pages = {"kernels": c.jobs, "solves": c.solves, "datasets": c.datasets}[args.what]
        rows = [r.info for r in pages(page=args.page)]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    head = _COLUMNS[args.what]
    table = [head] + [tuple("x".join(map(str, r[k])) if isinstance(r[k], list) else
                            str(r[k]) for k in head) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _verify(args: argparse.Namespace) -> int:
    """A job's every stored chunk read back through its checksum: through the service for a
    kernel job id (``k-...``), else on the Dask cluster for a store URL of ``ntk gram``."""
    if args.target.startswith("k-"):
        with _client(args) as c:
            report = c.job(args.target).verify()
    else:
        from workers import verify_job

        try:
            report = verify_job(args.target, scheduler=args.scheduler).to_dict()
        except (FileNotFoundError, KeyError) as e:
            raise InputError(f"no ntkcompute job at {args.target} ({e})",
                             field="target") from None
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


def _span(text: str) -> tuple[int, int]:
    """``"a:b"`` -> ``(a, b)``, integers with 0 <= a < b (an argparse type)."""
    a, sep, b = text.partition(":")
    try:
        lo, hi = int(a), int(b)
    except ValueError:
        lo = hi = -1
    if not sep or not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"must be a:b with integers 0 <= a < b, got {text!r}")
    return lo, hi


def _fetch(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.id.startswith("s-"):
            s = c.get_solve(args.id)
            a = {"predictions": s.predictions, "coefficients": s.coefficients,
                 "variances": s.variances}[args.what]()
        else:
            job = c.job(args.id)
            if args.rows or args.cols:
                a = job.block(args.kind, args.rows, args.cols, args.part, args.depth,
                              args.variant, args.b_std)
            else:
                a = job.to_numpy(args.kind, args.part, args.depth, args.variant, args.b_std)
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
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    s.add_argument("--port", type=int, default=8000, help="HTTP port")
    s.add_argument("--log-level", default="info", help="log level (debug shows the access "
                   "lines of polling requests)")
    s.add_argument("--log-format", choices=("text", "json"), default=None,
                   help="log lines as text or JSON objects (default $NTK_LOG_FORMAT, text)")
    s.add_argument("--dashboard", default=None, help="host:port of the embedded cluster's "
                   "Dask dashboard (default $NTK_DASHBOARD, 127.0.0.1:8787; 'none': off)")
    add_tls_arguments(s)  # the client certificate the service presents to the scheduler
    s.set_defaults(func=_serve)

    k = sub.add_parser("keys", help="manage API keys (directly in the service's database)")
    ks = k.add_subparsers(dest="keys_command", required=True)
    kc = ks.add_parser("create", help="make an API key and print it (shown once)")
    kc.add_argument("--name", default="", help="a label for the key (shown by `keys list`)")
    kc.add_argument("--expires", default=None, metavar="DURATION|DATE",
                    help="when the key stops working: a duration from now (45s, 90m, 12h, "
                    "30d, 2w) or an ISO-8601 date/datetime (UTC unless it has an offset); "
                    "default never")
    kl = ks.add_parser("list", help="show every key: id, name, source, status and times "
                       "(never a secret)")
    kl.add_argument("--json", action="store_true",
                    help="a JSON list (times as epoch seconds) instead of a table")
    kr = ks.add_parser("revoke", help="revoke a key for good; the service refuses it at once")
    kr.add_argument("id", help="the key id (the part between ntk_ and the next _)")
    ko = ks.add_parser("rotate", help="give a key a new secret and print the new token; the "
                       "old one stops working at once")
    ko.add_argument("id", help="the key id (the part between ntk_ and the next _)")
    for p in (kc, kl, kr, ko):
        p.add_argument("--db", default=None, metavar="URL",
                       help="SQLAlchemy URL (default $NTK_DB_URL)")
        p.set_defaults(func=_keys)

    client_args = add_client_arguments

    m = sub.add_parser("submit", help="upload data and start a kernel job on the service")
    client_args(m)
    m.add_argument("--arch", required=True, help="architecture spec (JSON file)")
    m.add_argument("--train", required=True, help=".npy or .npz (array x)")
    m.add_argument("--train-labels", help=".npy labels (integer classes or targets)")
    m.add_argument("--test", help=".npy or .npz test inputs")
    m.add_argument("--test-labels", help=".npy test labels")
    m.add_argument("--kernels", default="ntk,nngp", help="ntk, nngp or both, comma-separated")
    m.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="computation and storage dtype (default: float32 where verified)")
    m.add_argument("--tile", type=int, default=None, help="tile side (default: automatic)")
    m.add_argument("--depths", type=int_list, default=None,
                   help="a kernel family: the repeat counts of the architecture's one "
                   "top-level repeat, comma separated (blocks and solves then name --depth)")
    m.add_argument("--variants", type=int_list, default=None,
                   help="with --depths: each member's NTK also with its stem and first v "
                   "repeats fixed, comma separated (its blocks and solves name --variant)")
    m.add_argument("--b-stds", type=float_list, default=None,
                   help="with --depths: a bias grid, every member for each value of every "
                   "layer's b_std, comma separated (blocks and solves name --b-std)")
    preprocess_args(m)
    m.add_argument("--wait", action="store_true", help="wait, with a progress bar")
    m.add_argument("--quiet", action="store_true", help="no progress bar while waiting")
    m.set_defaults(func=_submit)

    st = sub.add_parser("status", help="status of a kernel job (k-...) or solve (s-...)")
    client_args(st)
    st.add_argument("id")
    st.set_defaults(func=_status)

    ls = sub.add_parser("list", help="the key's kernel jobs, solves or datasets, oldest first "
                        "(every page)")
    client_args(ls)
    ls.add_argument("what", choices=sorted(_COLUMNS))
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.add_argument("--page", type=int, default=100, help="rows fetched per request")
    ls.set_defaults(func=_list)

    v = sub.add_parser("verify", help="check every stored chunk of a job against its "
                       "checksum; exit 1 if any is damaged")
    client_args(v)
    v.add_argument("target", help="a kernel job id (k-..., through the service) or the "
                   "store URL of an `ntk gram` job")
    v.add_argument("--scheduler", default=None, help="Dask scheduler for a store URL "
                   "(default $NTK_SCHEDULER_ADDRESS, else an embedded cluster)")
    v.set_defaults(func=_verify)

    f = sub.add_parser("fetch", help="download a kernel (block) or a solve's arrays as .npy")
    client_args(f)
    f.add_argument("id", help="a kernel job id (k-...) or a solve id (s-...)")
    f.add_argument("--out", required=True, help="the .npy file to write")
    f.add_argument("--kind", choices=["ntk", "nngp"], default="ntk", help="which kernel")
    f.add_argument("--part", choices=["train", "test"], default="train",
                   help="train x train, or test x train")
    f.add_argument("--rows", type=_span, help="rows a:b of the kernel only (0-based, b excluded)")
    f.add_argument("--cols", type=_span, help="columns c:d of the kernel only")
    f.add_argument("--depth", type=int, default=None,
                   help="the member of a family job (ntk submit --depths)")
    f.add_argument("--variant", type=int, default=None,
                   help="with --depth: the NTK variant of a family job (ntk submit "
                   "--variants)")
    f.add_argument("--b-std", type=float, default=None,
                   help="with --depth: the value of a family job's bias grid (--b-stds)")
    f.add_argument("--what", choices=["predictions", "coefficients", "variances"],
                   default="predictions", help="which array of a solve (variances: of a "
                   "solve made with --variance)")
    f.set_defaults(func=_fetch)


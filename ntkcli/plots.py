"""``ntk plot``: a kernel's heatmap and spectrum, a solve's learning curves and GD error.

    ntk plot STORE|k-... --out K.png [--kind ntk] [--max-rows 2000]
    ntk plot STORE --solve NAME --out S.png      (a solve saved by ntk solve --save NAME)
    ntk plot s-... --out S.png                    (a solve of the service)

A kernel is read verified (a damaged chunk is named, never drawn); past ``--max-rows`` only
its leading block is drawn, and the title says so. A solve's pictures come from its
analyses: ``--spectrum K`` gives the spectrum, with ``--times`` the learning curves per
eigendirection, and ``--times`` with a test set the test error against t.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from ntkcompute.errors import InputError

from .local import add_client_arguments


def _kernel_block(args: argparse.Namespace) -> tuple[np.ndarray, int]:
    """The leading ``max_rows`` block of the train kernel, and the kernel's row count."""
    if args.source.startswith("k-"):
        from .serve import _client

        with _client(args) as c:
            job = c.job(args.source)
            n = int(job.info["shape"]["train"][0])
            m = min(n, args.max_rows)
            return np.asarray(job.block(args.kind, (0, m), (0, m), "train")), n
    from workers.store import open_group, read

    g = open_group(args.source, mode="r")
    if args.kind not in g:
        raise InputError(f"no '{args.kind}' array in {args.source}", field="kind")
    arr = g[args.kind]
    n = arr.shape[0]
    if arr.shape[0] != arr.shape[1]:
        raise InputError(f"{args.source} holds a cross kernel {arr.shape}; plot the train "
                         "Gram", field="source")
    m = min(n, args.max_rows)
    return np.asarray(read(arr, (slice(0, m), slice(0, m))), dtype=np.float64), n


def _analyses(args: argparse.Namespace) -> dict[str, Any]:
    if args.source.startswith("s-"):
        from .serve import _client

        with _client(args) as c:
            info = c.get_solve(args.source).info
        if info["status"] != "succeeded":
            raise InputError(f"the solve is {info['status']}", field="source")
        return info.get("analyses") or {}
    from workers.store import job_meta, open_group

    g = open_group(args.source, mode="r")
    path = f"solves/{args.solve}"
    if path not in g:
        raise InputError(f"no solve '{args.solve}' in {args.source}", field="solve")
    return job_meta(g[path]).get("analyses") or {}


def _plot(args: argparse.Namespace) -> int:
    from matplotlib.figure import Figure

    from ntkcompute import plot

    if args.max_rows < 2:
        raise InputError("must be >= 2", field="max_rows")
    solve = args.source.startswith("s-") or args.solve is not None
    panels: list[tuple[str, Any]] = []
    if solve:
        an = _analyses(args)
        if an.get("eigenvalues"):
            panels.append(("spectrum", lambda ax: plot.spectrum(an["eigenvalues"], ax=ax)))
        if an.get("learning_curves") and an.get("times"):
            panels.append(("learning_curves", lambda ax: plot.learning_curves(
                an["learning_curves"], an["times"], an.get("eigenvalues"), ax=ax)))
        if an.get("gd"):
            gd = an["gd"]
            acc = "accuracy" in gd[0]
            err = [1 - e["accuracy"] if acc else e["mse"] for e in gd]
            panels.append(("gd_error", lambda ax: plot.gd_error(
                [e["t"] for e in gd], err, ax=ax, metric="test error" if acc else "test MSE")))
        if not panels:
            raise InputError("this solve has nothing to draw: solve with --spectrum K "
                             "(spectrum), --times (learning curves, GD error with a test "
                             "set)", field="source")
        what = f"{args.source} solve {args.solve}" if args.solve else args.source
    else:
        k, n = _kernel_block(args)
        note = "" if len(k) == n else f", leading {len(k)} of {n} rows"
        shown = k[: min(len(k), 500), : min(len(k), 500)]
        part = "" if len(shown) == n else f", leading {len(shown)} of {n} rows"
        panels.append(("heatmap", lambda ax: plot.heatmap(shown, ax=ax,
                                                          title=f"{args.kind}{part}")))
        panels.append(("spectrum", lambda ax: plot.spectrum(
            np.linalg.eigvalsh(k), ax=ax, label=f"{args.kind}{note}")))
        what = args.source
    fig = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    for i, (_, draw) in enumerate(panels):
        draw(fig.add_subplot(1, len(panels), i + 1))
    fig.suptitle(what)
    fig.savefig(args.out, dpi=args.dpi)
    print(json.dumps({"out": args.out, "panels": [p for p, _ in panels]}))
    return 0


def register(sub: Any) -> None:
    """Add ``ntk plot`` to the ``ntk`` parser's subparsers."""
    p = sub.add_parser("plot", help="draw a kernel (heatmap, spectrum) or a solve (spectrum, "
                       "learning curves, GD test error) as a PNG (needs matplotlib)")
    p.add_argument("source", help="a kernel store (ntk gram), a service kernel job k-..., or "
                   "a service solve s-...")
    p.add_argument("--out", required=True, help="the picture to write (.png, .svg, .pdf)")
    p.add_argument("--kind", choices=["ntk", "nngp"], default="ntk", help="which kernel")
    p.add_argument("--solve", default=None,
                   help="a solve saved in the store (ntk solve --save NAME; default name "
                   "'default'): draw its analyses instead of the kernel")
    p.add_argument("--max-rows", type=int, default=2000,
                   help="draw at most the leading N x N block of a kernel (default 2000)")
    p.add_argument("--dpi", type=int, default=110, help="resolution of a raster picture")
    add_client_arguments(p)
    p.set_defaults(func=_plot)

"""The ``ntk`` entry point: one parser with every subcommand, and :func:`main`.

The commands live in :mod:`ntkcli.local` (``gram``, ``solve``, ``scheduler``, ``worker``,
``certs``) and :mod:`ntkcli.serve` (``serve``, ``keys``, ``submit``, ``status``, ``verify``,
``fetch``); their usage is in those modules' docstrings and ``ntk COMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

import httpx

import ntkcompute
from ntkcompute.errors import InputError

from . import local, plots, serve


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``ntk fetch: argument --rows: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``ntk`` parser with every subcommand (the service's included)."""
    ap = _Parser(prog="ntk", description="ntkcompute command line")
    ap.add_argument("--version", action="version", version=f"ntk {ntkcompute.__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    local.register(sub)
    serve.register(sub)
    plots.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one ``ntk`` command; its exit status (2 for bad input, 1 for a failed job or a
    refused API call)."""
    args = build_parser().parse_args(argv)
    from ntkcompute.client import ApiError, JobFailed

    try:
        return args.func(args)
    except InputError as e:
        print(f"ntk {args.command}: {e}", file=sys.stderr)
        return 2
    except (ApiError, JobFailed) as e:
        print(f"ntk {args.command}: {e}", file=sys.stderr)
        return 1
    except httpx.TransportError as e:  # no answer at all: a wrong --url, a server down
        where = getattr(args, "url", None)
        print(f"ntk {args.command}: cannot reach the server{f' at {where}' if where else ''}: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

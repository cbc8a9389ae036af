"""The ``ntk`` entry point: one parser with every subcommand, and :func:`main`.

The commands live in :mod:`ntkcli.local` (``gram``, ``solve``, ``scheduler``, ``worker``,
``certs``) and :mod:`ntkcli.serve` (``serve``, ``keys``, ``submit``, ``status``, ``verify``,
``fetch``); their usage is in those modules' docstrings and ``ntk COMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys

from ntkcompute.errors import InputError

from . import local, serve


def build_parser() -> argparse.ArgumentParser:
    """The ``ntk`` parser with every subcommand (the service's included)."""
    ap = argparse.ArgumentParser(prog="ntk", description="ntkcompute command line")
    sub = ap.add_subparsers(dest="command", required=True)
    local.register(sub)
    serve.register(sub)
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


if __name__ == "__main__":
    sys.exit(main())

"""What the ``ntk`` commands read from files: input arrays and architecture specs.

Errors are :class:`~ntkcompute.errors.InputError` naming the flag's field, which
:func:`ntkcli.main.main` prints as ``ntk COMMAND: FIELD: message`` with exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ntkcompute.errors import InputError

#: File suffixes :func:`load_array` reads; with ``urls=True`` any other name is a dataset URL.
ARRAY_SUFFIXES = (".npy", ".npz")


def load_array(path: str | None, field: str, *, urls: bool = False) -> Any:
    """The array stored at ``path``: a ``.npy`` file memory-mapped read-only, else the array
    ``x`` of an ``.npz`` file; None for None.

    With ``urls``, a name that ends in neither suffix is returned as it is: a dataset URL
    (``workers.write_dataset``) for the Dask side to open. A file that does not exist is an
    :class:`InputError` on ``field``.
    """
    if path is None:
        return None
    p = Path(path)
    if urls and p.suffix not in ARRAY_SUFFIXES:
        return path
    if not p.exists():
        raise InputError(f"no such file: {path}", field=field)
    return np.load(p, mmap_mode="r") if p.suffix == ".npy" else np.load(p)["x"]


def read_arch(path: str, field: str = "arch") -> Any:
    """The architecture spec in the JSON file at ``path``, parsed (validation is
    :func:`ntkcompute.parse_arch`'s, where the spec is used); a file that cannot be read or
    is not JSON is an :class:`InputError` on ``field``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read the architecture JSON: {e}", field=field) from None


def _comma_list(text: str, kind: type, what: str) -> list:
    import argparse

    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated {what}, got {text!r}"
                                         ) from None


def int_list(text: str) -> list[int]:
    """An argparse type: ``1,2,3`` -> ``[1, 2, 3]``."""
    return _comma_list(text, int, "integers")


def float_list(text: str) -> list[float]:
    """An argparse type: ``0,1,10`` -> ``[0.0, 1.0, 10.0]``."""
    return _comma_list(text, float, "numbers")


def size(text: str) -> int:
    """An argparse type for byte counts: ``1073741824``, ``4GiB``, ``512MB`` (dask's
    ``parse_bytes``: kB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024)."""
    import argparse

    from dask.utils import parse_bytes

    try:
        n = parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"must be a size such as 4GiB or a byte count, got "
                                         f"{text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return int(n)


def memory_limit(text: str) -> str:
    """An argparse type for ``ntk worker --memory-limit``: ``auto`` or a size (see
    :func:`size`), passed on to ``dask worker`` as written."""
    return text if text == "auto" else str(size(text))


def preprocess_of(args: Any) -> dict[str, Any] | None:
    """``--zca S`` / ``--standardize`` / ``--flip`` as a job's ``preprocess`` options (None
    without)."""
    if args.zca is None and not args.standardize and not args.flip:
        return None
    return {"zca": args.zca, "standardize": bool(args.standardize), "flip": bool(args.flip)}


def preprocess_args(p: Any) -> None:
    """The ``--zca``, ``--standardize`` and ``--flip`` flags of a kernel job."""
    p.add_argument("--zca", type=float, default=None, metavar="STRENGTH",
                   help="ZCA-whiten the inputs with this regularisation strength, fit on the "
                   "train rows")
    p.add_argument("--standardize", action="store_true",
                   help="standardise the inputs per channel (after --zca), fit on the train "
                   "rows")
    p.add_argument("--flip", action="store_true",
                   help="store the flip-symmetrised kernel (K(x, x') + K(x, flip x')) / 2")

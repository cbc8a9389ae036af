"""The ``ntk`` command line's answers to bad local arguments and an unreachable server:
exit status 2 and one line on stderr, never a traceback; ``--version``; sizes as "4GiB"."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

import pytest

import ntkcompute
from ntkcli.inputs import size
from ntkcli.main import build_parser

NTK = [sys.executable, "-m", "ntkcli"]


def ntk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NTK, *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "NTK_API_KEY": "ntk_x"})


def _free_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


def test_version():
    r = ntk("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"ntk {ntkcompute.__version__}"


@pytest.mark.parametrize("rows", ["abc", "5", "3:1", "0:0", "a:b"])
def test_fetch_with_bad_rows_exits_2_naming_the_flag(rows):
    _one_line(ntk("fetch", "k-1", "--out", "x.npy", "--rows", rows), "--rows", repr(rows))


def test_an_unreachable_server_exits_2_in_one_line():
    url = f"http://127.0.0.1:{_free_port()}"
    for args in (("status", "k-1"), ("fetch", "k-1", "--out", "x.npy", "--rows", "0:3")):
        _one_line(ntk(*args, "--url", url), "cannot reach the server", url)


def test_sizes_accept_units_and_bytes():
    assert size("4GiB") == 4 * 2**30 and size("512MB") == 512 * 10**6
    assert size("1048576") == 2**20
    for bad in ("4Gx", "-1GiB", "0", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            size(bad)
    args = build_parser().parse_args(["gram", "--arch", "a.json", "--x1", "x.npy", "--out",
                                      "o", "--memory", "2GiB"])
    assert args.memory == 2 * 2**30
    _one_line(ntk("gram", "--arch", "a.json", "--x1", "x.npy", "--out", "o", "--memory",
                  "lots"), "--memory", "4GiB")
    assert build_parser().parse_args(["worker", "--memory-limit", "4GiB"]).memory_limit == \
        str(4 * 2**30)
    assert build_parser().parse_args(["worker"]).memory_limit == "auto"
    _one_line(ntk("worker", "--memory-limit", "lots"), "--memory-limit", "4GiB")


def test_every_flag_has_help_text():
    missing = []
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if action.option_strings and action.help is None and action.dest != "help":
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, missing

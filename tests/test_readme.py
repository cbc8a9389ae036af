"""Every code block of README.md runs as written.

How the blocks are taken (``blocks()``):

- `````python`` blocks run as files (``python snippet_L<line>.py``, so a Dask script without
  its ``if __name__ == "__main__":`` guard fails here as it would for a user), each in a
  fresh process, in README order, in one temporary directory: a block may read what an
  earlier one wrote (``out/cntk-train``), as for a reader who follows the README.
- `````sh`` / `````bash`` blocks run under ``bash -euo pipefail`` in the same directory, with
  ``.venv/bin`` first on ``PATH`` (so ``ntk`` and ``.venv/bin/ntk`` both work).
- A block preceded by ``<!-- readme-test: synopsis -->`` is a usage synopsis (placeholders,
  ``[optional]`` flags): every ``ntk COMMAND ...`` line in it must name a real command and
  only flags that command's parser has.
- A block preceded by ``<!-- not-tested: REASON -->`` is not run (deploys, the long-running
  server, ``make test`` itself); the reason must be given.
- Blocks without a language are program output and are not run.

The real service (``ntk serve`` on a loopback port, SQLite and Zarr under the temporary
directory, an API key) is started once if any block reads ``NTK_API_KEY``; blocks get
``NTK_URL`` and ``NTK_API_KEY`` in their environment, as a user who exported them.

Scaled down: the blocks that take minutes at the README's sizes run with the substitutions of
``SCALE`` below, each a literal string replaced in one block (the test fails if it no longer
occurs there, so the table cannot go stale silently). Everything else runs exactly as shown.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

#: Per-block wall-clock limit, seconds (scaled blocks take a few seconds to ~40 here).
TIMEOUT = 240

#: (a string that identifies the block, what to replace, its replacement): the README's sizes
#: scaled down for the test. Keep this short; every entry must match its block.
SCALE: list[tuple[str, str, str]] = [
    # Python client: CNTK-4 on 600 + 400 digits (~1 min) -> CNTK-2 on 60 + 30
    ("c.upload(x[:600], y[:600])", "x[:600], y[:600]", "x[:60], y[:60]"),
    ("c.upload(x[:600], y[:600])", "x[600:1000], y[600:1000]", "x[600:630], y[600:630]"),
    ("c.upload(x[:600], y[:600])", "A.cntk(4), test=test", "A.cntk(2), test=test"),
    ("c.upload(x[:600], y[:600])", "rows=(0, 100), cols=(0, 50)", "rows=(0, 10), cols=(0, 50)"),
    # Tiled Gram jobs: CNTK-4 on 1500 train / 297 test digits (~2 min) -> 150 / 50
    ('store="out/cntk-train"', "x[:1500], y[:1500], x[1500:], y[1500:]",
     "x[:150], y[:150], x[150:200], y[150:200]"),
    # Random features: 1000 rows, m = 1024 -> 300 rows, m = 128
    ("workers.compute_features", "(1000, 64)", "(300, 64)"),
    ("workers.compute_features", "x[:800]", "x[:240]"),
    ("workers.compute_features", "x[800:]", "x[240:]"),
    ("workers.compute_features", "y[:800]", "y[:240]"),
    ("workers.compute_features", "y[800:]", "y[240:]"),
    ("workers.compute_features", "m=1024, seed=0)(x)", "m=128, seed=0)(x)"),
    ("workers.compute_features", "kw = dict(m=1024", "kw = dict(m=128"),
]

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARK = re.compile(r"^<!--\s*(not-tested|readme-test):\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    mark: str | None  # "not-tested" or "readme-test"
    note: str  # the marker's reason / argument

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'text'}"


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README with the marker comment on the line before it."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mk = _MARK.match(prev.strip())
        out.append(Block(start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                         mk.group(1) if mk else None, mk.group(2) if mk else ""))
        i = j + 1
    return out


def scaled(b: Block) -> str:
    """The block's code with the ``SCALE`` substitutions for it applied."""
    code = b.code
    for key, old, new in SCALE:
        if key in b.code:
            assert code.count(old) == 1, f"SCALE entry {old!r} does not occur once in {b.id}"
            code = code.replace(old, new)
    return code


ALL = blocks()
CODE = [b for b in ALL if b.lang in ("python", "sh", "bash", "shell")]


def test_the_readme_has_blocks_of_each_kind_and_every_scale_entry_is_used():
    kinds = {(b.lang, b.mark) for b in CODE}
    assert ("python", None) in kinds and ("sh", None) in kinds
    assert any(b.mark == "readme-test" and b.note == "synopsis" for b in CODE)
    for key, old, _ in SCALE:
        hits = [b for b in CODE if key in b.code]
        assert len(hits) == 1, f"SCALE key {key!r} matches {len(hits)} blocks"
        assert old in hits[0].code, f"{old!r} is no longer in {hits[0].id}"
    for b in CODE:
        if b.mark == "not-tested":
            assert len(b.note) >= 10, f"{b.id}: not-tested needs a reason"
        elif b.mark == "readme-test":
            assert b.note == "synopsis", f"{b.id}: unknown readme-test marker {b.note!r}"
    assert [b.id for b in blocks("x\n<!-- not-tested: a reason here -->\n```sh\nls\n```\n"
                                 "```\nout\n```\n")] == ["L3-sh", "L6-text"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The directory every block runs in, in README order (shared, as for a reader)."""
    d = tmp_path_factory.mktemp("readme")
    (d / ".venv").symlink_to(BIN.parent)  # `.venv/bin/ntk ...` as written
    return d


@pytest.fixture(scope="module")
def env(workdir) -> dict[str, str]:
    """The blocks' environment: this tree first on PYTHONPATH, .venv/bin first on PATH, and
    the service's NTK_URL / NTK_API_KEY when a block needs it."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}:{os.environ['PATH']}"}
    svc = None
    if any("NTK_API_KEY" in b.code and b.mark is None for b in CODE):
        from tests.service.conftest import Service, make_key

        root = workdir / "_service"
        root.mkdir()
        svc = Service(root).start()
        e.update(NTK_URL=svc.url, NTK_API_KEY=make_key(svc.db, "readme"))
    yield e
    if svc is not None:
        svc.stop()


def _synopsis(b: Block) -> None:
    """Every ``ntk COMMAND [SUB] ...`` line: a real command, and flags it has."""
    import argparse

    from ntkcli.main import build_parser

    subs = next(a for a in build_parser()._actions
                if isinstance(a, argparse._SubParsersAction)).choices
    text = re.sub(r"\\\n\s*", " ", b.code)
    seen = 0
    for line in text.splitlines():
        m = re.match(r"\s*(?:\.venv/bin/)?ntk\s+([a-z]+)(.*)", line.split("#")[0])
        if not m:
            continue
        seen += 1
        cmd, rest = m.group(1), m.group(2)
        assert cmd in subs, f"{b.id}: no command `ntk {cmd}`"
        parser = subs[cmd]
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            word = rest.split()[0]
            assert word in nested[0].choices, f"{b.id}: no command `ntk {cmd} {word}`"
            parser = nested[0].choices[word]
        flags = {s for a in parser._actions for s in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
            assert flag in flags, f"{b.id}: `ntk {cmd}` has no flag {flag}"
    assert seen, f"{b.id}: a synopsis without an `ntk` command"


#: What runs: every code block but those the README marks not-tested (with the reason).
RUN = [b for b in CODE if b.mark != "not-tested"]


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs_as_written(block, workdir, env):
    if block.mark == "readme-test":
        _synopsis(block)
        return
    code = scaled(block)
    if block.lang == "python":
        path = workdir / f"snippet_L{block.line}.py"
        path.write_text(code)
        cmd = [sys.executable, path.name]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    took = time.monotonic() - t0
    assert r.returncode == 0, (f"README {block.id} exited {r.returncode} after {took:.1f}s\n"
                               f"--- code ---\n{code}\n--- stdout ---\n{r.stdout[-3000:]}\n"
                               f"--- stderr ---\n{r.stderr[-5000:]}")

"""The packages are layers, each importing only those below it:
``ntkcompute`` (the math) <- ``workers`` (Dask) <- ``service`` (REST) <- ``ntkcli`` (``ntk``).

Every import counts, at module level or inside a function (the lazy ones included), and
so does ``importlib.import_module``/``__import__`` of a literal name. And the math package
imports without Dask or FastAPI, so a process that only computes kernels never loads them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("ntkcompute", "workers", "service", "ntkcli")
HEAVY = ("dask", "distributed", "fastapi")


def module_name(path: Path, root: Path = ROOT) -> str:
    """``workers/gram.py`` -> ``workers.gram``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``tree`` (relative ones resolved
    against ``module``, a package when ``is_package``)."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "importlib.import_module", "import_module", "__import__") and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def upward_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Where ``path`` imports a layer above its own: ``file:line: a -> b`` each."""
    module = module_name(path, root)
    rank = LAYERS.index(module.split(".")[0])
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for line, name in imported(tree, module, path.name == "__init__.py"):
        top = name.split(".")[0]
        if top in LAYERS and LAYERS.index(top) > rank:
            bad.append(f"{path.relative_to(root)}:{line}: {module} -> {name}")
    return bad


def test_no_layer_imports_one_above_it():
    files = [f for pkg in LAYERS for f in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 40  # the walk found the source tree
    bad = [b for f in files for b in upward_imports(f)]
    assert not bad, "imports against the layering " + " < ".join(LAYERS) + ":\n" + \
        "\n".join(bad)


def test_the_check_sees_every_kind_of_import(tmp_path):
    """The walk itself: absolute, lazy and importlib imports are caught; relative ones
    resolve within their package (from a module and from a package's ``__init__``), and
    downward ones pass."""
    (tmp_path / "workers" / "sub").mkdir(parents=True)
    src = {
        "workers/sub/__init__.py": "from . import m\nfrom .. import cluster\nimport service\n",
        "workers/sub/m.py": textwrap.dedent("""\
            import ntkcompute.spec
            from ntkcompute import kernel
            from . import sibling
            from ..store import open_group


            def lazy():
                from service.cli import register
                import importlib

                importlib.import_module("ntkcli.main")
                return register
            """),
        "workers/ok.py": "from ntkcompute.errors import InputError\nfrom .cluster import x\n",
    }
    for rel, text in src.items():
        (tmp_path / rel).write_text(text)
    init, m = tmp_path / "workers/sub/__init__.py", tmp_path / "workers/sub/m.py"
    assert [n for _, n in imported(ast.parse(init.read_text()), "workers.sub", True)] \
        == ["workers.sub", "workers", "service"]
    assert [n for _, n in imported(ast.parse(m.read_text()), "workers.sub.m", False)] \
        == ["ntkcompute.spec", "ntkcompute", "workers.sub", "workers.store", "service.cli",
            "importlib", "ntkcli.main"]
    assert upward_imports(tmp_path / "workers/ok.py", tmp_path) == []
    assert upward_imports(m, tmp_path) == ["workers/sub/m.py:8: workers.sub.m -> service.cli",
                                           "workers/sub/m.py:11: workers.sub.m -> ntkcli.main"]
    assert upward_imports(init, tmp_path) == ["workers/sub/__init__.py:3: workers.sub -> service"]


def test_ntkcompute_imports_without_dask_or_fastapi():
    """Every module of ntkcompute, imported in a fresh interpreter, loads none of
    dask, distributed, fastapi (nor a layer above)."""
    code = textwrap.dedent(f"""\
        import importlib, pkgutil, sys
        import ntkcompute
        names = [m.name for m in pkgutil.walk_packages(ntkcompute.__path__, "ntkcompute.")]
        for name in names:
            importlib.import_module(name)
        loaded = sorted({{m.split(".")[0] for m in sys.modules}}
                        & set({[*HEAVY, *LAYERS[1:]]!r}))
        print(len(names), loaded)
        """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    count, loaded = r.stdout.split(" ", 1)
    assert int(count) > 10, r.stdout  # the kernels and the client were imported too
    assert loaded.strip() == "[]", f"importing ntkcompute loads {loaded.strip()}"

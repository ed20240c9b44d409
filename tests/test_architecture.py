"""The import contract of src/scorelab, read from the source with `ast` (imports inside functions count too):

- no import circles among scorelab modules;
- layers point one way: only the command line (`scorelab.cli`, `scorelab.commands.*`) and the program entry
  points (`python -m scorelab.demo`) may import `scorelab.commands` or argparse; nothing in the library imports
  an entry point or the repository's bench/ scripts.

The same contract is stated for import-linter in pyproject.toml ([tool.importlinter]) and `lint-imports` runs here
too; the ast reading below covers every module, including ones the pyproject list does not name yet.

A submodule importing its own package (`from . import save_model` inside a function of nets/checkpoint.py) is
not counted as a circle: the package's __init__ has run before any of its submodules.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "scorelab"
CLI = ("scorelab.cli", "scorelab.commands")          # the command-line layer
ENTRY_POINTS = ("scorelab.demo", "scorelab.__main__")  # programs with their own argparse main()
FORBIDDEN_IN_LIBRARY = ("argparse", "scorelab.commands", "bench")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every module `name` imports (at module level or inside functions), as dotted names; names inside the
    package are resolved to the deepest existing module (`from .x import f` → pkg.x; `from . import x` → pkg.x).
    `importlib.import_module("...")` with a literal string counts as an import too."""
    tree = ast.parse(path.read_text(), str(path))
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                stem = ".".join(anchor + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for t in targets:
            inner = t
            while inner and inner not in modules:
                inner = inner.rpartition(".")[0]
            out.add(inner if inner else t)
    out.discard(name)
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}
    return {m: imports_of(p, m, set(files)) for m, p in files.items()}


def internal_cycles(graph: dict[str, set[str]], package: str) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), edges to one's own parent packages left
    out."""
    edges = {m: sorted(t for t in ts if t in graph and not m.startswith(t + ".")) for m, ts in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, targets in sorted(graph.items()):
        if _under(m, CLI) or _under(m, ENTRY_POINTS):
            continue
        for t in sorted(targets):
            if _under(t, FORBIDDEN_IN_LIBRARY) or _under(t, ENTRY_POINTS) or _under(t, ("scorelab.cli",)):
                bad.append(f"{m} imports {t}")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC, PACKAGE)


def test_the_graph_is_read(graph):
    """The reader sees the package: known edges, including ones made inside functions."""
    assert len(graph) > 40
    assert "scorelab.models.gaussian" in graph["scorelab.nets.precond"]          # module level
    assert "scorelab.models.softmax" in graph["scorelab.models.empirical"]
    assert "scorelab.data" in graph["scorelab.metrics.stats"]                    # inside a function
    assert "scorelab.models.gaussian" in graph["scorelab.commands.fit"]


def test_no_import_circles(graph):
    assert internal_cycles(graph, PACKAGE) == []


def test_library_does_not_import_the_command_line(graph):
    """models/, nets/, metrics/ and every other library module: no scorelab.commands, argparse, cli, bench."""
    assert layering_violations(graph) == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    """On a small package with a circle through a function-level import and a model that imports the CLI."""
    pkg = tmp_path / PACKAGE
    for rel, text in {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .c import g\n",
        "c.py": "from .a import x\n",
        "models/__init__.py": "",
        "models/m.py": "def fit_from_cli(args):\n    from ..commands import torch_dtype\n",
        "nets/n.py": "import argparse\n",
        "commands/__init__.py": "import argparse\n",
        "commands/fit.py": "from ..models import m\n",
        "cli.py": "import argparse\nfrom .commands import fit\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    g = import_graph(tmp_path, PACKAGE)
    assert internal_cycles(g, PACKAGE) == [["scorelab.a", "scorelab.b", "scorelab.c"]]
    assert layering_violations(g) == ["scorelab.models.m imports scorelab.commands", "scorelab.nets.n imports argparse"]


def test_every_model_is_fitted_through_python_and_configured_in_commands():
    """Each registered model kind has `Model.fit(data, ...)`, no CLI hooks of its own, and one entry (options +
    builder) in commands/fit.py's table."""
    import inspect

    from scorelab.commands.fit import MODEL_OPTIONS
    from scorelab.models import REGISTRY, model_class

    assert set(MODEL_OPTIONS) == set(REGISTRY)
    for kind in REGISTRY:
        cls = model_class(kind)
        assert inspect.ismethod(cls.fit) and cls.fit.__self__ is cls, kind
        assert not hasattr(cls, "add_cli_arguments") and not hasattr(cls, "fit_from_cli"), kind


def test_import_linter_contracts_are_kept():
    """`lint-imports` (import-linter, a dev dependency) keeps pyproject.toml's contracts."""
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.is_file(), "import-linter is not installed: pip install -e '.[dev]' (make test does)"
    run = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "2 kept, 0 broken" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]

"""The import rule of docs/architecture.md, checked on the source text of every module.

Imports only go downward: runtime/ (the model runtime) imports nothing of ours; index/
(retrieval) imports runtime/; rag/, code_tools/ and agents/ (one behaviour layer) import index/,
runtime/ and themselves, never each other; only the faces (codehop/, eval_suites/) may import
anything. Every import counts, including those inside functions, relative ones and
`importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("runtime", "index", "rag", "code_tools", "agents", "codehop", "eval_suites")
ALLOWED = {
    "runtime": {"runtime"},
    "index": {"index", "runtime"},
    "rag": {"rag", "index", "runtime"},
    "code_tools": {"code_tools", "index", "runtime"},
    "agents": {"agents", "index", "runtime"},
}


def _imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in a module's syntax tree."""
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from ..x import y` inside package a.b -> a.x
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(root: Path) -> list[str]:
    """Every import under `root` that breaks the rule, as "path:line: a imports b"."""
    out: list[str] = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((root / layer).rglob("*.py")):
            relative = path.relative_to(root)
            is_package = path.name == "__init__.py"
            parts = relative.with_suffix("").parts
            module = ".".join(parts[:-1] if is_package else parts)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, name in _imported_modules(tree, module, is_package):
                top = name.split(".")[0]
                if top in OURS and top not in allowed:
                    out.append(f"{relative}:{line}: {layer} imports {name}")
    return out


def test_the_tree_follows_the_import_rule():
    found = violations(ROOT)
    assert not found, (
        "imports only go downward (docs/architecture.md): pass the object in as an argument or "
        "move the shared type down (index/, or runtime/ if it is about a model)\n" + "\n".join(found))


@pytest.mark.parametrize(("layer", "source", "bad"), [
    ("runtime", "from index.types import Hits\n", True),  # the runtime sits below retrieval
    ("runtime", "def f():\n    import index.collection\n", True),
    ("runtime", "from ..index import store\n", True),  # relative, climbing out of runtime/
    ("runtime", "from rag.llm import TransformersGenerator\n", True),
    ("runtime", "import importlib\nimportlib.import_module('codehop.config')\n", True),
    ("runtime", "from runtime.errors import CodehopError\nfrom . import model_cache\n", False),
    ("index", "from runtime.embed import Embedder\nimport runtime.errors\n", False),
    ("index", "from rag.llm import GenerationConfig\n", True),
    ("index", "def f():\n    import codehop.config\n", True),
    ("index", "import importlib\nimportlib.import_module('eval_suites.report')\n", True),
    ("code_tools", "from rag import llm\n", True),
    ("code_tools", "class A:\n    def f(self):\n        from agents.tools import ToolBox\n", True),
    ("agents", "import code_tools.sandbox as sandbox\n", True),
    ("agents", "from ..code_tools import repo\n", True),  # relative, climbing out of agents/
    ("rag", "from eval_suites import report\n", True),
    ("rag", "from index.types import Hits\nfrom rag.prompts import X\nfrom . import prompts\n", False),
    ("agents", "import numpy\nfrom runtime.generation import Generation\n", False),
    ("code_tools", "from runtime.cancel import cancellable\nfrom index.types import Hits\n", False),
])
def test_the_checker_catches_violations(tmp_path, layer, source, bad):
    for package in ALLOWED:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / layer / "sample.py").write_text(source)
    found = violations(tmp_path)
    assert bool(found) == bad, found
    if bad:
        assert found[0].startswith(f"{layer}/sample.py:")


def test_a_planted_upward_import_in_the_real_runtime_is_found(tmp_path):
    """The real runtime/ and index/ pass; one function-level `import index...` planted in the
    real runtime/embed.py (the module most tempted to reach up into retrieval) is reported."""
    import shutil

    for package in ALLOWED:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []
    embed = tmp_path / "runtime" / "embed.py"
    lines = embed.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.append("\n\ndef _planted():\n    from index.collection import Collection\n")
    embed.write_text("".join(lines), encoding="utf-8")
    planted_line = len("".join(lines).splitlines())
    assert violations(tmp_path) == [
        f"runtime/embed.py:{planted_line}: runtime imports index.collection"]


def _module_graph(root: Path) -> dict[str, set[str]]:
    """Our module -> the modules of ours it imports (any import, function-level ones too)."""
    modules: dict[str, Path] = {}
    for layer in OURS:
        for path in (root / layer).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if path.name == "__init__.py" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imported = [found for _, found in _imported_modules(tree, name, path.name == "__init__.py")]
        # `from codehop import b` imports the module codehop.b: count the names too.
        imported += [f"{node.module}.{alias.name}" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     for alias in node.names]
        for target in imported:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)  # a package's own __init__ is not a cycle partner
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    graph, index, low, stack, on_stack, cycles = _module_graph(root), {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    cycles = import_cycles(ROOT)
    assert not cycles, ("modules that import each other (directly or round a loop): move what they "
                        "share into a module both import\n" + "\n".join(" <-> ".join(c) for c in cycles))


def test_cycle_check_finds_a_loop(tmp_path):
    for layer in OURS:
        (tmp_path / layer).mkdir()
    (tmp_path / "codehop" / "a.py").write_text("def f():\n    from codehop import b\n")
    (tmp_path / "codehop" / "b.py").write_text("from codehop.a import f\n")
    (tmp_path / "codehop" / "c.py").write_text("import codehop.a\n")
    assert import_cycles(tmp_path) == [["codehop.a", "codehop.b"]]

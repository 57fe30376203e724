"""The import rule of docs/architecture.md, checked on the source text of every module.

Imports only go downward: index/ imports nothing of ours; rag/, code_tools/ and agents/ (one
behaviour layer) import index/ and themselves, never each other; only the faces (codehop/,
eval_suites/) may import anything. Every import counts, including those inside functions,
relative ones and `importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("index", "rag", "code_tools", "agents", "codehop", "eval_suites")
ALLOWED = {
    "index": {"index"},
    "rag": {"rag", "index"},
    "code_tools": {"code_tools", "index"},
    "agents": {"agents", "index"},
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
        "move the shared type into index/\n" + "\n".join(found))


@pytest.mark.parametrize(("layer", "source", "bad"), [
    ("index", "from rag.llm import GenerationConfig\n", True),
    ("index", "def f():\n    import codehop.config\n", True),
    ("index", "import importlib\nimportlib.import_module('eval_suites.report')\n", True),
    ("code_tools", "from rag import llm\n", True),
    ("code_tools", "class A:\n    def f(self):\n        from agents.tools import ToolBox\n", True),
    ("agents", "import code_tools.sandbox as sandbox\n", True),
    ("agents", "from ..code_tools import repo\n", True),  # relative, climbing out of agents/
    ("rag", "from eval_suites import report\n", True),
    ("rag", "from index.types import Hits\nfrom rag.prompts import X\nfrom . import prompts\n", False),
    ("agents", "import numpy\nfrom index.generation import Generation\n", False),
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

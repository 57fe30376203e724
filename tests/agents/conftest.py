"""A small real repository and a scripted model for the agent tests.

The scripted model replays fixed turns: it tests the loop's mechanics (parsing, tool dispatch,
budgets, patches), never pretends to be an agent result.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

FILES = {
    "shapes/__init__.py": "from shapes.geometry import Circle, Square\n",
    "shapes/geometry.py": textwrap.dedent('''\
        """Simple shapes."""
        import math


        class Circle:
            def __init__(self, radius):
                self.radius = radius

            def area(self):
                return math.pi * self.radius ** 2


        class Square:
            def __init__(self, side):
                self.side = side

            def area(self):
                return self.side * self.side
        '''),
    "shapes/report.py": textwrap.dedent('''\
        from shapes.geometry import Circle


        def describe(shape):
            return f"{type(shape).__name__} with area {shape.area():.2f}"


        def unit_circle():
            return Circle(1)
        '''),
    "tests/test_geometry.py": textwrap.dedent('''\
        from shapes.geometry import Square


        def test_square_area():
            assert Square(3).area() == 9
        '''),
}


@pytest.fixture
def small_repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    for relative, text in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def tools(small_repo):
    """Every tool, wired as the CLI wires them: a RepoIndex and code_tools' real sandbox."""
    from agents.tools import build_toolbox
    from code_tools.repo import RepoIndex
    from code_tools.sandbox import runner

    return build_toolbox(small_repo, runner(), repo_index=RepoIndex.open(small_repo))


class ScriptedGenerator:
    """Implements the parts of runtime.generation.Generator the agent uses, replaying `turns`."""

    name = "scripted"
    supports_fim = False

    def __init__(self, turns: list[str]) -> None:
        self.turns = list(turns)
        self.seen: list[list[dict[str, str]]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def chat(self, messages, config):
        from runtime.generation import Generation

        self.seen.append([dict(m) for m in messages])
        text = self.turns.pop(0) if self.turns else '{"answer": "out of script"}'
        return Generation(text=text, token_ids=list(range(len(text.split()))), logprobs=None,
                          finish_reason="stop", prompt_tokens=0, elapsed_s=0.0)

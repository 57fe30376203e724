"""Agent tasks built from real repositories (pinned sdists).

- where-is: "Where is `name` defined?"; success when the answer names the defining file.
- write-function: a function that the repository's own tests exercise has its body replaced
  by `raise NotImplementedError`; the agent must patch it back; success when its patch applies
  and those tests pass in the sandbox (the untouched repository must pass them first).
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from code_tools.repo import RepoIndex


@dataclass(frozen=True)
class AgentTask:
    kind: str  # "where_is" | "write_function"
    repo: str
    prompt: str
    answer_path: str  # the defining file
    symbol: str
    test_path: str = ""  # write_function: tests that exercise the function
    start_line: int = 0
    end_line: int = 0


def _is_test(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith("test_") or "/tests/" in f"/{path}" or name == "conftest.py"


def where_is_tasks(repo: RepoIndex, name: str, n: int, rng: random.Random) -> list[AgentTask]:
    unique = [defs[0] for symbol, defs in sorted(repo.symbols.items())
              if len(defs) == 1 and "." not in symbol and not symbol.startswith("_")
              and defs[0].kind in ("class", "function") and not _is_test(defs[0].path)]
    rng.shuffle(unique)
    return [AgentTask("where_is", name, f"In which file is `{d.name}` defined? Answer with the path.",
                      d.path, d.name) for d in unique[:n]]


def write_function_tasks(repo: RepoIndex, name: str, n: int, rng: random.Random) -> list[AgentTask]:
    tests = [p for p in sorted(repo.files) if _is_test(p) and p.endswith(".py")]
    test_text = {p: (repo.root / p).read_text(errors="replace") for p in tests}
    tasks = []
    candidates = [defs[0] for symbol, defs in sorted(repo.symbols.items())
                  if len(defs) == 1 and defs[0].kind == "function" and not _is_test(defs[0].path)
                  and 4 <= defs[0].end_line - defs[0].start_line <= 25]
    rng.shuffle(candidates)
    for definition in candidates:
        pattern = re.compile(rf"\b{re.escape(definition.name)}\(")
        users = [p for p, text in test_text.items() if pattern.search(text)]
        if not users:
            continue
        prompt = (f"The body of function `{definition.name}` in {definition.path} was replaced by "
                  f"`raise NotImplementedError`. Implement it so that {users[0]} passes. "
                  "Finish with a patch.")
        tasks.append(AgentTask("write_function", name, prompt, definition.path, definition.name,
                               users[0], definition.start_line, definition.end_line))
        if len(tasks) == n:
            break
    return tasks


def hide_body(root: Path, task: AgentTask) -> None:
    """Replace the function's body (after its signature and docstring) by NotImplementedError."""
    path = root / task.answer_path
    lines = path.read_text().splitlines(keepends=True)
    start, end = task.start_line - 1, task.end_line
    signature_end = start
    while signature_end < end and not lines[signature_end].rstrip().endswith(":"):
        signature_end += 1
    body_indent = re.match(r"\s*", lines[min(signature_end + 1, end - 1)]).group(0) or "    "
    path.write_text("".join(lines[: signature_end + 1])
                    + f"{body_indent}raise NotImplementedError\n" + "".join(lines[end:]))


def copy_repo(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", ".git"))
    return target

"""Pinned sdists -> source trees -> RepoEval-style line-completion tasks.

Sdists come from the package registry through pip's own client
(`pip download --no-deps --no-binary :all: NAME==VER`) into a cache directory and are unpacked
once. A task hides one line of a non-test source file that calls a function or class defined in
another file of the same repository (RepoEval's "API-level" flavour): the cursor sits after the
line's indentation, the target is the rest of the line.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from code_tools.languages import outline
from code_tools.repo import RepoIndex
from runtime.errors import CodehopError

DEFAULT_PACKAGES = ("requests==2.32.3", "click==8.1.7", "attrs==24.2.0", "rich==13.9.4")


@dataclass(frozen=True)
class Task:
    repo: str  # "name-version"
    path: str  # relative to the repository root
    line: int  # 1-based line hidden
    col: int  # 1-based cursor column (after indentation)
    prefix: str
    suffix: str
    target: str
    api: str  # the cross-file callee on the line


def fetch_sdist(spec: str, cache: Path) -> Path:
    """Download (once) and unpack one pinned sdist; returns the source root."""
    name, _, version = spec.partition("==")
    if not version:
        raise CodehopError(f"pin every package as NAME==VERSION (got {spec!r})")
    root = cache / "src" / f"{name}-{version}"
    if root.is_dir():
        return root
    archives = cache / "sdists"
    archives.mkdir(parents=True, exist_ok=True)
    found = sorted(archives.glob(f"{name.replace('-', '_')}-{version}.tar.gz")) + sorted(
        archives.glob(f"{name}-{version}.tar.gz"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "--quiet", spec, "-d", str(archives)], check=True)
        found = sorted(archives.glob(f"*{version}.tar.gz"))
        found = [f for f in found if f.name.lower().startswith(name.lower().replace("-", "_"))
                 or f.name.lower().startswith(name.lower())]
    if not found:
        raise CodehopError(f"pip download of {spec} produced no sdist in {archives}")
    staging = cache / "src" / f".{name}-{version}.tmp"
    staging.mkdir(parents=True, exist_ok=True)
    with tarfile.open(found[0]) as archive:
        archive.extractall(staging, filter="data")
    inner = next(p for p in staging.iterdir() if p.is_dir())
    inner.rename(root)
    return root


def _is_test_or_doc(path: str) -> bool:
    parts = path.lower().split("/")
    return any(p in ("tests", "test", "docs", "doc", "examples", "benchmarks") for p in parts) or \
        parts[-1].startswith("test_") or parts[-1] in ("setup.py", "conftest.py")


def make_tasks(repo: RepoIndex, name: str, n: int, seed: int = 0) -> list[Task]:
    """Up to n tasks from one repository (seeded; lines calling a definition in another file)."""
    candidates = []
    for path in sorted(repo.files):
        if not path.endswith(".py") or _is_test_or_doc(path):
            continue
        text = (repo.root / path).read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        parsed = outline(path, text)
        by_line: dict[int, str] = {}
        for callee, line in parsed.calls:
            if any(d.path != path for d in repo.definition(callee)):
                by_line.setdefault(line, callee)
        for line, callee in by_line.items():
            source = lines[line - 1]
            stripped = source.strip()
            if line < 15 or not 12 <= len(stripped) <= 120 or stripped.startswith(
                    ("def ", "class ", "@", "#", "import ", "from ", '"', "'")):
                continue
            if stripped.endswith(("(", ",", "\\", "[", "{")):
                continue  # the statement continues: the hidden line alone is not a full target
            candidates.append((path, line, callee, text))
    rng = random.Random(seed)
    rng.shuffle(candidates)
    tasks = []
    used_files: dict[str, int] = {}
    for path, line, callee, text in candidates:
        if used_files.get(path, 0) >= 3:  # spread tasks over files
            continue
        used_files[path] = used_files.get(path, 0) + 1
        lines = text.split("\n")
        source = lines[line - 1]
        indent = len(source) - len(source.lstrip())
        prefix = "\n".join(lines[: line - 1]) + "\n" + source[:indent]
        suffix = "\n" + "\n".join(lines[line:])
        tasks.append(Task(name, path, line, indent + 1, prefix, suffix, source.strip(), callee))
        if len(tasks) >= n:
            break
    return tasks

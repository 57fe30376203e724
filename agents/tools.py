"""Typed tools the code agent calls, bound to one repository root.

Every tool validates its arguments against its spec and never reads outside the root; a bad
call raises InvalidInputError, which the agent loop turns into an error observation.

The tools work through objects handed in by the caller, never by importing code_tools (a
sibling layer): a `RepoView` (code_tools.repo.RepoIndex is one) for search, definitions, the
file list and outlines, and a `sandbox` callable that runs Python under limits (code_tools'
`run_python` with its SandboxLimits bound, `code_tools.sandbox.runner()`, given to `build_toolbox`).
run_python/run_tests execute in a scratch copy of the root; with code_tools' jail that code
sees the copy (read-write), the interpreter and its packages (read-only) and nothing else of
the machine: no home, no original repository, no network, limited time, memory and processes.
A tool whose object is missing is not offered.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from agents.patch import apply_patch
from runtime.errors import InvalidInputError, NotFoundError
from index.types import Chunk, Hits


class Symbol(Protocol):
    """A definition in a file (code_tools.languages.Symbol, code_tools.repo.Definition)."""

    kind: str
    qualname: str
    start_line: int
    end_line: int


class Outline(Protocol):
    symbols: Sequence[Symbol]


class Located(Symbol, Protocol):
    path: str


class RepoView(Protocol):
    """The repository index the tools query (implemented by code_tools.repo.RepoIndex)."""

    def iter_files(self) -> list[str]:
        """Repository-relative paths of the indexed files, sorted."""

    def outline(self, path: str) -> Outline | None:
        """Definitions in one file as it is on disk now (None: a language we do not parse)."""

    def search_bm25(self, query: str, k: int = 50) -> Hits: ...
    def rerank(self, query: str, ids: np.ndarray, k: int = 5) -> Hits: ...
    def chunk(self, chunk_id: int) -> Chunk: ...
    def definition(self, symbol: str) -> list[Located]: ...


class RunResult(Protocol):
    """What a sandboxed run reports (code_tools.sandbox.SandboxResult)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None


# Runs a Python program in a fresh, resource-limited process whose only writable host
# directory is the second argument (the tool's scratch copy); the limits are bound by the caller.
Sandbox = Callable[[str, Path], RunResult]


@dataclass(frozen=True)
class Param:
    type: type
    description: str
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    params: dict[str, Param]
    run: Callable[..., str]

    def signature(self) -> str:
        args = ", ".join(
            f"{name}: {p.type.__name__}" + ("" if p.required else f" = {p.default!r}")
            for name, p in self.params.items()
        )
        return f"- {self.name}({args}): {self.description}"


@dataclass(frozen=True)
class ToolConfig:
    max_read_lines: int = 200
    max_references: int = 40
    search_k: int = 5


def _validate(spec: ToolSpec, args: dict[str, Any]) -> dict[str, Any]:
    unknown = set(args) - set(spec.params)
    if unknown:
        raise InvalidInputError(
            f"{spec.name} got unknown argument(s) {sorted(unknown)}; expected {sorted(spec.params)}"
        )
    clean = {}
    for name, param in spec.params.items():
        if name not in args or args[name] is None:
            if param.required:
                raise InvalidInputError(f"{spec.name} needs argument {name!r} ({param.description})")
            clean[name] = param.default
            continue
        value = args[name]
        if param.type is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, param.type) or (param.type is int and isinstance(value, bool)):
            raise InvalidInputError(
                f"{spec.name}: argument {name!r} must be {param.type.__name__}, got {type(value).__name__}"
            )
        if param.type is str and not value.strip() and param.required:
            raise InvalidInputError(f"{spec.name}: argument {name!r} must not be empty")
        clean[name] = value
    return clean


@dataclass
class ToolBox:
    """The agent's tools over `root`.

    Args:
        root: the repository directory; no tool reads or runs anything outside it.
        repo_index: a RepoView of the repository (search_code, find_definition,
            find_references, list_symbols); None leaves those tools out.
        collection: an index.Collection with documentation (search_docs), or None.
        config: output bounds.
        sandbox: runs Python under time and memory limits (run_python, run_tests); None leaves
            those tools out.
    """

    root: Path
    repo_index: RepoView | None = None
    collection: Any = None
    config: ToolConfig = field(default_factory=ToolConfig)
    sandbox: Sandbox | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        if not self.root.is_dir():
            raise NotFoundError(f"repository root {self.root} is not a directory")
        self._specs = {spec.name: spec for spec in self._build_specs()}

    # -- registry -------------------------------------------------------------------------
    def _build_specs(self) -> list[ToolSpec]:
        text = lambda d: Param(str, d)  # noqa: E731
        k = Param(int, "number of results", required=False, default=self.config.search_k)
        specs = [
            ToolSpec("read_file", "read lines of a repository file",
                     {"path": text("repository-relative path"),
                      "start_line": Param(int, "first line (1-based)", False, 1),
                      "end_line": Param(int, "last line (inclusive)", False, None)}, self.read_file),
        ]
        if self.repo_index is not None:
            specs.insert(0, ToolSpec("search_code", "search the repository's code",
                                     {"query": text("what to find"), "k": k}, self.search_code))
            specs += [
                ToolSpec("find_definition", "where a function/class/method is defined", {"symbol": text("name")}, self.find_definition),
                ToolSpec("find_references", "lines that mention a symbol", {"symbol": text("name")}, self.find_references),
                ToolSpec("list_symbols", "definitions in one file", {"path": text("repository-relative path")}, self.list_symbols),
            ]
        if self.sandbox is not None:
            specs += [
                ToolSpec("run_python", "run a Python snippet in a jail: cwd = a throwaway copy of the repo; it sees only that copy and the Python install, no network, time/memory limits", {"code": text("source")}, self.run_python),
                ToolSpec("run_tests", "run pytest on a test path in a jailed throwaway copy of the repo, optionally after applying a patch (the repo itself is not changed)",
                         {"path": text("test file or directory"),
                          "patch": Param(str, "unified diff to apply first", False, "")}, self.run_tests),
            ]
        if self.collection is not None:
            specs.insert(1, ToolSpec("search_docs", "search the documentation collection",
                                     {"query": text("what to find"), "k": k}, self.search_docs))
        return specs

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def describe(self) -> str:
        return "\n".join(spec.signature() for spec in self._specs.values())

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of one agent turn: a call of one of these tools, or the final answer.

        anyOf one object per tool, {"thought": str, "tool": <its name>, "args": {its params}}
        (required params required, no others), and {"thought": str, "answer": str, "patch": str}.
        """
        json_types = {str: "string", int: "integer", bool: "boolean", float: "number"}

        def args(spec: ToolSpec) -> dict[str, Any]:
            return {"type": "object",
                    "properties": {n: {"type": json_types[p.type]} for n, p in spec.params.items()},
                    "required": [n for n, p in spec.params.items() if p.required],
                    "additionalProperties": False}

        calls = [{"type": "object",
                  "properties": {"thought": {"type": "string"}, "tool": {"const": spec.name}, "args": args(spec)},
                  "required": ["thought", "tool", "args"], "additionalProperties": False}
                 for spec in self._specs.values()]
        answer = {"type": "object",
                  "properties": {"thought": {"type": "string"}, "answer": {"type": "string"}, "patch": {"type": "string"}},
                  "required": ["thought", "answer", "patch"], "additionalProperties": False}
        return {"anyOf": [*calls, answer]}

    def call(self, name: str, args: dict[str, Any]) -> str:
        spec = self._specs.get(name)
        if spec is None:
            raise InvalidInputError(f"unknown tool {name!r}; tools are {', '.join(self._specs)}")
        return spec.run(**_validate(spec, args))

    # -- helpers --------------------------------------------------------------------------
    def resolve(self, relative: str) -> Path:
        """A path inside the root; anything escaping it (.., absolute, symlink) is refused."""
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root):
            raise InvalidInputError(f"path {relative!r} is outside the repository")
        return candidate

    # -- tools ----------------------------------------------------------------------------
    def search_code(self, query: str, k: int) -> str:
        candidates = self.repo_index.search_bm25(query, k=50)
        hits = self.repo_index.rerank(query, candidates.ids, k=max(1, min(k, 20)))
        chunks = [self.repo_index.chunk(int(i)) for i in hits.ids]
        return "\n\n".join(c.text for c in chunks) or "no matches"

    def search_docs(self, query: str, k: int) -> str:
        results = self.collection.search(query, k=max(1, min(k, 20)))
        return "\n\n".join(f"[{r.path}:{r.start_line}-{r.end_line}]\n{r.text}" for r in results) or "no matches"

    def read_file(self, path: str, start_line: int, end_line: int | None) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise NotFoundError(f"no file {path!r} in the repository")
        lines = target.read_text(errors="replace").splitlines()
        start = max(1, start_line)
        end = min(len(lines), end_line or start + self.config.max_read_lines - 1,
                  start + self.config.max_read_lines - 1)
        if start > len(lines):
            raise InvalidInputError(f"{path} has only {len(lines)} lines")
        body = "\n".join(f"{n:5d}  {lines[n - 1]}" for n in range(start, end + 1))
        return f"{path} lines {start}-{end} of {len(lines)}\n{body}"

    def find_definition(self, symbol: str) -> str:
        locations = self.repo_index.definition(symbol)
        if not locations:
            return f"no definition of {symbol!r} found"
        return "\n".join(f"{d.path}:{d.start_line}-{d.end_line} {d.kind} {d.qualname}" for d in locations[:20])

    def find_references(self, symbol: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", symbol):
            raise InvalidInputError(f"find_references expects an identifier, got {symbol!r}")
        pattern = re.compile(rf"\b{re.escape(symbol)}\b")
        hits = []
        for relative in self.repo_index.iter_files():
            try:
                text = (self.root / relative).read_text(errors="replace")
            except OSError:
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{relative}:{number}: {line.strip()[:160]}")
                    if len(hits) >= self.config.max_references:
                        return "\n".join(hits) + "\n[more references cut]"
        return "\n".join(hits) or f"no references to {symbol!r}"

    def list_symbols(self, path: str) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise NotFoundError(f"no file {path!r} in the repository")
        parsed = self.repo_index.outline(target.relative_to(self.root).as_posix())
        if parsed is None:
            return f"{path} is not in a language we parse"
        return "\n".join(f"{s.start_line}-{s.end_line} {s.kind} {s.qualname}" for s in parsed.symbols) or "no definitions"

    def _scratch_copy(self) -> Path:
        scratch = Path(tempfile.mkdtemp(prefix="codehop-agent-"))
        ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".codehop", "node_modules")
        shutil.copytree(self.root, scratch / "repo", ignore=ignore, symlinks=True)
        return scratch

    def run_python(self, code: str) -> str:
        scratch = self._scratch_copy()
        try:
            result = self.sandbox(_in_directory(scratch / "repo", code), scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return _format_run(result)

    def run_tests(self, path: str, patch: str) -> str:
        self.resolve(path)  # refuse paths outside the root before copying anything
        scratch = self._scratch_copy()
        try:
            if patch.strip():
                apply_patch(scratch / "repo", patch)
            code = ("import sys, pytest\n"
                    f"sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', {path!r}]))\n")
            result = self.sandbox(_in_directory(scratch / "repo", code), scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return _format_run(result)


def _in_directory(directory: Path, code: str) -> str:
    """Prefix `code` so it runs from `directory` with the repository importable."""
    return (f"import os, sys\nos.chdir({str(directory)!r})\n"
            f"sys.path.insert(0, {str(directory)!r})\n" + code)


def _format_run(result: RunResult) -> str:
    status = "TIMEOUT" if result.timed_out else f"exit code {result.returncode}"
    if result.killed_reason:
        status += f" ({result.killed_reason})"
    out = (result.stdout or "")[-2000:]
    err = (result.stderr or "")[-1500:]
    return f"{status}\nstdout:\n{out}\nstderr:\n{err}"


def build_toolbox(repo: Path, run_python: Callable[..., Any], repo_index: RepoView | None = None,
                  collection: Any = None) -> ToolBox:
    """The agent's ToolBox over `repo`, its Python run in a jail that sees the interpreter
    (read-only) and the tool's scratch copy of the repository (read-write), nothing else.

    Args:
        repo: repository root.
        run_python: the jail, `(code, writable=[dirs]) -> result`: code_tools.sandbox.runner(limits)
            (the face passes it in: agents/ does not import code_tools/). Without a jail on the
            machine a call answers SandboxUnavailableError, which names the unsafe override.
        repo_index: a RepoView of `repo` (code_tools.repo.RepoIndex), or None for the run/read
            tools only.
        collection: an index.Collection of documentation (search_docs), or None.
    """
    def sandbox(code: str, scratch: Path):
        # The jail binds the tool's scratch copy read-write, and nothing else of the host.
        return run_python(code, writable=[scratch])

    return ToolBox(repo, repo_index=repo_index, collection=collection, sandbox=sandbox)

"""LintSeq: synthetic edit sequences by linter-guided backward sampling.

Reference: "Training Language Models on Synthetic Edit Sequences Improves Code Synthesis"
(Piterbarg, Pinto, Fergus, ICLR 2025), sec. 3 (backward sampling) and app. on the linter.
From a program, repeatedly pick a remaining code line (blank lines and comments excluded;
deeper indentation more likely), delete it together with its indented children, then run a
linter and delete the lines its errors point to, re-linting until clean. Each clean program
is one state; repeat until empty. Reversed, the states run "" -> ... -> program and every
step becomes a unified diff with zero context lines and no ``---``/``+++`` header.

Linters: ``pyflakes`` (errors only, see ``PYFLAKES_ERRORS``) plus ``compile()`` for syntax
(the fast default) and ``pylint`` (the reference: E and F messages plus bad-indentation and
super-init-not-called, the warnings the authors' code promotes to errors; other warnings
ignored; ``import-error`` is left out because it depends on what this machine has installed,
not on the program). A flagged line is deleted with its indented children, as in the
authors' code.

Worked example: ``"x = 1\\nif x:\\n    y = x\\n"`` may go backward as delete ``y = x`` ->
``if x:`` is now an empty block, a syntax error at its header -> delete it -> ``"x = 1\\n"``
-> ``""``. Forward diffs: ``"@@ -0,0 +1 @@\\n+x = 1"``, ``"@@ -1,0 +2,2 @@\\n+if x:\\n+    y = x"``.
Blank lines and comments ride with the next code line (at the end of the file, the previous).
"""

from __future__ import annotations

import difflib
import os
import random
import re
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

from runtime.errors import InvalidInputError

LINTERS = ("pyflakes", "pylint")
# pyflakes messages that correspond to pylint E/F (error) messages; the rest are warnings
PYFLAKES_ERRORS = (
    "UndefinedName", "UndefinedLocal", "UndefinedExport", "DuplicateArgument", "ReturnOutsideFunction",
    "YieldOutsideFunction", "ContinueOutsideLoop", "BreakOutsideLoop", "DefaultExceptNotLast",
    "TwoStarredExpressions", "TooManyExpressionsInStarredAssignment", "ImportStarNotPermitted",
    "LateFutureImport", "FutureFeatureNotDefined",
)
PYLINT_ARGS = ("--disable=all", "--enable=E,F,bad-indentation,super-init-not-called", "--disable=import-error",
               "--persistent=n", "--score=n")
_BLOCK_AFTER = re.compile(r"after '.*?' statement on line (\d+)")


@dataclass(frozen=True)
class LintSeqConfig:
    """Settings of edit-sequence sampling.

    Args:
        linter: "pyflakes" (pyflakes errors + compile(), fast) or "pylint" (E/F + bad-indentation).
        samples: sequences sampled per program (the paper uses 5).
        seed: base seed; each (program key, sample) pair derives its own generator from it.
        max_lint_rounds: safety bound on lint/delete rounds per step.
        ignore_source_errors: ignore errors the program already has on the lines where it has
            them (the authors' ``ignore_init_errors``; off by default there and here). Without
            it a program pylint flags, e.g. for 2-space indentation, loses those lines in the
            first backward step.
    """

    linter: str = "pyflakes"
    samples: int = 5
    seed: int = 0
    max_lint_rounds: int = 1000
    ignore_source_errors: bool = False

    def __post_init__(self) -> None:
        if self.linter not in LINTERS:
            raise InvalidInputError(f"unknown linter {self.linter!r}; choose one of {', '.join(LINTERS)}")
        if self.samples < 1:
            raise InvalidInputError("samples must be >= 1")


# ---- linters: code -> set of 1-based line numbers with errors -----------------------------
def _syntax_error_lines(code: str) -> set[int] | None:
    try:
        with warnings.catch_warnings():  # the program's own SyntaxWarnings are not ours to show
            warnings.simplefilter("ignore")
            compile(code, "<lintseq>", "exec")
    except SyntaxError as exc:  # IndentationError included
        match = _BLOCK_AFTER.search(str(exc.msg))
        # "expected an indented block after 'if' statement on line N": the empty header is at fault
        return {int(match.group(1))} if match else {int(exc.lineno or 1)}
    except ValueError:  # null bytes and the like
        return {1}
    return None


def pyflakes_errors(code: str) -> set[int]:
    """Lines with a syntax error (compile()) or a pyflakes error message."""
    syntax = _syntax_error_lines(code)
    if syntax is not None:
        return syntax
    import ast

    from pyflakes import checker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(code)
    result = checker.Checker(tree, filename="<lintseq>")
    return {m.lineno for m in result.messages if type(m).__name__ in PYFLAKES_ERRORS}


class _PylintRunner:
    """One in-process PyLinter reused across checks (spawning pylint per check costs ~1 s)."""

    def __init__(self) -> None:
        from pylint.lint import PyLinter, Run
        from pylint.reporters import CollectingReporter

        self._dir = tempfile.mkdtemp(prefix="lintseq-")
        self._count = 0
        empty = os.path.join(self._dir, "lintseq_init.py")
        open(empty, "w").close()
        # Run parses our options once; its linter is then reused for every check
        run = Run(list(PYLINT_ARGS) + [empty], reporter=CollectingReporter(), exit=False)
        self.linter: PyLinter = run.linter

    def __call__(self, code: str) -> set[int]:
        syntax = _syntax_error_lines(code)  # pylint reports these as E0001 too; compile() is exact
        if syntax is not None:
            return syntax
        from pylint.reporters import CollectingReporter

        self._count += 1  # fresh module name: astroid caches modules by name
        path = os.path.join(self._dir, f"lintseq_{os.getpid()}_{self._count}.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(code)
        try:
            reporter = CollectingReporter()
            self.linter.set_reporter(reporter)
            self.linter.check([path])
            return {m.line for m in reporter.messages if m.line}
        finally:
            os.unlink(path)


_PYLINT: _PylintRunner | None = None


def pylint_errors(code: str) -> set[int]:
    """Lines with pylint E/F messages or bad-indentation (C/R/W otherwise disabled)."""
    global _PYLINT
    if _PYLINT is None:
        _PYLINT = _PylintRunner()
    return _PYLINT(code)


def get_linter(name: str) -> Callable[[str], set[int]]:
    """The lint function for ``name`` ("pyflakes" or "pylint")."""
    if name == "pyflakes":
        return pyflakes_errors
    if name == "pylint":
        return pylint_errors
    raise InvalidInputError(f"unknown linter {name!r}; choose one of {', '.join(LINTERS)}")


# ---- backward sampling --------------------------------------------------------------------
def _is_code(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _indent(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())


def _attachments(lines: Sequence[str]) -> dict[int, list[int]]:
    """Blank/comment lines ride with the next code line (trailing ones with the last)."""
    groups: dict[int, list[int]] = {}
    pending: list[int] = []
    last_code = None
    for i, line in enumerate(lines):
        if _is_code(line):
            groups[i] = pending + [i]
            pending, last_code = [], i
        else:
            pending.append(i)
    if pending and last_code is not None:
        groups[last_code].extend(pending)
    return groups


def _render(lines: Sequence[str], alive: Sequence[int]) -> str:
    return "".join(lines[i] + "\n" for i in alive)


def normalize(code: str) -> str:
    """The program as LintSeq states see it: LF line endings, one newline after every line."""
    return "".join(line + "\n" for line in code.splitlines())


def sample_states(code: str, rng: random.Random, lint: Callable[[str], set[int]],
                  max_lint_rounds: int = 1000, ignore_source_errors: bool = False) -> list[str]:
    """One backward trajectory: states from the full program down to "" (both included).

    Args:
        code: the program (normalised with `normalize`).
        rng: the random generator that drives line choice.
        lint: code -> set of 1-based error lines.
        ignore_source_errors: errors on lines that already had one in ``code`` do not count.
    Returns:
        Lint-clean states after each step, starting with the program itself and ending with "".
    """
    lines = normalize(code).splitlines()
    groups = _attachments(lines)
    if not groups:  # only comments/blank lines: one step
        return [normalize(code), ""] if lines else [""]
    alive = list(range(len(lines)))
    states = [_render(lines, alive)]
    # a syntax error is never ignored: it would hide every other message of the state
    ignorable = ignore_source_errors and _syntax_error_lines(states[0]) is None
    ignored = {n - 1 for n in lint(states[0])} if ignorable else set()

    def with_children(targets: set[int]) -> set[int]:
        """Targets plus the lines indented under them (blank/comment lines do not end a block)."""
        doomed = set(targets)
        for target in (t for t in targets if _is_code(lines[t])):
            base = _indent(lines[target])
            for i in alive[alive.index(target) + 1:]:
                if _is_code(lines[i]) and _indent(lines[i]) <= base:
                    break
                doomed.add(i)
        return doomed

    def drop(indices: set[int]) -> None:
        nonlocal alive
        gone = set()
        for i in indices:
            gone.update(groups.get(i, [i]))
        alive = [i for i in alive if i not in gone]

    while True:
        code_lines = [i for i in alive if i in groups]
        if not code_lines:
            break
        weights = [1 + _indent(lines[i]) / 4 for i in code_lines]  # deeper indentation: more likely
        pick = rng.choices(code_lines, weights=weights)[0]
        drop(with_children({pick}))
        for _ in range(max_lint_rounds):
            text = _render(lines, alive)
            errors = lint(text) if text else set()
            targets = {alive[n - 1] for n in errors if 1 <= n <= len(alive)} - ignored
            if not targets and all(1 <= n <= len(alive) for n in errors):
                break
            if not targets:  # error at EOF (e.g. an empty block at the end): drop the last code line
                targets = {[i for i in alive if i in groups][-1]}
            drop(with_children(targets))  # as the reference: flagged lines go with their children
        else:  # pragma: no cover - every round deletes at least one line, so this cannot loop forever
            raise RuntimeError("lint loop did not converge")
        states.append(_render(lines, alive))
        if not alive:
            break
    if states[-1] != "":
        states.append("")
    return states


def state_diff(before: str, after: str) -> str:
    """Unified diff with zero context and no ---/+++ header (LintSeq's edit format)."""
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), n=0, lineterm=""))
    return "\n".join(lines[2:])


def states_to_edit_path(states: Sequence[str]) -> list[str]:
    """Reverse backward states into forward diffs "" -> ... -> program (empty steps skipped)."""
    forward = list(reversed(states))
    return [state_diff(a, b) for a, b in zip(forward, forward[1:]) if a != b]


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def apply_diff(text: str, diff: str) -> str:
    """Apply one zero-context, header-less unified diff to ``text`` (LF lines)."""
    lines = text.splitlines()
    out: list[str] = []
    cursor = 0  # next unconsumed line of `lines` (0-based)
    hunk_lines = diff.splitlines()
    i = 0
    while i < len(hunk_lines):
        match = _HUNK.match(hunk_lines[i])
        if not match:
            raise InvalidInputError(f"not a hunk header: {hunk_lines[i]!r}")
        old_start, old_len = int(match.group(1)), int(match.group(2) or 1)
        begin = old_start if old_len == 0 else old_start - 1  # "-N,0" means after line N
        out.extend(lines[cursor:begin])
        cursor = begin + old_len
        i += 1
        while i < len(hunk_lines) and not hunk_lines[i].startswith("@@"):
            if hunk_lines[i].startswith("+"):
                out.append(hunk_lines[i][1:])
            i += 1
    out.extend(lines[cursor:])
    return "".join(line + "\n" for line in out)


def replay(edit_path: Sequence[str]) -> str:
    """Apply an edit path to the empty program."""
    text = ""
    for diff in edit_path:
        text = apply_diff(text, diff)
    return text


def edit_paths(code: str, config: LintSeqConfig = LintSeqConfig(), key: str = "") -> list[list[str]]:
    """``config.samples`` LintSeq edit paths for one program, reproducible under ``config.seed``.

    Args:
        code: the program.
        config: linter, samples, seed.
        key: a stable id of the program (mixed into the seed so programs differ but runs repeat).
    Returns:
        One list of forward diffs per sample; replaying any of them gives `normalize(code)`.
    """
    lint = get_linter(config.linter)
    paths = []
    for sample in range(config.samples):
        rng = random.Random(f"lintseq:{config.seed}:{key}:{sample}")  # str seeds hash stably
        states = sample_states(code, rng, lint, config.max_lint_rounds, config.ignore_source_errors)
        paths.append(states_to_edit_path(states))
    return paths


# ---- dataset records -------------------------------------------------------------------------
CODE_FIELDS = ("code", "solution", "canonical_solution", "completion", "response", "output")
_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(record: dict, code_field: str | None = None) -> str:
    """The program of a dataset record: ``code_field`` or the first known code field; a
    ```python fenced block inside it (e.g. a chat response) is taken when present.

    Raises:
        InvalidInputError: the record is not an object or has no non-empty code.
    """
    if not isinstance(record, dict):
        raise InvalidInputError("record is not a JSON object")
    fields = (code_field,) if code_field else CODE_FIELDS
    for name in fields:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            fenced = _FENCE.search(value)
            code = fenced.group(1) if fenced else value
            if code.strip():
                return code
    raise InvalidInputError(f"record has no code in field(s) {', '.join(fields)}")


def process_record(record: dict, config: LintSeqConfig, key: str,
                   code_field: str | None = None) -> list[dict]:
    """LintSeq output records for one input record: one per sample, with the source fields.

    Returns:
        ``[{**record, "lintseq_code": program, "edit_path": [...], "lintseq_sample": i,
        "lintseq_linter": name, "source_lint_clean": bool}, ...]``
    """
    code = normalize(extract_code(record, code_field))
    clean = not get_linter(config.linter)(code)
    out = []
    for sample, path in enumerate(edit_paths(code, config, key=key)):
        out.append({**record, "lintseq_code": code, "edit_path": path, "lintseq_sample": sample,
                    "lintseq_linter": config.linter, "source_lint_clean": clean})
    return out

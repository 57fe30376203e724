"""Generation half of CodeRAG-Bench: RAG prompts, greedy decoding, sandboxed pass@1.

Prompts follow the benchmark's layout: the top-5 documents (each as-is), then the problem and
the instruction (HumanEval/ODEX: complete the function; MBPP: the task plus its tests; DS-1000:
the problem with its `<code>` context). Decoding is greedy through `rag.llm`'s Generator
(`chat`), and the first fenced code block (or the raw text) is turned into the task's canonical
form (`to_solution`) and executed with the task's own tests in `code_tools.sandbox`.

Results are cached per sample in `<cache>/<task>/<condition>.jsonl` (one JSON object per
problem), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eval_suites.coderag.builders import Problem
from eval_suites.coderag.execution import check_solution

TOP_DOCS = 5
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.S)


@dataclass(frozen=True)
class GenerationSettings:
    """Args: max_new_tokens per sample; doc_chars: each document is cut to this many
    characters in the prompt (the 135M model has a 2k-token window); workers: parallel
    sandbox executions; isolation: "auto" (the sandbox's jail) or "unsafe" (--unsafe-exec)."""

    max_new_tokens: int = 256
    doc_chars: int = 1200
    workers: int = 2
    isolation: str = "auto"


def build_prompt(problem: Problem, docs: list[str], settings: GenerationSettings) -> str:
    """The user message: documents first, then the problem (CodeRAG-Bench style)."""
    parts = [d[: settings.doc_chars] for d in docs[:TOP_DOCS]]
    context = ("\n\n".join(parts) + "\n\n") if parts else ""
    if problem.task == "humaneval":
        ask = ("Please complete the following function based on the example above:\n"
               f"```python\n{problem.prompt}```" if parts else
               f"Please complete the following function:\n```python\n{problem.prompt}```")
    elif problem.task == "mbpp":
        ask = problem.prompt + "\nWrite the Python function in a ```python code block."
    elif problem.task == "odex":
        ask = (f"{problem.meta['intent']}\nComplete the function (return the expression):\n"
               f"```python\n{problem.prompt}```")
    else:
        ask = problem.prompt + "\nWrite only the solution code in a ```python code block."
    return context + ask


def extract_code(text: str) -> str:
    """The first fenced code block of a reply, else the reply itself."""
    match = _FENCE.search(text)
    code = match.group(1) if match else text
    return code.replace("</code>", "").replace("BEGIN SOLUTION", "").rstrip() + "\n"


def trim_to_valid(code: str) -> str:
    """Drop a cut-off tail: while `code` does not compile, cut it before its last top-level
    `def`/`class` (a reply stopped by the token limit usually ends inside a next function)."""
    lines = code.splitlines()
    while lines:
        try:
            compile("\n".join(lines) + "\n", "<candidate>", "exec")
            break
        except (SyntaxError, ValueError):
            starts = [i for i, line in enumerate(lines) if i > 0 and line.startswith(("def ", "class ", "@"))]
            if not starts:
                break
            lines = lines[: starts[-1]]
    return "\n".join(lines).rstrip() + "\n"


def to_solution(problem: Problem, code: str) -> str:
    """A model's code in the canonical form `check_solution` executes (see execution.py)."""
    if problem.task != "ds1000":
        code = trim_to_valid(code)
    if problem.task == "humaneval":
        entry = problem.meta["entry_point"]
        if re.search(rf"^\s*def {re.escape(entry)}\s*\(", code, re.M):
            return problem.prompt + "\n" + code  # whole function: it redefines the stub
        body = code if code.startswith((" ", "\t")) else "    " + code.replace("\n", "\n    ")
        return problem.prompt + body
    if problem.task == "odex":
        entry = problem.meta["entry_point"]
        if re.search(rf"^\s*def {re.escape(entry)}\s*\(", code, re.M):
            return code + problem.meta.get("suffix", "")
        expression = code.strip()
        if expression.startswith("return "):
            expression = expression[len("return "):]
        return problem.prompt + expression + problem.meta.get("suffix", "")
    return code


class SampleCache:
    """Append-only JSONL of finished samples for one (task, condition)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.done: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                self.done[row["id"]] = row

    def put(self, row: dict) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.done[row["id"]] = row


def evaluate_condition(problems: list[Problem], condition: str, docs_for: Callable[[Problem], list[str]],
                       generate: Callable[[str], tuple[str, float]] | None, cache: SampleCache,
                       settings: GenerationSettings, progress: bool = True) -> list[dict]:
    """Generate (or reuse canonical solutions when `condition == "canonical"`) and execute.

    Generation is sequential (one model); each finished sample is executed in the sandbox on a
    worker thread while the next one is generated.
    Returns:
        one row per problem: id, passed, killed_reason, elapsed times, the code.
    """
    from tqdm import tqdm

    def execute(problem: Problem, solution: str, text: str, gen_s: float) -> None:
        result = check_solution(problem, solution, isolation=settings.isolation)
        cache.put({"id": problem.id, "passed": result.passed, "killed_reason": result.killed_reason,
                   "mechanism": result.mechanism,
                   "returncode": result.returncode, "exec_s": round(result.elapsed_s, 3),
                   "gen_s": round(gen_s, 3), "output": text[-2000:],
                   "stderr_tail": result.stderr[-400:]})

    todo = [p for p in problems if p.id not in cache.done]
    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool, \
            tqdm(total=len(problems), initial=len(problems) - len(todo), unit="sample",
                 desc=f"{problems[0].task if problems else ''} {condition}", disable=not progress) as bar:
        futures = []
        for problem in todo:
            if condition == "canonical":
                solution, text, gen_s = problem.canonical, "", 0.0
            else:
                prompt = build_prompt(problem, docs_for(problem), settings)
                text, gen_s = generate(prompt)
                solution = to_solution(problem, extract_code(text))
            future = pool.submit(execute, problem, solution, text, gen_s)
            future.add_done_callback(lambda _: bar.update(1))
            futures.append(future)
        for future in futures:
            future.result()
    return [cache.done[p.id] for p in problems]

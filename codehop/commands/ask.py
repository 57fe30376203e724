"""`codehop ask "question"`: a grounded answer with cited sources and per-stage timings."""

from __future__ import annotations

import argparse
import json
import sys

from codehop.model_setup import add_model_options
from runtime.errors import InvalidInputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ask", help="answer a question from a collection, with sources")
    parser.add_argument("question")
    parser.add_argument("--collection", default=None)
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--mode", choices=("hybrid", "bm25", "dense"), default="hybrid")
    parser.add_argument("--rewrite", choices=("auto", "llm", "prf", "off"), default="auto",
                        help="auto: the LLM rewriter when the generator can follow it, else none "
                             "(prf: RM3 expansion, which lowered NDCG@10 on the code-doc suites)")
    parser.add_argument("--no-rewrite", action="store_true", help="same as --rewrite off")
    parser.add_argument("--filter", choices=("auto", "llm", "embedding", "cross-encoder", "off"), default="auto",
                        help="auto: the LLM judge when the generator can follow it, else embeddings")
    parser.add_argument("--cross-encoder", default=None, help="model for --filter cross-encoder")
    parser.add_argument("--no-filter", action="store_true", help="same as --filter off")
    parser.add_argument("--no-reservoir", action="store_true", help="neither reuse nor store knowledge")
    parser.add_argument("--multihop", choices=("off", "on", "auto"), default="off",
                        help="TreeHop multi-hop retrieval (shipped checkpoint; skipped with a note if missing)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--rapid", dest="rapid", action="store_const", const="on", default=None,
                        help="draft the answer with RAPID (speculative decoding over the retrieved "
                             "context; local models only). Default: [generator] rapid, 'auto' = only "
                             "where a calibration of this machine predicts a speed-up")
    parser.add_argument("--no-rapid", dest="rapid", action="store_const", const="off",
                        help="never draft with RAPID")
    parser.add_argument("--retrieval-only", action="store_true", help="no generator: sources only")
    parser.add_argument("--json", action="store_true")
    add_model_options(parser)
    parser.set_defaults(func=run)


def build_pipeline(args: argparse.Namespace, settings, workspace):
    from codehop.model_setup import (configured_rapid_policy, load_configured_drafter, load_configured_generator,
                                open_collection, with_model_options)
    from rag.filter import FilterConfig
    from rag.pipeline import PipelineConfig, RagPipeline
    from rag.reservoir import Reservoir, RetrieverTrigger

    settings = with_model_options(settings, args)
    collection = open_collection(settings, workspace, args.collection or settings.collection.name)
    generator = None if args.retrieval_only else load_configured_generator(settings)
    config = PipelineConfig(
        k=args.k, candidates=max(20, args.k), mode=args.mode,
        rewrite="off" if args.no_rewrite else args.rewrite,
        filter="off" if args.no_filter else args.filter,
        reservoir=not args.no_reservoir, namespace=args.namespace, multihop=args.multihop,
        max_new_tokens=settings.generator.max_new_tokens, temperature=settings.generator.temperature,
        rapid=getattr(args, "rapid", None) or settings.generator.rapid,
        rapid_min_tokens=settings.generator.rapid_min_tokens,
        filter_config=FilterConfig(cross_encoder=args.cross_encoder))
    trigger = None
    if config.reservoir:
        trigger = RetrieverTrigger(Reservoir(workspace / "reservoir.sqlite", collection.name), collection)
    drafter = load_configured_drafter(settings, generator, config.rapid) if generator else None
    # TreeHop (multihop on/auto) is loaded by the pipeline on first use.
    return RagPipeline(collection, generator, config, trigger=trigger, drafter=drafter,
                       rapid_policy=configured_rapid_policy(workspace))


def run(args: argparse.Namespace) -> int:
    from codehop.config import load_settings, resolve_workspace

    if not args.question.strip():
        raise InvalidInputError("empty question: codehop ask \"how do I ...?\"")
    settings = load_settings(getattr(args, "config", None))
    workspace = resolve_workspace(args.workspace, settings)
    pipeline = build_pipeline(args, settings, workspace)
    result = None
    for event in pipeline.stream(args.question):
        if event["type"] == "token" and not args.json:
            print(event["text"], end="", flush=True)
        elif event["type"] == "result":
            result = event["result"]
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    if not result.answer:
        print("(no generator: retrieval only)" if args.retrieval_only else "(empty answer)")
    print("\n\nSources:")
    for number, source in enumerate(result.sources, 1):
        mark = "*" if number in result.cited else " "
        print(f" {mark}[{number}] {source.path}:{source.start_line}-{source.end_line}")
    print("\nStages: " + ", ".join(_stage_label(s) for s in result.stages), file=sys.stderr)
    for stage in result.stages:
        if stage.name == "rapid":
            if args.rapid or "predicted_speedup" in stage.detail:  # asked for, or a measured choice
                print(f"note: rapid {'used' if stage.ran else 'not used'}: {stage.detail['why']}", file=sys.stderr)
        elif stage.detail.get("warning"):  # e.g. an answer that cites no source
            print(f"note: {stage.name}: {stage.detail['warning']}", file=sys.stderr)
        elif not stage.ran and stage.detail.get("reason"):
            print(f"note: {stage.name} skipped: {stage.detail['reason']}", file=sys.stderr)
        elif stage.ran and stage.detail.get("why") and stage.detail.get("method") not in ("llm", "llm-nli"):
            print(f"note: {stage.name} used {stage.detail['method']}: {stage.detail['why']}", file=sys.stderr)
    return 0


def _stage_label(stage) -> str:
    """"rewrite (prf) 12 ms", "generate 3400 ms" or "filter off"."""
    if not stage.ran:
        return f"{stage.name} off"
    method = stage.detail.get("method")
    return f"{stage.name}{f' ({method})' if method else ''} {stage.seconds * 1000:.0f} ms"

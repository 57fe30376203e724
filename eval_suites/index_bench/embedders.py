"""Embedders side by side: chunks/s on one fixed sample and dense NDCG@10 on two query sets.

Embedders (`EMBEDDERS`): today's path (sentence-transformers/torch, 1 and 2 threads), the
ONNX Runtime int8 export (1 and 2 threads) and the model2vec static embedder distilled from
the same MiniLM. Speed is measured without the vector cache, after a warm-up, on one seeded
sample of devdocs passages (real chunk lengths); wall time and process CPU time are both
kept, since other jobs share the cores. Quality is dense-only retrieval (max-passage per
document) scored with the CodeRAG metrics (ranx, BEIR conventions):

- coderag-docs: DS-1000 + ODEX queries against their gold devdocs pages plus seeded
  distractor pages of the same libraries (the CodeRAG bench's subset rule);
- hotpotqa: the 300 dev questions against the pooled 2,966 paragraphs, gold = supporting titles.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.embed import Embedder, EmbedderConfig


@dataclass(frozen=True)
class EmbedderSpec:
    name: str
    backend: str
    threads: int | None


EMBEDDERS = (
    EmbedderSpec("torch-1t", "sentence-transformers", 1),
    EmbedderSpec("torch-2t", "sentence-transformers", 2),
    EmbedderSpec("onnx-int8-1t", "onnx-int8", 1),
    EmbedderSpec("onnx-int8-2t", "onnx-int8", 2),
    EmbedderSpec("static", "static", None),
)


def make_embedder(spec: EmbedderSpec, workspace: Path, cache: bool) -> Embedder:
    return Embedder(EmbedderConfig(
        backend=spec.backend, threads=spec.threads, models_dir=workspace / "models",
        cache_dir=workspace / "embeddings" if cache else None))


def speed(spec: EmbedderSpec, texts: list[str], workspace: Path) -> dict[str, Any]:
    """Chunks/s of `spec` on `texts` (no cache; model load and a warm-up batch not timed)."""
    embedder = make_embedder(spec, workspace, cache=False)
    started = time.perf_counter()
    embedder.encode(texts[:32])  # loads, exports or distils the model
    prepare_s = time.perf_counter() - started
    wall, cpu = time.perf_counter(), time.process_time()
    embedder.encode(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    embedder.close()
    return {"embedder": spec.name, "chunks": len(texts), "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "chunks_per_s": round(len(texts) / wall, 2),
            "chunks_per_cpu_s": round(len(texts) / max(cpu, 1e-9), 2),
            "prepare_s": round(prepare_s, 1)}


def dense_run(embedder: Embedder, texts: list[str], owners: list[str], queries: dict[str, str],
              k: int = 100) -> dict[str, dict[str, float]]:
    """query id -> {doc: best chunk cosine}, top-k documents, by exact inner product."""
    vectors = embedder.encode(texts)
    qids = list(queries)
    query_vectors = np.stack([embedder.encode_query(queries[q]) for q in qids])
    owner_ids = np.asarray(owners)
    run = {}
    for qid, scores in zip(qids, query_vectors @ vectors.T):
        order = np.argsort(-scores)
        docs: dict[str, float] = {}
        for i in order:
            docs.setdefault(str(owner_ids[i]), float(scores[i]))
            if len(docs) >= k:
                break
        run[qid] = docs
    return run


def coderag_docs(data: Path, distractors: int = 400, seed: int = 0):
    """(texts, owners, queries, qrels) of DS-1000 + ODEX over a devdocs subset."""
    from eval_suites.coderag import builders
    from eval_suites.coderag.retrieval import RetrievalConfig, chunk_corpus

    keys = builders.devdocs_page_keys(data)
    problems = [p for task in builders.DOC_TASKS for p in builders.load_problems(data, task, keys)]
    problems = [p for p in problems if p.gold]
    gold = {page for p in problems for page in p.gold}
    libraries = {page.split("/", 1)[0].split("~", 1)[0] for page in gold}
    corpus = builders.select_pages(data, gold, libraries, distractors, seed)
    queries, qrels = builders.beir_for_task(problems, corpus)
    queries = {f"{p.task}/{p.id}": queries[p.id] for p in problems if p.id in queries}
    qrels = {q: qrels[q.split("/", 1)[1]] for q in queries}
    # the first 4 chunks of a page, as every index_bench round measured (the embedders' speed and
    # quality, not the product's whole-page index)
    texts, owners = chunk_corpus(corpus, RetrievalConfig(max_chunks_per_doc=4), chunked=True)
    return texts, owners, queries, qrels, {"pages": len(corpus), "chunks": len(texts),
                                           "queries": len(queries)}


def hotpotqa(data: Path):
    """(texts, owners, queries, qrels) of HotpotQA dev over its pooled paragraphs."""
    from eval_suites.hotpotqa import load_questions, pooled_corpus, title_of

    questions = load_questions(data / "multihop" / "hotpotqa_dev.jsonl")
    texts, paths = pooled_corpus(questions)
    owners = [title_of(p) for p in paths]
    queries = {q.id: q.question for q in questions}
    qrels = {q.id: {t: 1 for t in q.supporting_titles} for q in questions}
    return texts, owners, queries, qrels, {"paragraphs": len(texts), "queries": len(queries)}


def speed_sample(texts: list[str], n: int, seed: int = 0) -> list[str]:
    return random.Random(seed).sample(texts, min(n, len(texts)))


def quality(spec: EmbedderSpec, sets: dict[str, tuple], workspace: Path) -> dict[str, Any]:
    """NDCG@10 / Recall@10 of `spec` on each query set (vectors cached per embedder)."""
    from eval_suites.coderag.metrics import retrieval_metrics

    embedder = make_embedder(spec, workspace, cache=True)
    row: dict[str, Any] = {"embedder": spec.name}
    for name, (texts, owners, queries, qrels, _) in sets.items():
        started = time.perf_counter()
        metrics = retrieval_metrics(qrels, dense_run(embedder, texts, owners, queries))
        row[f"{name} ndcg@10"] = round(metrics["ndcg@10"], 4)
        row[f"{name} recall@10"] = round(metrics["recall@10"], 4)
        row[f"{name} s"] = round(time.perf_counter() - started, 1)
    embedder.close()
    return row

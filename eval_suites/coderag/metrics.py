"""Retrieval metrics through ranx (BEIR conventions) and pass@1 aggregation.

`retrieval_metrics` scores a run (query -> {doc: score}) against qrels (query -> {doc: rel}):
NDCG@10 (the headline, as in BEIR / CodeRAG-Bench), Recall@5/10/100 and MRR@10, averaged over
the queries of the qrels; a query the run does not answer scores 0 (ranx `make_comparable`).

Worked example: one query with gold {d1}, run d2 > d1: NDCG@10 = 1/log2(3) = 0.6309,
Recall@5 = 1, MRR@10 = 0.5.
"""

from __future__ import annotations

import warnings

import numpy as np

METRICS = ("ndcg@10", "recall@5", "recall@10", "recall@100", "mrr@10")


def retrieval_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
                      metrics: tuple[str, ...] = METRICS) -> dict[str, float]:
    """Mean of each metric over the queries in `qrels`.

    Args:
        qrels: query id -> {doc id: relevance > 0}.
        run: query id -> {doc id: score} (higher is better; any number of docs).
        metrics: ranx metric names.
    Returns:
        metric -> mean value (0.0 for every metric when `qrels` is empty).
    """
    per_query = per_query_metrics(qrels, run, metrics)
    if not per_query:
        return {m: 0.0 for m in metrics}
    return {m: float(np.mean([scores[m] for scores in per_query.values()])) for m in metrics}


def per_query_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
                      metrics: tuple[str, ...] = METRICS) -> dict[str, dict[str, float]]:
    """query id -> metric -> value, for every query in `qrels`."""
    from ranx import Qrels, Run, evaluate

    qrels = {q: docs for q, docs in qrels.items() if docs}
    if not qrels:
        return {}
    # ranx rejects a query whose run is empty: such a query gets a dummy non-relevant doc.
    clean_run = {q: (dict(run.get(q) or {}) or {"__none__": 0.0}) for q in qrels}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's uint64 cast notice
        qrels_obj, run_obj = Qrels(qrels), Run(clean_run)
        evaluate(qrels_obj, run_obj, list(metrics), make_comparable=True)
    scores = run_obj.scores
    return {q: {m: float(scores[m][q]) for m in metrics} for q in qrels}


def pass_at_1(verdicts: list[bool]) -> float:
    """pass@1 with one greedy sample per problem = the fraction of problems passed."""
    return float(np.mean(verdicts)) if verdicts else 0.0


def average_over_tasks(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted macro-average of each metric over tasks (CodeRAG-Bench averages tasks)."""
    if not per_task:
        return {}
    names = next(iter(per_task.values())).keys()
    return {m: float(np.mean([scores[m] for scores in per_task.values()])) for m in names}

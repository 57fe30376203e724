"""Fusion of ranked lists from several retrievers (BM25, dense, rewritten queries).

Reciprocal-rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009) needs no score calibration:

    rrf(d) = sum_lists 1 / (k + rank(d)),  rank starting at 1, k = 60

    rrf_fuse([Hits([7, 3]), Hits([3, 9])]) -> 3 (1/62 + 1/61) first, then 7 (1/61), then 9 (1/62)

Weighted score fusion min-max normalises each list's scores to [0, 1] before mixing them, so
BM25's unbounded scores and cosine similarities can share one scale.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from runtime.errors import InvalidInputError
from index.types import Hits


def _accumulate(contributions: list[tuple[np.ndarray, np.ndarray]]) -> Hits:
    if not contributions:
        return Hits.empty()
    ids = np.concatenate([c[0] for c in contributions]).astype(np.int64)
    values = np.concatenate([c[1] for c in contributions]).astype(np.float64)
    if not len(ids):
        return Hits.empty()
    unique, inverse = np.unique(ids, return_inverse=True)
    totals = np.bincount(inverse, weights=values, minlength=len(unique))
    # First appearance breaks ties, so equal fused scores keep the earlier list's order.
    first_seen = np.full(len(unique), len(ids))
    np.minimum.at(first_seen, inverse, np.arange(len(ids)))
    order = np.lexsort((first_seen, -totals))
    return Hits(unique[order], totals[order].astype(np.float32))


def rrf_fuse(hit_lists: list[Hits], k: int = 60, weights: list[float] | None = None) -> Hits:
    """Reciprocal-rank fusion; `weights` optionally scales each list's contribution."""
    if k <= 0:
        raise InvalidInputError(f"RRF k must be positive, got {k}")
    weights = weights or [1.0] * len(hit_lists)
    if len(weights) != len(hit_lists):
        raise InvalidInputError("rrf_fuse: one weight per list")
    contributions = [
        (hits.ids, weight / (k + np.arange(1, len(hits) + 1)))
        for hits, weight in zip(hit_lists, weights)
    ]
    return _accumulate(contributions)


def rrf_fuse_keys(runs: Sequence[Sequence[Hashable]], k: int = 60) -> dict[Hashable, float]:
    """`rrf_fuse` of ranked lists of any keys (paths, document names, chunk ids): key -> fused
    score, best first; equal scores keep the order in which the keys first appear.

    rrf_fuse_keys([["a", "b"], ["b", "c"]]) -> {"b": 1/62 + 1/61, "a": 1/61, "c": 1/62}
    """
    runs = [list(run) for run in runs]
    names = list(dict.fromkeys(key for run in runs for key in run))
    position = {key: i for i, key in enumerate(names)}
    lists = [Hits(np.asarray([position[key] for key in run], np.int64), np.zeros(len(run), np.float32))
             for run in runs if run]
    fused = rrf_fuse(lists, k=k)
    return {names[int(i)]: float(s) for i, s in zip(fused.ids, fused.scores)}


def _min_max(scores: np.ndarray) -> np.ndarray:
    if not len(scores):
        return scores.astype(np.float64)
    low, high = float(scores.min()), float(scores.max())
    if high - low < 1e-12:
        return np.ones(len(scores))
    return (scores.astype(np.float64) - low) / (high - low)


def weighted_fuse(hit_lists: list[Hits], weights: list[float]) -> Hits:
    """Convex mix of min-max-normalised scores; a document missing from a list scores 0 there."""
    if len(weights) != len(hit_lists):
        raise InvalidInputError("weighted_fuse: one weight per list")
    if any(w < 0 for w in weights):
        raise InvalidInputError("weighted_fuse: weights must be non-negative")
    contributions = [
        (hits.ids, weight * _min_max(hits.scores)) for hits, weight in zip(hit_lists, weights)
    ]
    return _accumulate(contributions)

"""How much the dense list weighs in hybrid search, chosen per collection without labels.

Convex fusion (Bruch, Gai & Ingber 2023, TOIS) mixes min-max normalised scores,
`w * dense + (1 - w) * bm25`, and beats RRF when `w` suits the corpus; they set `w` from a
handful of labelled queries. A collection has none, so it asks itself (METHODS.md, "Hybrid
fusion and corpus adaptation"):

1. Pseudo-queries. From a seeded sample of documents with two or more chunks, one chunk
   each gives a sentence-like line (prose, a docstring) as the query; the right answer is
   the *document*, found through one of its *other* chunks: the source chunk is excluded
   from every list, so neither retriever wins by matching the line word for word. This is
   the Inverse Cloze Task's idea (Lee et al. 2019) at document level.
2. Each retriever answers every pseudo-query once; the fused list is formed for every `w`
   of a grid, and `w` is scored by NDCG@10 of the target document (a document ranks where
   its best chunk does, MaxP).
3. The chosen `w` is the middle of the weights whose score is within `tolerance` of the
   best: a flat optimum gives a central weight, not one at the edge of noise.

    estimate([PseudoQuery("how to replace values", source=4, document=1), ...], search)
    -> FusionEstimate(dense_weight=0.7, method="pseudo-queries", ...)

With too few pseudo-queries (a handful of single-chunk files) the estimate says so and the
collection keeps `PRIOR_DENSE_WEIGHT`.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from index.hybrid import weighted_fuse
from index.types import Hits

# The weight used until an estimate exists: dense-leaning, as Bruch et al.'s tuned weights and
# our own measurements (METHODS.md) are for a sentence embedder next to BM25.
PRIOR_DENSE_WEIGHT = 0.7
GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")


@dataclass(frozen=True)
class PseudoQuery:
    """A line taken from chunk `source` of document `document`, used as a query."""

    text: str
    source: int
    document: int


@dataclass(frozen=True)
class FusionEstimate:
    """The chosen dense weight and its evidence (kept with the collection, shown in stats).

    Args:
        dense_weight: w in w * dense + (1 - w) * bm25.
        method: "pseudo-queries" (estimated) or "prior" (too little to estimate from).
        queries: pseudo-queries scored.
        chunks: the collection's chunk count when estimated (re-estimated when it drifts).
        curve: mean NDCG@10 at each grid weight.
        reason: why the prior was kept, or "".
    """

    dense_weight: float
    method: str
    queries: int = 0
    chunks: int = 0
    curve: list[tuple[float, float]] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FusionEstimate":
        data = dict(data)
        data["curve"] = [tuple(point) for point in data.get("curve", [])]
        return cls(**data)

    @classmethod
    def prior(cls, reason: str, chunks: int = 0) -> "FusionEstimate":
        return cls(PRIOR_DENSE_WEIGHT, "prior", chunks=chunks, reason=reason)


def query_line(text: str, max_words: int = 24, min_words: int = 5) -> str | None:
    """The first sentence-like line of a chunk: at least `min_words` words and mostly words
    (not code, numbers or a `# path:lines` header), cut to `max_words` words.

    query_line("# a.py:1-9\\ndef f(x):\\n    Return the sum of the values in x.") ->
    "Return the sum of the values in x."
    """
    for line in text.splitlines():
        stripped = line.strip().lstrip("#*-> \"'").strip()
        tokens = stripped.split()
        if len(tokens) < min_words:
            continue
        words = [t for t in tokens if _WORD.fullmatch(t.strip(".,;:()!?"))]
        if len(words) >= 0.6 * len(tokens):
            return " ".join(tokens[:max_words])
    return None


def sample_pseudo_queries(chunks_by_document: dict[int, list[tuple[int, str]]], limit: int,
                          seed: int = 0) -> list[PseudoQuery]:
    """Up to `limit` pseudo-queries, one per sampled document of two or more chunks.

    Args:
        chunks_by_document: document id -> [(chunk row id, chunk text)] in document order.
        limit: how many pseudo-queries at most.
        seed: sampling seed (an estimate is reproducible for the same collection).
    """
    rng = random.Random(seed)
    documents = sorted(d for d, chunks in chunks_by_document.items() if len(chunks) >= 2)
    rng.shuffle(documents)
    queries: list[PseudoQuery] = []
    for document in documents:
        chunks = list(chunks_by_document[document])
        rng.shuffle(chunks)
        for row_id, text in chunks:
            line = query_line(text)
            if line:
                queries.append(PseudoQuery(line, row_id, document))
                break
        if len(queries) >= limit:
            break
    return queries


def _rank_of(hits: Hits, target: int, document_of: Callable[[int], int | None], k: int) -> int | None:
    """1-based rank of document `target` among the documents of `hits` (MaxP), if within k."""
    seen: set[int] = set()
    for row_id in hits.ids.tolist():
        document = document_of(row_id)
        if document is None or document in seen:
            continue
        seen.add(document)
        if document == target:
            return len(seen)
        if len(seen) >= k:
            return None
    return None


def _without(hits: Hits, row_id: int) -> Hits:
    keep = hits.ids != row_id
    return Hits(hits.ids[keep], hits.scores[keep])


def estimate(queries: list[PseudoQuery], search: Callable[[list[str]], Iterable[tuple[Hits, Hits]]],
             document_of: Callable[[int], int | None], chunks: int = 0, min_queries: int = 20,
             k: int = 10, tolerance: float = 0.005, grid: tuple[float, ...] = GRID) -> FusionEstimate:
    """Choose the dense weight from pseudo-queries (see the module docstring).

    Args:
        queries: from `sample_pseudo_queries`.
        search: texts -> (bm25 hits, dense hits) per text, each with the retriever's scores
            over its own top candidates.
        document_of: chunk row id -> document id (None for a row no longer stored).
        chunks: the collection's size, recorded with the estimate.
        min_queries: fewer pseudo-queries than this keep the prior.
        k: NDCG cut-off; tolerance: see step 3.
    """
    if len(queries) < min_queries:
        return FusionEstimate.prior(
            f"{len(queries)} pseudo-queries (need {min_queries} documents of two or more chunks "
            "with a sentence-like line)", chunks)
    gains = np.zeros(len(grid))
    for query, (bm25, dense) in zip(queries, search([q.text for q in queries])):
        bm25, dense = _without(bm25, query.source), _without(dense, query.source)
        for at, weight in enumerate(grid):
            rank = _rank_of(weighted_fuse([bm25, dense], [1.0 - weight, weight]),
                            query.document, document_of, k)
            if rank is not None:
                gains[at] += 1.0 / np.log2(rank + 1)
    means = gains / len(queries)
    near = [w for w, score in zip(grid, means) if score >= means.max() - tolerance]
    chosen = float(near[len(near) // 2])
    curve = [(float(w), round(float(s), 4)) for w, s in zip(grid, means)]
    return FusionEstimate(chosen, "pseudo-queries", len(queries), chunks, curve)

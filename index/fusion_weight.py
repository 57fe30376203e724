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
3. The best `w` is the middle of the weights whose score is within `tolerance` of the
   best: a flat optimum gives a central weight, not one at the edge of noise.
4. The best `w` replaces the prior only when the pseudo-queries show one retriever plainly
   failing: the retriever the best weight leans away from must score at most half of the
   other alone (`broken_ratio`), and the best weight must beat the prior by `margin` NDCG@10
   with a paired-bootstrap 95% interval above zero. Finer preferences are not trusted:
   pseudo-queries are lines lifted from the collection, so they share its exact vocabulary
   and favour BM25 more than people's questions do. On the devdocs corpus they rate BM25
   alone 0.21 and dense alone 0.14 and prefer w = 0.2 by 5.7 points, where written questions
   (DS-1000, ODEX) lose 12 points at that weight; a noise embedder scores near 0 and moves it.

    estimate([PseudoQuery("how to replace values", source=4, document=1), ...], search)
    -> FusionEstimate(dense_weight=0.7, method="pseudo-queries", ...)

With too few pseudo-queries (a handful of single-chunk files) the estimate says so and the
collection keeps `PRIOR_DENSE_WEIGHT`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from index.atomic import atomic_write
from index.hybrid import weighted_fuse
from index.types import Hits

# The weight every collection starts from, chosen a priori (one value for all collections, not
# fitted to any suite): dense-leaning, as the tuned convex weights of Bruch et al. are for a
# trained dense encoder next to BM25.
PRIOR_DENSE_WEIGHT = 0.7
# How much better than the prior the pseudo-queries must find a weight (NDCG@10) to take it,
# and how far below the other retriever (a ratio of NDCG@10 alone) the one it leans away from
# must be: only a plainly failing retriever is evidence these biased queries can give.
MARGIN = 0.02
BROKEN_RATIO = 0.5
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


def prose_lines(text: str, max_words: int = 24, min_words: int = 5) -> list[str]:
    """The sentence-like lines of a chunk, in order: at least `min_words` words and mostly
    words (not code, numbers or a `# path:lines` header), each cut to `max_words` words.

    prose_lines("# a.py:1-9\\ndef f(x):\\n    Return the sum of the values in x.") ->
    ["Return the sum of the values in x."]
    """
    found = []
    for line in text.splitlines():
        stripped = line.strip().lstrip("#*-> \"'").strip()
        tokens = stripped.split()
        if len(tokens) < min_words:
            continue
        words = [t for t in tokens if _WORD.fullmatch(t.strip(".,;:()!?"))]
        if len(words) >= 0.6 * len(tokens):
            found.append(" ".join(tokens[:max_words]))
    return found


def query_line(text: str, max_words: int = 24, min_words: int = 5) -> str | None:
    """The first of `prose_lines`, or None: a chunk's pseudo-query."""
    lines = prose_lines(text, max_words, min_words)
    return lines[0] if lines else None


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
             k: int = 10, tolerance: float = 0.005, margin: float = MARGIN,
             broken_ratio: float = BROKEN_RATIO, grid: tuple[float, ...] = GRID,
             seed: int = 0) -> FusionEstimate:
    """Choose the dense weight from pseudo-queries (see the module docstring).

    Args:
        queries: from `sample_pseudo_queries`.
        search: texts -> (bm25 hits, dense hits) per text, each with the retriever's scores
            over its own top candidates.
        document_of: chunk row id -> document id (None for a row no longer stored).
        chunks: the collection's size, recorded with the estimate.
        min_queries: fewer pseudo-queries than this keep the prior.
        k: NDCG cut-off; tolerance: see step 3; margin, broken_ratio: see step 4.
    """
    if len(queries) < min_queries:
        return FusionEstimate.prior(
            f"{len(queries)} pseudo-queries (need {min_queries} documents of two or more chunks "
            "with a sentence-like line)", chunks)
    gains = np.zeros((len(queries), len(grid)))  # NDCG@10 of each query at each weight
    for row, (query, (bm25, dense)) in enumerate(zip(queries, search([q.text for q in queries]))):
        bm25, dense = _without(bm25, query.source), _without(dense, query.source)
        for at, weight in enumerate(grid):
            rank = _rank_of(weighted_fuse([bm25, dense], [1.0 - weight, weight]),
                            query.document, document_of, k)
            if rank is not None:
                gains[row, at] = 1.0 / np.log2(rank + 1)
    means = gains.mean(axis=0)
    near = [at for at, score in enumerate(means) if score >= means.max() - tolerance]
    best = near[len(near) // 2]
    prior = int(np.argmin(np.abs(np.asarray(grid) - PRIOR_DENSE_WEIGHT)))
    gain, low = _paired_gain(gains[:, best] - gains[:, prior], seed)
    curve = [(float(w), round(float(s), 4)) for w, s in zip(grid, means)]
    bm25_alone, dense_alone = float(means[0]), float(means[-1])
    # the retriever the best weight leans away from, and the one it leans toward
    weaker, stronger = ((dense_alone, bm25_alone) if grid[best] < grid[prior] else (bm25_alone, dense_alone))
    failing = weaker <= broken_ratio * stronger
    if failing and gain >= margin and low > 0:
        return FusionEstimate(float(grid[best]), "pseudo-queries", len(queries), chunks, curve)
    if not failing:
        reason = (f"pseudo-queries prefer w={grid[best]} (+{gain:.3f} NDCG@10 over the prior), but "
                  f"neither retriever fails on them (BM25 alone {bm25_alone:.3f}, dense alone "
                  f"{dense_alone:.3f}); lines lifted from the corpus favour BM25, so the prior stays")
    else:
        reason = (f"the best weight on pseudo-queries ({grid[best]}) beats the prior by {gain:+.3f} "
                  f"NDCG@10 (95% CI from {low:+.3f}), less than the {margin} needed")
    return FusionEstimate(PRIOR_DENSE_WEIGHT, "prior", len(queries), chunks, curve, reason)


def _paired_gain(differences: np.ndarray, seed: int, rounds: int = 1000) -> tuple[float, float]:
    """(mean of per-query differences, the 2.5% quantile of its bootstrap distribution)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(rounds, len(differences)))
    return float(differences.mean()), float(np.quantile(differences[picks].mean(axis=1), 0.025))


# ---------------------------------------------------------------- kept with the collection

ESTIMATE_FILE = "fusion.json"
# Re-estimate when the collection grew or shrank by more than this share since the estimate.
DRIFT = 0.2


def is_stale(estimate_: FusionEstimate | None, chunks: int) -> bool:
    """Whether a collection of `chunks` chunks should estimate again."""
    if estimate_ is None:
        return True
    return abs(chunks - estimate_.chunks) > DRIFT * max(estimate_.chunks, 1)


def load_estimate(path: Path) -> FusionEstimate | None:
    """The estimate stored at `path`; None when there is none or it cannot be read (a new
    one is then made at the next commit, so a damaged file costs one estimate)."""
    try:
        return FusionEstimate.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save_estimate(path: Path, estimate_: FusionEstimate) -> None:
    atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(estimate_.to_dict(), indent=1)))

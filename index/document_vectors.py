"""Each document's mean chunk vector, lent to its chunks: the document half of the dense voter.

A chunk's vector sees only its own passage. The mean of a page's chunk vectors (normalised)
stands for the page as a whole, so a question about what the page covers finds it even when
no single passage says it all. Hybrid search's dense voter mixes each chunk's cosine with its
document's, half and half, as the lexical voter does with BM25 (index.document_evidence,
after Callan 1994; index.collection, `semantic = "chunk+document"`). The vectors come from
the chunks' own embeddings: nothing is embedded twice.

Search is an exact scan over one vector per document (a 13.7k-page collection: ~1.5 ms on
one core), or, when the chunks' cosines against the query are all at hand (the exact `flat`
index computes them anyway), their sum per document over the length of its vector sum: the
same number, since m = sum(v) / |sum(v)| gives m.q = sum(v.q) / |sum(v)|, at a tenth of the
cost. A commit recomputes only the documents whose chunks changed.

    documents = DocumentVectors.build(chunk_ids, doc_ids, vectors)
    documents = documents.updated(chunk_ids, doc_ids, fetch)   # after a commit
    documents.chunk_hits(query_vector, 100, evidence=candidate_chunk_ids)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from index.document_evidence import DocumentLayout, by_document
from index.types import Hits
from runtime.errors import CorruptIndexError

_LAYOUT = "chunks.npz"
_VECTORS = "vectors.npy"
_NORMS = "norms.npy"
# (chunk ids) -> (the ids among them that have a vector, their vectors)
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# (chunk ids, a query's inner product with each of them)
ChunkScores = tuple[np.ndarray, np.ndarray]


class DocumentVectors:
    """One unit vector per document: the normalised mean of its chunks' vectors."""

    def __init__(self, layout: DocumentLayout, vectors: np.ndarray, norms: np.ndarray) -> None:
        """layout: the chunks each mean was taken over; vectors[i]: layout.doc_ids[i]'s mean,
        normalised; norms[i]: the length of that document's vector sum before normalising."""
        if not len(vectors) == len(norms) == len(layout):
            raise ValueError("DocumentVectors: one vector and norm per document of the layout")
        self.layout, self.vectors, self.norms = layout, vectors, norms
        self._rows_for: tuple[np.ndarray, np.ndarray | None] | None = None  # (chunk ids, their rows)

    def __len__(self) -> int:
        return len(self.layout)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1] if self.vectors.ndim == 2 else 0

    @classmethod
    def build(cls, chunk_ids: np.ndarray | list[int], doc_ids: np.ndarray | list[int],
              vectors: np.ndarray) -> "DocumentVectors":
        """Each document's mean over the given chunks (one document id and vector row per chunk id)."""
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if not (len(chunk_ids) == len(doc_ids) == len(vectors)):
            raise ValueError("DocumentVectors.build: one document id and vector per chunk")
        order, documents, starts, ordered = by_document(chunk_ids, doc_ids)
        if not len(order):
            return cls(DocumentLayout(documents, starts, ordered), np.zeros((0, 0), np.float32),
                       np.zeros(0, np.float32))
        sums = np.add.reduceat(vectors[order], starts[:-1], axis=0)
        norms = np.maximum(np.linalg.norm(sums, axis=1), 1e-12).astype(np.float32)
        return cls(DocumentLayout(documents, starts, ordered), (sums / norms[:, None]).astype(np.float32), norms)

    def updated(self, chunk_ids: np.ndarray | list[int], doc_ids: np.ndarray | list[int],
                fetch: Fetch) -> "DocumentVectors":
        """The means over a new set of chunks (every chunk that has a vector now, with its
        document): a document whose chunks are the ones its mean was taken over keeps it, the
        others' chunk vectors are fetched (a chunk `fetch` has no vector for is left out)."""
        wanted = DocumentLayout.of(chunk_ids, doc_ids)
        same = self._unchanged(wanted)
        stale = np.repeat(~same, np.diff(wanted.starts))
        stale_ids, stale_docs = wanted.chunk_ids[stale], wanted.document_of_chunks()[stale]
        found, vectors = fetch(stale_ids)
        fresh = DocumentVectors.build(found, stale_docs[np.isin(stale_ids, found)], vectors)
        return self._only(wanted.doc_ids[same])._joined(fresh)

    def _only(self, doc_ids: np.ndarray) -> "DocumentVectors":
        """These documents (all held here) and nothing else."""
        rows = self.layout.position(doc_ids)
        keep = np.repeat(np.isin(self.layout.doc_ids, doc_ids), np.diff(self.layout.starts))
        layout = DocumentLayout.of(self.layout.chunk_ids[keep], self.layout.document_of_chunks()[keep])
        return DocumentVectors(layout, self.vectors[rows] if len(rows) else np.zeros((0, self.dim), np.float32),
                               self.norms[rows])

    def _joined(self, other: "DocumentVectors") -> "DocumentVectors":
        """These documents and `other`'s (no document in both)."""
        if not len(other):
            return self
        if not len(self):
            return other
        layout = DocumentLayout.of(np.concatenate([self.layout.chunk_ids, other.layout.chunk_ids]),
                                   np.concatenate([self.layout.document_of_chunks(), other.layout.document_of_chunks()]))
        order = np.argsort(np.concatenate([self.layout.doc_ids, other.layout.doc_ids]), kind="stable")
        return DocumentVectors(layout, np.concatenate([self.vectors, other.vectors])[order],
                               np.concatenate([self.norms, other.norms])[order])

    def _unchanged(self, wanted: DocumentLayout) -> np.ndarray:
        """Per document of `wanted`: does this index hold its mean over exactly those chunks?
        (Vectorised: a repository of 10k files is compared on every commit.)"""
        at = self.layout.position(wanted.doc_ids)
        sizes = np.diff(wanted.starts)
        held = np.maximum(at, 0)
        candidates = np.flatnonzero((at >= 0) & (self.layout.starts[held + 1] - self.layout.starts[held] == sizes))
        same = np.zeros(len(wanted), dtype=bool)
        if not len(candidates):
            return same
        lengths = sizes[candidates]  # every document holds at least one chunk
        before = np.cumsum(lengths) - lengths
        step = np.arange(int(lengths.sum())) - np.repeat(before, lengths)
        new = wanted.chunk_ids[np.repeat(wanted.starts[candidates], lengths) + step]
        old = self.layout.chunk_ids[np.repeat(self.layout.starts[at[candidates]], lengths) + step]
        same[candidates] = np.logical_and.reduceat(new == old, before)
        return same

    def search(self, vector: np.ndarray, k: int, chunk_scores: ChunkScores | None = None) -> Hits:
        """The top-k documents by inner product with a normalised query (ids are document ids).

        chunk_scores: (chunk ids, the query's inner product with each) covering every chunk
            of the layout, e.g. an exact index's full score row: the documents' scores are
            summed from them instead of scanning the document vectors (same result).
        """
        if not len(self) or k <= 0:
            return Hits.empty()
        scores = None if chunk_scores is None else self._summed(*chunk_scores)
        if scores is None:
            scores = self.vectors @ np.asarray(vector, dtype=np.float32).reshape(-1)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return Hits(self.layout.doc_ids[top].astype(np.int64), scores[top].astype(np.float32))

    def chunk_hits(self, vector: np.ndarray, k: int, evidence: np.ndarray | None = None,
                   chunk_scores: ChunkScores | None = None) -> Hits:
        """The chunks of the top-k documents, scored with their document's cosine
        (index.document_evidence.lend)."""
        return self.layout.lend(self.search(vector, k, chunk_scores), evidence)

    def _summed(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
        """Each document's cosine from its chunks' inner products: sum / |vector sum|; None
        when `ids` lacks one of the layout's chunks."""
        rows = self._rows(ids)
        if rows is None or not len(self.layout.chunk_ids):
            return None
        sums = np.add.reduceat(scores[rows].astype(np.float64), self.layout.starts[:-1])
        return (sums / self.norms).astype(np.float32)

    def _rows(self, ids: np.ndarray) -> np.ndarray | None:
        """Where each layout chunk sits in `ids`, computed once per ids array (an index
        replaces its id array on every change, so the same object means the same rows)."""
        if self._rows_for is None or self._rows_for[0] is not ids:
            order = np.argsort(ids, kind="stable")
            at = np.minimum(np.searchsorted(ids, self.layout.chunk_ids, sorter=order), len(ids) - 1)
            rows = order[at] if len(ids) else None
            if rows is not None and not np.array_equal(ids[rows], self.layout.chunk_ids):
                rows = None
            self._rows_for = (ids, rows)
        return self._rows_for[1]

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.layout.save(directory / _LAYOUT)
        np.save(directory / _VECTORS, self.vectors)
        np.save(directory / _NORMS, self.norms)

    @classmethod
    def load(cls, directory: Path) -> "DocumentVectors":
        directory = Path(directory)
        layout = DocumentLayout.load(directory / _LAYOUT, "document vectors")
        try:
            vectors, norms = np.load(directory / _VECTORS), np.load(directory / _NORMS)
        except (OSError, ValueError) as error:
            raise CorruptIndexError(f"document vectors at {directory} are unreadable ({error}); "
                                    "rebuild with codehop index --rebuild") from error
        if not len(vectors) == len(norms) == len(layout):
            raise CorruptIndexError(f"document vectors at {directory} are truncated: rebuild with codehop index --rebuild")
        return cls(layout, vectors, norms)

"""Document evidence for chunk retrieval: which chunks a document holds, and lending its score.

A chunk is one passage of a page; a question often matches the page as a whole better than
any one passage of it. Callan (1994, "Passage-level evidence in document retrieval") found
that a document's own score and its best passage's score together rank better than either
alone. Hybrid search does that in both of its voters (index.collection): each voter's
chunk list is mixed, half and half, with its document list lent to the chunks:

    voter(chunk) = 0.5 * minmax(chunk score) + 0.5 * minmax(score of its document)

The document scores come from BM25 over whole documents (index.document_bm25) and from
each document's mean chunk vector (index.document_vectors).

    layout = DocumentLayout.of(chunk_ids, doc_ids)
    chunk_document_mix(chunk_hits, layout.lend(document_hits, evidence=candidate_chunk_ids))
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from index.hybrid import weighted_fuse
from index.types import Hits
from runtime.errors import CorruptIndexError

# A chunk's own score and its document's weigh the same (Callan 1994's sum), fixed a priori.
DOCUMENT_SHARE = 0.5


class DocumentLayout:
    """Which chunk rows each document holds: the chunks of doc_ids[i] are
    chunk_ids[starts[i]:starts[i + 1]], documents sorted by id, chunks by id within one."""

    def __init__(self, doc_ids: np.ndarray, starts: np.ndarray, chunk_ids: np.ndarray) -> None:
        self.doc_ids, self.starts, self.chunk_ids = doc_ids, starts, chunk_ids

    def __len__(self) -> int:
        return len(self.doc_ids)

    @classmethod
    def of(cls, chunk_ids: np.ndarray | list[int], doc_ids: np.ndarray | list[int]) -> "DocumentLayout":
        """The layout of chunks given with their documents (one document id per chunk id)."""
        return cls(*by_document(np.asarray(chunk_ids, dtype=np.int64), np.asarray(doc_ids, dtype=np.int64))[1:])

    def position(self, doc_ids: np.ndarray) -> np.ndarray:
        """Each document's row in this layout, -1 for documents it does not hold."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        if not len(self.doc_ids):
            return np.full(len(doc_ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.doc_ids, doc_ids), len(self.doc_ids) - 1)
        return np.where(self.doc_ids[at] == doc_ids, at, -1)

    def chunks_of(self, doc_id: int) -> np.ndarray:
        at = int(self.position(np.asarray([doc_id]))[0])
        if at < 0:
            return np.empty(0, dtype=np.int64)
        return self.chunk_ids[self.starts[at]:self.starts[at + 1]]

    def document_of_chunks(self) -> np.ndarray:
        """The document id of each entry of `chunk_ids`."""
        return np.repeat(self.doc_ids, np.diff(self.starts))

    def lend(self, documents: Hits, evidence: np.ndarray | None = None) -> Hits:
        """Each document's score given to its chunks (see `lend`), in the documents' order;
        vectorised over the layout's arrays (hundreds of documents per search)."""
        ids = documents.ids.astype(np.int64)
        if not len(ids) or not len(self.doc_ids):
            return Hits.empty()
        at = self.position(ids)
        starts = self.starts[np.maximum(at, 0)]
        lengths = np.where(at >= 0, self.starts[np.maximum(at, 0) + 1] - starts, 0)  # unknown: none
        before = np.cumsum(lengths) - lengths  # where each document's chunks begin in the output
        positions = np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))
        return _lent_hits(self.chunk_ids[positions], lengths, documents.scores, evidence)

    def save(self, path: Path) -> None:
        np.savez(path, doc_ids=self.doc_ids, starts=self.starts, chunk_ids=self.chunk_ids)

    @classmethod
    def load(cls, path: Path, what: str) -> "DocumentLayout":
        """Read a layout saved by `save`; `what` names the index in the error."""
        try:
            with np.load(path) as data:
                doc_ids, starts, chunk_ids = data["doc_ids"], data["starts"], data["chunk_ids"]
        except (OSError, ValueError, KeyError) as error:
            raise CorruptIndexError(f"{what} at {path.parent} is unreadable ({error}); "
                                    "rebuild with codehop index --rebuild") from error
        if len(starts) != len(doc_ids) + 1 or int(starts[-1]) != len(chunk_ids):
            raise CorruptIndexError(f"{what} at {path.parent} is truncated: rebuild with codehop index --rebuild")
        return cls(doc_ids, starts, chunk_ids)


def by_document(chunk_ids: np.ndarray, doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(the chunks' order by document then chunk id, the sorted document ids, where each
    document's chunks start in that order with the total at the end, the chunk ids in it)."""
    order = np.lexsort((chunk_ids, doc_ids))
    documents, first = np.unique(doc_ids[order], return_index=True)
    return order, documents, np.append(first, len(order)).astype(np.int64), chunk_ids[order]


def lend(documents: Hits, chunks_of: Callable[[int], np.ndarray], evidence: np.ndarray | None = None) -> Hits:
    """Chunk hits from document hits: each document's score given to its chunks (`chunks_of`,
    in chunk-id order), in the documents' order.

    With `evidence` (the chunks another list found: chunk BM25's and dense's candidates) a
    document lends only to those of its chunks, or to its first chunk when it has none. Its
    other chunks would tie on the document's score alone: they change no document's rank
    (a document ranks as its best chunk), but would crowd chunk results with look-alikes and
    cost a row read each when results are grouped by document.
    """
    parts = [np.asarray(chunks_of(int(doc_id)), dtype=np.int64) for doc_id in documents.ids.tolist()]
    if not parts:
        return Hits.empty()
    return _lent_hits(np.concatenate(parts), np.asarray([len(p) for p in parts], dtype=np.int64),
                      documents.scores, evidence)


def _lent_hits(chunk_ids: np.ndarray, lengths: np.ndarray, scores: np.ndarray,
               evidence: np.ndarray | None) -> Hits:
    """chunk_ids: the documents' chunks back to back (lengths[i] of document i); scores: one
    per document. With `evidence`: the chunks in it, or a document's first when it has none."""
    lent = np.repeat(scores.astype(np.float32), lengths)
    chunk_ids = chunk_ids.astype(np.int64)
    if evidence is None or not len(chunk_ids):
        return Hits(chunk_ids, lent)
    keep = np.isin(chunk_ids, evidence)
    starts = np.cumsum(lengths) - lengths
    nonempty = lengths > 0
    found = np.zeros(len(lengths), dtype=bool)
    found[nonempty] = np.logical_or.reduceat(keep, starts[nonempty])
    keep[starts[nonempty & ~found]] = True
    return Hits(chunk_ids[keep], lent[keep])


def chunk_document_mix(chunks: Hits, documents_lent: Hits) -> Hits:
    """A voter from chunk and document evidence: min-max each list, 0.5 each, a chunk missing
    from a list scoring 0 there (Callan 1994's combination of passage and document scores)."""
    if not len(documents_lent):
        return chunks
    return weighted_fuse([chunks, documents_lent], [1.0 - DOCUMENT_SHARE, DOCUMENT_SHARE])

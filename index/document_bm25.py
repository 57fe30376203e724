"""BM25 over whole documents, lent to their chunks: the document half of the lexical voter.

A chunk is scored by BM25 on its own text only, so a page whose title, signature and
prose are split across chunks matches a question nowhere as well as it does as a whole.
Callan (1994, "Passage-level evidence in document retrieval") found that a document's own
score and its best passage's score together rank better than either alone. Hybrid search
does the same with chunks (index.collection, `lexical = "chunk+document"`):

    lexical(chunk) = 0.5 * minmax(BM25 of the chunk) + 0.5 * minmax(BM25 of its document)

and the dense list is fused with that as before. The equal weights are fixed a priori, not
fitted (docs/benchmarks.md, issue 26, says how the variant was chosen and checked).

A document's text for BM25 is the index tokens of all its chunks (each with its context
header), summed from the chunk index's own counts, so the document index always agrees with
the chunk index it was built beside.

    documents = DocumentBM25.from_chunk_index(chunk_index, {chunk_row_id: doc_id, ...})
    documents.chunk_hits(["groupby", "sum"], 100, evidence=candidate_chunk_ids)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from index.bm25 import BM25Config, BM25Index, BM25Statistics
from index.hybrid import weighted_fuse
from index.types import Hits
from runtime.errors import CorruptIndexError

_CHUNKS = "chunks.npz"
# The chunk and the document halves of the lexical voter weigh the same (Callan 1994's sum).
DOCUMENT_SHARE = 0.5


class DocumentBM25:
    """A BM25 index whose rows are documents, and the chunk rows each document holds."""

    def __init__(self, index: BM25Index, doc_ids: np.ndarray, starts: np.ndarray,
                 chunk_ids: np.ndarray) -> None:
        """doc_ids: sorted document ids; the chunks of doc_ids[i] are chunk_ids[starts[i]:starts[i+1]]."""
        self.index, self.doc_ids, self.starts, self.chunk_ids = index, doc_ids, starts, chunk_ids

    def __len__(self) -> int:
        return len(self.doc_ids)

    @classmethod
    def build(cls, chunk_ids: list[int] | np.ndarray, doc_ids: list[int] | np.ndarray,
              tokens: list[list[str]], config: BM25Config) -> "DocumentBM25":
        """Index each document as the concatenation of its chunks' tokens (in chunk-id order).

        Args:
            chunk_ids, doc_ids, tokens: one entry per chunk: its row id, its document, its
                BM25 tokens.
            config: the collection's BM25 parameters (the same as the chunk index's).
        """
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        if not (len(chunk_ids) == len(doc_ids) == len(tokens)):
            raise ValueError("DocumentBM25.build: one document id and token list per chunk")
        order, documents, starts = _by_document(chunk_ids, doc_ids)
        texts = [[token for at in order[starts[i]:starts[i + 1]] for token in tokens[at]]
                 for i in range(len(documents))]
        index = BM25Index(config)
        index.index(texts, documents)
        return cls(index, documents, starts, chunk_ids[order])

    @classmethod
    def from_chunk_index(cls, chunks: BM25Index, document_of: dict[int, int]) -> "DocumentBM25":
        """The same documents from the chunk index's own counts (no tokenising again; the
        chunk index must hold term counts, as every index since their format does).

        Args:
            chunks: the collection's chunk BM25 index (ids are chunk row ids).
            document_of: chunk row id -> document id, for every chunk of the index.
        """
        chunk_ids = chunks.ids().astype(np.int64)
        doc_ids = np.asarray([document_of[int(i)] for i in chunk_ids.tolist()], dtype=np.int64)
        order, documents, starts = _by_document(chunk_ids, doc_ids)
        return cls(chunks.grouped(doc_ids), documents, starts, chunk_ids[order])

    def chunks_of(self, doc_id: int) -> np.ndarray:
        at = int(np.searchsorted(self.doc_ids, doc_id))
        if at == len(self.doc_ids) or self.doc_ids[at] != doc_id:
            return np.empty(0, dtype=np.int64)
        return self.chunk_ids[self.starts[at]:self.starts[at + 1]]

    def statistics(self, tokens: list[str]) -> BM25Statistics:
        """Document-level statistics of `tokens` (merged across shards for global scores)."""
        return self.index.statistics(tokens)

    def search(self, tokens: list[str], k: int, statistics: BM25Statistics | None = None) -> Hits:
        """The top-k documents (ids are document ids)."""
        if not tokens or not len(self):
            return Hits.empty()
        return self.index.search(tokens, k, statistics=statistics)

    def lend(self, documents: Hits, evidence: np.ndarray | None = None) -> Hits:
        """Each document's score given to its chunks (see `lend`), in the documents' order;
        vectorised over this index's arrays (hundreds of documents per search)."""
        ids = documents.ids.astype(np.int64)
        if not len(ids) or not len(self.doc_ids):
            return Hits.empty()
        at = np.minimum(np.searchsorted(self.doc_ids, ids), len(self.doc_ids) - 1)
        starts = self.starts[at]
        lengths = np.where(self.doc_ids[at] == ids, self.starts[at + 1] - starts, 0)  # unknown: none
        before = np.cumsum(lengths) - lengths  # where each document's chunks begin in the output
        positions = np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))
        return _lent_hits(self.chunk_ids[positions], lengths, documents.scores, evidence)

    def chunk_hits(self, tokens: list[str], k: int, statistics: BM25Statistics | None = None,
                   evidence: np.ndarray | None = None) -> Hits:
        """The chunks of the top-k documents (see `lend`), scored with their document's BM25."""
        return self.lend(self.search(tokens, k, statistics), evidence)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.index.save(directory)
        np.savez(directory / _CHUNKS, doc_ids=self.doc_ids, starts=self.starts, chunk_ids=self.chunk_ids)

    @classmethod
    def load(cls, directory: Path) -> "DocumentBM25":
        directory = Path(directory)
        index = BM25Index.load(directory)
        try:
            with np.load(directory / _CHUNKS) as data:
                doc_ids, starts, chunk_ids = data["doc_ids"], data["starts"], data["chunk_ids"]
        except (OSError, ValueError, KeyError) as error:
            raise CorruptIndexError(f"document BM25 at {directory} is unreadable ({error}); "
                                    "rebuild with codehop index --rebuild") from error
        if len(starts) != len(doc_ids) + 1 or int(starts[-1]) != len(chunk_ids) or len(index) != len(doc_ids):
            raise CorruptIndexError(f"document BM25 at {directory} is truncated: rebuild with codehop index --rebuild")
        return cls(index, doc_ids, starts, chunk_ids)


def _by_document(chunk_ids: np.ndarray, doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the chunks' order by document then chunk id, the sorted document ids, where each
    document's chunks start in that order, with the total at the end)."""
    order = np.lexsort((chunk_ids, doc_ids))
    documents, first = np.unique(doc_ids[order], return_index=True)
    return order, documents, np.append(first, len(order)).astype(np.int64)


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


def lexical_mix(chunks: Hits, documents_lent: Hits) -> Hits:
    """The chunk + document lexical voter: min-max each list, 0.5 each, a chunk missing from
    a list scoring 0 there (Callan 1994's combination of passage and document evidence)."""
    if not len(documents_lent):
        return chunks
    return weighted_fuse([chunks, documents_lent], [1.0 - DOCUMENT_SHARE, DOCUMENT_SHARE])

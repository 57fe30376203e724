"""BM25 over whole documents, lent to their chunks: the document half of the lexical voter.

A chunk is scored by BM25 on its own text only, so a page whose title, signature and
prose are split across chunks matches a question nowhere as well as it does as a whole.
Hybrid search's lexical voter mixes each chunk's own BM25 with its document's, half and
half (index.document_evidence, after Callan 1994; index.collection, `lexical =
"chunk+document"`).

A document's text for BM25 is the index tokens of all its chunks (each with its context
header), summed from the chunk index's own counts, so the document index always agrees with
the chunk index it was built beside.

    documents = DocumentBM25.from_chunk_index(chunk_index, {chunk_row_id: doc_id, ...})
    documents.chunk_hits(["groupby", "sum"], 100, evidence=candidate_chunk_ids)
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

from index.bm25 import BM25Config, BM25Index, BM25Statistics
from index.document_evidence import DocumentLayout, by_document
from index.types import Hits
from runtime.errors import CorruptIndexError

_CHUNKS = "chunks.npz"


class DocumentBM25:
    """A BM25 index whose rows are documents, and the chunk rows each document holds."""

    def __init__(self, index: BM25Index, layout: DocumentLayout) -> None:
        """index: BM25 rows with document ids; layout: the chunks of each document."""
        self.index, self.layout = index, layout

    def __len__(self) -> int:
        return len(self.layout)

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
        order, documents, starts, ordered = by_document(chunk_ids, doc_ids)
        texts = [[token for at in order[starts[i]:starts[i + 1]] for token in tokens[at]]
                 for i in range(len(documents))]
        index = BM25Index(config)
        index.index(texts, documents)
        return cls(index, DocumentLayout(documents, starts, ordered))

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
        return cls(chunks.grouped(doc_ids), DocumentLayout.of(chunk_ids, doc_ids))

    def chunks_of(self, doc_id: int) -> np.ndarray:
        return self.layout.chunks_of(doc_id)

    def statistics(self, tokens: list[str]) -> BM25Statistics:
        """Document-level statistics of `tokens` (merged across shards for global scores)."""
        return self.index.statistics(tokens)

    def search(self, tokens: list[str], k: int, statistics: BM25Statistics | None = None) -> Hits:
        """The top-k documents (ids are document ids)."""
        if not tokens or not len(self):
            return Hits.empty()
        return self.index.search(tokens, k, statistics=statistics)

    def lend(self, documents: Hits, evidence: np.ndarray | None = None) -> Hits:
        """Each document's score given to its chunks (index.document_evidence.lend)."""
        return self.layout.lend(documents, evidence)

    def chunk_hits(self, tokens: list[str], k: int, statistics: BM25Statistics | None = None,
                   evidence: np.ndarray | None = None) -> Hits:
        """The chunks of the top-k documents (see `lend`), scored with their document's BM25."""
        return self.lend(self.search(tokens, k, statistics), evidence)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.index.save(directory)
        self.layout.save(directory / _CHUNKS)

    @classmethod
    def load(cls, directory: Path) -> "DocumentBM25":
        directory = Path(directory)
        index = BM25Index.load(directory)
        layout = DocumentLayout.load(directory / _CHUNKS, "document BM25")
        if len(index) != len(layout):
            raise CorruptIndexError(f"document BM25 at {directory} is truncated: rebuild with codehop index --rebuild")
        return cls(index, layout)

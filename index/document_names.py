"""Name evidence for hybrid search: a document whose name the query says.

A page called `pandas.DataFrame.sum` is about `sum`; a paragraph titled "Scott Derrickson" is
about him; `index/collection.py` is about the collection. When a query says a document's name
(`df.sum()`, "Were Scott Derrickson and Ed Wood of the same nationality?", "how does the
collection commit?") that document is very likely what the question is about, yet BM25 gives
the name no more weight than any other occurrence of the word in a long page, and the
embedder none at all. So hybrid search lifts the fused score of every candidate chunk of a
document whose name the query says by a fixed share of the fused list's score range
(`CollectionConfig.name_weight`). The match is exact and binary: every named document gets
the same lift.

A document's name is the last part of its title (index.context.title_of): the file name
without its extension, a dotted API name's last part, without a trailing "(disambiguation)".
The query says it when its words appear in the query as consecutive words (words are runs of
letters, digits and underscores, so `reduce_sum` is one word and `pd.DataFrame.sum` is three).

    names = DocumentNames.of({1: "pandas~1/reference/api/pandas.dataframe.sum.txt",
                              2: "hotpotqa/Ed Wood (film)"})
    names.said("result = df.sum(axis=1)")  -> [1]
    names.said("Who directed Ed Wood?")     -> [2]

The lift's size (0.2 of the range) was chosen on HotpotQA's *train* questions
(data/multihop/hotpotqa_train.jsonl), as the middle of the shares within 0.5 NDCG@10 points of
the best (0.1-0.5 were; no other suite was looked at to choose it); docs/benchmarks.md reports
the suites it was then measured on.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from index.context import UNNAMED_PREFIX
from index.document_evidence import DocumentLayout
from index.types import Hits

# The share of the fused scores' range a named document's chunks are lifted by (module doc).
NAME_WEIGHT = 0.2
_WORD = re.compile(r"[a-z0-9_]+")
_DISAMBIGUATION = re.compile(r"\s*\([^()]*\)\s*$")
# Names of more words than this are never looked for (titles rarely run longer).
MAX_NAME_WORDS = 6


def document_name(path: str) -> tuple[str, ...]:
    """The words of a document's name (see the module doc); () when it has none.

    Examples: "numpy~1.22/reference/generated/numpy.linspace.txt" -> ("linspace",),
    "index/collection.py" -> ("collection",), "hotpotqa/Ed Wood (film)" -> ("ed", "wood").
    A text added without a path (its stand-in "text:<hash>") has none."""
    if path.startswith(UNNAMED_PREFIX):
        return ()
    last = path.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if " " not in last.strip():  # a file or API name: drop the extension, keep the last dotted part
        stem = last.rsplit(".", 1)[0] if "." in last.lstrip(".") else last
        last = stem.rsplit(".", 1)[-1] or stem
    words = tuple(_WORD.findall(_DISAMBIGUATION.sub("", last).lower()))
    return words if len(words) <= MAX_NAME_WORDS else ()


def said_phrases(query: str) -> set[tuple[str, ...]]:
    """Every run of up to MAX_NAME_WORDS consecutive words of the query."""
    words = _WORD.findall(query.lower())
    return {tuple(words[i:i + n]) for n in range(1, MAX_NAME_WORDS + 1) for i in range(len(words) - n + 1)}


class DocumentNames:
    """Which documents bear each name, and which chunks each document holds."""

    def __init__(self, by_name: dict[tuple[str, ...], np.ndarray], layout: DocumentLayout) -> None:
        self.by_name, self.layout = by_name, layout

    @classmethod
    def of(cls, paths: dict[int, str], chunk_documents: dict[int, int] | None = None) -> "DocumentNames":
        """From document id -> path, and chunk row id -> document id (None: no chunks known,
        only `said` can be asked)."""
        grouped: dict[tuple[str, ...], list[int]] = {}
        for doc_id, path in paths.items():
            name = document_name(path)
            if name:
                grouped.setdefault(name, []).append(int(doc_id))
        by_name = {name: np.asarray(sorted(ids), dtype=np.int64) for name, ids in grouped.items()}
        chunks = chunk_documents or {}
        layout = DocumentLayout.of(list(chunks), list(chunks.values()))
        return cls(by_name, layout)

    def said(self, query: str) -> np.ndarray:
        """The ids of the documents whose name `query` says, ascending."""
        found = [self.by_name[p] for p in said_phrases(query) if p in self.by_name]
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)

    def said_chunks(self, query: str) -> np.ndarray:
        """The chunk row ids of the documents whose name `query` says."""
        documents = self.said(query)
        if not len(documents) or not len(self.layout):
            return np.empty(0, dtype=np.int64)
        at = self.layout.position(documents)
        at = at[at >= 0]
        parts = [self.layout.chunk_ids[self.layout.starts[i]:self.layout.starts[i + 1]] for i in at.tolist()]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def lift_named(fused: Hits, named_chunks: Iterable[int] | np.ndarray, share: float) -> Hits:
    """`fused` with every chunk of `named_chunks` raised by `share` of the list's score range
    (max - min), re-ranked; ties keep the fused order. Unchanged when nothing is named."""
    named = np.asarray(named_chunks if isinstance(named_chunks, np.ndarray) else list(named_chunks),
                       dtype=np.int64)
    if share <= 0 or not len(fused) or not len(named):
        return fused
    hit = np.isin(fused.ids.astype(np.int64), named)
    if not hit.any():
        return fused
    spread = float(fused.scores.max() - fused.scores.min()) or 1.0
    scores = fused.scores.astype(np.float32) + np.float32(share * spread) * hit
    order = np.argsort(-scores, kind="stable")
    return Hits(fused.ids[order], scores[order])

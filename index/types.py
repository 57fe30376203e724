"""Frozen value types exchanged between chunkers, indexes, fusion and the pipeline.

Every retriever (BM25, flat, SPANN, PQ) answers with the same `Hits`, so fusion, TreeHop and
the RAG pipeline never care which backend answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """A span of a source document, the unit that is indexed and retrieved.

    `start_line`/`end_line` are 1-based and inclusive; `kind` tells which chunker made it
    ("passage", "block", "syntax", "abstract", "record").
    """

    text: str
    path: str
    start_line: int
    end_line: int
    kind: str = "passage"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hits:
    """Ranked integer ids with scores, best first. Higher score = more relevant."""

    ids: np.ndarray  # int64, shape (n,)
    scores: np.ndarray  # float32, shape (n,)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.scores):
            raise ValueError("Hits.ids and Hits.scores must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> "Hits":
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))

    def top(self, k: int) -> "Hits":
        return Hits(self.ids[:k], self.scores[:k])


@dataclass(frozen=True)
class SearchFilter:
    """Which chunks a search may return; a field left None admits every chunk.

    Args:
        path_prefix: the chunk's document path starts with this string (plain prefix, no glob).
        kind: the chunk kind ("passage", "block", "syntax", "abstract", "record", "text").
    """

    path_prefix: str | None = None
    kind: str | None = None

    @property
    def admits_everything(self) -> bool:
        return self.path_prefix is None and self.kind is None


@dataclass(frozen=True)
class SearchResult:
    """One retrieved chunk as users see it (CLI --json, REST, Python)."""

    id: str
    score: float
    path: str
    start_line: int
    end_line: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": self.score,
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "text": self.text,
            "metadata": self.metadata,
        }

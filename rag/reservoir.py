"""Memory Knowledge Reservoir and the Retriever Trigger.

Filtered knowledge is stored per namespace (a user, a project) in SQLite (WAL) with the
embedding of its title (the question it answered). Before retrieving, the trigger embeds the
new question and compares it with the stored titles: when at least `min_entries` entries have
cosine >= `threshold` (defaults 3 and 0.4, as in the four-module design), the pipeline answers
from those entries and skips retrieval.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlite_utils

from index.errors import CorruptIndexError, InvalidInputError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TriggerConfig:
    min_entries: int = 3
    threshold: float = 0.4
    max_entries: int = 5  # how many stored entries a reuse hands to the generator


@dataclass(frozen=True)
class KnowledgeEntry:
    id: int
    namespace: str
    title: str
    content: str
    source: str
    created: float


@dataclass
class TriggerDecision:
    reuse: bool
    matches: list[tuple[KnowledgeEntry, float]] = field(default_factory=list)
    seconds: float = 0.0


class Reservoir:
    """Knowledge entries with title embeddings, per namespace, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # One Reservoir serves one caller at a time, but a streamed REST answer resumes on
            # whichever worker thread is free, so the connection may not be pinned to one.
            self.db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
            self.db.enable_wal()
            self._ensure_schema()
        except Exception as error:  # sqlite3.DatabaseError and friends
            raise CorruptIndexError(f"knowledge reservoir {path} is unreadable ({error}); delete it") from error
        self.path = path

    def _ensure_schema(self) -> None:
        meta = self.db["reservoir_meta"]
        if not meta.exists():
            meta.insert({"key": "format_version", "value": str(FORMAT_VERSION)}, pk="key")
        version = next(meta.rows_where("key = ?", ["format_version"]))["value"]
        if int(version) != FORMAT_VERSION:
            raise CorruptIndexError(f"reservoir format {version}, expected {FORMAT_VERSION}")
        if not self.db["knowledge"].exists():
            self.db["knowledge"].create({"id": int, "namespace": str, "title": str, "content": str,
                                         "source": str, "vector": bytes, "created": float}, pk="id")
            self.db["knowledge"].create_index(["namespace"])

    def add(self, namespace: str, title: str, content: str, source: str, vector: np.ndarray) -> int:
        if not namespace or not title.strip():
            raise InvalidInputError("a knowledge entry needs a namespace and a title")
        row = {"namespace": namespace, "title": title, "content": content, "source": source,
               "vector": np.asarray(vector, np.float32).tobytes(), "created": time.time()}
        with self.db.conn:
            return self.db["knowledge"].insert(row).last_pk

    def entries(self, namespace: str) -> list[KnowledgeEntry]:
        return [self._entry(r) for r in self.db["knowledge"].rows_where("namespace = ?", [namespace], order_by="id")]

    def matrix(self, namespace: str) -> tuple[list[KnowledgeEntry], np.ndarray]:
        rows = list(self.db["knowledge"].rows_where("namespace = ?", [namespace], order_by="id"))
        if not rows:
            return [], np.empty((0, 0), np.float32)
        return [self._entry(r) for r in rows], np.stack([np.frombuffer(r["vector"], np.float32) for r in rows])

    def clear(self, namespace: str) -> None:
        with self.db.conn:
            self.db["knowledge"].delete_where("namespace = ?", [namespace])

    @staticmethod
    def _entry(row: dict) -> KnowledgeEntry:
        return KnowledgeEntry(row["id"], row["namespace"], row["title"], row["content"], row["source"], row["created"])

    def close(self) -> None:
        self.db.close()


class RetrieverTrigger:
    """Decides whether a question can be answered from the reservoir instead of retrieval."""

    def __init__(self, reservoir: Reservoir, embedder, config: TriggerConfig = TriggerConfig()) -> None:
        self.reservoir = reservoir
        self.embedder = embedder
        self.config = config

    def check(self, namespace: str, question: str) -> TriggerDecision:
        start = time.perf_counter()
        entries, vectors = self.reservoir.matrix(namespace)
        if len(entries) < self.config.min_entries:
            return TriggerDecision(False, [], time.perf_counter() - start)
        sims = vectors @ self.embedder.encode_query(question)
        order = np.argsort(-sims, kind="stable")
        matches = [(entries[i], float(sims[i])) for i in order if sims[i] >= self.config.threshold]
        reuse = len(matches) >= self.config.min_entries
        return TriggerDecision(reuse, matches[: self.config.max_entries], time.perf_counter() - start)

    def remember(self, namespace: str, question: str, content: str, source: str) -> int:
        return self.reservoir.add(namespace, question, content, source, self.embedder.encode_query(question))

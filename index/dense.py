"""The dense-index interface every backend (flat, spann, pq) implements, and its factory.

Vectors are float32, L2-normalised by the embedder, so inner product = cosine; ids are int64
row ids owned by the Collection. Scores in `Hits` are inner products (higher = better).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from index.types import Hits

DENSE_KINDS = ("flat", "spann", "pq")


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


def _backend(kind: str):
    import importlib

    from index.errors import InvalidInputError

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

"""Exact inner-product search over every vector (the `flat` DenseIndex backend).

The oracle SPANN and PQ are measured against: a dense (n, d) float32 matrix and an int64 id
map; a query is one matrix product and an `argpartition`. Brute force is the right tool up to
a few hundred thousand MiniLM vectors on a CPU (faiss IndexFlatIP does the same arithmetic).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from index.dense import check_dim, checked_batch, checked_queries, exact_search, top_of_scores
from runtime.errors import CorruptIndexError, InvalidInputError
from index.types import Hits

FORMAT_VERSION = 1
_META, _IDS, _VECTORS = "flat_meta.json", "flat_ids.npy", "flat_vectors.npy"


@dataclass(frozen=True)
class FlatConfig:
    """Flat search has nothing to tune; the config exists so every backend looks alike."""

    query_batch: int = 256  # queries per matrix product (bounds the (batch, n) score matrix)


class FlatIndex:
    """Brute-force inner-product index with int64 ids; implements `index.dense.DenseIndex`."""

    kind = "flat"

    def __init__(self, dim: int, config: FlatConfig | None = None) -> None:
        self.dim = check_dim(dim)
        self.config = config or FlatConfig()
        self._ids = np.empty(0, dtype=np.int64)
        self._vectors = np.empty((0, self.dim), dtype=np.float32)

    @classmethod
    def create(cls, dim: int, config: FlatConfig | None = None) -> "FlatIndex":
        return cls(dim, config)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add `vectors` (n, dim) under new int64 `ids` (n,)."""
        ids, vectors = checked_batch("FlatIndex", ids, vectors, self.dim, self._ids)
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors])

    def delete(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        self._ids, self._vectors = self._ids[keep], self._vectors[keep]

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        """Top-k ids by inner product for each query row, best first (ties: lower row first)."""
        queries = checked_queries(queries, self.dim, k)
        return exact_search(queries, self._vectors, self._ids, k, self.config.query_batch)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """One query's inner product with every stored vector, aligned with `ids` (callers
        that need more than the top k, e.g. each document's sum over its chunks)."""
        return (checked_queries(query, self.dim, 1)[:1] @ self._vectors.T)[0]  # exact_search's arithmetic

    def top(self, scores: np.ndarray, k: int) -> Hits:
        """The top k of `scores` from `scores()`, as `search` returns them."""
        return top_of_scores(scores, self._ids, k)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for `ids` (all must be present)."""
        position = {int(i): n for n, i in enumerate(self._ids)}
        try:
            return self._vectors[[position[int(i)] for i in ids]]
        except KeyError as error:
            raise InvalidInputError(f"id {error.args[0]} is not in the index") from error

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / _IDS, self._ids)
        np.save(directory / _VECTORS, self._vectors)
        meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "n": len(self),
                "config": asdict(self.config)}
        (directory / _META).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> "FlatIndex":
        directory = Path(directory)
        try:
            meta = json.loads((directory / _META).read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise CorruptIndexError(
                    f"flat index at {directory} has format {meta.get('format_version')}, expected "
                    f"{FORMAT_VERSION}: rebuild it (codehop index --rebuild)"
                )
            index = cls(int(meta["dim"]), FlatConfig(**meta.get("config", {})))
            ids = np.load(directory / _IDS)
            vectors = np.load(directory / _VECTORS)
        except CorruptIndexError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
            raise CorruptIndexError(
                f"flat index at {directory} is unreadable ({type(error).__name__}: {error}); "
                "rebuild it (codehop index --rebuild)"
            ) from error
        if ids.shape != (meta["n"],) or vectors.shape != (meta["n"], index.dim):
            raise CorruptIndexError(f"flat index at {directory} is truncated: rebuild it")
        index._ids, index._vectors = ids.astype(np.int64), vectors.astype(np.float32)
        return index

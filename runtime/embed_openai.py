"""The "openai" embedding backend: an OpenAI-compatible server's `/v1/embeddings`.

Ollama, vLLM, llama.cpp's server, OpenAI or another codehop embed; texts go in batches of at most
`batch_size` (adapted to the server's speed, see `RemoteEmbeddings`), and the vectors are
L2-normalised here, since not every server normalises them.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from runtime.errors import ModelServerError
from runtime.openai_http import OpenAIClient, OpenAIEndpoint

_log = logging.getLogger(__name__)


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

    @classmethod
    def create(cls, config, resolved=None) -> "RemoteEmbeddings":
        """From an `EmbedderConfig` (its `endpoint`; the server resolves the model name)."""
        return cls(config.endpoint, config.batch_size)

    @property
    def loaded(self) -> bool:
        """Whether the server has answered once (its vector size is known)."""
        return self.known_dim is not None

    @property
    def slice_size(self) -> int:
        """Texts per cache commit of `Embedder.encode`: one request, each committed as it
        arrives (a slow request may be the one that fails; a rerun must not ask again)."""
        return self.batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.embed(texts)

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

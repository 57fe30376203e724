"""The "sentence-transformers" embedding backend (runtime.embed_torch): torch, one model per
process, truncation per encoder."""

import numpy as np
import pytest

from runtime.embed import Embedder, EmbedderConfig

pytestmark = pytest.mark.slow
TORCH = dict(backend="sentence-transformers")


def test_batching_does_not_change_vectors():
    texts = [f"sentence number {i} about sorting lists" for i in range(9)]
    one_by_one = np.stack([Embedder(EmbedderConfig(batch_size=1, **TORCH)).encode([t])[0] for t in texts])
    batched = Embedder(EmbedderConfig(batch_size=8, **TORCH)).encode(texts)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)


def test_truncation_is_per_encoder_although_the_model_is_shared():
    long_text = "sqlite write-ahead logging " * 10 + "but the ending is about bananas " * 20
    plain = Embedder(EmbedderConfig(**TORCH))  # no cache: every call reaches the model
    short = Embedder(EmbedderConfig(max_seq_length=16, **TORCH))
    other = Embedder(EmbedderConfig(batch_size=4, **TORCH))
    full_before = plain.encode([long_text])[0]
    truncated = short.encode([long_text])[0]
    full_after = plain.encode([long_text])[0]
    assert short.encoder().model is plain.encoder().model is other.encoder().model  # one per process
    assert float(truncated @ full_before) < 0.99
    np.testing.assert_allclose(full_after, full_before, atol=1e-5)  # no leaked limit

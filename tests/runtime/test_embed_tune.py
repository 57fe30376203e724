"""Contrastive fine-tuning of the shipped MiniLM (runtime.embed_tune), on real prose pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.embed import Embedder, EmbedderConfig
from runtime.embed_tune import TUNE_RECORD, TuneConfig, tune_embedder, tuned_from, write_tune_record
from runtime.resolver import DEFAULT_EMBEDDING_MODEL, resolve_model
from index.pseudo_pairs import TrainingPair


def hotpot_pairs(shared_data, count: int) -> list[TrainingPair]:
    """(first sentence, the rest of its paragraph) from HotpotQA training paragraphs."""
    pairs, seen = [], set()
    with open(shared_data / "multihop" / "hotpotqa_train.jsonl", encoding="utf-8") as handle:
        for line in handle:
            context = json.loads(line)["context"]
            for title, sentences in zip(context["title"], context["sentences"]):
                if title in seen or len(sentences) < 3:
                    continue
                seen.add(title)
                pairs.append(TrainingPair(sentences[0].strip(), f"{title}\n" + " ".join(sentences[1:])))
                if len(pairs) == count:
                    return pairs
    return pairs


def contrastive_loss(model_dir: str, pairs: list[TrainingPair]) -> float:
    """InfoNCE of each query against all passages (scale 20), as the training loss computes it."""
    embedder = Embedder(EmbedderConfig(model=model_dir, backend="sentence-transformers",
                                       max_seq_length=64))
    queries = np.stack([embedder.encode_query(p.query) for p in pairs])
    passages = embedder.encode([p.positive for p in pairs])
    logits = 20.0 * queries @ passages.T
    logits -= logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-np.mean(np.diag(log_softmax)))


@pytest.fixture(scope="module")
def tuned(shared_data, tmp_path_factory):
    pairs = hotpot_pairs(shared_data, 32)
    base = resolve_model(DEFAULT_EMBEDDING_MODEL).location
    out = tmp_path_factory.mktemp("tune") / "tuned-minilm"
    steps = []
    result = tune_embedder(base, pairs, TuneConfig(epochs=2, batch_size=16, learning_rate=1e-4,
                                                   max_seq_length=48, threads=1),
                           out, on_progress=lambda s, n, loss: steps.append((s, n)),
                           tuned_from_name=DEFAULT_EMBEDDING_MODEL)
    return pairs, base, result, steps


def test_training_lowers_the_contrastive_loss_on_its_pairs(tuned):
    pairs, base, result, steps = tuned
    assert result.steps == 4 and steps[-1] == (4, 4)  # 32 pairs / 16 per batch, 2 epochs
    before, after = contrastive_loss(base, pairs), contrastive_loss(str(result.model_dir), pairs)
    print(f"contrastive loss {before:.3f} -> {after:.3f}")
    assert after < 0.8 * before, (before, after)


def test_the_tuned_directory_is_a_model_that_records_its_base(tuned):
    _, _, result, _ = tuned
    assert tuned_from(str(result.model_dir)) == DEFAULT_EMBEDDING_MODEL
    assert tuned_from(resolve_model(DEFAULT_EMBEDDING_MODEL).location) is None  # not a tune
    vectors = Embedder(EmbedderConfig(model=str(result.model_dir),
                                      backend="sentence-transformers")).encode(["a", "b c"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    leftovers = [p.name for p in result.model_dir.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_the_record_is_replaced_whole_and_must_name_the_base(tuned):
    _, _, result, _ = tuned
    write_tune_record(result.model_dir, {"tuned_from": "x", "report": {"pairs": 1}})
    assert json.loads((result.model_dir / TUNE_RECORD).read_text())["report"] == {"pairs": 1}
    with pytest.raises(ValueError, match="tuned from"):
        write_tune_record(result.model_dir, {"report": {}})
    write_tune_record(result.model_dir, {"tuned_from": DEFAULT_EMBEDDING_MODEL})


def test_settings_that_cannot_train_are_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        TuneConfig(batch_size=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        tune_embedder(resolve_model(DEFAULT_EMBEDDING_MODEL).location,
                      [TrainingPair("q", "p")], TuneConfig(batch_size=4), tmp_path / "m")

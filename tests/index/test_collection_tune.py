"""`codehop tune` on a collection (index.collection_tune): train, check, switch, and stay safe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index.collection import Collection
from index.collection_config import CollectionConfig
from index.collection_tune import TuneSettings, tune_collection
from index.pseudo_pairs import PairConfig
from runtime.embed import Embedder, EmbedderConfig
from runtime.embed_tune import TuneConfig, tuned_from
from runtime.errors import InvalidInputError, ModelNotFoundError
from runtime.resolver import DEFAULT_EMBEDDING_MODEL

BASE = CollectionConfig(embedding_backend="sentence-transformers")


def _paragraphs(shared_data, count: int) -> dict[str, str]:
    """HotpotQA training paragraphs, one sentence a line, by wiki title."""
    found: dict[str, str] = {}
    with open(shared_data / "multihop" / "hotpotqa_train.jsonl", encoding="utf-8") as handle:
        for line in handle:
            context = json.loads(line)["context"]
            for title, sentences in zip(context["title"], context["sentences"]):
                if title not in found and len(sentences) >= 3:
                    found[title] = "\n".join(s.strip() for s in sentences)
                if len(found) == count:
                    return found
    return found


@pytest.fixture()
def collection(shared_data, tmp_path):
    paragraphs = _paragraphs(shared_data, 90)
    with Collection.open(tmp_path / "ws", "wiki", config=BASE) as c:
        c.add_texts(list(paragraphs.values()), paths=[f"wiki/{t}.txt" for t in paragraphs])
    return tmp_path / "ws"


def _small(**training) -> TuneSettings:
    return TuneSettings(pairs=PairConfig(max_pairs=80),
                        training=TuneConfig(batch_size=8, max_seq_length=32, threads=1, **training),
                        force=True)


def _dense_matches(c: Collection, embedder: Embedder) -> float:
    """Share of chunks whose own vector under `embedder` finds them first with score ~1."""
    texts = c.all_indexed_texts()[:10]
    hits = c.search_vectors(embedder.encode(texts), k=1)
    return float(np.mean([h[0].score > 0.999 for h in hits]))


def test_tune_switches_the_collection_to_its_tuned_model_and_searches_with_it(collection, tmp_path):
    settings = _small()
    settings = TuneSettings(settings.pairs, settings.training, models_dir=tmp_path / "models", force=True)
    with Collection.open(collection, "wiki") as c:
        report = tune_collection(c, settings)
    assert report.switched and report.pairs + report.heldout <= 80 and report.heldout >= 8
    assert np.isfinite(report.heldout_mrr_base) and np.isfinite(report.heldout_mrr_tuned)
    assert tuned_from(report.model_dir) == DEFAULT_EMBEDDING_MODEL
    # the settings still name the base model: a tune of it is accepted, searched with the tune
    with Collection.open(collection, "wiki",
                         expected_embedder=(DEFAULT_EMBEDDING_MODEL, None)) as c:
        assert c.config.embedding_model == report.model_dir
        assert c.search("Which film did he direct?", k=3, mode="dense")
        tuned = Embedder(EmbedderConfig(model=report.model_dir, backend="sentence-transformers"))
        base = Embedder(EmbedderConfig(model=DEFAULT_EMBEDDING_MODEL, backend="sentence-transformers"))
        assert _dense_matches(c, tuned) == 1.0
        assert _dense_matches(c, base) == 0.0  # no base vector is left in the index


def test_a_tune_worse_on_held_out_pairs_is_not_switched_to(collection, tmp_path):
    settings = TuneSettings(PairConfig(max_pairs=80),
                            TuneConfig(batch_size=8, max_seq_length=32, threads=1, learning_rate=0.5),
                            models_dir=tmp_path / "models")
    with Collection.open(collection, "wiki") as c:
        report = tune_collection(c, settings)
    assert not report.switched
    assert report.heldout_mrr_tuned < report.heldout_mrr_base
    assert "held-out MRR" in report.reason
    with Collection.open(collection, "wiki") as c:
        assert c.config.embedding_model == DEFAULT_EMBEDDING_MODEL


def test_a_switch_killed_before_its_commit_is_repaired_with_the_new_model(collection, tmp_path,
                                                                           monkeypatch):
    model_dir = str(tmp_path / "copy")
    import shutil
    from runtime.resolver import resolve_model
    shutil.copytree(resolve_model(DEFAULT_EMBEDDING_MODEL).location, model_dir)
    with Collection.open(collection, "wiki") as c:
        def killed(*args, **kwargs):
            raise KeyboardInterrupt("killed mid-switch")
        monkeypatch.setattr(Collection, "rebuild", killed)
        with pytest.raises(KeyboardInterrupt):
            c.switch_embedder(model_dir, "sentence-transformers")
        monkeypatch.undo()
    with Collection.open(collection, "wiki") as c:
        assert c.config.embedding_model == model_dir
        assert c.search("film", k=2, mode="dense")  # repaired from the cached vectors
        assert c.dense_fraction() == 1.0


def test_an_unusable_new_model_leaves_the_collection_as_it_was(collection):
    with Collection.open(collection, "wiki") as c:
        with pytest.raises(ModelNotFoundError):
            c.switch_embedder("/no/such/model", "sentence-transformers")
        assert c.config.embedding_model == DEFAULT_EMBEDDING_MODEL
        assert c.search("film", k=2, mode="dense")


def test_remote_embedders_and_tiny_collections_are_refused_with_a_reason(tmp_path):
    with Collection.open(tmp_path / "ws", "few", config=BASE) as c:
        c.add_texts(["One short sentence that is long enough to count here.\nAnd another line of prose."])
        with pytest.raises(InvalidInputError, match="pseudo-query pairs"):
            tune_collection(c, _small())

import json

import pytest

from index.bm25 import BM25Config
from index.collection_config import INDEX_KEYS, CollectionConfig, IndexReport
from runtime.errors import InvalidInputError
from index.flat import FlatConfig
from index.ingest import IngestConfig


def test_json_roundtrip_including_a_backend_config():
    config = CollectionConfig(dense="flat", dense_config=FlatConfig(query_batch=7),
                              bm25=BM25Config(k1=1.5, idf="okapi"), ingest=IngestConfig(passage_chars=300),
                              fusion="weighted", dense_weight=0.25)
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["dense_config"]["class"] == "index.flat:FlatConfig"
    assert CollectionConfig.from_dict(stored) == config
    assert CollectionConfig.from_dict(CollectionConfig().to_dict()) == CollectionConfig()
    assert set(INDEX_KEYS) <= set(stored)


def test_the_default_backend_yields_to_what_a_collection_recorded():
    recorded = CollectionConfig(embedding_backend="sentence-transformers")
    assert CollectionConfig().embedding_backend is None  # not chosen
    assert CollectionConfig().resolved().embedding_backend == "onnx-int8"  # a new collection
    assert CollectionConfig().resolved(recorded).embedding_backend == "sentence-transformers"
    explicit = CollectionConfig(embedding_backend="static", context=True)
    assert explicit.resolved(recorded) is explicit  # a choice is kept (and checked by Collection.open)
    # context headers: on for a new collection, as recorded for an existing one, off for one
    # stored before they existed (so opening it never re-embeds it)
    assert CollectionConfig().resolved().context is True
    assert CollectionConfig().resolved(CollectionConfig(context=False)).context is False
    before_context = CollectionConfig().to_dict()
    del before_context["context"]
    assert CollectionConfig.from_dict(before_context).context is False
    # another model is a new embedding: it gets the default, not the old model's backend
    static = CollectionConfig(embedding_backend="static", embedding_model="/models/tiny-static")
    assert CollectionConfig().resolved(static).embedding_backend == "onnx-int8"
    # collections stored before the backend was recorded were built with sentence-transformers
    legacy = CollectionConfig().to_dict()
    del legacy["embedding_backend"]
    assert CollectionConfig.from_dict(legacy).embedding_backend == "sentence-transformers"


@pytest.mark.parametrize("kwargs", [{"dense": "annoy"}, {"fusion": "max"}, {"dense_weight": 1.5},
                                    {"candidates": 0}, {"rrf_k": 0}])
def test_bad_values_are_rejected(kwargs):
    with pytest.raises(InvalidInputError):
        CollectionConfig(**kwargs)


def test_report_summary_names_every_count():
    report = IndexReport("docs", files=4, added=1, updated=1, unchanged=1, removed=1,
                         skipped=[("/x.bin", "binary file")], chunks_added=5, chunks_removed=2,
                         chunks_embedded=3, documents=3, chunks=9, elapsed_s=1.25)
    assert report.summary() == (
        "4 files: 1 added, 1 updated, 1 unchanged, 1 removed, 1 skipped; +5/-2 chunks "
        "(3 embedded); collection 'docs' now has 3 documents, 9 chunks [1.2 s]")

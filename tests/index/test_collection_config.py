import json

import pytest

from index.bm25 import BM25Config
from index.collection_config import INDEX_KEYS, CollectionConfig, IndexReport
from index.errors import InvalidInputError
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

"""A sharded collection ranks as the unsharded one: 200 queries over real documentation pages,
BM25 scored with global statistics (ids and scores to 1e-6), dense and hybrid merged exactly."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from index.collection import Collection, CollectionConfig
from index.sharded import ShardedCollection, shard_of, shard_of_id, sharding
from index.types import SearchFilter
from runtime.errors import InvalidInputError, NotFoundError
from tests.static_model import tiny_static_model

PAGES = 600


@pytest.fixture(scope="module")
def pages(shared_data) -> dict[str, str]:
    """The first 600 devdocs pages (first 1,500 characters each), by a path of their own."""
    out = {}
    with gzip.open(shared_data / "coderag" / "devdocs.jsonl.gz", "rt") as handle:
        for line in handle:
            row = json.loads(line)
            text = row["text"][:1500].strip()
            if text:
                out[f"devdocs/{len(out):04d}.txt"] = text
            if len(out) == PAGES:
                break
    return out


@pytest.fixture(scope="module")
def queries(pages) -> list[str]:
    """200 seeded queries: 2-4 words drawn from the pages (some rare, some common)."""
    rng = random.Random(7)
    words = [w for text in pages.values() for w in text.split() if w.isalpha() and len(w) > 2]
    return [" ".join(rng.sample(words, rng.randint(2, 4))) for _ in range(200)]


@pytest.fixture(scope="module")
def built(tmp_path_factory, pages):
    """(unsharded, 3-shard) collections of the same pages, with the tiny static embedder."""
    root = tmp_path_factory.mktemp("sharded")
    model = tiny_static_model(root / "tiny")
    config = CollectionConfig(embedding_backend="static", embedding_model=str(model), fusion="weighted",
                              dense_weight=0.6)
    paths, texts = list(pages), list(pages.values())
    single = Collection.open(root / "one", "docs", config=config)
    single.add_texts(texts, paths)
    sharded = ShardedCollection.open(root / "three", "docs", shards=3, config=config)
    sharded.add_texts(texts, paths)
    yield single, sharded
    single.close()
    sharded.close()


def _by_path(results):
    return [(r.path, round(r.score, 6)) for r in results]


def _same_ranking(expected, got, atol=1e-6):
    """Equal scores position by position, and the same documents within each run of equal
    scores (ties across shards may come back in another order); the last run may be cut."""
    assert len(expected) == len(got)
    np.testing.assert_allclose([r.score for r in got], [r.score for r in expected], atol=atol, rtol=0)
    last = expected[-1].score if expected else None
    groups_expected: dict[float, set] = {}
    groups_got: dict[float, set] = {}
    for results, groups in ((expected, groups_expected), (got, groups_got)):
        for r in results:
            groups.setdefault(round(r.score, 5), set()).add(r.path)
    for score, paths in groups_expected.items():
        if last is not None and score == round(last, 5):
            continue
        assert groups_got.get(score) == paths, score


def test_documents_spread_over_the_shards_by_path_hash(built, pages):
    single, sharded = built
    counts = sharded.stats()["shard_chunks"]
    assert sum(counts) == len(single) == len(pages) and min(counts) > 100
    for i, collection in enumerate(sharded.shards):
        paths = set(collection.store.documents("docs"))
        assert paths and all(shard_of(p, 3) == i for p in paths)
        ids = collection.store.chunk_ids("docs")
        assert all(shard_of_id(row) == i for row in ids)
    assert sharding(sharded.workspace, "docs") == 3


def test_bm25_top10_equals_unsharded_on_200_queries(built, queries):
    single, sharded = built
    compared = 0
    for query in queries:
        expected = single.search(query, k=10, mode="bm25")
        got = sharded.search(query, k=10, mode="bm25")
        _same_ranking(expected, got)
        compared += bool(expected)
    assert compared > 190  # nearly every query finds something


def test_dense_and_hybrid_equal_unsharded(built, queries):
    single, sharded = built
    for query in queries[:60]:
        for mode in ("dense", "hybrid"):
            expected = single.search(query, k=10, mode=mode)
            got = sharded.search(query, k=10, mode=mode)
            _same_ranking(expected, got, atol=1e-5)


def test_local_statistics_would_rank_otherwise(built, queries):
    """The check above has teeth: each shard's own idf and average length give other scores."""
    single, sharded = built
    from index.tokenize import tokenize

    differs = 0
    for query in queries[:50]:
        expected = {r.path: r.score for r in single.search(query, k=len(single), mode="bm25")}
        tokens = tokenize(query, sharded.config.tokenizer)
        for shard in sharded.shards:
            hits = shard.bm25_search(tokens, 10)  # this shard's statistics alone
            rows = shard.store.get_chunks(hits.ids.tolist())
            if any(abs(expected[rows[int(i)].path] - s) > 1e-4 for i, s in zip(hits.ids, hits.scores)):
                differs += 1
                break
    assert differs > 40


def test_rounds_bm25_and_dense_need_no_row_round(built, queries):
    """The candidates carry the rows of each shard's top k: a bm25 or dense search takes two
    rounds (statistics, candidates), a dense one without BM25 statistics one."""
    _, sharded = built
    for query in queries[:20]:
        outcome = sharded.search_outcome(query, k=10, mode="bm25")
        assert outcome.rounds == (2 if outcome.results else 1) or not outcome.results  # stop words only: 1
        assert sharded.search_outcome(query, k=10, mode="dense").rounds == 1
        assert sharded.search_outcome(query, k=10, mode="hybrid").rounds <= 3


def test_filters_group_by_and_get_chunks(built):
    single, sharded = built
    query = "function returns the value"
    prefix = SearchFilter(path_prefix="devdocs/00")
    _same_ranking(single.search(query, k=10, mode="bm25", filters=prefix),
                  sharded.search(query, k=10, mode="bm25", filters=prefix))
    results = sharded.search(query, k=5, group_by="document")
    assert len({r.path for r in results}) == 5
    chunks = sharded.get_chunks([r.id for r in results])
    assert [c.path for c in chunks] == [r.path for r in results]


def test_writes_go_to_the_owning_shard(tmp_path, built):
    _, sharded = built
    config = sharded.config
    collection = ShardedCollection.open(tmp_path, "w", shards=2, config=config)
    ids = collection.add_texts(["alpha beta gamma", "delta epsilon"], ["a.txt", "b.txt"])
    for chunk_id, path in zip(ids, ["a.txt", "b.txt"]):
        assert shard_of_id(int(chunk_id.split(":")[0])) == shard_of(path, 2)
    assert collection.search("epsilon", k=1, mode="bm25")[0].path == "b.txt"
    assert collection.delete("b.txt") == 1
    assert collection.search("epsilon", k=1, mode="bm25") == []
    with pytest.raises(NotFoundError):
        collection.delete("b.txt")
    collection.close()
    with pytest.raises(InvalidInputError, match="re-sharding"):
        ShardedCollection.open(tmp_path, "w", shards=3)
    reopened = ShardedCollection.open(tmp_path, "w")
    assert len(reopened.shards) == 2 and len(reopened) == 1
    reopened.close()

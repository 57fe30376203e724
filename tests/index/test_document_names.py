"""Name evidence: documents whose name the query says are lifted in hybrid search
(index.document_names), by the same amount in a sharded collection."""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest

from index.collection import Collection, CollectionConfig
from index.document_names import DocumentNames, document_name, lift_named
from index.types import Chunk, Hits


@pytest.mark.parametrize("path, name", [
    ("pandas~1/reference/api/pandas.dataframe.sum.txt", ("sum",)),
    ("tensorflow~2.4/compat/v1/reduce_sum.txt", ("reduce_sum",)),
    ("index/collection.py", ("collection",)),
    ("hotpotqa/Ed Wood (film)", ("ed", "wood")),
    ("hotpotqa/St. Louis Cardinals", ("st", "louis", "cardinals")),
    ("python~3.9/library/heapq.txt#heapq.heappush", ("heapq",)),
    ("text:3f2a9c", ()),
])
def test_a_documents_name_is_the_last_part_of_its_title(path, name):
    assert document_name(path) == name


def test_a_query_says_a_name_as_consecutive_whole_words():
    names = DocumentNames.of({1: "api/pandas.dataframe.sum.txt", 2: "api/reduce_sum.txt",
                              3: "hotpotqa/Ed Wood (film)", 4: "hotpotqa/Wood"})
    assert names.said("result = df.sum(axis=1)").tolist() == [1]
    assert names.said("tf.reduce_sum(a, axis=0)").tolist() == [2]
    assert names.said("reduce the sum of a").tolist() == [1]  # 'reduce_sum' is one word, not said
    assert names.said("Who directed Ed Wood?").tolist() == [3, 4]
    assert names.said("Wood Ed").tolist() == [4]  # the words of a name in its order only
    assert names.said("nothing named here").tolist() == []


def test_said_chunks_are_every_chunk_of_the_named_documents():
    names = DocumentNames.of({1: "a/sum.txt", 2: "a/mean.txt"}, {10: 1, 11: 1, 12: 2})
    assert sorted(names.said_chunks("x.sum()").tolist()) == [10, 11]
    assert names.said_chunks("x.max()").tolist() == []


def test_lift_raises_named_chunks_by_a_share_of_the_range_and_reranks():
    fused = Hits(np.array([5, 6, 7, 8], np.int64), np.array([0.9, 0.8, 0.7, 0.1], np.float32))
    lifted = lift_named(fused, np.array([7, 99]), 0.2)  # 0.7 + 0.2 * (0.9 - 0.1) = 0.86
    assert lifted.ids.tolist() == [5, 7, 6, 8]
    assert lifted.scores[1] == pytest.approx(0.86)
    assert lift_named(fused, np.array([7]), 0.0) is fused
    assert lift_named(fused, np.array([42]), 0.2) is fused
    tie = lift_named(Hits(np.array([1, 2], np.int64), np.array([0.5, 0.3], np.float32)), np.array([2]), 0.5)
    assert tie.ids.tolist() == [1, 2] and tie.scores[1] == pytest.approx(0.4)  # below still: 0.3 + 0.1


PAGES = {  # the page that says "sum" most is not the page about sum
    "api/sum.txt": ["Add up the values of each row over the requested axis."],
    "api/total.txt": ["The sum of the values of each row: the row's sum."],
    "api/table.txt": ["A table holds rows of values."],
    "api/cell.txt": ["Each cell holds one of the values."],
    "api/toaster.txt": ["Toaster crumbs tray: empty it weekly."],
}


def _open(tmp_path, name_weight: float) -> Collection:
    # BM25 alone decides besides the lift (dense weight 0), titles not in the indexed text
    static = pytest.importorskip("tests.static_model").tiny_static_model(tmp_path / "static")
    config = CollectionConfig(embedding_backend="static", embedding_model=str(static), context=False,
                              fusion="weighted", dense_weight=0.0, name_weight=name_weight)
    return Collection.open(tmp_path / f"ws-{name_weight}", config=config)


def _chunks(path: str, texts: list[str]) -> list[Chunk]:
    return [Chunk(t, path, i + 1, i + 1) for i, t in enumerate(texts)]


def test_hybrid_ranks_the_page_a_code_query_names_first(tmp_path):
    pytest.importorskip("model2vec")
    query = "result = df.sum()\nthe values of each row added up"  # sum.txt: 0.70 of total.txt's 1.0
    with _open(tmp_path, 0.0) as plain:
        plain.add_documents({p: _chunks(p, t) for p, t in PAGES.items()})
        assert plain.search(query, k=1, mode="hybrid")[0].path == "api/total.txt"
    with _open(tmp_path, 0.5) as named:
        named.add_documents({p: _chunks(p, t) for p, t in PAGES.items()})
        assert named.search(query, k=1, mode="hybrid")[0].path == "api/sum.txt"
        assert named.search(query, k=1, mode="bm25")[0].path == "api/total.txt"  # single retrievers unchanged
        assert named.stats()["fusion"]["name_weight"] == 0.5


def test_names_follow_commits(tmp_path):
    pytest.importorskip("model2vec")
    with _open(tmp_path, 0.5) as collection:
        collection.add_documents({p: _chunks(p, t) for p, t in PAGES.items()})
        query = "result = df.sum()\nthe values of each row added up"
        assert collection.search(query, k=1)[0].path == "api/sum.txt"
        collection.delete("api/sum.txt")
        assert collection.search(query, k=1)[0].path == "api/total.txt"
        collection.add_documents({"api/mean.txt": _chunks("api/mean.txt", ["Averaged values per row."]),
                                  "api/average.txt": _chunks("api/average.txt", ["The values of each row, averaged."])})
        query = "result = df.mean()\nthe values of each row, averaged"  # says mean, not average
        assert collection.search(query, k=1, mode="bm25")[0].path == "api/average.txt"
        assert collection.search(query, k=1)[0].path == "api/mean.txt"


def test_sharded_hybrid_lifts_named_pages_as_the_unsharded_one(tmp_path, shared_data):
    """Pages named by number ("devdocs/0042.txt"): a query saying "0042" lifts that page's
    chunks by the same share of the same fused range on 3 shards as on one collection."""
    pytest.importorskip("model2vec")
    from index.sharded import ShardedCollection
    from tests.index.test_sharded import _same_ranking
    from tests.static_model import tiny_static_model

    texts = []
    with gzip.open(shared_data / "coderag" / "devdocs.jsonl.gz", "rt") as handle:
        for line in handle:
            text = json.loads(line)["text"][:800].strip()
            if text:
                texts.append(text)
            if len(texts) == 150:
                break
    paths = [f"devdocs/{i:04d}.txt" for i in range(len(texts))]
    config = CollectionConfig(embedding_backend="static", embedding_model=str(tiny_static_model(tmp_path / "m")),
                              fusion="weighted", dense_weight=0.6)
    with Collection.open(tmp_path / "one", "docs", config=config) as single, \
            ShardedCollection.open(tmp_path / "three", "docs", shards=3, config=config) as sharded:
        single.add_texts(texts, paths)
        sharded.add_texts(texts, paths)
        raised = 0
        for at in range(0, 150, 5):
            query = f"{texts[(at * 7) % 150].split()[0]} values {at:04d}"
            expected = single.search(query, k=10, mode="hybrid")
            _same_ranking(expected, sharded.search(query, k=10, mode="hybrid"), atol=1e-5)
            page = f"devdocs/{at:04d}.txt"
            lifted = {r.path: r.score for r in single.search(query, k=len(texts), mode="hybrid")}
            saved = single.config
            single.config = dataclasses.replace(saved, name_weight=0.0)
            try:
                unlifted = {r.path: r.score for r in single.search(query, k=len(texts), mode="hybrid")}
            finally:
                single.config = saved
            raised += lifted[page] > unlifted[page] + 1e-6
        assert raised == 30  # every named page was lifted

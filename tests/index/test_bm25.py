import gzip
import json

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from index.bm25 import BM25Config, BM25Index, okapi_idf
from runtime.errors import CorruptIndexError, InvalidInputError
from index.tokenize import tokenize

QUERIES = [
    "read csv file into dataframe", "plot a histogram with bins", "reshape numpy array",
    "def __init__ self", "random seed generator", "convert string to datetime", "sort values",
    "http request headers", "matrix multiplication", "open file for writing", "url routing view",
    "train test split", "gradient descent optimizer", "json decode error", "regular expression",
]


@pytest.fixture(scope="module")
def devdocs_tokens(shared_data):
    docs = []
    with gzip.open(shared_data / "coderag" / "devdocs.jsonl.gz", "rt") as handle:
        for line in handle:
            docs.append(json.loads(line)["text"][:2000])
            if len(docs) == 1500:
                break
    return [tokenize(doc) for doc in docs]


def _assert_same_ranking(ref_scores, hits, k=10):
    # Tie-tolerant: the i-th score must match, and every id must carry the reference score.
    order = np.argsort(-ref_scores, kind="stable")[:k]
    expected = ref_scores[order]
    expected = expected[expected > 0]
    np.testing.assert_allclose(hits.scores, expected, rtol=1e-6)
    np.testing.assert_allclose(ref_scores[hits.ids], hits.scores, rtol=1e-6)


def test_parity_with_rank_bm25_on_real_corpus(devdocs_tokens):
    reference = BM25Okapi(devdocs_tokens)
    ours = BM25Index()
    ours.index(devdocs_tokens)
    for query in QUERIES:
        tokens = tokenize(query)
        ref_scores = reference.get_scores(tokens)
        np.testing.assert_allclose(ours.scores(tokens), ref_scores, rtol=1e-6, atol=1e-9)
        _assert_same_ranking(ref_scores, ours.search(tokens, 10))


def test_parity_holds_for_other_parameters(devdocs_tokens):
    reference = BM25Okapi(devdocs_tokens, k1=1.2, b=0.5, epsilon=0.1)
    ours = BM25Index(BM25Config(k1=1.2, b=0.5, epsilon=0.1))
    ours.index(devdocs_tokens)
    tokens = tokenize("numpy array of zeros")
    np.testing.assert_allclose(ours.scores(tokens), reference.get_scores(tokens), rtol=1e-6)


def test_okapi_idf_floors_negative_values():
    idf = okapi_idf(np.array([1.0, 3.0]), 4, epsilon=0.25)
    assert idf[0] == pytest.approx(np.log(3.5 / 1.5))
    assert idf[1] == pytest.approx(0.25 * (np.log(3.5 / 1.5) + np.log(1.5 / 3.5)) / 2)


def test_lucene_idf_is_always_positive():
    docs = [["a", "b"], ["a"], ["a", "c"]]
    index = BM25Index(BM25Config(idf="lucene"))
    index.index(docs)
    assert (index.scores(["a"]) > 0).all()


def test_custom_ids_oov_and_empty_queries():
    index = BM25Index()
    index.index([["alpha", "beta"], ["gamma"], ["beta", "beta", "delta"]], ids=np.array([10, 20, 30]))
    hits = index.search(["beta"], k=5)
    assert set(hits.ids.tolist()) == {10, 30}
    assert len(index.search(["unknown"], k=5)) == 0
    assert len(index.search([], k=5)) == 0
    with pytest.raises(InvalidInputError):
        index.search(["beta"], k=0)


def test_empty_index_searches_to_nothing(tmp_path):
    index = BM25Index()
    index.index([])
    assert len(index.search(["x"])) == 0
    index.save(tmp_path / "bm25")
    assert len(BM25Index.load(tmp_path / "bm25")) == 0


def test_save_load_round_trip(tmp_path, devdocs_tokens):
    index = BM25Index()
    index.index(devdocs_tokens[:200], ids=np.arange(200, 400))
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    tokens = tokenize("array shape")
    np.testing.assert_array_equal(loaded.search(tokens).ids, index.search(tokens).ids)
    np.testing.assert_allclose(loaded.search(tokens).scores, index.search(tokens).scores)


def test_corrupt_or_missing_files_raise_clear_error(tmp_path):
    index = BM25Index()
    index.index([["a"], ["b"]])
    index.save(tmp_path / "bm25")
    (tmp_path / "bm25" / "bm25_meta.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="unreadable"):
        BM25Index.load(tmp_path / "bm25")
    with pytest.raises(CorruptIndexError):
        BM25Index.load(tmp_path / "nowhere")


def test_bad_config_rejected():
    with pytest.raises(InvalidInputError):
        BM25Config(idf="tfidf")
    with pytest.raises(InvalidInputError):
        BM25Config(b=2.0)


def _random_corpus(n=60, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    return [[str(w) for w in rng.choice(words, size=rng.integers(3, 30))] for _ in range(n)]


def test_lucene_idf_matches_bm25s_itself():
    import bm25s

    docs = _random_corpus()
    reference = bm25s.BM25(method="lucene")
    reference.index(docs, show_progress=False)
    ours = BM25Index(BM25Config(idf="lucene"))
    ours.index(docs)
    for query in (["w1", "w5", "w5"], ["w39"], ["w0", "w12", "nope"]):
        np.testing.assert_allclose(ours.scores(query), reference.get_scores(query), rtol=1e-5)


def test_add_and_delete_match_a_fresh_build_and_rank_bm25():
    docs = _random_corpus()
    index = BM25Index()
    index.index(docs[:40], ids=np.arange(40))
    index.add(docs[40:], ids=np.arange(40, 60))
    query = ["w1", "w5", "w5", "w33"]
    np.testing.assert_allclose(index.scores(query), BM25Okapi(docs).get_scores(query), rtol=1e-5)
    # Delete 10 documents and re-add 5 of them under new ids: as if built from the survivors.
    index.delete(np.arange(10))
    index.delete(np.array([999]))  # unknown ids are ignored
    index.add(docs[:5], ids=np.arange(60, 65))
    survivors = {i: docs[i] for i in range(10, 60)} | {60 + j: docs[j] for j in range(5)}
    fresh = BM25Index()
    fresh.index(list(survivors.values()), ids=np.array(list(survivors)))
    reference = BM25Okapi(list(survivors.values()))
    for q in (query, ["w7"], ["w0", "w39", "w12"]):
        np.testing.assert_allclose(index.scores(q), reference.get_scores(q), rtol=1e-5, atol=1e-6)
        a, b = index.search(q, 5), fresh.search(q, 5)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    with pytest.raises(InvalidInputError, match="new and unique"):
        index.add([["w1"]], ids=np.array([60]))


def test_search_leaves_out_excluded_ids():
    index = BM25Index()
    docs = [["alpha", "beta"], ["beta"], ["beta", "beta", "delta"], ["x"], ["y"], ["z"], ["v"], ["w"]]
    index.index(docs, ids=np.arange(10, 90, 10))
    assert set(index.search(["beta"], 5).ids.tolist()) == {10, 20, 30}
    assert set(index.search(["beta"], 5, exclude=np.array([20, 99])).ids.tolist()) == {10, 30}
    assert len(index.search(["beta"], 5, exclude=np.array([10, 20, 30]))) == 0


def test_updates_survive_save_and_load(tmp_path):
    docs = _random_corpus()
    index = BM25Index()
    index.index(docs[:30])
    index.delete(np.arange(5))
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    loaded.add(docs[30:], ids=np.arange(30, 60))
    index.add(docs[30:], ids=np.arange(30, 60))
    for q in (["w1", "w2"], ["w20"]):
        np.testing.assert_array_equal(loaded.search(q, 10).ids, index.search(q, 10).ids)
        np.testing.assert_allclose(loaded.scores(q), index.scores(q), rtol=1e-6)


def test_an_index_saved_without_counts_loads_read_only(tmp_path):
    index = BM25Index()
    index.index([["a", "b"], ["b", "c"], ["d"], ["e"]])
    index.save(tmp_path / "bm25")
    (tmp_path / "bm25" / "bm25_counts.npz").unlink()  # as written before updates existed
    old = BM25Index.load(tmp_path / "bm25")
    assert old.search(["c"]).ids.tolist() == [1]
    with pytest.raises(InvalidInputError, match="rebuild"):
        old.add([["d"]], ids=np.array([9]))

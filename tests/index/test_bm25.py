import gzip
import json

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from index.bm25 import BM25Config, BM25Index, okapi_idf
from index.errors import CorruptIndexError, InvalidInputError
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

"""The label-free dense weight: pseudo-queries move it away from a retriever that is noise."""

import numpy as np

from index.bm25 import BM25Config, BM25Index
from index.fusion_weight import (PRIOR_DENSE_WEIGHT, PseudoQuery, estimate, query_line,
                                 sample_pseudo_queries)
from index.tokenize import tokenize
from index.types import Hits

TOPICS = ["apple orchard harvest", "river canoe paddle", "violin concert orchestra",
          "volcano lava eruption", "galaxy telescope orbit", "bread oven flour",
          "chess opening gambit", "glacier snow avalanche", "soccer goal striker",
          "desert camel dune", "piano chord melody", "forest owl pine"]


def _corpus(documents: int = 60, chunks: int = 3, seed: int = 0):
    """Documents of `chunks` chunks; all chunks of a document share one topic's words."""
    rng = np.random.default_rng(seed)
    filler = "we note that this part says more about the matter at hand".split()
    texts, owner = [], []
    for doc in range(documents):
        words = TOPICS[doc % len(TOPICS)].split() + [f"name{doc}", f"tag{doc}"]
        for _ in range(chunks):
            picked = list(rng.choice(words, 4)) + list(rng.choice(filler, 4))
            rng.shuffle(picked)
            texts.append(" ".join(picked) + " and so on here")
            owner.append(doc)
    return texts, owner


def _search_with(texts, owner, dense_is_noise: bool, seed: int = 1):
    bm25 = BM25Index(BM25Config())
    bm25.index([tokenize(t) for t in texts], np.arange(len(texts), dtype=np.int64))
    rng = np.random.default_rng(seed)

    def noise(n=30):
        ids = rng.permutation(len(texts))[:n]
        return Hits(ids.astype(np.int64), np.sort(rng.random(n)).astype(np.float32)[::-1])

    def shuffled_truth(query_doc, n=30):
        # A good retriever: the query's document's chunks first, then the rest at random.
        mine = [i for i, d in enumerate(owner) if d == query_doc]
        rest = [i for i in rng.permutation(len(texts)) if owner[i] != query_doc][: n - len(mine)]
        ids = np.asarray(mine + rest, np.int64)
        return Hits(ids, np.linspace(1.0, 0.1, len(ids)).astype(np.float32))

    def search(queries_and_docs):
        for text, doc in queries_and_docs:
            lexical = bm25.search(tokenize(text), 30)
            if dense_is_noise:
                yield lexical, noise()
            else:
                yield noise(), shuffled_truth(doc)
    return search


def _estimate_with(dense_is_noise: bool):
    """(pseudo-queries, chunks by document, the estimate) on the topic corpus."""
    texts, owner = _corpus()
    by_doc = {}
    for i, (t, d) in enumerate(zip(texts, owner)):
        by_doc.setdefault(d, []).append((i, t))
    queries = sample_pseudo_queries(by_doc, 40)
    search = _search_with(texts, owner, dense_is_noise=dense_is_noise)
    result = estimate(queries, lambda qs: search([(q, p.document) for q, p in zip(qs, queries)]),
                      lambda i: owner[i], chunks=len(texts))
    return queries, by_doc, result


def test_weight_moves_away_from_a_noise_dense_retriever():
    queries, by_doc, result = _estimate_with(dense_is_noise=True)
    assert len(queries) == 40 and all(q.source in [i for i, _ in by_doc[q.document]] for q in queries)
    assert result.method == "pseudo-queries" and result.queries == 40 and result.chunks == 180
    assert result.dense_weight < 0.3, result.curve


def test_weight_moves_away_from_a_noise_lexical_retriever():
    _, _, result = _estimate_with(dense_is_noise=False)
    assert result.dense_weight > 0.7, result.curve


def test_the_source_chunk_itself_does_not_count():
    # Only the source chunk matches the query: finding it is no evidence for either side.
    queries = [PseudoQuery("alpha beta gamma delta epsilon", source=i, document=i) for i in range(25)]

    def search(texts):
        for i, _ in enumerate(texts):
            only_source = Hits(np.asarray([i], np.int64), np.asarray([1.0], np.float32))
            yield only_source, only_source

    result = estimate(queries, search, lambda i: i)
    assert all(score == 0.0 for _, score in result.curve)


def test_too_few_pseudo_queries_keep_the_prior():
    by_doc = {0: [(0, "one chunk only with enough words in it")], 1: [(1, "short"), (2, "tiny")]}
    queries = sample_pseudo_queries(by_doc, 10)
    result = estimate(queries, lambda qs: iter(()), lambda i: 0)
    assert queries == []
    assert result.method == "prior" and result.dense_weight == PRIOR_DENSE_WEIGHT
    assert "0 pseudo-queries" in result.reason


def test_query_line_takes_prose_not_code_or_headers():
    assert query_line("# a.py:1-9\ndef f(x):\n    Return the sum of the values in x.") == \
        "Return the sum of the values in x."
    assert query_line("x = [1, 2, 3, 4, 5, 6]\ny = f(x) + g(x) * 2") is None
    assert len(query_line(" ".join(["word"] * 40)).split()) == 24


def test_a_weak_preference_keeps_the_prior_with_its_reason():
    # Both retrievers find the document equally well: no weight beats the prior clearly.
    queries = [PseudoQuery(f"query {i} with some words", source=2 * i, document=i) for i in range(30)]

    def search(texts):
        for i, _ in enumerate(texts):
            hits = Hits(np.asarray([2 * i, 2 * i + 1, 999], np.int64), np.asarray([1.0, 0.9, 0.1], np.float32))
            yield hits, hits

    owner = {2 * i + j: i for i in range(30) for j in (0, 1)} | {999: 99}
    result = estimate(queries, search, owner.get)
    assert result.method == "prior" and result.dense_weight == PRIOR_DENSE_WEIGHT
    assert "neither retriever fails" in result.reason and all(score == 1.0 for _, score in result.curve)


def test_a_preference_without_a_failing_retriever_keeps_the_prior():
    # BM25 puts the document first, dense second: pseudo-queries prefer BM25, but dense does not
    # fail on them (NDCG 0.63 > half of 1.0), so the biased preference is not trusted.
    queries = [PseudoQuery(f"query {i} with some words", source=10 * i, document=i) for i in range(40)]
    owner = {10 * i + j: (i if j < 2 else 1000 + 10 * i + j) for i in range(40) for j in range(5)}

    def search(texts):
        for i, _ in enumerate(texts):
            lexical = Hits(np.asarray([10 * i, 10 * i + 1, 10 * i + 2, 10 * i + 3], np.int64),
                           np.asarray([5.0, 4.0, 1.0, 0.5], np.float32))
            dense = Hits(np.asarray([10 * i, 10 * i + 2, 10 * i + 1, 10 * i + 3], np.int64),
                         np.asarray([0.9, 0.89, 0.88, 0.5], np.float32))
            yield lexical, dense

    result = estimate(queries, search, owner.get)
    bm25_alone, dense_alone = result.curve[0][1], result.curve[-1][1]
    assert bm25_alone == 1.0 and dense_alone == 0.6309
    assert result.method == "prior" and result.dense_weight == PRIOR_DENSE_WEIGHT
    assert "neither retriever fails" in result.reason

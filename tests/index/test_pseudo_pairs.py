"""Pseudo-query pairs a collection yields itself (index.pseudo_pairs)."""

from __future__ import annotations

import pytest

from index.pseudo_pairs import PairConfig, cut_line, mine_pairs
from index.types import Hits
import numpy as np

FOOTER = "Licensed under the three clause BSD License for everyone."


def _corpus():
    """Eight documents of two chunks; every chunk ends with the same licence footer."""
    texts, documents, headers = [], [], []
    topics = ["variance of an array", "sorting a list in place", "reading a csv file",
              "joining two tables", "plotting a histogram", "parsing dates from text",
              "rounding floating point numbers", "counting unique values"]
    for d, topic in enumerate(topics):
        for part in range(2):
            texts.append(f"def f{d}_{part}(x):\n"
                         f"This function is about {topic} and part {part} of it.\n"
                         f"    return x\nMore words follow here so that the passage is long enough.\n"
                         f"{FOOTER}")
            documents.append(d)
            headers.append(f"doc{d}")
    return texts, documents, headers


def _bm25_like(texts):
    """Ranks chunks by shared words with the query: a stand-in retriever over the same texts."""
    def search(query: str, k: int) -> Hits:
        words = set(query.lower().split())
        scores = np.array([len(words & set(t.lower().split())) for t in texts], np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        return Hits(order.astype(np.int64), scores[order])
    return search


def test_the_query_line_is_cut_out_of_its_positive_and_the_header_put_before_it():
    texts, documents, headers = _corpus()
    pairs = mine_pairs(texts, documents, headers, PairConfig(max_pairs=50, negatives=False))
    assert pairs
    for pair in pairs:
        assert pair.query not in pair.positive
        assert pair.positive.split("\n", 1)[0].startswith("doc")
        assert "return x" in pair.positive  # the rest of the chunk stays


def test_boilerplate_lines_shared_by_many_documents_are_never_queries():
    texts, documents, headers = _corpus()
    pairs = mine_pairs(texts, documents, headers, PairConfig(max_pairs=50, negatives=False))
    assert all(pair.query != FOOTER for pair in pairs)
    # with the threshold above the number of documents the footer is a candidate again
    loose = mine_pairs(texts, documents, headers,
                       PairConfig(max_pairs=50, negatives=False, max_line_documents=100, seed=3))
    assert any(pair.query == FOOTER for pair in loose)


def test_hard_negatives_come_from_other_documents_past_the_skipped_top():
    texts, documents, headers = _corpus()
    pairs = mine_pairs(texts, documents, headers, PairConfig(max_pairs=50, skip_top=1),
                       _bm25_like(texts))
    assert pairs and all(pair.negative for pair in pairs)
    for pair in pairs:
        source_doc = int(pair.positive.split("\n", 1)[0][3:])
        negative_doc = int(pair.negative.split("\n", 1)[0][3:])
        assert negative_doc != source_doc


def test_pairs_are_seeded_and_capped():
    texts, documents, headers = _corpus()
    first = mine_pairs(texts, documents, headers, PairConfig(max_pairs=5, negatives=False))
    again = mine_pairs(texts, documents, headers, PairConfig(max_pairs=5, negatives=False))
    assert first == again and len(first) == 5


def test_cut_line_removes_only_the_first_matching_line():
    assert cut_line("a b c\nkeep\na b c", "a b c") == "keep\na b c"


def test_bad_settings_and_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="max_pairs"):
        PairConfig(max_pairs=0)
    with pytest.raises(ValueError, match="same length"):
        mine_pairs(["a"], [0, 1], [""], PairConfig())

"""Ablation rows of the search benchmarks: a collection searched with a setting changed."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Iterator

# Rows that search hybrid with a voter's document evidence off (index.document_evidence).
VOTER_ABLATIONS = {"hybrid-chunk-lexical": {"lexical": "chunk"}, "hybrid-chunk-dense": {"semantic": "chunk"},
                   "hybrid-chunks": {"lexical": "chunk", "semantic": "chunk"}}
# The row that searches hybrid without lifting documents the query names (index.document_names).
NAME_ABLATIONS = {"hybrid-no-names": {"name_weight": 0.0}}
SEARCH_ABLATIONS = {**VOTER_ABLATIONS, **NAME_ABLATIONS}


def choose_share(scores: dict[float, float], tolerance: float) -> float:
    """The middle of the settings whose score is within `tolerance` of the best (a flat optimum
    gives a central setting, not one at the edge of noise; index.fusion_weight's rule).

    Example: choose_share({0.0: 0.800, 0.1: 0.816, 0.2: 0.819, 0.3: 0.820, 0.5: 0.818}, 0.005)
    -> 0.2: 0.1-0.5 are within 0.005 of the best, and of an even count the lower middle is taken."""
    best = max(scores.values())
    near = sorted(s for s, v in scores.items() if v >= best - tolerance)
    return near[(len(near) - 1) // 2]


@contextmanager
def collection_settings(collection, **changes) -> Iterator[None]:
    """Search `collection` with these CollectionConfig fields changed inside the block, e.g.
    `with collection_settings(c, lexical="chunk"): c.search(...)`. Settings that apply at
    search time only (fusion, lexical, semantic): the config is swapped and put back, so benchmarks use
    it from one thread; nothing is written to the store."""
    saved = collection.config
    collection.config = dataclasses.replace(saved, **changes)
    try:
        yield
    finally:
        collection.config = saved

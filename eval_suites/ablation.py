"""Ablation rows of the search benchmarks: a collection searched with a setting changed."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Iterator

# Rows that search hybrid with a voter's document evidence off (index.document_evidence).
VOTER_ABLATIONS = {"hybrid-chunk-lexical": {"lexical": "chunk"}, "hybrid-chunk-dense": {"semantic": "chunk"},
                   "hybrid-chunks": {"lexical": "chunk", "semantic": "chunk"}}


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

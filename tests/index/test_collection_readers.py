"""Searches in other threads while a commit is in flight get k results (flat dense index).

A commit changes the live dense index before its store transaction commits, so for a moment
the index knows chunks that a reader's store snapshot does not; `slow_store_commits` stretches
that moment so that readers land in it on every run. Runs on the tiny static embedder.
"""

from __future__ import annotations

import pytest

pytest.importorskip("model2vec")

from index import Collection, CollectionConfig  # noqa: E402
from index.collection import MODES  # noqa: E402
from index.types import SearchFilter  # noqa: E402
from tests.index.readers import searching_in_threads, slow_store_commits  # noqa: E402
from tests.static_model import tiny_static_model  # noqa: E402

K = 5


def _texts(n):
    return [f"note {i}: token{i} word{i % 7} other{i % 3}" for i in range(n)]


def test_readers_get_k_results_while_commits_are_in_flight(tmp_path, monkeypatch):
    texts = _texts(12)
    config = CollectionConfig(embedding_backend="static",
                              embedding_model=str(tiny_static_model(tmp_path / "static")))
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_texts(texts[:3], paths=[f"notes/{i}" for i in range(3)])
        vectors = [collection.embedder.encode_query(text) for text in texts]
        least, most = [3], [3]  # chunks committed for sure / perhaps (mid-commit)
        short, searched = [], [0]

        def counts(text, vector):
            """Result counts of every way to search, for one probe."""
            found = [len(collection.search(text, k=K, mode=mode)) for mode in MODES]
            found.append(len(collection.search(text, k=K, filters=SearchFilter(path_prefix="notes/"))))
            found.append(len(collection.search_vector(vector, k=K)))
            found += [len(results) for results in collection.search_vectors(vectors[:4], k=K)]
            return found

        def read():
            # Later probes find their own chunk first once it is added: the newest rows rank high.
            for text, vector in zip(texts, vectors):
                low = min(K, least[0])  # committed before the searches began
                found = counts(text, vector)
                high = min(K, most[0])  # at most committed when they ended
                searched[0] += 1
                if not all(low <= n <= high for n in found):
                    short.append((text, found, low, high))

        slow_store_commits(monkeypatch, collection.store, 0.05)
        with searching_in_threads(read):
            for i in range(3, len(texts)):
                most[0] = i + 1
                collection.add_texts([texts[i]], paths=[f"notes/{i}"])
                least[0] = i + 1
        assert searched[0] > 0
        assert not short, f"{len(short)} of {searched[0]} probes came back short, e.g. {short[:3]}"
        assert all(n == K for n in counts(texts[0], vectors[0]))

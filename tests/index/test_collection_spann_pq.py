"""A Collection over the trained dense backends (`spann`, `pq`): round-trip, crash and concurrency.

Runs on the tiny static embedder (tests/static_model.py; 32-d random token vectors): the vectors
mean nothing, but every chunk finds itself first, which is all these mechanics need. The
backends build from 256 vectors so a few hundred texts exercise the built structure, and the
concurrency tests grow N past `rebuild_growth` so that commits rebuild the live index while
other threads search it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("model2vec")

from index import Collection, CollectionConfig  # noqa: E402
from index.dense import create_dense_index  # noqa: E402
from index.pq import PQConfig  # noqa: E402
from index.spann import SpannConfig  # noqa: E402
from tests.index.readers import searching_in_threads  # noqa: E402
from tests.static_model import tiny_static_model  # noqa: E402

KINDS = {
    "spann": SpannConfig(min_build=256, rebuild_growth=1.5, search_heads=16),
    "pq": PQConfig(m=8, min_build=256, nprobe=64, opq_iters=2, rerank=True, rebuild_growth=1.5),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_static_model(tmp_path_factory.mktemp("static") / "tiny")


def _config(model, kind):
    return CollectionConfig(dense=kind, dense_config=KINDS[kind], embedding_backend="static",
                            embedding_model=str(model))


def _texts(start, n):
    return [f"note {i}: token{i} word{i % 97} other{i % 13} extra{(i * 7) % 101}" for i in range(start, start + n)]


def _top(collection, texts):
    return [[r.id for r in collection.search(t, k=5, mode="dense")] for t in texts]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_builds_and_reloads_identically(tmp_path, model, kind):
    texts = _texts(0, 400)
    with Collection.open(tmp_path / "ws", config=_config(model, kind)) as collection:
        ids = collection.add_texts(texts)
        assert collection._dense.kind == kind and collection._dense.built  # the structure, not exact search
        before = _top(collection, texts[:40])
        assert np.mean([b[0] == i for b, i in zip(before, ids[:40])]) >= 0.9  # a text finds itself
    with Collection.open(tmp_path / "ws", create=False) as reopened:
        assert reopened.config.dense == kind
        assert _top(reopened, texts[:40]) == before
        assert reopened._dense.built and len(reopened._dense) == 400


def test_residual_quantizer_from_codehop_toml_round_trips(tmp_path, model):
    # [collection.pq] quantizer = "rq" reaches the collection's index, which reloads as built
    from codehop.config import parse_settings

    settings = parse_settings('[collection]\ndense = "pq"\n[collection.pq]\nm = 8\nquantizer = "rq"\n'
                              'min_build = 256\nnprobe = 64\n')
    config = CollectionConfig(dense="pq", dense_config=settings.collection_config().dense_config,
                              embedding_backend="static", embedding_model=str(model))
    texts = _texts(0, 400)
    with Collection.open(tmp_path / "ws", config=config) as collection:
        ids = collection.add_texts(texts)
        assert collection._dense.built and collection._dense.variant == "RQ IVF-residual"
        before = _top(collection, texts[:40])
        assert np.mean([b[0] == i for b, i in zip(before, ids[:40])]) >= 0.9
    with Collection.open(tmp_path / "ws", create=False) as reopened:
        assert reopened.config.dense_config.quantizer == "rq"
        assert _top(reopened, texts[:40]) == before


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crash_while_writing_indexes_keeps_the_previous_generation(tmp_path, model, kind, monkeypatch):
    texts = _texts(0, 400)
    with Collection.open(tmp_path / "ws", config=_config(model, kind)) as collection:
        collection.add_texts(texts)
        before = _top(collection, texts[:20])

        def killed(*args, **kwargs):
            raise KeyboardInterrupt  # the process dies after the dense files, before the rename

        monkeypatch.setattr("index.persist.fsync_dir", killed)
        with pytest.raises(KeyboardInterrupt):
            collection.add_texts(_texts(400, 400))  # grows N 2x: this commit rebuilds the index
        monkeypatch.undo()
    with Collection.open(tmp_path / "ws", create=False) as reopened:
        assert _top(reopened, texts[:20]) == before
        assert len(reopened._dense) == 400 and reopened.stats()["documents"] == 400
        reopened.add_texts(_texts(400, 400))  # the re-run finishes the job
        assert len(reopened._dense) == 800 and reopened._dense.built


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_searches_during_commits_that_rebuild(tmp_path, model, kind):
    with Collection.open(tmp_path / "ws", config=_config(model, kind)) as collection:
        collection.add_texts(_texts(0, 300))
        built_n = [collection._dense._built_n]
        searched = [0]
        probes = _texts(0, 10)

        def read():
            for text in probes:
                results = collection.search(text, k=5, mode="dense")
                # 5 also while a commit has added to the live index but not yet committed the
                # store: rows a reader's store does not hold yet are skipped, not counted
                assert len(results) == 5 and all(r.text for r in results)
                searched[0] += 1

        with searching_in_threads(read):
            for step in range(4):  # 300 -> 1,500: each x1.5 of growth rebuilds inside the commit
                collection.add_texts(_texts(300 + 300 * step, 300))
                built_n.append(collection._dense._built_n)
        assert searched[0] > 0 and len(set(built_n)) >= 3  # it did rebuild, more than once


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_index_build_never_races_a_search(kind):
    """Searches in threads while the main thread rebuilds: each answer is complete and exact
    for a vector that is its own nearest neighbour (old or new structure, never half of one)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = create_dense_index(kind, 32, KINDS[kind])
    index.add(np.arange(1500), x)
    index.build()
    errors, stop = [], threading.Event()

    def reader(offset):
        while not stop.is_set():
            try:
                hits = index.search(x[offset : offset + 20], 5)
                assert [h.ids[0] for h in hits] == list(range(offset, offset + 20))
                assert all(len(h.ids) == 5 for h in hits)
            except Exception as error:  # noqa: BLE001
                errors.append(error)
                return

    threads = [threading.Thread(target=reader, args=(o,)) for o in (0, 100)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        index.build()
        index.delete(np.array([1400 + len(errors)]))
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[0]

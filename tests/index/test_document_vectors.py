"""Issue 26: each document's mean chunk vector as half of hybrid search's dense voter."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from index import Collection, CollectionConfig
from index.document_evidence import chunk_document_mix
from index.document_vectors import DocumentVectors
from index.persist import DOCUMENT_VECTORS
from index.types import Hits
from runtime.errors import CorruptIndexError, InvalidInputError
from tests.index.test_document_bm25 import CORPUS as KITCHEN
from tests.index.test_document_bm25 import document_chunks

E = np.eye(4, dtype=np.float32)
# Document 7 covers directions 0 and 1 in two chunks; document 3 has one chunk between them;
# document 5 is about direction 3.
LEAN = np.array([0.8, 0.5, 0.33, 0.0], np.float32) / np.float32(np.sqrt(0.9989))
CHUNKS = {10: (7, E[0]), 11: (7, E[1]), 12: (3, LEAN), 13: (5, E[3])}


def _build(chunks=CHUNKS) -> DocumentVectors:
    ids = list(chunks)
    return DocumentVectors.build(ids, [chunks[i][0] for i in ids], np.stack([chunks[i][1] for i in ids]))


def test_a_document_vector_is_the_normalised_mean_of_its_chunks():
    documents = _build()
    assert documents.layout.doc_ids.tolist() == [3, 5, 7]
    assert documents.layout.chunks_of(7).tolist() == [10, 11]
    np.testing.assert_allclose(documents.vectors[2], (E[0] + E[1]) / np.sqrt(2), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(documents.vectors, axis=1), 1.0, atol=1e-6)


def test_the_document_whose_chunks_together_match_ranks_first_and_lends_to_candidates():
    documents = _build()
    query = (E[0] + E[1]) / np.sqrt(2)
    chunk_scores = {i: float(v @ query) for i, (_, v) in CHUNKS.items()}
    assert max(chunk_scores, key=chunk_scores.get) == 12  # chunk by chunk, document 3 leads
    top = documents.search(query, 2)
    assert top.ids.tolist() == [7, 3] and top.scores[0] == pytest.approx(1.0)
    # lent only to the chunks another list found (11), not to its other chunk (10)
    lent = documents.chunk_hits(query, 2, evidence=np.array([11, 12]))
    assert lent.ids.tolist() == [11, 12]
    order = sorted(chunk_scores, key=chunk_scores.get, reverse=True)
    chunks = Hits(np.array(order), np.array([chunk_scores[i] for i in order], np.float32))
    mixed = chunk_document_mix(chunks, lent)
    assert mixed.ids[0] == 11  # its document's evidence lifts it above chunk 12


def test_an_update_reuses_unchanged_documents_and_equals_a_fresh_build():
    documents = _build({**CHUNKS, 20: (8, E[2]), 21: (8, E[3])})
    fetched: list[int] = []
    changed = {**CHUNKS, 14: (5, E[2]), 15: (9, E[1])}  # document 5 grows, document 9 is new
    changed.update({20: (8, E[2]), 22: (8, E[0])})  # document 8 keeps its size, one chunk replaced
    del changed[12]  # document 3 is gone

    def fetch(ids):
        fetched.extend(ids.tolist())
        return ids, np.stack([changed[int(i)][1] for i in ids])

    ids = list(changed)
    updated = documents.updated(ids, [changed[i][0] for i in ids], fetch)
    assert sorted(fetched) == [13, 14, 15, 20, 22]  # document 7's mean was kept, not read again
    fresh = _build(changed)
    assert updated.layout.doc_ids.tolist() == fresh.layout.doc_ids.tolist() == [5, 7, 8, 9]
    assert updated.layout.chunk_ids.tolist() == fresh.layout.chunk_ids.tolist()
    np.testing.assert_allclose(updated.vectors, fresh.vectors, atol=1e-6)


def test_chunks_without_a_vector_are_left_out_of_their_documents_mean():
    documents = _build()
    ids = list(CHUNKS) + [16]
    updated = documents.updated(ids, [CHUNKS[i][0] if i in CHUNKS else 7 for i in ids],
                                lambda wanted: (wanted[wanted != 16], np.stack([CHUNKS[int(i)][1] for i in wanted if i != 16])))
    assert updated.layout.chunks_of(7).tolist() == [10, 11]
    np.testing.assert_allclose(updated.vectors, documents.vectors, atol=1e-6)


def test_scores_summed_from_every_chunks_cosine_equal_the_document_vectors():
    rng = np.random.default_rng(0)
    chunk_ids = rng.permutation(np.arange(100, 400))  # an index's row order, not sorted
    vectors = rng.standard_normal((len(chunk_ids), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    documents = DocumentVectors.build(chunk_ids, rng.integers(0, 40, len(chunk_ids)), vectors)
    query = vectors[:3].sum(0) / np.linalg.norm(vectors[:3].sum(0))
    scanned = documents.search(query, 10)
    summed = documents.search(query, 10, chunk_scores=(chunk_ids, vectors @ query))
    assert summed.ids.tolist() == scanned.ids.tolist()
    np.testing.assert_allclose(summed.scores, scanned.scores, atol=1e-5)
    # scores that miss a chunk of the layout: the vectors are scanned instead
    partial = documents.search(query, 10, chunk_scores=(chunk_ids[1:], (vectors @ query)[1:]))
    assert partial.ids.tolist() == scanned.ids.tolist()


def test_saved_and_loaded_equal_and_a_truncated_file_is_refused(tmp_path):
    documents = _build()
    documents.save(tmp_path / "d")
    loaded = DocumentVectors.load(tmp_path / "d")
    np.testing.assert_array_equal(loaded.vectors, documents.vectors)
    assert loaded.layout.chunk_ids.tolist() == documents.layout.chunk_ids.tolist()
    np.save(tmp_path / "d" / "vectors.npy", documents.vectors[:2])
    with pytest.raises(CorruptIndexError, match="truncated"):
        DocumentVectors.load(tmp_path / "d")


CORPUS = {**KITCHEN, "garden.md": ["Prune the roses in March.", "Water the lawn at dawn.", "Compost kitchen scraps."]}


def _open(tmp_path, semantic: str, name: str = "ws") -> Collection:
    # The tiny static model's vectors are random: these tests check the mechanics (what is
    # stored, kept and rebuilt), not retrieval quality, which the benches measure.
    static = pytest.importorskip("tests.static_model").tiny_static_model(tmp_path / "static")
    config = CollectionConfig(embedding_backend="static", embedding_model=str(static), context=False,
                              fusion="weighted", dense_weight=1.0, semantic=semantic)
    return Collection.open(tmp_path / name, config=config)


def _expected(collection: Collection) -> DocumentVectors:
    """Document vectors computed from scratch from the chunks' own vectors."""
    document_of = collection.store.chunk_documents(collection.name)
    ids = np.asarray(sorted(document_of), dtype=np.int64)
    rows = collection.store.get_chunks(ids.tolist())
    vectors = collection.embedder.encode([collection._row_text(rows[int(i)]) for i in ids])
    return DocumentVectors.build(ids, [document_of[int(i)] for i in ids], vectors)


def _assert_same(a: DocumentVectors, b: DocumentVectors) -> None:
    assert a.layout.doc_ids.tolist() == b.layout.doc_ids.tolist()
    assert a.layout.chunk_ids.tolist() == b.layout.chunk_ids.tolist()
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)


def test_document_vectors_follow_commits_and_old_generations_get_them(tmp_path):
    pytest.importorskip("model2vec")
    with _open(tmp_path, "chunk+document") as collection:
        collection.add_documents({p: document_chunks(p, t) for p, t in CORPUS.items()})
        assert (collection._loaded_dir() / DOCUMENT_VECTORS).is_dir()
        _assert_same(collection._document_vectors, _expected(collection))
        collection.delete("pots.md")
        collection.add_documents({"kettle.md": document_chunks("kettle.md", ["A new kettle page.", "Its manual."])})
        _assert_same(collection._document_vectors, _expected(collection))
        assert collection.stats()["fusion"]["semantic"] == "chunk+document"
        generation = collection._loaded_dir()
        before = [(r.id, round(r.score, 5)) for r in collection.search("kettle manual", k=4)]
    # a generation written before document vectors existed: built from the vector cache
    shutil.rmtree(generation / DOCUMENT_VECTORS)
    with _open(tmp_path, "chunk+document") as reopened:
        assert [(r.id, round(r.score, 5)) for r in reopened.search("kettle manual", k=4)] == before
        reopened.add_documents({"new.md": document_chunks("new.md", ["a new note"])})
        assert (reopened._loaded_dir() / DOCUMENT_VECTORS).is_dir()  # the next commit writes it
        _assert_same(reopened._document_vectors, _expected(reopened))


def test_the_dense_voter_with_documents_differs_from_chunks_alone_and_dense_mode_is_chunks(tmp_path):
    pytest.importorskip("model2vec")
    queries = ["kettle manual", "roses lawn compost", "vinegar water", "empty the tray"]
    with _open(tmp_path, "chunk+document") as both, _open(tmp_path, "chunk", "ws-chunk") as alone:
        for collection in (both, alone):
            collection.add_documents({p: document_chunks(p, t) for p, t in CORPUS.items()})
        for query in queries:  # "dense" mode is the chunks' cosine in both
            assert ([r.id for r in both.search(query, k=6, mode="dense")]
                    == [r.id for r in alone.search(query, k=6, mode="dense")])
        # the hybrid voter (dense weight 1: the dense voter alone) moves chunks by their documents
        assert any([round(r.score, 4) for r in both.search(q, k=6)] != [round(r.score, 4) for r in alone.search(q, k=6)]
                   for q in queries)


def test_unknown_semantic_setting_is_refused():
    with pytest.raises(InvalidInputError, match="semantic"):
        CollectionConfig(semantic="page")

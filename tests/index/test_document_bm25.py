"""Issue 26: BM25 over whole documents as half of hybrid search's lexical voter."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from index import Collection, CollectionConfig
from index.bm25 import BM25Config
from index.document_bm25 import DocumentBM25
from index.document_evidence import chunk_document_mix
from index.persist import DOCUMENTS
from index.types import Chunk, Hits
from runtime.errors import InvalidInputError

# Document 7 says "descale" in one chunk and "kettle" in another; document 3 says "kettle"
# twice in one short chunk; document 5 has neither.
CHUNKS = [(10, 7, ["descale", "with", "vinegar"]), (11, 7, ["the", "kettle", "manual", "intro"]),
          (12, 3, ["kettle", "kettle"]), (13, 5, ["toaster", "crumbs"]), (14, 7, ["rinse", "twice"])]


def _documents() -> DocumentBM25:
    ids, docs, tokens = zip(*CHUNKS)
    return DocumentBM25.build(list(ids), list(docs), list(tokens), BM25Config())


def test_a_document_matching_across_its_chunks_ranks_first_and_lends_its_score():
    documents = _documents()
    top = documents.search(["descale", "kettle"], 3)
    assert top.ids.tolist() == [7, 3]  # document 5 does not match
    lent = documents.lend(top)
    assert lent.ids.tolist() == [10, 11, 14, 12]  # document 7's chunks in order, then 3's
    assert lent.scores[0] == lent.scores[1] == lent.scores[2] == top.scores[0] > lent.scores[3]
    assert documents.chunks_of(5).tolist() == [13] and documents.chunks_of(99).tolist() == []
    # lent only to chunks another list found, or a document's first chunk when none was
    only = documents.lend(top, evidence=np.array([14, 99], np.int64))
    assert only.ids.tolist() == [14, 12] and only.scores.tolist() == top.scores.tolist()


def test_built_from_the_chunk_index_counts_it_equals_one_built_from_tokens():
    from index.bm25 import BM25Index

    ids, docs, tokens = zip(*CHUNKS)
    chunks = BM25Index(BM25Config())
    chunks.index(list(tokens), np.asarray(ids, dtype=np.int64))
    summed, tokenised = DocumentBM25.from_chunk_index(chunks, dict(zip(ids, docs))), _documents()
    assert summed.layout.chunk_ids.tolist() == tokenised.layout.chunk_ids.tolist()
    for query in (["kettle"], ["descale", "kettle"], ["crumbs", "twice"], ["absent"]):
        a, b = summed.search(query, 5), tokenised.search(query, 5)
        assert a.ids.tolist() == b.ids.tolist() and np.allclose(a.scores, b.scores)


def test_saved_and_loaded_it_answers_the_same(tmp_path):
    documents = _documents()
    documents.save(tmp_path / "docs")
    loaded = DocumentBM25.load(tmp_path / "docs")
    for query in (["kettle"], ["descale", "kettle"], ["crumbs"]):
        a, b = documents.chunk_hits(query, 5), loaded.chunk_hits(query, 5)
        assert a.ids.tolist() == b.ids.tolist() and np.allclose(a.scores, b.scores)


def test_the_mix_weighs_chunk_and_document_evidence_half_each():
    chunks = Hits(np.array([12, 11], np.int64), np.array([4.0, 1.0], np.float32))
    lent = Hits(np.array([10, 11, 14, 12], np.int64), np.array([3.0, 3.0, 3.0, 1.0], np.float32))
    mixed = dict(zip(*(x.tolist() for x in (chunk_document_mix(chunks, lent).ids, chunk_document_mix(chunks, lent).scores))))
    assert mixed[12] == pytest.approx(0.5) and mixed[11] == pytest.approx(0.5)  # 0.5+0 and 0+0.5
    assert mixed[10] == pytest.approx(0.5) and mixed[14] == pytest.approx(0.5)
    assert chunk_document_mix(chunks, Hits.empty()) is chunks


def document_chunks(path: str, texts: list[str]) -> list[Chunk]:
    """One chunk per text, a line each (shared with test_document_vectors)."""
    return [Chunk(t, path, i + 1, i + 1) for i, t in enumerate(texts)]


CORPUS = {
    "kettle.md": ["Descaling: fill it with vinegar and water, wait an hour.",
                  "The kettle manual, introduction and safety notes."],
    "pots.md": ["kettle kettle kettle"],
    "toaster.md": ["Toaster crumbs tray: empty it weekly."],
}


def _open(tmp_path, lexical: str, name: str = "ws") -> Collection:
    # dense weight 0: the ranking is the lexical voter's alone (MiniLM-free, fast)
    static = pytest.importorskip("tests.static_model").tiny_static_model(tmp_path / "static")
    config = CollectionConfig(embedding_backend="static", embedding_model=str(static), context=False,
                              fusion="weighted", dense_weight=0.0, lexical=lexical,
                              name_weight=0.0)  # "kettle" names kettle.md: keep the voter alone
    return Collection.open(tmp_path / name, config=config)


def test_hybrid_search_finds_the_document_whose_chunks_share_the_query(tmp_path):
    pytest.importorskip("model2vec")
    with _open(tmp_path, "chunk+document") as collection:
        collection.add_documents({p: document_chunks(p, t) for p, t in CORPUS.items()})
        top = collection.search("kettle descaling", k=2, mode="hybrid", group_by="document")
        assert top[0].path == "kettle.md"
        assert collection.stats()["fusion"]["lexical"] == "chunk+document"
        # "bm25" mode stays the chunk retriever alone: the repeated word wins there
        assert collection.search("kettle descaling", k=1, mode="bm25")[0].path == "pots.md"
    with _open(tmp_path, "chunk", "ws-chunk") as collection:
        collection.add_documents({p: document_chunks(p, t) for p, t in CORPUS.items()})
        assert collection.search("kettle descaling", k=1, mode="hybrid", group_by="document")[0].path == "pots.md"


def test_documents_index_follows_commits_and_old_generations_get_one(tmp_path):
    pytest.importorskip("model2vec")
    with _open(tmp_path, "chunk+document") as collection:
        collection.add_documents({p: document_chunks(p, t) for p, t in CORPUS.items()})
        generation = collection._loaded_dir()
        assert (generation / DOCUMENTS).is_dir()
        collection.delete("kettle.md")
        assert collection.search("kettle descaling", k=1, group_by="document")[0].path == "pots.md"
        collection.add_documents({"kettle.md": document_chunks("kettle.md", CORPUS["kettle.md"])})
        generation = collection._loaded_dir()
    # a generation written before the document index existed: searched the same, rebuilt in memory
    shutil.rmtree(generation / DOCUMENTS)
    with _open(tmp_path, "chunk+document") as reopened:
        assert reopened.search("kettle descaling", k=1, group_by="document")[0].path == "kettle.md"
        reopened.add_documents({"new.md": document_chunks("new.md", ["a new note"])})
        assert (reopened._loaded_dir() / DOCUMENTS).is_dir()  # the next commit writes it


def test_unknown_lexical_setting_is_refused():
    with pytest.raises(InvalidInputError, match="lexical"):
        CollectionConfig(lexical="page")

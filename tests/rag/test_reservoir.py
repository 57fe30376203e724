import sqlite3

import numpy as np
import pytest

from runtime.embed import content_hash
from runtime.errors import CorruptIndexError, InvalidInputError, NotFoundError
from index.types import Chunk, SearchResult
from rag.reservoir import FORMAT_VERSION, Reservoir, RetrieverTrigger, TriggerConfig


class _AxisEmbedder:
    """Maps a text to a fixed unit vector by its first word, so cosines are known exactly."""

    AXES = {"alpha": [1, 0, 0], "beta": [0, 1, 0], "mix": [0.6, 0.8, 0], "gamma": [0, 0, 1]}

    def encode_query(self, text):
        return np.array(self.AXES[text.split()[0].lower()], np.float32)


class _Chunks:
    """A collection as the trigger sees it: a name and get_chunks that fails on a missing id."""

    def __init__(self, name, texts):
        self.name, self.texts = name, dict(texts)

    def get_chunks(self, ids):
        for i in ids:
            if i not in self.texts:
                raise NotFoundError(f"no chunk {i!r} in collection {self.name!r}")
        return [Chunk(self.texts[i], "doc.md", 1, 1) for i in ids]


def _source(chunk_id, text="passage"):
    return SearchResult(chunk_id, 1.0, "doc.md", 1, 2, text)


def _trigger(tmp_path, texts, config=TriggerConfig(), collection="docs"):
    chunks = _Chunks(collection, texts)
    return RetrieverTrigger(Reservoir(tmp_path / "r.sqlite", collection), chunks, config, _AxisEmbedder()), chunks


def test_entries_persist_per_collection_and_namespace(tmp_path):
    reservoir = Reservoir(tmp_path / "r.sqlite", "docs")
    reservoir.add("u1", "alpha question", "content a", "a.md:1-2", np.ones(3), "1:0", "h1")
    reservoir.add("u2", "beta question", "content b", "b.md:1-2", np.ones(3), "2:0", "h2")
    # The same chunk for the same question (up to case and spacing) is one entry.
    assert reservoir.add("u1", "Alpha  question", "content a", "a.md:1-2", np.ones(3), "1:0", "h1") == 1
    reservoir.close()
    reopened = Reservoir(tmp_path / "r.sqlite", "docs")
    assert [(e.content, e.chunk_id, e.text_hash) for e in reopened.entries("u1")] == [("content a", "1:0", "h1")]
    assert [e.title for e in reopened.entries("u2")] == ["beta question"]
    assert reopened.db.journal_mode == "wal"
    assert Reservoir(tmp_path / "r.sqlite", "other").entries("u1") == []
    with pytest.raises(InvalidInputError):
        reopened.add("u1", "  ", "x", "y", np.ones(3), "1:0", "h1")
    with pytest.raises(InvalidInputError, match="chunk id"):
        reopened.add("u1", "alpha", "x", "y", np.ones(3), "", "h1")
    with pytest.raises(InvalidInputError, match="collection"):
        Reservoir(tmp_path / "r.sqlite", "")


def test_many_passages_of_one_question_do_not_trigger(tmp_path):
    texts = {f"{i}:0": f"text {i}" for i in range(6)}
    trigger, _ = _trigger(tmp_path, texts)
    assert trigger.remember("ns", "alpha q", [_source(f"{i}:0") for i in range(4)]) == 4
    decision = trigger.check("ns", "alpha again")
    assert not decision.reuse and decision.questions == 1 and len(decision.matches) == 4
    trigger.remember("ns", "ALPHA  q", [_source("4:0")])  # the same question again: still one
    assert trigger.check("ns", "alpha again").questions == 1
    trigger.remember("ns", "mix q", [_source("0:0"), _source("5:0")])  # cosine with alpha = 0.6
    assert not trigger.check("ns", "alpha again").reuse  # two past questions
    trigger.remember("ns", "alpha other", [_source("1:0")])
    decision = trigger.check("ns", "alpha again")
    assert decision.reuse and decision.questions == 3
    # One match per chunk, best first: chunk 0:0 was stored for alpha q (1.0) and mix q (0.6).
    assert [e.chunk_id for e, _ in decision.matches] == ["0:0", "1:0", "2:0", "3:0", "4:0"]
    assert all(sim == pytest.approx(1.0) for _, sim in decision.matches)
    assert not trigger.check("ns", "gamma other").reuse  # cosine 0 with all
    assert not trigger.check("other-namespace", "alpha").reuse


def test_thresholds_are_configurable(tmp_path):
    trigger, _ = _trigger(tmp_path, {"1:0": "fact"}, TriggerConfig(min_entries=1, threshold=0.7))
    trigger.remember("ns", "mix q", [_source("1:0")])
    assert not trigger.check("ns", "alpha").reuse  # 0.6 < 0.7
    assert trigger.check("ns", "beta").reuse  # 0.8 >= 0.7


def test_remember_hashes_the_indexed_chunk_and_skips_missing_ones(tmp_path):
    trigger, _ = _trigger(tmp_path, {"1:0": "the full chunk text"})
    pruned = _source("1:0", "the pruned text")  # what the filter kept of the chunk
    assert trigger.remember("ns", "alpha q", [pruned, _source("9:0")]) == 1
    (entry,) = trigger.reservoir.entries("ns")
    assert entry.content == "the pruned text" and entry.text_hash == content_hash("the full chunk text")
    assert entry.source == "doc.md:1-2"
    assert trigger.remember("ns", "alpha q", []) == 0


def test_entries_of_changed_or_deleted_chunks_are_dropped(tmp_path):
    texts = {"1:0": "one", "2:0": "two", "3:0": "three"}
    trigger, chunks = _trigger(tmp_path, texts)
    for title, chunk_id in (("alpha a", "1:0"), ("alpha b", "2:0"), ("alpha c", "3:0")):
        trigger.remember("ns", title, [_source(chunk_id)])
    trigger.remember("elsewhere", "beta z", [_source("2:0")])
    assert trigger.check("ns", "alpha").reuse
    chunks.texts["2:0"] = "two, re-indexed"  # same id, other text
    del chunks.texts["3:0"]  # document deleted
    decision = trigger.check("ns", "alpha")
    assert decision.dropped == 3 and decision.questions == 1 and not decision.reuse
    assert [e.chunk_id for e in trigger.reservoir.entries("ns")] == ["1:0"]
    # A stale chunk is stale in every namespace of the collection (3 = 2:0 twice, 3:0).
    assert trigger.reservoir.entries("elsewhere") == []


def test_prune_checks_every_entry(tmp_path):
    trigger, chunks = _trigger(tmp_path, {"1:0": "one", "2:0": "two"})
    trigger.remember("ns", "gamma q", [_source("1:0"), _source("2:0")])
    assert trigger.prune() == 0
    del chunks.texts["1:0"]
    assert trigger.prune() == 1  # a check for "alpha" would never have looked at "gamma q"
    assert [e.chunk_id for e in trigger.reservoir.entries("ns")] == ["2:0"]
    assert trigger.reservoir.prune({}) == 1 and trigger.reservoir.entries("ns") == []


def test_collections_do_not_share_entries(tmp_path):
    texts = {"1:0": "one", "2:0": "two", "3:0": "three"}
    docs, _ = _trigger(tmp_path, texts, collection="docs")
    code, _ = _trigger(tmp_path, texts, collection="code")  # same file, same chunk ids
    for title, chunk_id in (("alpha a", "1:0"), ("alpha b", "2:0"), ("alpha c", "3:0")):
        docs.remember("ns", title, [_source(chunk_id)])
    assert docs.check("ns", "alpha").reuse
    assert code.check("ns", "alpha").matches == [] and code.reservoir.entries("ns") == []
    code.remember("ns", "alpha a", [_source("1:0")])
    assert len(docs.reservoir.entries("ns")) == 3 and len(code.reservoir.entries("ns")) == 1
    with pytest.raises(InvalidInputError, match="collection 'code'"):
        RetrieverTrigger(docs.reservoir, _Chunks("code", texts), embedder=_AxisEmbedder())


def test_format_1_is_migrated_by_dropping_unverifiable_entries(tmp_path, caplog):
    path = tmp_path / "r.sqlite"
    with sqlite3.connect(path) as conn:  # what format 1 wrote
        conn.execute("CREATE TABLE reservoir_meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO reservoir_meta VALUES ('format_version', '1')")
        conn.execute("CREATE TABLE knowledge (id INTEGER PRIMARY KEY, namespace TEXT, title TEXT, "
                     "content TEXT, source TEXT, vector BLOB, created FLOAT)")
        conn.execute("INSERT INTO knowledge (namespace, title, content, source, vector, created) "
                     "VALUES ('ns', 'alpha', 'unfiltered', 'a.md:1-2', x'00', 0)")
    conn.close()
    with caplog.at_level("WARNING"):
        reservoir = Reservoir(path, "docs")
    assert "1 unverifiable entries dropped" in caplog.text
    assert reservoir.entries("ns") == []
    reservoir.add("ns", "alpha", "kept", "a.md:1-2", np.ones(3), "1:0", "h")
    reservoir.close()
    assert len(Reservoir(path, "docs").entries("ns")) == 1  # opened again: no second migration


def test_newer_or_corrupt_file_gives_clear_error(tmp_path):
    path = tmp_path / "r.sqlite"
    Reservoir(path, "docs").close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE reservoir_meta SET value = ? WHERE key = 'format_version'", [str(FORMAT_VERSION + 1)])
    conn.close()
    with pytest.raises(CorruptIndexError, match="upgrade codehop or delete"):
        Reservoir(path, "docs")
    path.unlink()
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptIndexError, match="reservoir"):
        Reservoir(path, "docs")


@pytest.mark.slow
def test_minilm_parquet_then_merge_needs_three_distinct_questions(tmp_path):
    """The issue's case with the shipped embedder: "merge two DataFrames on a key" has cosine
    ~0.41 with "write a DataFrame to parquet", so counting passages reused the parquet ones.
    The case was measured with MiniLM in torch: the onnx-int8 default puts the pair at 0.396,
    just under the 0.4 threshold, where there is nothing to count."""
    from index import Collection, CollectionConfig

    torch = CollectionConfig(embedding_backend="sentence-transformers")
    with Collection.open(tmp_path / "ws", "docs", config=torch) as collection:
        ids = collection.add_texts([
            "DataFrame.to_parquet writes a DataFrame to the binary parquet format.",
            "The engine argument of to_parquet picks pyarrow or fastparquet.",
            "compression='snappy' is the default codec of to_parquet.",
            "pandas.merge joins two DataFrames on key columns given by on=."])
        trigger = RetrieverTrigger(Reservoir(tmp_path / "ws" / "reservoir.sqlite", "docs"), collection)
        parquet = [SearchResult(i, 1.0, "p.md", 1, 1, text) for i, text in zip(ids[:3], ["a", "b", "c"])]
        trigger.remember("ns", "How do I write a DataFrame to parquet?", parquet)
        decision = trigger.check("ns", "How do I merge two DataFrames on a key?")
        assert len(decision.matches) == 3 and decision.questions == 1 and not decision.reuse
        trigger.remember("ns", "How do I save a DataFrame as a parquet file?", parquet[:1])
        trigger.remember("ns", "Export a DataFrame to parquet format", parquet[1:2])
        decision = trigger.check("ns", "Write pandas data to a parquet file")
        assert decision.reuse and decision.questions == 3
        assert {e.chunk_id for e, _ in decision.matches} == set(ids[:3])
        assert not trigger.check("ns", "How do I merge two DataFrames on a key?").reuse


class _OtherAxisEmbedder(_AxisEmbedder):
    """Another model: the same interface, a different identity."""


def test_entries_of_another_embedder_are_dropped_when_a_trigger_opens(tmp_path, caplog):
    texts = {"1:0": "passage one"}
    trigger, chunks = _trigger(tmp_path, texts)
    assert trigger.remember("ns", "alpha question", [_source("1:0", "passage one")]) == 1
    trigger.reservoir.close()
    same, _ = _trigger(tmp_path, texts)  # the same embedder: the entry stays
    assert len(same.reservoir.entries("ns")) == 1
    same.reservoir.close()
    with caplog.at_level("WARNING"):
        other = RetrieverTrigger(Reservoir(tmp_path / "r.sqlite", "docs"), chunks, TriggerConfig(),
                                 _OtherAxisEmbedder())
    assert other.reservoir.entries("ns") == [] and "1 entries embedded by another model" in caplog.text


def test_format_2_entries_without_an_embedder_are_dropped(tmp_path):
    path = tmp_path / "r.sqlite"
    reservoir = Reservoir(path, "docs")
    reservoir.add("ns", "alpha", "kept", "a.md:1-2", np.ones(3), "1:0", content_hash("passage one"))
    reservoir.close()
    with sqlite3.connect(path) as conn:  # what format 2 looked like: no embedder column
        conn.execute("ALTER TABLE knowledge DROP COLUMN embedder")
        conn.execute("UPDATE reservoir_meta SET value = '2' WHERE key = 'format_version'")
    conn.close()
    migrated = Reservoir(path, "docs")
    assert len(migrated.entries("ns")) == 1  # kept until a trigger knows which embedder is current
    trigger = RetrieverTrigger(migrated, _Chunks("docs", {"1:0": "passage one"}), TriggerConfig(), _AxisEmbedder())
    assert trigger.reservoir.entries("ns") == []

import sqlite3

import pytest

from runtime.errors import CorruptIndexError, InvalidInputError, NotFoundError
from index.store import Store
from index.types import Chunk


def _chunks(path, *texts):
    return [Chunk(t, path, i + 1, i + 1, "passage", {"n": i}) for i, t in enumerate(texts)]


def test_put_update_delete_and_ids_never_reused(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.create_collection("c", {"x": 1})
    with store.transaction():
        doc, removed, added = store.put_document("c", "/a.txt", "h1", _chunks("/a.txt", "one", "two"),
                                                 ["t1", "t2"], tokens=[["one"], ["two", "2"]])
    assert removed == [] and len(added) == 2
    assert store.chunk_tokens("c") == (added, [["one"], ["two", "2"]])
    with store.transaction():
        store.set_index_terms([(added[0], ["uno"], "t1-indexed")])
    assert store.chunk_tokens("c")[1] == [["uno"], ["two", "2"]]
    assert store.chunk_hashes(added) == {added[0]: "t1-indexed", added[1]: "t2"}
    rows = store.get_chunks(added)
    assert [rows[i].chunk_id for i in added] == [f"{doc}:0", f"{doc}:1"]
    assert rows[added[1]].text == "two" and rows[added[1]].path == "/a.txt"
    assert rows[added[0]].to_chunk().metadata == {"n": 0, "id": f"{doc}:0"}
    with store.transaction():
        doc2, removed2, added2 = store.put_document("c", "/a.txt", "h2", _chunks("/a.txt", "three"),
                                                    ["t3"])
    assert doc2 == doc and sorted(removed2) == sorted(added)
    assert min(added2) > max(added)  # AUTOINCREMENT: an old vector can never alias new text
    assert store.documents("c")["/a.txt"].hash == "h2"
    assert store.counts("c") == {"documents": 1, "chunks": 1}
    assert store.row_ids_for("c", [f"{doc}:0", f"{doc}:5"]) == [added2[0], None]
    with store.transaction():
        assert store.delete_document(doc) == added2
    assert store.counts("c") == {"documents": 0, "chunks": 0}


def test_transaction_rolls_back_everything_on_error(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.create_collection("c", {})
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.put_document("c", "/a", "h", _chunks("/a", "x"), ["t"])
            store.set_generation("c", 5)
            raise RuntimeError("boom")
    assert store.counts("c") == {"documents": 0, "chunks": 0}
    assert store.collection("c")["generation"] == 0
    with pytest.raises(RuntimeError):
        store.set_generation("c", 1)  # writes outside a transaction are refused


def test_readers_in_other_connections_see_only_committed_state(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.create_collection("c", {})
    reader = Store(tmp_path / "s.sqlite")
    with store.transaction():
        store.put_document("c", "/a", "h", _chunks("/a", "x"), ["t"])
        assert reader.counts("c")["chunks"] == 0  # WAL: readers are not blocked, see old state
    assert reader.counts("c")["chunks"] == 1
    assert reader.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_find_document_by_path_id_or_chunk_id(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.create_collection("c", {})
    with store.transaction():
        doc, _, _ = store.put_document("c", "/a", "h", _chunks("/a", "x"), ["t"])
    assert store.find_document("c", "/a").id == doc
    assert store.find_document("c", doc).path == "/a"
    assert store.find_document("c", f"{doc}:0").path == "/a"
    with pytest.raises(NotFoundError):
        store.find_document("c", "/missing")
    with pytest.raises(InvalidInputError):
        store.create_collection("../x", {})
    with pytest.raises(InvalidInputError):
        store.row_ids_for("c", ["nope"])


def test_corrupt_file_and_foreign_format_are_reported(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CorruptIndexError, match="unreadable"):
        Store(path)
    good = tmp_path / "g.sqlite"
    Store(good).close()
    conn = sqlite3.connect(good)
    conn.execute("UPDATE meta SET value='99' WHERE key='format_version'")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptIndexError, match="format 99"):
        Store(good)


def test_admitted_row_ids_match_a_literal_path_prefix_and_kind(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.create_collection("c", {})
    ids = {}
    with store.transaction():
        for path, kind in (("/src/100%_a.py", "block"), ("/src/100X_b.py", "block"),
                           ("/src/100%_c.md", "passage"), ("/docs/d.md", "passage")):
            chunk = Chunk("text", path, 1, 1, kind)
            ids[path] = store.put_document("c", path, path, [chunk], [path])[2][0]
    every = list(ids.values()) + [10_000]  # an unknown id is left out
    assert store.admitted_row_ids(every, path_prefix="/src/100%") == {ids["/src/100%_a.py"],
                                                                        ids["/src/100%_c.md"]}
    assert store.admitted_row_ids(every, kind="passage") == {ids["/src/100%_c.md"], ids["/docs/d.md"]}
    assert store.admitted_row_ids(every, "/src/", "block") == {ids["/src/100%_a.py"], ids["/src/100X_b.py"]}
    assert store.admitted_row_ids(every) == set(ids.values())
    assert store.admitted_row_ids([], "/src/") == set()

"""The document store: one sqlite file per workspace (WAL), opened through sqlite-utils.

Tables:
    meta(key, value)                         format_version of the store
    collections(name, config, generation)    generation = last committed index build
    documents(id, collection, path, hash, metadata)          one row per source file/text
    chunks(id, collection, doc_id, ordinal, text, text_hash, start_line, end_line, kind, metadata)

`chunks.id` is an AUTOINCREMENT int64 so a deleted chunk's id is never handed out again: the
BM25 and dense indexes use these ids, and a reused id could point an old vector at new text.
Users see the string id ``"{doc_id}:{ordinal}"`` which stays the same while a document is
unchanged. Writes happen inside `transaction()` (BEGIN IMMEDIATE ... COMMIT); WAL lets searches
in other processes read the last committed state meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from runtime.errors import ConflictError, CorruptIndexError, InvalidInputError, NotFoundError
from index.types import Chunk

FORMAT_VERSION = 1
_LOOKUP_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY, config TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, path TEXT NOT NULL,
    hash TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', updated REAL NOT NULL,
    UNIQUE (collection, path));
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL, doc_id INTEGER NOT NULL,
    ordinal INTEGER NOT NULL, text TEXT NOT NULL, text_hash TEXT NOT NULL,
    start_line INTEGER NOT NULL, end_line INTEGER NOT NULL, kind TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}', tokens TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc_id);
CREATE INDEX IF NOT EXISTS chunks_collection ON chunks (collection);
"""


@dataclass(frozen=True)
class ChunkRow:
    """A stored chunk with its ids and its document's path."""

    row_id: int
    doc_id: int
    ordinal: int
    path: str
    text: str
    text_hash: str
    start_line: int
    end_line: int
    kind: str
    metadata: dict[str, Any]

    @property
    def chunk_id(self) -> str:
        return f"{self.doc_id}:{self.ordinal}"

    def to_chunk(self) -> Chunk:
        return Chunk(self.text, self.path, self.start_line, self.end_line, self.kind,
                     {**self.metadata, "id": self.chunk_id})


@dataclass(frozen=True)
class DocumentRow:
    id: int
    path: str
    hash: str
    metadata: dict[str, Any]


def _corrupt(path: Path, error: Exception) -> CorruptIndexError:
    return CorruptIndexError(
        f"store {path} is unreadable ({error}); delete the workspace directory and re-run "
        "codehop index"
    )


class Store:
    """sqlite-backed documents and chunks of every collection in a workspace."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()  # the write connection and its transaction
        self._depth = 0
        self._owner: int | None = None
        self._local = threading.local()  # per-thread read connections
        self._readers: list[sqlite3.Connection] = []
        try:
            conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                   isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()
            self.db.conn.executescript(_SCHEMA)
            version = self.db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
            if version is None:
                self.db.execute("INSERT INTO meta VALUES ('format_version', ?)", [str(FORMAT_VERSION)])
            elif version[0] != str(FORMAT_VERSION):
                raise CorruptIndexError(
                    f"store {self.path} has format {version[0]}, this codehop reads "
                    f"{FORMAT_VERSION}: re-index into a new workspace"
                )
        except sqlite3.OperationalError as error:
            if "locked" not in str(error):
                raise _corrupt(self.path, error) from error
            raise ConflictError(
                f"store {self.path} is locked by another process; retry when it finishes") from error
        except sqlite3.DatabaseError as error:
            raise _corrupt(self.path, error) from error

    def close(self) -> None:
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self.db.conn.close()

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all (nested blocks join the outer one)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._execute("BEGIN IMMEDIATE")
                self._owner = threading.get_ident()
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self.db.conn.rollback()
                raise
            self._depth -= 1
            if outer:
                self._execute("COMMIT")

    def _execute(self, sql: str, params: list | tuple = ()) -> sqlite3.Cursor:
        try:
            return self.db.execute(sql, params)
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                raise
            raise _corrupt(self.path, error) from error

    def _query(self, sql: str, params: list | tuple = ()) -> sqlite3.Cursor:
        """Reads: inside this thread's transaction they see its uncommitted writes; elsewhere
        they use a per-thread connection, so searches never wait for a writer (WAL)."""
        if self._depth and self._owner == threading.get_ident():
            return self._execute(sql, params)
        conn = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
                self._local.conn = conn
                with self._lock:
                    self._readers.append(conn)
            return conn.execute(sql, params)
        except sqlite3.OperationalError as error:
            if "locked" in str(error):
                raise
            raise _corrupt(self.path, error) from error
        except sqlite3.DatabaseError as error:
            raise _corrupt(self.path, error) from error

    def _write(self, sql: str, params: list | tuple = ()) -> sqlite3.Cursor:
        if self._depth == 0:
            raise RuntimeError("store writes must run inside Store.transaction()")
        return self._execute(sql, params)

    # ---------------------------------------------------------------- collections

    def collection(self, name: str) -> dict[str, Any] | None:
        """{"name", "config" (dict), "generation"} or None."""
        row = self._query(
            "SELECT name, config, generation FROM collections WHERE name=?", [name]
        ).fetchone()
        if row is None:
            return None
        return {"name": row[0], "config": json.loads(row[1]), "generation": int(row[2])}

    def collections(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM collections ORDER BY name")]

    def create_collection(self, name: str, config: dict[str, Any]) -> None:
        if not name or "/" in name or name.startswith("."):
            raise InvalidInputError(f"bad collection name {name!r}: use letters, digits, - or _")
        with self.transaction():
            self._write("INSERT INTO collections VALUES (?, ?, 0, ?)",
                        [name, json.dumps(config, sort_keys=True), time.time()])

    def set_config(self, name: str, config: dict[str, Any]) -> None:
        self._write("UPDATE collections SET config=? WHERE name=?",
                    [json.dumps(config, sort_keys=True), name])

    def set_generation(self, name: str, generation: int) -> None:
        self._write("UPDATE collections SET generation=? WHERE name=?", [generation, name])

    def drop_collection(self, name: str) -> None:
        with self.transaction():
            self._write("DELETE FROM chunks WHERE collection=?", [name])
            self._write("DELETE FROM documents WHERE collection=?", [name])
            self._write("DELETE FROM collections WHERE name=?", [name])

    # ---------------------------------------------------------------- documents

    def documents(self, collection: str) -> dict[str, DocumentRow]:
        """Every document of a collection by path."""
        rows = self._query(
            "SELECT id, path, hash, metadata FROM documents WHERE collection=?", [collection]
        ).fetchall()
        return {r[1]: DocumentRow(r[0], r[1], r[2], json.loads(r[3])) for r in rows}

    def find_document(self, collection: str, key: str | int) -> DocumentRow:
        """A document by path, by int id, or by a chunk id "doc:ordinal"; NotFoundError if none."""
        row = self._query(
            "SELECT id, path, hash, metadata FROM documents WHERE collection=? AND path=?",
            [collection, str(key)],
        ).fetchone()
        text = str(key)
        head = text.split(":", 1)[0]
        if row is None and head.isdigit() and (text.isdigit() or text[len(head) + 1:].isdigit()):
            row = self._query(
                "SELECT id, path, hash, metadata FROM documents WHERE collection=? AND id=?",
                [collection, int(head)],
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no document {key!r} in collection {collection!r}")
        return DocumentRow(row[0], row[1], row[2], json.loads(row[3]))

    def put_document(
        self, collection: str, path: str, content_hash: str, chunks: list[Chunk],
        text_hashes: list[str], metadata: dict[str, Any] | None = None,
        tokens: list[list[str]] | None = None,
    ) -> tuple[int, list[int], list[int]]:
        """Insert or replace a document and its chunks (inside a transaction).

        `tokens` are each chunk's BM25 tokens, kept so that rebuilding BM25 after a small
        change does not re-tokenise the whole collection.

        Returns:
            (doc_id, removed chunk row ids, new chunk row ids in chunk order).
        """
        row = self._write(
            "SELECT id FROM documents WHERE collection=? AND path=?", [collection, path]
        ).fetchone()
        meta = json.dumps(metadata or {})
        removed: list[int] = []
        if row is None:
            doc_id = self._write(
                "INSERT INTO documents (collection, path, hash, metadata, updated) VALUES (?,?,?,?,?)",
                [collection, path, content_hash, meta, time.time()],
            ).lastrowid
        else:
            doc_id = row[0]
            removed = self._remove_chunks(doc_id)
            self._write("UPDATE documents SET hash=?, metadata=?, updated=? WHERE id=?",
                        [content_hash, meta, time.time(), doc_id])
        added = []
        tokens = tokens or [[] for _ in chunks]
        for ordinal, (chunk, text_hash, words) in enumerate(zip(chunks, text_hashes, tokens)):
            cursor = self._write(
                "INSERT INTO chunks (collection, doc_id, ordinal, text, text_hash, start_line, "
                "end_line, kind, metadata, tokens) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [collection, doc_id, ordinal, chunk.text, text_hash, chunk.start_line,
                 chunk.end_line, chunk.kind, json.dumps(chunk.metadata, default=str),
                 " ".join(words)],
            )
            added.append(int(cursor.lastrowid))
        return int(doc_id), removed, added

    def _remove_chunks(self, doc_id: int) -> list[int]:
        ids = [r[0] for r in self._write("SELECT id FROM chunks WHERE doc_id=?", [doc_id])]
        self._write("DELETE FROM chunks WHERE doc_id=?", [doc_id])
        return ids

    def delete_document(self, doc_id: int) -> list[int]:
        """Remove a document and its chunks (inside a transaction); returns removed row ids."""
        removed = self._remove_chunks(doc_id)
        self._write("DELETE FROM documents WHERE id=?", [doc_id])
        return removed

    # ---------------------------------------------------------------- chunks

    def chunk_table(self, collection: str) -> tuple[list[int], list[str], list[str]]:
        """(row ids, texts, text hashes) of every chunk of a collection, in row-id order."""
        rows = self._query(
            "SELECT id, text, text_hash FROM chunks WHERE collection=? ORDER BY id", [collection]
        ).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def chunk_tokens(self, collection: str) -> tuple[list[int], list[list[str]]]:
        """(row ids, stored BM25 tokens) of every chunk of a collection, in row-id order."""
        rows = self._query(
            "SELECT id, tokens FROM chunks WHERE collection=? ORDER BY id", [collection]
        ).fetchall()
        return [r[0] for r in rows], [r[1].split() for r in rows]

    def tokens_of(self, row_ids: list[int]) -> list[list[str]]:
        """Stored BM25 tokens of chunks by row id, in the given order (every id must exist)."""
        found = {r[0]: r[1].split() for r in self._rows_by_id("SELECT id, tokens FROM chunks WHERE id IN ({ids})",
                                                              row_ids)}
        return [found[int(i)] for i in row_ids]

    def chunk_ids(self, collection: str) -> list[int]:
        """Row ids of every chunk of a collection, in row-id order."""
        rows = self._query("SELECT id FROM chunks WHERE collection=? ORDER BY id", [collection])
        return [r[0] for r in rows.fetchall()]

    def chunk_hashes(self, row_ids: list[int]) -> dict[int, str]:
        """text_hash (the vector cache key) of chunks by row id; missing ids are left out."""
        return {r[0]: r[1] for r in self._rows_by_id("SELECT id, text_hash FROM chunks WHERE id IN ({ids})",
                                                     row_ids)}

    def chunk_documents(self, collection: str) -> dict[int, int]:
        """Chunk row id -> document id for every chunk of a collection."""
        rows = self._query("SELECT id, doc_id FROM chunks WHERE collection=?", [collection]).fetchall()
        return {r[0]: r[1] for r in rows}

    def set_index_terms(self, items: list[tuple[int, list[str], str]]) -> None:
        """Replace chunks' BM25 tokens and the hash of their indexed text, the vector cache's
        key (inside a transaction); items are (row id, tokens, text hash)."""
        self._write("SELECT 1")  # refuses to run outside a transaction
        self.db.conn.executemany("UPDATE chunks SET tokens=?, text_hash=? WHERE id=?",
                                 [(" ".join(words), text_hash, row_id)
                                  for row_id, words, text_hash in items])

    def get_chunks(self, row_ids: list[int]) -> dict[int, ChunkRow]:
        """Stored chunks by row id (missing ids are left out)."""
        rows = self._rows_by_id(
            "SELECT c.id, c.doc_id, c.ordinal, d.path, c.text, c.text_hash, c.start_line, "
            "c.end_line, c.kind, c.metadata FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE c.id IN ({ids})", row_ids)
        return {r[0]: ChunkRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], json.loads(r[9]))
                for r in rows}

    def admitted_row_ids(self, row_ids: list[int], path_prefix: str | None = None,
                         kind: str | None = None) -> set[int]:
        """Those of `row_ids` whose document path starts with `path_prefix` and whose chunk
        kind is `kind` (None matches anything); unknown ids are left out. The cost follows
        len(row_ids), not the size of the collection."""
        where = ""
        extra: list[Any] = []
        if path_prefix is not None:  # substr, not LIKE: "%" and "_" in a path are literal
            where += " AND substr(d.path, 1, ?) = ?"
            extra += [len(path_prefix), path_prefix]
        if kind is not None:
            where += " AND c.kind = ?"
            extra.append(kind)
        rows = self._rows_by_id("SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                                "WHERE c.id IN ({ids})" + where, row_ids, extra)
        return {r[0] for r in rows}

    def _rows_by_id(self, select: str, row_ids: list[int], extra: list[Any] = ()) -> Iterator[tuple]:
        """The rows of `select` (its "{ids}" the placeholders of a batch of distinct row ids,
        followed by the `extra` parameters) over all of `row_ids`, a batch at a time: SQLite
        caps the parameters of one statement."""
        unique = list(dict.fromkeys(int(i) for i in row_ids))
        for start in range(0, len(unique), _LOOKUP_BATCH):
            part = unique[start : start + _LOOKUP_BATCH]
            yield from self._query(select.format(ids=",".join("?" * len(part))), [*part, *extra]).fetchall()

    def row_ids_for(self, collection: str, chunk_ids: list[str]) -> list[int | None]:
        """Row ids of user-facing chunk ids "doc:ordinal" (None where unknown)."""
        out: list[int | None] = []
        for chunk_id in chunk_ids:
            doc, _, ordinal = str(chunk_id).partition(":")
            if not (doc.isdigit() and ordinal.isdigit()):
                raise InvalidInputError(f"bad chunk id {chunk_id!r}: expected 'doc:ordinal'")
            row = self._query(
                "SELECT id FROM chunks WHERE collection=? AND doc_id=? AND ordinal=?",
                [collection, int(doc), int(ordinal)],
            ).fetchone()
            out.append(None if row is None else int(row[0]))
        return out

    def counts(self, collection: str) -> dict[str, int]:
        documents = self._query(
            "SELECT count(*) FROM documents WHERE collection=?", [collection]).fetchone()[0]
        chunks = self._query(
            "SELECT count(*) FROM chunks WHERE collection=?", [collection]).fetchone()[0]
        return {"documents": int(documents), "chunks": int(chunks)}

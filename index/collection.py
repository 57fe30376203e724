"""A Collection ties the store, BM25 and a dense index together and persists them safely.

Workspace layout::

    <workspace>/store.sqlite                  documents and chunks of every collection (WAL)
    <workspace>/embeddings/<model>.sqlite     vector cache keyed by chunk-text hash
    <workspace>/collections/<name>/manifest.json   -> the committed generation
    <workspace>/collections/<name>/gen-000007/     bm25/ and dense/ of that generation

A commit (add, delete, rebuild) is crash-safe in this order: new chunks are embedded into the
cache first (outside any transaction: slow, but committed per batch so a re-run resumes);
then, inside one store transaction, documents/chunks change and the generation counter is
bumped; the indexes of the new generation are written to a temp dir, fsynced and renamed to
`gen-N`; the store commits; finally manifest.json is replaced atomically. A kill before the
store commit leaves the previous generation (store and manifest agree); a kill after it leaves
a manifest one generation behind the store, which `open` notices and repairs by rebuilding
the indexes from the store and the vector cache (no re-embedding).

Progressive indexing (`add_paths(..., defer_dense=True)`, then `fill_dense`): a commit may
leave chunks without vectors. BM25 covers every chunk at once; the dense index holds the
embedded subset, and the generation records the rest in ``pending.npy`` (persist), so the
state on disk says honestly what the dense side covers (`dense_fraction`). `fill_dense`
embeds pending chunks into the vector cache batch by batch and commits generations that only
add vectors (BM25 files are hard-linked from the previous generation). A kill at any point
loses at most the uncommitted batch's commit, never its vectors: they are in the cache, and
the next `fill_dense` finds them there instead of embedding them again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import logging
import os
import random
import shutil
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from index import persist
from index.bm25 import BM25Index, BM25Statistics
from index.document_bm25 import DocumentBM25
from index.document_evidence import chunk_document_mix
from index.document_names import DocumentNames, lift_named
from index.document_vectors import ChunkScores, DocumentVectors
from index.collection_config import (EMBEDDING_KEYS, INDEX_KEYS, CollectionConfig, IndexReport,
                                     with_search_settings)
from index.dense import DenseIndex
from index.flat import FlatIndex
from index.context import UNNAMED_PREFIX, indexed_text
from runtime.embed import Embedder, EmbedderConfig, content_hash
from runtime.embed_tune import tuned_from
from runtime.errors import CorruptIndexError, EmbedderMismatchError, InvalidInputError, NotFoundError
from runtime.openai_http import OpenAIEndpoint
from index import fusion_weight
from index.fusion_weight import FusionEstimate
from index.hybrid import rrf_fuse, weighted_fuse
from index.files import read_file
from index.generated import generated_reason
from index.ingest import Chunker, chunk_text
from index.query import echoes, is_question, search_text
from index.rerank import ServedReranker
from index.store import ChunkRow, Store
from index.tokenize import tokenize
from index.types import Chunk, Hits, SearchFilter, SearchResult
from index.walk import walk
from index.workspace import ensure_workspace

__all__ = ["Collection", "CollectionConfig", "IndexReport", "MODES", "drop_collection"]
MODES = ("hybrid", "bm25", "dense")
GROUP_BY = (None, "document")


def check_search(query: Any, mode: Any, k: Any, group_by: Any) -> None:
    """Refuse a search request a collection (sharded or not) cannot answer, naming the problem."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("empty query: give some words to search for")
    if mode not in MODES:
        raise InvalidInputError(f"unknown search mode {mode!r}; choose one of {MODES}")
    if not isinstance(k, int) or k <= 0:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    if group_by not in GROUP_BY:
        raise InvalidInputError(f"unknown group_by {group_by!r}; choose 'document' or none")
_log = logging.getLogger(__name__)
@dataclass
class _Put:
    path: str
    hash: str
    chunks: list[Chunk]
    metadata: dict[str, Any] = field(default_factory=dict)


class Collection:
    """Documents, chunks and their BM25 + dense indexes under one name in a workspace."""

    def __init__(self, workspace: Path, name: str, store: Store, config: CollectionConfig,
                 embedding_endpoint: OpenAIEndpoint | None = None, device: str = "cpu") -> None:
        self.workspace, self.name, self.store, self.config = workspace, name, store, config.resolved()
        self.embedding_endpoint, self.device = embedding_endpoint, device
        self.directory = workspace / "collections" / name
        self._embedder: Embedder | None = None
        self._lock = threading.RLock()  # loading and committing
        self._index_lock = threading.Lock()  # searching vs. mutating the live in-memory indexes
        self._lock_depth = 0
        self._loaded_stamp: tuple | None = None
        self._bm25: BM25Index | None = None
        self._documents: DocumentBM25 | None = None  # BM25 over whole documents, beside _bm25
        self._names: tuple[Any, DocumentNames] | None = None  # (loaded stamp, its document names)
        self._dense: DenseIndex | None = None
        self._document_vectors: DocumentVectors | None = None  # each document's mean chunk vector, beside _dense
        self._pending = np.empty(0, dtype=np.int64)  # chunk ids of the loaded generation without vectors
        self._fusion: tuple[int, FusionEstimate | None] | None = None  # (file mtime, estimate)
        self.reranker: ServedReranker | None = None  # set by `open`

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, workspace: Path, name: str = "default", config: CollectionConfig | None = None,
             create: bool = True, embedding_endpoint: OpenAIEndpoint | None = None,
             reembed: bool = False, device: str = "cpu",
             expected_embedder: tuple[str, str | None] | None = None,
             reranker: ServedReranker | None = None) -> "Collection":
        """Open (or create) a collection.

        Args:
            workspace: the workspace directory (created if missing when `create`).
            name: collection name.
            config: settings; None uses the stored ones (or defaults for a new collection).
                A config whose index settings differ from the stored ones rebuilds the indexes.
                A config that names no embedding backend (None) takes the one the collection
                recorded for its model, else the default (`CollectionConfig.resolved`).
            create: create the collection when it does not exist (else NotFoundError).
            embedding_endpoint: the server of an "openai" embedding backend (not stored: it may
                carry an API key).
            reembed: allow `config` to name another embedding model than the one that built
                the collection's vectors; every chunk is then embedded again. Without it such
                a config raises EmbedderMismatchError (vectors of two models never mix).
            device: torch device of a sentence-transformers embedder ("cpu", "cuda", "cuda:1");
                not stored: the same vectors come out on any device.
            reranker: a served re-ranker (index.rerank) that re-orders the fused top
                `reranker.candidates` of every hybrid search (not stored).
            expected_embedder: (model, backend or None) that the caller's settings name; dense
                search of a collection recorded with another embedder raises
                EmbedderMismatchError naming both fixes (the settings, or --rebuild).
        """
        collection = cls._open(workspace, name, config, create, embedding_endpoint, reembed, device)
        # Checked when dense search first needs the embedder, not here: BM25 and document
        # reads work whatever embedder the settings name.
        collection.expected_embedder = expected_embedder
        collection.reranker = reranker
        return collection

    @classmethod
    def _open(cls, workspace: Path, name: str, config: CollectionConfig | None, create: bool,
              embedding_endpoint: OpenAIEndpoint | None, reembed: bool, device: str) -> "Collection":
        workspace = Path(workspace).expanduser()
        if workspace.exists() and not workspace.is_dir():
            raise InvalidInputError(f"workspace {workspace} is a file, not a directory")
        if not create and not (workspace / "store.sqlite").exists():
            raise NotFoundError(f"no workspace at {workspace}: run codehop index first")
        if config is not None:
            persist.dense_backend(config.dense)  # fail before any work when the backend is missing
        ensure_workspace(workspace)
        store = Store(workspace / "store.sqlite")
        stored = store.collection(name)
        manifest = workspace / "collections" / name / "manifest.json"
        if stored is None:
            if manifest.exists():
                raise CorruptIndexError(
                    f"collection {name!r} has index files but no rows in {store.path}: the store "
                    "was lost or truncated; delete the workspace and re-run codehop index")
            if not create:
                raise NotFoundError(
                    f"no collection {name!r} in {workspace} (have: {store.collections() or 'none'})")
            config = (config or CollectionConfig()).resolved()
            store.create_collection(name, config.to_dict())
            return cls(workspace, name, store, config, embedding_endpoint, device)
        try:
            current = CollectionConfig.from_dict(stored["config"])
        except (TypeError, KeyError, ValueError, AttributeError, ImportError) as error:
            raise CorruptIndexError(f"collection {name!r} has an unreadable config ({error})") from error
        collection = cls(workspace, name, store, current, embedding_endpoint, device)
        config = None if config is None else config.resolved(current)
        if config is not None and config.to_dict() != current.to_dict():
            changed = any(getattr(config, key) != getattr(current, key) for key in EMBEDDING_KEYS)
            if changed and stored["generation"] > 0 and not reembed:
                store.close()
                raise EmbedderMismatchError(
                    f"collection {name!r} was embedded with {current.embedder_name}; the settings name "
                    f"{config.embedder_name}, and vectors of two models cannot be searched together: "
                    f"re-index it with `codehop index --rebuild --collection {name}` (embeds every "
                    "chunk again) or index into another --collection")
            collection.config = config
            with store.transaction():
                store.set_config(name, config.to_dict())
            new, old = config.to_dict(), current.to_dict()
            if stored["generation"] > 0 and any(new[key] != old[key] for key in INDEX_KEYS):
                collection.rebuild(progress=False)
        return collection

    def search_with(self, config: CollectionConfig) -> None:
        """Search with `config`'s search-time settings (SEARCH_KEYS: fusion, lexical, semantic,
        ...) from now on, without storing them; index settings stay the stored ones. For a face
        that only reads, e.g. `codehop search` under a codehop.toml changed since indexing."""
        self.config = with_search_settings(self.config, config)

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        self.store.close()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def embedder(self) -> Embedder:
        """The collection's embedder (model loaded on first encode)."""
        if self._embedder is None:
            self._check_expected_embedder()
            remote = self.config.embedding_backend == "openai"
            if remote and self.embedding_endpoint is None:
                raise EmbedderMismatchError(
                    f"collection {self.name!r} is embedded by an OpenAI-compatible server (model "
                    f"{self.config.embedding_model!r}) and no server is configured: set [embedding] "
                    "backend = 'openai' and base_url in codehop.toml to search it as built, or re-embed "
                    f"it locally with `codehop index --rebuild --collection {self.name}`")
            self._embedder = Embedder(EmbedderConfig(
                model=self.config.embedding_model, batch_size=self.config.embed_batch_size,
                cache_dir=self.workspace / "embeddings", backend=self.config.embedding_backend,
                endpoint=self.embedding_endpoint if remote else None, device=self.device))
        return self._embedder

    def _check_expected_embedder(self) -> None:
        """The settings' (model, backend), given to `open`, must be the recorded embedder's
        (backend None: any); otherwise the query would be embedded by another model."""
        expected = getattr(self, "expected_embedder", None)
        if expected is None:
            return
        model, backend = expected
        recorded = self.config
        # a collection tuned with `codehop tune` records its tune of the settings' model
        if (model in (recorded.embedding_model, tuned_from(recorded.embedding_model))
                and backend in (None, recorded.embedding_backend)):
            return
        named = f"{backend}:{model}" if backend else model
        raise EmbedderMismatchError(
            f"collection {self.name!r} was embedded with {recorded.embedder_name}, but the settings name "
            f"{named}: set [embedding] model = {recorded.embedding_model!r} and backend = "
            f"{recorded.embedding_backend!r} in codehop.toml to search it as built, or re-embed it with "
            f"`codehop index --rebuild --collection {self.name}`")

    def _check_dim(self, dense, dim: int) -> None:
        """Vectors of another size than the index's: another model is answering."""
        if dense is not None and dense.dim != dim:
            raise EmbedderMismatchError(
                f"collection {self.name!r} holds {dense.dim}-d vectors from {self.config.embedder_name}, "
                f"but the embedder now returns {dim}-d ones (did the server's model change?): re-index "
                f"with `codehop index --rebuild --collection {self.name}`")

    def __len__(self) -> int:
        return self.store.counts(self.name)["chunks"]

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, **self.store.counts(self.name), "dense": self.config.dense,
                "embedding_model": self.config.embedder_name, "context": bool(self.config.context),
                "fusion": self.fusion_settings()}

    def pending_ids(self) -> np.ndarray:
        """Row ids of the committed chunks that have no vector in the dense index yet."""
        self._ensure_loaded()
        with self._index_lock:
            return self._pending.copy()

    def dense_fraction(self) -> float:
        """Share of the committed chunks the dense side can find (1.0: complete)."""
        self._ensure_loaded()
        with self._index_lock:
            total = 0 if self._bm25 is None else len(self._bm25)
            return 1.0 if total == 0 else 1.0 - len(self._pending) / total

    # ---------------------------------------------------------------- adding

    def add_paths(self, paths: list[str | Path], chunker: Chunker | None = None,
                  progress: bool = True, defer_dense: bool = False,
                  write_lock: Callable[[], Any] | None = None,
                  on_scan: Callable[[dict[str, int]], None] | None = None,
                  on_embed: Callable[[dict[str, int]], None] | None = None,
                  within: list[str | Path] | None = None,
                  owns: Callable[[str], bool] | None = None) -> IndexReport:
        """Index files and directories incrementally by content hash.

        Unchanged files are skipped, changed ones re-chunked, and documents under a given
        directory whose files are gone are removed.

        Args:
            paths: files and/or directories.
            chunker: optional `(path, text) -> list[Chunk] | None`; None results fall back to
                the built-in chunkers.
            progress: show tqdm bars (files, then chunks) on stderr.
            defer_dense: commit BM25 at once and leave chunks without a cached vector pending
                (`fill_dense` embeds them later); False embeds the new chunks first. Chunks
                left pending by an earlier deferred run stay pending until `fill_dense`.
            write_lock: a context-manager factory held around the commit only (e.g. a server's
                readers-writer lock): reading, chunking and embedding happen before it, once.
            on_scan: called once the files are listed and after each file is read and chunked,
                with {"files_done", "files_total", "chunks" (of new or changed files),
                "unchanged", "skipped"} so far
                (e.g. a `ProgressPrinter` of a server's log, which throttles it).
            on_embed: called after each embedding batch of the new chunks with {"done",
                "total"} chunks (not called when every vector is already cached).
            within: the directories a symbolic link met in a walk may point into (e.g. a
                server's roots); default: the given paths. A link leading elsewhere is
                skipped with the reason, never read.
            owns: which file paths this collection takes (a shard of index.sharded: those
                its hash owns); the others are passed over unread and uncounted.
        Returns:
            an IndexReport (also lists skipped files with the reason).
        """
        started = time.perf_counter()
        roots = self._roots(paths)
        report = IndexReport(self.name)
        existing = self.store.documents(self.name)
        puts, seen = self._scan(roots, existing, chunker, report, progress, on_scan, within, owns)
        gone = [doc.id for path, doc in existing.items()
                if path not in seen and any(path == str(r) or path.startswith(str(r) + os.sep)
                                            for r in roots)]
        report.removed = len(gone)
        if not defer_dense:
            self._embed_chunks([c for put in puts for c in put.chunks], report, progress, on_embed)
        if puts or gone:
            with write_lock() if write_lock else nullcontext():
                self._commit(puts, gone, report, defer=defer_dense)
            self.refresh_fusion_weight()
        self._finish(report, started)
        return report

    def _roots(self, paths: list[str | Path]) -> list[Path]:
        """The given paths resolved; a missing path, or a named file that cannot be indexed,
        is an error before anything changes."""
        if not paths:
            raise InvalidInputError("no paths given: name the files or directories to index")
        roots = []
        for given in paths:
            root = Path(given).expanduser()
            if not root.exists():
                raise NotFoundError(f"path {given} does not exist")
            roots.append(root.resolve())
        for root in roots:
            if not root.is_dir():
                read = read_file(root, self.config.ingest.max_file_bytes)
                if read.text is None:
                    raise InvalidInputError(f"cannot index {root}: {read.reason}")
        return roots

    def _scan(self, roots: list[Path], existing: dict, chunker: Chunker | None,
              report: IndexReport, progress: bool,
              on_scan: Callable[[dict[str, int]], None] | None,
              within: list[str | Path] | None = None,
              owns: Callable[[str], bool] | None = None) -> tuple[list[_Put], set[str]]:
        """Read and chunk the new or changed files under `roots` (counting into `report`).
        Returns the documents to put and the paths still present (changed or not)."""
        from tqdm import tqdm

        seen: set[str] = set()
        processed: set[str] = set()
        puts: list[_Put] = []
        def skipped(path, reason) -> None:
            if owns is None or owns(str(path)):
                report.skipped.append((str(path), reason))

        files = list(walk(roots, self.config.walk, within=within, on_skip=skipped))
        workspace = str(self.workspace.resolve()) + os.sep
        named = {str(root) for root in roots if not root.is_dir()}  # a choice: never judged generated

        def each_file() -> Iterator[Path]:
            """`files`, telling `on_scan` how far the scan is before each file and at the end."""
            counted = chunks = 0
            for done in range(len(files) + 1):
                if on_scan is not None:
                    chunks += sum(len(put.chunks) for put in puts[counted:])
                    counted = len(puts)
                    on_scan({"files_done": done, "files_total": len(files), "chunks": chunks,
                             "unchanged": report.unchanged, "skipped": len(report.skipped)})
                if done < len(files):
                    yield files[done]

        for file in tqdm(each_file(), total=len(files), desc="scan", unit="file", disable=not progress,
                         leave=False):
            key = str(file.resolve())
            if key in processed or key.startswith(workspace):  # seen twice, or our own state
                continue
            if owns is not None and not owns(key):  # another shard's
                continue
            processed.add(key)
            report.files += 1
            kept, put = self._scan_file(file, key, existing.get(key), chunker, report,
                                        judge=key not in named)
            if kept:
                seen.add(key)
            if put is not None:
                puts.append(put)
        return puts, seen

    def _scan_file(self, file: Path, key: str, old, chunker: Chunker | None,
                   report: IndexReport, judge: bool = True) -> tuple[bool, _Put | None]:
        """One file -> (whether its document stays, its new chunks if any), counted into
        `report`: skipped (with the reason), unchanged, added or updated. `judge`: apply the
        machine-written content rules (not to a file the caller named)."""
        read = read_file(file, self.config.ingest.max_file_bytes)
        text, reason = read.text, read.reason
        if text is None:
            report.skipped.append((key, reason))
            return False, None
        reason = self._generated(file, text) if judge else ""
        if reason:
            report.skipped.append((key, reason))
            return False, None
        digest = content_hash(text)
        if old is not None and old.hash == digest:
            report.unchanged += 1
            return True, None
        try:
            chunks, reason = chunk_text(key, text, self.config.ingest, chunker)
        except (ValueError, RecursionError) as error:  # a chunker choking on odd input
            chunks, reason = [], f"chunker failed ({error})"
        if not chunks and old is None:
            report.skipped.append((key, reason))
            return False, None
        if old is None:
            report.added += 1
        else:
            report.updated += 1
        if read.encoding != "utf-8":  # the chunk says how its bytes were read (e.g. "cp1252")
            chunks = [dataclasses.replace(c, metadata={**c.metadata, "encoding": read.encoding})
                      for c in chunks]
        return True, _Put(key, digest, chunks, {"encoding": read.encoding})

    def _generated(self, file: Path, text: str) -> str:
        """Why a file's contents look machine-written (index.generated), "" when they do not
        or when the walk settings keep it anyway."""
        walk_config = self.config.walk
        if not walk_config.skip_generated:
            return ""
        # `include` patterns are relative to a walked directory, which is one of the parents.
        if walk_config.include and any(walk_config.included(file.relative_to(parent).as_posix())
                                       for parent in file.parents):
            return ""
        return generated_reason(file.name, text)

    def add_texts(self, texts: list[str], paths: list[str] | None = None,
                  metadatas: list[dict[str, Any]] | None = None) -> list[str]:
        """Index raw texts, one document and one chunk each.

        Args:
            texts: the texts (non-empty).
            paths: optional document path per text (a text with an existing path replaces it);
                default "text:<hash>".
            metadatas: optional metadata per text.
        Returns:
            the chunk ids, in order.
        """
        if isinstance(texts, str) or not texts:
            raise InvalidInputError("add_texts needs a non-empty list of texts")
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InvalidInputError("add_texts: every text must be a non-empty string")
        for extra, label in ((paths, "paths"), (metadatas, "metadatas")):
            if extra is not None and len(extra) != len(texts):
                raise InvalidInputError(f"add_texts: {label} must have one entry per text")
        puts = []
        for i, text in enumerate(texts):
            path = paths[i] if paths else unnamed_text_path(text)
            metadata = dict(metadatas[i]) if metadatas else {}
            chunk = Chunk(text, path, 1, max(1, len(text.splitlines())), "text", metadata)
            puts.append(_Put(path, content_hash(text), [chunk], metadata))
        report = IndexReport(self.name)
        self._embed_chunks([p.chunks[0] for p in puts], report, progress=False)
        doc_ids = self._commit(puts, [], report)
        self.refresh_fusion_weight()
        return [f"{doc_id}:0" for doc_id in doc_ids]

    def add_documents(self, documents: dict[str, list[Chunk]],
                      metadatas: dict[str, dict[str, Any]] | None = None,
                      progress: bool = False) -> list[int]:
        """Index documents already cut into chunks (e.g. by a benchmark's own chunker); a
        document with an existing path replaces it.

        Args:
            documents: document path -> its chunks, in document order (each non-empty).
            metadatas: optional metadata per document path.
            progress: show an embedding progress bar.
        Returns:
            the document ids, in order.
        """
        if not documents or any(not chunks for chunks in documents.values()):
            raise InvalidInputError("add_documents needs documents with at least one chunk each")
        if any(not c.text.strip() for chunks in documents.values() for c in chunks):
            raise InvalidInputError("add_documents: every chunk needs some text")
        puts = [_Put(path, content_hash("\0".join(c.text for c in chunks)), list(chunks),
                     dict((metadatas or {}).get(path, {})))
                for path, chunks in documents.items()]
        report = IndexReport(self.name)
        self._embed_chunks([c for put in puts for c in put.chunks], report, progress)
        doc_ids = self._commit(puts, [], report)
        self.refresh_fusion_weight()
        return doc_ids

    def delete(self, path_or_doc_id: str | int | Path) -> int:
        """Remove one document (by path, document id or chunk id); returns chunks removed."""
        key = path_or_doc_id
        try:
            doc = self.store.find_document(self.name, str(key))
        except NotFoundError:
            resolved = str(Path(str(key)).expanduser().resolve())
            doc = self.store.find_document(self.name, resolved)
        report = IndexReport(self.name)
        self._commit([], [doc.id], report)
        self.refresh_fusion_weight()
        return report.chunks_removed

    def rebuild(self, progress: bool = True, defer_dense: bool = False) -> IndexReport:
        """Rebuild BM25 and the dense index from the store (cached vectors are reused).

        With `defer_dense` only cached vectors are used and the other chunks stay pending.
        """
        started = time.perf_counter()
        report = IndexReport(self.name)
        if not defer_dense:
            ids = self.store.chunk_ids(self.name)
            rows = self.store.get_chunks(ids)
            self._embed_texts([self._row_text(rows[i]) for i in ids if i in rows], report, progress)
        self._commit([], [], report, rebuild=True, defer=defer_dense)
        self.refresh_fusion_weight(force=True)
        self._finish(report, started)
        return report

    def _finish(self, report: IndexReport, started: float) -> None:
        counts = self.store.counts(self.name)
        report.documents, report.chunks = counts["documents"], counts["chunks"]
        report.elapsed_s = time.perf_counter() - started

    def _embed_chunks(self, chunks: list[Chunk], report: IndexReport, progress: bool,
                      on_embed: Callable[[dict[str, int]], None] | None = None) -> None:
        self._embed_texts([self._indexed(c.text, c.path, c.kind, c.metadata) for c in chunks],
                          report, progress, on_embed)

    def _indexed(self, text: str, path: str, kind: str, metadata: dict[str, Any]) -> str:
        """What BM25 tokenises and the embedder embeds of a chunk (index.context)."""
        return indexed_text(text, path, kind, metadata, enabled=bool(self.config.context))

    def _row_text(self, row: ChunkRow) -> str:
        return self._indexed(row.text, row.path, row.kind, row.metadata)

    def indexed_texts(self, texts: list[str], paths: list[str] | None = None,
                      metadatas: list[dict[str, Any]] | None = None) -> list[str]:
        """The texts `add_texts(texts, paths, metadatas)` would embed: embedding them first (e.g.
        outside a server's write lock) makes that call's embedding a cache lookup."""
        return [self._indexed(text, paths[i] if paths else unnamed_text_path(text), "text",
                              metadatas[i] if metadatas else {}) for i, text in enumerate(texts)]

    def _embed_texts(self, texts: list[str], report: IndexReport, progress: bool,
                     on_embed: Callable[[dict[str, int]], None] | None = None) -> None:
        """Put every text's vector into the cache (already cached ones cost a lookup)."""
        if not texts:
            return
        from tqdm import tqdm

        missing = len(texts) - len(self.embedder.cached(texts))
        report.chunks_embedded += missing
        if missing == 0:
            return
        with tqdm(total=len(texts), desc="embed", unit="chunk", disable=not progress,
                  leave=False) as bar:
            done = 0  # bar.n stays 0 while the bar is disabled

            def advance(n: int) -> None:
                nonlocal done
                done += n
                bar.update(n)
                if on_embed is not None:
                    on_embed({"done": done, "total": len(texts)})

            self.embedder.encode(texts, progress=advance)

    # ---------------------------------------------------------------- committing

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """One writer per collection across processes (flock), and across threads."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._lock_depth:  # re-entered by this thread: the flock is already ours
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with open(self.directory / ".lock", "w") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _commit(self, puts: list[_Put], gone: list[int], report: IndexReport,
                rebuild: bool = False, defer: bool = False) -> list[int]:
        doc_ids: list[int] = []
        with self._write_lock():
            if rebuild:  # must work even when the current indexes are unreadable
                self._bm25 = self._dense = self._documents = self._document_vectors = None
            else:
                self._ensure_loaded(repair=False)
            staged: Path | None = None
            try:
                with self.store.transaction():
                    removed: list[int] = []
                    added: list[int] = []
                    for doc_id in gone:
                        removed += self.store.delete_document(doc_id)
                    for put in puts:
                        # The stored hash keys the vector cache: it is the indexed text's.
                        texts = [self._indexed(c.text, put.path, c.kind, c.metadata) for c in put.chunks]
                        hashes = [content_hash(text) for text in texts]
                        tokens = [tokenize(text, self.config.tokenizer) for text in texts]
                        doc_id, old, new = self.store.put_document(
                            self.name, put.path, put.hash, put.chunks, hashes, put.metadata, tokens)
                        doc_ids.append(doc_id)
                        removed += old
                        added += new
                    # A path put twice in one commit replaces its own fresh chunks: net them out.
                    fresh = set(added) & set(removed)
                    added = [i for i in added if i not in fresh]
                    removed = [i for i in removed if i not in fresh]
                    report.chunks_added += len(added)
                    report.chunks_removed += len(removed)
                    generation = self.store.collection(self.name)["generation"] + 1
                    self.store.set_generation(self.name, generation)
                    staged = self._write_generation(generation, removed, added, rebuild, defer,
                                                    vectors_only=not (puts or gone or rebuild))
            except BaseException:
                self._loaded_stamp = None  # indexes may have been modified in memory
                if staged is not None:
                    shutil.rmtree(staged, ignore_errors=True)
                raise
            self._write_manifest(generation)
            persist.clean(self.directory, keep=staged.name)
            # The indexes just written are the committed ones: keep them instead of reloading.
            with self._index_lock:
                (self._bm25, self._dense, self._pending, self._documents,
                 self._document_vectors) = self._staged_indexes
            self._loaded_stamp = (persist.manifest_stamp(self.directory),)
            if self.config.name_weight > 0:  # read here, on the writer's side, not in the next search
                self._document_names()
        return doc_ids

    def _write_generation(self, generation: int, removed: list[int], added: list[int],
                          rebuild: bool, defer: bool = False, vectors_only: bool = False) -> Path:
        """Build this generation's indexes from the (uncommitted) store view; returns its dir.

        The added chunks get vectors (embedded now, or with `defer` only those already cached);
        chunks pending before get theirs only from the cache (embedding them is `fill_dense`'s
        job, outside the writer lock). Whatever has no vector stays pending.
        `vectors_only` (nothing in the store changed) reuses the loaded BM25 and its files.
        """
        bm25_from = None
        if vectors_only and self._bm25 is not None and self._loaded_dir() is not None:
            bm25, bm25_from = self._bm25, self._loaded_dir()
            ids = self.store.chunk_ids(self.name)
            documents = self._documents or self._documents_for(bm25)
        else:
            if rebuild:  # the tokenizer or context settings may have changed: index text again
                ids = self.store.chunk_ids(self.name)
                rows = self.store.get_chunks(ids)
                texts = [self._row_text(rows[i]) for i in ids]
                tokens = [tokenize(text, self.config.tokenizer) for text in texts]
                self.store.set_index_terms([(i, words, content_hash(text))
                                            for i, words, text in zip(ids, tokens, texts)])
                bm25 = BM25Index(self.config.bm25)
                bm25.index(tokens, np.asarray(ids, dtype=np.int64))
            else:
                ids, bm25 = self._updated_bm25(removed, added)
            documents = self._documents_for(bm25)
        dense, pending = self._dense, self._pending
        nothing = dense is None and not len(pending)  # no dense state to build on
        if rebuild or nothing or (dense is not None and dense.kind != self.config.dense):
            dense, added, pending = None, ids, np.empty(0, dtype=np.int64)  # from scratch
        live = dense is not None  # the index searches use: mutate it only under _index_lock
        if live and removed:
            with self._index_lock:
                dense.delete(np.asarray(removed, dtype=np.int64))
        pending = pending[~np.isin(pending, np.asarray(removed, dtype=np.int64))]
        added = np.setdiff1d(np.asarray(added, dtype=np.int64), pending)
        ready, vectors = self._vectors_for(added, defer)
        old_ready, old_vectors = self._vectors_for(pending, True)
        if len(old_ready):
            ready = np.concatenate([ready, old_ready])
            vectors = old_vectors if not len(vectors) else np.concatenate([vectors, old_vectors])
        pending = np.setdiff1d(np.union1d(added, pending), ready)
        if len(ready):
            self._check_dim(dense, vectors.shape[1])
            if dense is None:
                create, _ = persist.dense_backend(self.config.dense)
                dense = create(self.config.dense, vectors.shape[1], self.config.dense_config)
                live = False
            with self._index_lock if live else nullcontext():
                dense.add(ready, vectors)
        previous = None if rebuild or dense is not self._dense else self._document_vectors
        document_vectors = self._readable_document_vectors(dense, pending, previous)
        final, counts = persist.stage_generation(self.directory, generation, bm25, dense,
                                                 pending, bm25_from, documents, document_vectors)
        self._staged_indexes = (bm25, dense, pending, documents, document_vectors)
        counts = {**counts, **self.store.counts(self.name)}
        self._pending_manifest = persist.new_manifest(
            self.name, generation, final.name, dense, self.config.dense, counts,
            self.config.embedding_model)
        return final

    def _updated_bm25(self, removed: list[int], added: list[int]) -> tuple[list[int], BM25Index]:
        """(every chunk id, the chunk BM25 of the store view being committed).

        The committed index, copied, with the removed chunks deleted and the added ones counted
        from their stored tokens: the same scores as counting every chunk again (term numbering
        aside), which took ~8 s for one new text among 5,000 devdocs pages. Counted from scratch
        when there is no committed index with counts, when the update does not give the store's
        rows in the store's order, or when over half the vocabulary is deleted documents' terms.
        """
        ids = self.store.chunk_ids(self.name)
        base = self._bm25
        if base is not None and base.has_counts:
            bm25 = base.copy()
            bm25.delete(np.asarray(removed, dtype=np.int64))
            bm25.add(self.store.tokens_of(added), np.asarray(added, dtype=np.int64))
            if np.array_equal(bm25.ids(), np.asarray(ids, dtype=np.int64)) and bm25.dead_term_share() <= 0.5:
                return ids, bm25
        return self._bm25_from_store()

    def _bm25_from_store(self) -> tuple[list[int], BM25Index]:
        """(every chunk id, a chunk BM25 counted from every chunk's stored tokens)."""
        ids, tokens = self.store.chunk_tokens(self.name)
        bm25 = BM25Index(self.config.bm25)
        bm25.index(tokens, np.asarray(ids, dtype=np.int64))
        return ids, bm25

    def _documents_for(self, bm25: BM25Index) -> DocumentBM25:
        """BM25 over whole documents, beside the chunk index `bm25` of the same store view:
        summed from its counts (seconds), or, for an index saved without counts, tokens read
        again from the store."""
        document_of = self.store.chunk_documents(self.name)
        if bm25.has_counts:
            return DocumentBM25.from_chunk_index(bm25, document_of)
        ids, tokens = self.store.chunk_tokens(self.name)
        return DocumentBM25.build(ids, [document_of[i] for i in ids], tokens, self.config.bm25)

    def _document_vectors_for(self, dense: DenseIndex | None, pending: np.ndarray,
                              previous: DocumentVectors | None) -> DocumentVectors | None:
        """Each document's mean vector over its chunks that `dense` holds (every chunk not
        pending), read from the vector cache; documents whose chunks are those of `previous`
        keep its mean (a commit reads only the changed documents' vectors)."""
        if dense is None or not len(dense):
            return None
        document_of = self.store.chunk_documents(self.name)
        ids = np.setdiff1d(np.fromiter(document_of, dtype=np.int64, count=len(document_of)), pending)
        docs = np.asarray([document_of[i] for i in ids.tolist()], dtype=np.int64)

        def fetch(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._vectors_for(np.asarray(wanted, dtype=np.int64), True)

        if previous is not None and previous.dim == dense.dim:
            return previous.updated(ids, docs, fetch)
        found, vectors = fetch(ids)
        return DocumentVectors.build(found, docs[np.isin(ids, found)], vectors) if len(found) else None

    def _readable_document_vectors(self, dense: DenseIndex | None, pending: np.ndarray,
                                   previous: DocumentVectors | None = None) -> DocumentVectors | None:
        """`_document_vectors_for`, or None when the vector cache cannot be read here (a
        collection embedded by a server that is not configured, when it is loaded from a
        generation saved without document vectors or deleted from): the dense voter is then
        the chunks' alone, and searching and deleting still work."""
        try:
            return self._document_vectors_for(dense, pending, previous)
        except EmbedderMismatchError as error:
            _log.warning("collection %r: no document vectors (%s); dense search uses chunks alone",
                         self.name, error)
            return None

    def _vectors_for(self, ids: np.ndarray, cached_only: bool) -> tuple[np.ndarray, np.ndarray]:
        """(ids that have a vector, their vectors): every id (embedding the missing ones), or
        with `cached_only` those whose vector is in the cache, found by text hash alone."""
        if not len(ids):
            return ids, np.zeros((0, 0), np.float32)
        if not cached_only:
            rows = self.store.get_chunks(ids.tolist())
            return ids, self.embedder.encode([self._row_text(rows[int(i)]) for i in ids])
        hashes = self.store.chunk_hashes(ids.tolist())
        found = self.embedder.cached_by_hash(list(hashes.values()))
        ready = np.asarray([i for i in ids.tolist() if hashes.get(i) in found], dtype=np.int64)
        if not len(ready):
            return ready, np.zeros((0, 0), np.float32)
        return ready, np.stack([found[hashes[int(i)]] for i in ready]).astype(np.float32, copy=False)

    def _loaded_dir(self) -> Path | None:
        """The committed generation directory the loaded indexes came from."""
        manifest = persist.read_manifest(self.directory, self.name)
        return None if manifest is None else self.directory / manifest["index_dir"]

    # ---------------------------------------------------------------- progressive indexing

    def fill_dense(self, batch_size: int = 256, commit_every_s: float = 15.0,
                   progress: Callable[[dict[str, int]], None] | None = None,
                   stop: Callable[[], bool] | None = None,
                   write_lock: Callable[[], Any] | None = None) -> dict[str, int]:
        """Embed the pending chunks and commit their vectors, batch by batch.

        Vectors go to the cache per batch (a kill keeps them); a generation adding them to the
        dense index is committed every `commit_every_s` and at the end. Chunks that other
        writers add meanwhile (deferred) are picked up before it returns.

        Args:
            batch_size: chunks embedded per step (one cache commit each).
            commit_every_s: seconds between dense commits (each rewrites the dense index files).
            progress: called after each step with {"embedded", "cached", "done", "pending",
                "ids", "commits"}: chunks embedded by this call and found in the cache so far,
                this round's done/total, the row ids of the step and the commits so far.
            stop: polled between steps; True ends the call after committing what is done.
            write_lock: a context-manager factory held around each commit (e.g. a server's
                readers-writer lock), besides the collection's own writer lock.
        Returns:
            {"embedded", "cached", "commits"}.
        """
        counts = {"embedded": 0, "cached": 0, "commits": 0}
        last_commit = time.monotonic()
        uncommitted = False

        def commit() -> None:
            with write_lock() if write_lock else nullcontext():
                self._commit([], [], IndexReport(self.name), defer=True)
            counts["commits"] += 1

        done_in_round = 0
        while True:
            pending = self.pending_ids()
            if not len(pending):
                break
            total = len(pending)
            for start in range(0, total, batch_size):
                if stop is not None and stop():
                    if uncommitted:
                        commit()
                    return counts
                part = pending[start:start + batch_size].tolist()
                rows = self.store.get_chunks(part)
                texts = [self._row_text(rows[i]) for i in part if i in rows]
                known = len(self.embedder.cached(texts))
                self.embedder.encode(texts)
                counts["embedded"] += len(set(texts)) - known
                counts["cached"] += known
                uncommitted = True
                done_in_round = start + len(part)
                if progress is not None:
                    progress({"embedded": counts["embedded"], "cached": counts["cached"],
                              "done": done_in_round, "pending": total, "ids": part,
                              "commits": counts["commits"]})
                if time.monotonic() - last_commit >= commit_every_s and done_in_round < total:
                    commit()
                    uncommitted = False
                    last_commit = time.monotonic()
            commit()
            uncommitted = False
            last_commit = time.monotonic()
            if len(np.intersect1d(self.pending_ids(), pending)):  # vectors lost meanwhile?
                break  # e.g. the cache was cleared: do not loop forever
        self.refresh_fusion_weight()
        return counts

    def _write_manifest(self, generation: int) -> None:
        assert self._pending_manifest["generation"] == generation
        persist.write_manifest(self.directory, self._pending_manifest)

    # ---------------------------------------------------------------- loading

    def _ensure_loaded(self, repair: bool = True) -> None:
        """Load the committed indexes once; reload only when another writer committed."""
        stamp = persist.manifest_stamp(self.directory)
        if self._loaded_stamp == (stamp,):  # the common case: no lock, one stat
            return
        with self._lock:
            if self._loaded_stamp is not None and self._loaded_stamp == (stamp,):
                return
            manifest = persist.read_manifest(self.directory, self.name)
            stored = self.store.collection(self.name)
            if stored is None:
                raise CorruptIndexError(f"collection {self.name!r} vanished from {self.store.path}")
            have = 0 if manifest is None else manifest["generation"]
            if have != stored["generation"]:
                if not repair:
                    self._bm25 = self._dense = self._documents = self._document_vectors = None  # the next commit rebuilds everything
                    self._pending = np.empty(0, dtype=np.int64)
                    return
                # The store is ahead of the indexes: an interrupted commit, or a writer between
                # its store commit and its manifest. Wait for writers, then check again.
                with self._write_lock():
                    manifest = persist.read_manifest(self.directory, self.name)
                    have = 0 if manifest is None else manifest["generation"]
                    if have != self.store.collection(self.name)["generation"]:
                        _log.warning("collection %r: indexes behind the store; rebuilding", self.name)
                        # Only cached vectors: chunks that had none stay pending (fill_dense).
                        self.rebuild(progress=False, defer_dense=True)
                return self._ensure_loaded(repair=False)
            loaded = (None, None, np.empty(0, dtype=np.int64))
            documents = document_vectors = None
            if manifest is not None:
                with persist.LOAD_LOCK:
                    loaded = (*persist.load_generation(self.directory, manifest, self.name),
                              persist.load_pending(self.directory, manifest))
                    documents = persist.load_documents(self.directory, manifest)
                    document_vectors = persist.load_document_vectors(self.directory, manifest)
                # A generation written before document BM25 existed: built here, written by
                # the next commit.
                documents = documents or self._documents_for(loaded[0])
                if document_vectors is None:  # written before they existed: built from the cache
                    document_vectors = self._readable_document_vectors(loaded[1], loaded[2])
            with self._index_lock:
                self._bm25, self._dense, self._pending = loaded
                self._documents, self._document_vectors = documents, document_vectors
            self._loaded_stamp = (stamp,)
            if self.config.name_weight > 0:
                self._document_names()

    # ---------------------------------------------------------------- searching

    def search(self, query: str, k: int = 10, mode: str = "hybrid",
               filters: SearchFilter | None = None, group_by: str | None = None) -> list[SearchResult]:
        """Top-k chunks for a text query.

        Args:
            query: free text (not empty); a pasted code prompt is searched without its
                literal data, and a question's echoes (chunks that contain it word for word)
                come after the chunks that do not (index.query).
            k: number of results (> 0).
            mode: "hybrid" (BM25 + dense fused), "bm25" or "dense".
            filters: only chunks it admits come back; still k of them whenever the retrievers
                can reach k such chunks, however rare they are (see `_search`).
            group_by: "document" returns k documents, each once, as its best chunk (MaxP,
                Dai & Callan 2019); None returns chunks.
        Returns:
            SearchResults best first; `score` is BM25, cosine or the fused score by mode.
        """
        check_search(query, mode, k, group_by)
        self._ensure_loaded()
        if filters is not None and filters.admits_everything:
            filters = None
        reranker = self.reranker if mode == "hybrid" else None
        question = is_question(query)
        if reranker is None and not question:
            return self._search(search_text(query), None, k, mode, filters, group_by)
        # A re-ranker re-orders the fused top `candidates`. A question's echoes (chunks holding
        # it word for word) go after the others: twice as deep, so k answers remain.
        depth = max(k, reranker.candidates if reranker else 0, 2 * k if question else 0)
        results = self._search(search_text(query), None, depth, mode, filters, group_by)
        if reranker is not None:
            results = reranker.rerank(query, results)
        if question:
            results = ([r for r in results if not echoes(query, r.text)]
                       + [r for r in results if echoes(query, r.text)])
        return results[:k]

    def _fuse(self, lists: list[Hits]) -> Hits:
        if self.config.fusion == "rrf":
            return rrf_fuse(lists, k=self.config.rrf_k)
        weight = self.dense_weight()
        return weighted_fuse(lists, [1 - weight, weight])

    # ---------------------------------------------------------------- fusion weight

    def dense_weight(self) -> float:
        """The dense list's weight in convex fusion: configured ("weighted") or estimated
        from the collection's own pseudo-queries ("auto", index.fusion_weight)."""
        if self.config.fusion == "weighted":
            return self.config.dense_weight
        estimate = self.fusion_estimate()
        return fusion_weight.PRIOR_DENSE_WEIGHT if estimate is None else estimate.dense_weight

    def fusion_estimate(self) -> FusionEstimate | None:
        """The stored estimate (re-read when another process wrote a new one), or None."""
        path = self.directory / fusion_weight.ESTIMATE_FILE
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None
        if self._fusion is None or self._fusion[0] != stamp:
            self._fusion = (stamp, fusion_weight.load_estimate(path))
        return self._fusion[1]

    def fusion_settings(self) -> dict[str, Any]:
        """How hybrid search fuses, and why (shown in stats)."""
        return {**self._fusion_method(), "lexical": self.config.lexical, "semantic": self.config.semantic,
                "name_weight": self.config.name_weight}

    def _fusion_method(self) -> dict[str, Any]:
        if self.config.fusion == "rrf":
            return {"method": "rrf", "k": self.config.rrf_k}
        if self.config.fusion == "weighted":
            return {"method": "convex", "dense_weight": self.config.dense_weight, "source": "configured"}
        estimate = self.fusion_estimate()
        if estimate is None:
            return {"method": "convex", "dense_weight": fusion_weight.PRIOR_DENSE_WEIGHT,
                    "source": "prior", "reason": "not estimated yet"}
        return {"method": "convex", "dense_weight": estimate.dense_weight, "source": estimate.method,
                "estimate": estimate.to_dict()}

    def refresh_fusion_weight(self, force: bool = False, limit: int = 200) -> FusionEstimate | None:
        """Estimate the dense weight again when the collection drifted from the last estimate
        (or with `force`); called after each commit, outside every lock. Needs the dense side
        complete: while chunks are pending the last estimate (or the prior) stays.
        Returns the estimate in force (None when fusion is not "auto" or none exists)."""
        if self.config.fusion != "auto":
            return None
        self._ensure_loaded()
        chunks = len(self)
        current = self.fusion_estimate()
        if not force and not fusion_weight.is_stale(current, chunks):
            return current
        if self._dense is None or len(self.pending_ids()):
            return current
        document_of = self.store.chunk_documents(self.name)
        queries = fusion_weight.sample_pseudo_queries(self._sampled_chunks(document_of, limit), limit)
        n = self.config.candidates + 1  # the source chunk is dropped from each list

        def search(texts: list[str]):
            for text in texts:
                yield self._bm25_hits(text, n), self._dense_search(self.embedder.encode_query(text), n)

        estimate = fusion_weight.estimate(queries, search, document_of.get, chunks=chunks)
        fusion_weight.save_estimate(self.directory / fusion_weight.ESTIMATE_FILE, estimate)
        return self.fusion_estimate()

    def _sampled_chunks(self, document_of: dict[int, int], limit: int) -> dict[int, list[tuple[int, str]]]:
        """Chunks (row id, text) of a seeded sample of the documents that have two or more,
        enough for `limit` pseudo-queries (chunks whose lines are all code give none)."""
        rows_of: dict[int, list[int]] = {}
        for row_id, document in document_of.items():
            rows_of.setdefault(document, []).append(row_id)
        documents = sorted(d for d, rows in rows_of.items() if len(rows) >= 2)
        random.Random(0).shuffle(documents)
        wanted = [row for d in documents[: 3 * limit] for row in sorted(rows_of[d])[:8]]
        rows = self.store.get_chunks(wanted)
        sampled: dict[int, list[tuple[int, str]]] = {}
        for row_id in wanted:
            if row_id in rows:
                sampled.setdefault(rows[row_id].doc_id, []).append((row_id, rows[row_id].text))
        return sampled

    def _search(self, query: str | None, vector: np.ndarray | None, k: int, mode: str,
                filters: SearchFilter | None, group_by: str | None = None) -> list[SearchResult]:
        """Top-k among the chunks that this thread's store holds and `filters` admits.

        The retrievers are asked for n candidates, n growing 4x per round, until k of them
        pass or the retrievers have nothing beyond n. Two kinds of candidate do not pass:
        - chunks `filters` rejects: the store checks each candidate once (path and kind), so
          a round costs what its new candidates cost, not the collection's size. Filtered, n
          starts at max(4k, candidates): a filter matching 3 chunks of 100,000 still returns
          all 3, where a fixed over-fetch would return none.
        - chunks the store does not hold: a commit changes the live dense index before its
          store transaction commits (the generation's files must be written first), so for a
          moment the index finds rows that a reader's store does not have yet, and after a
          commit BM25 may still name rows it deleted. Skipped like rejected ones, they cost
          no result: k come back whenever the retrievers reach k chunks the store holds.
        Unfiltered, n starts at k (hybrid: `candidates` from each retriever) and the top k
        rows are read once, as a plain search needs anyway; it widens only if one is missing.
        Exact for BM25 and flat; SPANN and PQ return what their probes reach. Grouped by
        document, a candidate whose document already came back counts like a skipped one.
        """
        if vector is None and mode != "bm25" and self._dense is not None:
            vector = self.embedder.encode_query(query)  # once, not per round
        rows: dict[int, ChunkRow] = {}  # row id -> its row, for candidates read
        skip: set[int] = set()  # candidates that cannot come back: rejected, or not in the store
        checked: set[int] = set()  # candidates `filters` has judged
        if filters is not None or group_by is not None:
            n = max(4 * k, self.config.candidates)
        else:
            n = max(k, self.config.candidates) if mode == "hybrid" else k
        while True:
            hits, complete = self._candidates(query, vector, n, mode)
            if filters is not None:
                new = [i for i in hits.ids.tolist() if i not in checked]
                passing = self.store.admitted_row_ids(new, filters.path_prefix, filters.kind)
                checked.update(new)
                skip.update(i for i in new if i not in passing)
            top = (self._top_documents(hits, k, rows, skip) if group_by
                   else self._top_rows(hits, k, rows, skip))
            if len(top) >= k or complete:
                return self._to_results(top, rows)
            n *= 4

    def _top_rows(self, hits: Hits, k: int, rows: dict[int, ChunkRow], skip: set[int]) -> Hits:
        """The first k of `hits` not in `skip` whose rows the store holds: reads the rows of
        those it has not read into `rows` (one read when it holds them all) and adds the ids
        the store lacks to `skip`."""
        ids = hits.ids.tolist()
        while True:
            if skip:
                top = list(itertools.islice((at for at, i in enumerate(ids) if i not in skip), k))
            else:  # the common case: the top k as they stand
                top = range(min(k, len(ids)))
            unread = [ids[at] for at in top if ids[at] not in rows]
            if unread:
                found = self.store.get_chunks(unread)
                rows.update(found)
                if len(found) < len(unread):
                    skip.update(i for i in unread if i not in found)
                    continue
            return Hits(hits.ids[top], hits.scores[top]) if skip else hits.top(k)

    def _top_documents(self, hits: Hits, k: int, rows: dict[int, ChunkRow], skip: set[int]) -> Hits:
        """The best chunk of each of the first k documents among `hits` (not in `skip`),
        reading rows in batches of 4k as needed."""
        ids = [i for i in hits.ids.tolist() if i not in skip]
        unread = [i for i in ids if i not in rows]
        best: dict[int, int] = {}  # document id -> position in hits
        position = {row_id: at for at, row_id in enumerate(hits.ids.tolist())}
        start = 0
        for row_id in ids:
            if row_id not in rows and unread[start:]:
                batch = unread[start:start + 4 * k]
                found = self.store.get_chunks(batch)
                rows.update(found)
                skip.update(i for i in batch if i not in found)
                start += len(batch)
            row = rows.get(row_id)
            if row is not None and row.doc_id not in best:
                best[row.doc_id] = position[row_id]
                if len(best) >= k:
                    break
        at = np.asarray(sorted(best.values()), dtype=np.int64)
        return Hits(hits.ids[at], hits.scores[at])

    def _candidates(self, query: str | None, vector: np.ndarray | None, n: int,
                    mode: str) -> tuple[Hits, bool]:
        """Ranked candidates from the top n of each retriever of `mode` (hybrid: the fusion of
        its two voters), and whether the retrievers had nothing beyond them."""
        tokens = [] if mode == "dense" else tokenize(query, self.config.tokenizer)  # once, for both BM25 indexes
        bm25 = None if mode == "dense" else self._bm25_token_hits(tokens, n)
        dense, chunk_scores = None, None
        if mode == "hybrid" and vector is not None:
            dense, chunk_scores = self._dense_search_scored(vector, n)
        elif mode != "bm25":
            dense = Hits.empty() if vector is None else self._dense_search(vector, n)
        with self._index_lock:  # mid-commit the dense index may hold more rows than BM25
            total = max(0 if self._bm25 is None else len(self._bm25),
                        0 if self._dense is None else len(self._dense))
        chunk_lists = [hits for hits in (bm25, dense) if hits is not None]
        complete = n >= total or all(len(hits) < n for hits in chunk_lists)
        if mode != "hybrid":
            return chunk_lists[0], complete
        # Documents lend their score to the chunks either retriever found (index.document_evidence).
        evidence = np.concatenate([bm25.ids, dense.ids]).astype(np.int64)
        voters = [self._lexical_voter(tokens, n, bm25, evidence),
                  self._semantic_voter(vector, n, dense, evidence, chunk_scores)]
        return lift_named(self._fuse(voters), self.named_chunks(query), self.config.name_weight), complete

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[SearchResult]:
        """Top-k chunks by inner product with an already embedded (normalised) query vector."""
        if k <= 0:
            raise InvalidInputError(f"k must be positive, got {k}")
        self._ensure_loaded()
        return self._search(None, vector, k, "dense", None)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[SearchResult]]:
        """search_vector for each row of `vectors` (n, dim), in one index pass and one store read
        (a row whose hits the store does not hold yet, mid-commit, is searched again alone)."""
        if k <= 0:
            raise InvalidInputError(f"k must be positive, got {k}")
        vectors = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
        self._ensure_loaded()
        with self._index_lock:
            if self._dense is None or len(self._dense) == 0 or not len(vectors):
                return [[] for _ in range(len(vectors))]
            self._check_dim(self._dense, vectors.shape[1])
            hits = self._dense.search(vectors, k)
        rows = self.store.get_chunks(sorted({int(i) for h in hits for i in h.ids}))
        return [self._to_results(h, rows) if all(int(i) in rows for i in h.ids)
                else self._search(None, vector, k, "dense", None) for h, vector in zip(hits, vectors)]

    def all_indexed_texts(self) -> list[str]:
        """Every chunk's indexed text (what the embedder embeds), in row-id order."""
        rows = self.store.get_chunks(self.store.chunk_ids(self.name))
        return [self._row_text(rows[i]) for i in sorted(rows)]

    def switch_embedder(self, model: str, backend: str, progress: bool = False) -> IndexReport:
        """Record another embedding model and rebuild the dense index with it in one commit.

        Chunks whose vectors the new model has already cached (`codehop tune` embeds them all
        first) are not embedded again; the others are, before anything changes on disk.
        """
        config = dataclasses.replace(self.config, embedding_model=model, embedding_backend=backend)
        if self._embedder is not None:
            self._embedder.close()
        self._embedder = None
        previous, self.config = self.config, config
        try:
            self._embed_texts(self.all_indexed_texts(), IndexReport(self.name), progress)
        except BaseException:
            self.config, self._embedder = previous, None
            raise
        # The config and a generation ahead of the committed indexes change together: a crash
        # before the rebuild's commit is then repaired on open from the new model's cached
        # vectors, never served as old vectors under the new model's name.
        with self._write_lock():
            with self.store.transaction():
                self.store.set_config(self.name, config.to_dict())
                stored = self.store.collection(self.name)
                self.store.set_generation(self.name, stored["generation"] + 1)
            return self.rebuild(progress=progress)

    def bm25_hits(self, query: str, k: int) -> Hits:
        """BM25's top-k chunk row ids for `query` (no filters, no fusion)."""
        self._ensure_loaded()
        return self._bm25_hits(query, k)

    # ---------------------------------------------------------------- as a shard (index.sharded)

    def bm25_statistics(self, tokens: list[str]) -> BM25Statistics:
        """Document count, total length and document frequencies of `tokens` in this
        collection's BM25 index (summed over shards, they score a sharded collection)."""
        self._ensure_loaded()
        with self._index_lock:
            if self._bm25 is None:
                return BM25Statistics(0, 0.0, {})
            return self._bm25.statistics(tokens)

    def document_statistics(self, tokens: list[str]) -> BM25Statistics:
        """`bm25_statistics` of the document index (index.document_bm25)."""
        self._ensure_loaded()
        with self._index_lock:
            if self._documents is None:
                return BM25Statistics(0, 0.0, {})
            return self._documents.statistics(tokens)

    def document_search(self, tokens: list[str], k: int, statistics: BM25Statistics | None = None
                        ) -> tuple[Hits, dict[int, np.ndarray]]:
        """The top-k documents by whole-document BM25 (ids are document ids, scored with
        `statistics`, None: this collection's) and each one's chunk row ids."""
        self._ensure_loaded()
        with self._index_lock:
            documents = self._documents
        if documents is None:
            return Hits.empty(), {}
        hits = documents.search(tokens, k, statistics)
        return hits, {int(d): documents.chunks_of(int(d)) for d in hits.ids.tolist()}

    def bm25_search(self, tokens: list[str], k: int, statistics: BM25Statistics | None = None) -> Hits:
        """BM25 top-k row ids for tokens, scored with `statistics` (None: this collection's)."""
        self._ensure_loaded()
        return self._bm25_token_hits(tokens, k, statistics)

    def dense_hits(self, vector: np.ndarray, k: int) -> Hits:
        """Dense top-k row ids for an embedded query."""
        self._ensure_loaded()
        return self._dense_search(vector, k)

    def indexed_count(self) -> int:
        """Chunks the loaded indexes hold (the larger of BM25 and dense, as `_candidates`)."""
        self._ensure_loaded()
        with self._index_lock:
            return max(0 if self._bm25 is None else len(self._bm25), 0 if self._dense is None else len(self._dense))

    def _bm25_hits(self, query: str, k: int) -> Hits:
        return self._bm25_token_hits(tokenize(query, self.config.tokenizer), k)

    def _bm25_token_hits(self, tokens: list[str], k: int, statistics: BM25Statistics | None = None) -> Hits:
        with self._index_lock:
            if self._bm25 is None or not tokens:
                return Hits.empty()
            return self._bm25.search(tokens, k, statistics=statistics)

    def named_chunks(self, query: str | None) -> np.ndarray:
        """The chunk row ids of the documents whose name `query` says (index.document_names);
        none when name_weight is 0."""
        if not query or self.config.name_weight <= 0:
            return np.empty(0, dtype=np.int64)
        return self._document_names().said_chunks(query)

    def _document_names(self) -> DocumentNames:
        """The names of the loaded generation's documents, read from the store once per
        generation (0.2 s for 13,741 documents of 69,748 chunks; 0.03 ms per query after)."""
        stamp = self._loaded_stamp
        cached = self._names
        if cached is None or cached[0] != stamp:
            paths = {row.id: row.path for row in self.store.documents(self.name).values()}
            cached = (stamp, DocumentNames.of(paths, self.store.chunk_documents(self.name)))
            self._names = cached
        return cached[1]

    def _lexical_voter(self, tokens: list[str], k: int, chunks: Hits, evidence: np.ndarray) -> Hits:
        """Hybrid search's BM25 voter: the top k `chunks`, mixed with the top k documents by
        whole-document BM25 lent to their chunks among `evidence` (index.document_bm25) when
        `lexical` is "chunk+document"."""
        with self._index_lock:
            documents = self._documents
        if self.config.lexical == "chunk" or documents is None or not tokens:
            return chunks
        return chunk_document_mix(chunks, documents.chunk_hits(tokens, k, evidence=evidence))

    def _semantic_voter(self, vector: np.ndarray | None, k: int, chunks: Hits, evidence: np.ndarray,
                        chunk_scores: ChunkScores | None = None) -> Hits:
        """Hybrid search's dense voter: the top k `chunks`, mixed with the top k documents by
        mean chunk vector lent to their chunks among `evidence` (index.document_vectors) when
        `semantic` is "chunk+document"; `chunk_scores`: every chunk's cosine, when at hand."""
        with self._index_lock:
            documents = self._document_vectors
        if self.config.semantic == "chunk" or documents is None or vector is None:
            return chunks
        self._check_dim(documents, np.asarray(vector).reshape(-1).shape[0])
        return chunk_document_mix(chunks, documents.chunk_hits(vector, k, evidence, chunk_scores))

    def dense_and_document_hits(self, vector: np.ndarray, k: int) -> tuple[Hits, Hits, dict[int, np.ndarray]]:
        """The dense top-k chunks, the top-k documents by mean chunk vector (ids are document
        ids; scored as hybrid search scores them) and each one's chunk row ids (those the mean
        was taken over)."""
        self._ensure_loaded()
        dense, chunk_scores = self._dense_search_scored(vector, k)
        with self._index_lock:
            documents = self._document_vectors
        if documents is None:
            return dense, Hits.empty(), {}
        self._check_dim(documents, np.asarray(vector).reshape(-1).shape[0])
        hits = documents.search(vector, k, chunk_scores)
        return dense, hits, {int(d): documents.layout.chunks_of(int(d)) for d in hits.ids.tolist()}

    def _dense_search_scored(self, vector: np.ndarray, k: int) -> tuple[Hits, ChunkScores | None]:
        """The dense top k and, from an exact (flat) index, every chunk's score with the ids
        they align with: the document voter sums those instead of scanning its own vectors."""
        with self._index_lock:
            dense = self._dense
            exact = isinstance(dense, FlatIndex) and len(dense) and self.config.semantic == "chunk+document"
            if not exact:
                return self._dense_search_unlocked(vector, k), None
            self._check_dim(dense, np.asarray(vector).reshape(-1).shape[0])
            scores = dense.scores(vector)
            return dense.top(scores, k), (dense.ids, scores)

    def _dense_search(self, vector: np.ndarray, k: int) -> Hits:
        with self._index_lock:
            return self._dense_search_unlocked(vector, k)

    def _dense_search_unlocked(self, vector: np.ndarray, k: int) -> Hits:
        if self._dense is None or len(self._dense) == 0:
            return Hits.empty()
        self._check_dim(self._dense, np.asarray(vector).reshape(-1).shape[0])
        return self._dense.search(np.asarray(vector, np.float32).reshape(1, -1), k)[0]

    @staticmethod
    def _to_results(hits: Hits, rows: dict[int, ChunkRow]) -> list[SearchResult]:
        out = []
        for row_id, score in zip(hits.ids, hits.scores):
            row = rows[int(row_id)]  # callers pass only hits the store holds
            out.append(SearchResult(row.chunk_id, float(score), row.path, row.start_line,
                                    row.end_line, row.text, {**row.metadata, "kind": row.kind}))
        return out

    def get_chunks(self, ids: list[str | int]) -> list[Chunk]:
        """Chunks by user-facing id ("doc:ordinal") or int64 row id, in the given order."""
        row_ids = [int(i) if isinstance(i, (int, np.integer)) else None for i in ids]
        text_ids = [str(i) for i, r in zip(ids, row_ids) if r is None]
        resolved = iter(self.store.row_ids_for(self.name, text_ids))
        row_ids = [next(resolved) if r is None else r for r in row_ids]
        rows = self.store.get_chunks([r for r in row_ids if r is not None])
        missing = [i for i, r in zip(ids, row_ids) if r is None or r not in rows]
        if missing:
            raise NotFoundError(f"no chunk {missing[0]!r} in collection {self.name!r}")
        return [rows[r].to_chunk() for r in row_ids]

    def get_vectors(self, ids: list[str | int]) -> np.ndarray:
        """Embeddings of chunks by id (from the vector cache; embeds any that are missing)."""
        return self.embedder.encode([self._indexed(c.text, c.path, c.kind, c.metadata)
                                     for c in self.get_chunks(ids)])


def unnamed_text_path(text: str) -> str:
    """The stand-in path of a text added without one: re-adding the same text replaces it."""
    return f"{UNNAMED_PREFIX}{content_hash(text)[:16]}"


def drop_collection(workspace: Path, name: str) -> None:
    """Delete a collection's rows and index files."""
    store = Store(Path(workspace) / "store.sqlite")
    try:
        if store.collection(name) is None:
            raise NotFoundError(f"no collection {name!r} in {workspace}")
        store.drop_collection(name)
    finally:
        store.close()
    shutil.rmtree(Path(workspace) / "collections" / name, ignore_errors=True)



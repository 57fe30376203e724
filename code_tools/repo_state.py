"""What a repository index keeps per file, and how it is persisted.

Persisted state (workspace/repos/<key>/) is JSON plus BM25Index's .npy/.npz files, written into
a fresh generation directory (gen-<ns>-<pid>) and switched to by an atomically replaced
manifest.json: loading it never executes code, unlike the pickle of format 1. Only the file
records, the chunk pool and BM25 are stored; the symbol table, the importers and the import
resolver are derived from the records on load.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from code_tools.languages import Import
from index.atomic import atomic_write
from index.bm25 import BM25Index
from runtime.errors import CorruptIndexError
from index.persist import fsync_dir, fsync_tree
from index.types import Chunk

FORMAT_VERSION = 2  # 1 was a pickle, never read again
_MANIFEST, _STATE = "manifest.json", "state.json"


@dataclass(frozen=True)
class Definition:
    """Where a symbol is defined, with its syntax chunk (None when the chunk was split)."""

    name: str
    qualname: str
    kind: str
    path: str
    start_line: int
    end_line: int
    chunk_id: int | None


@dataclass
class FileRecord:
    """One indexed file: its stat at indexing time, chunk ids, definitions and imports."""

    mtime_ns: int
    size: int
    chunk_ids: list[int]
    symbols: list[Definition]
    imports: list[Import]
    targets: list[str]  # repository files its imports resolve to
    abstract_id: int | None
    calls: list[tuple[str, int]] = field(default_factory=list)


EMPTY_RECORD = FileRecord(0, 0, [], [], [], [], None)


@dataclass
class RepoState:
    """The persisted part of a RepoIndex."""

    chunks: list[Chunk | None]  # by chunk id; None: deleted by a re-index
    chunk_path: list[str]  # by chunk id
    files: dict[str, FileRecord]  # in the order they were indexed
    bm25: BM25Index


def has_state(directory: Path | None) -> bool:
    return directory is not None and (directory / _MANIFEST).exists()


def write_state(directory: Path, state: RepoState, root: Path, config: dict) -> None:
    """A new generation directory with `state`, then an atomic manifest switch."""
    directory.mkdir(parents=True, exist_ok=True)
    generation = f"gen-{time.time_ns()}-{os.getpid()}"
    staging = directory / f".tmp-{generation}"
    try:
        staging.mkdir()
        document = _to_json(state, root, config)
        (staging / _STATE).write_text(json.dumps(document, separators=(",", ":")))
        state.bm25.save(staging / "bm25")
        fsync_tree(staging)
        staging.rename(directory / generation)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = {"format_version": FORMAT_VERSION, "generation": generation,
                "root": str(root), "chunks": len(state.bm25)}
    atomic_write(directory / _MANIFEST, lambda path: Path(path).write_text(json.dumps(manifest)))
    fsync_dir(directory)
    _clean(directory, keep=generation)


def read_state(directory: Path, config: dict) -> RepoState:
    """The committed state in `directory`; CorruptIndexError (the caller rebuilds) when it is
    of another format, built with another `config`, unreadable or inconsistent."""
    where = f"repository index {directory}"
    try:
        manifest = json.loads((directory / _MANIFEST).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CorruptIndexError(f"{where} has format {manifest.get('format_version')}: rebuilding")
        generation = directory / manifest["generation"]
        document = json.loads((generation / _STATE).read_text())
        bm25 = BM25Index.load(generation / "bm25")
        config = json.loads(json.dumps(config))  # as JSON gives it back
        if document.get("format_version") != FORMAT_VERSION or document.get("config") != config:
            raise CorruptIndexError(f"{where} is stale: rebuilding")
        state = _from_json(document, bm25)
    except CorruptIndexError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise CorruptIndexError(f"{where} is unreadable ({type(error).__name__}: {error}): rebuilding") from error
    if len(state.chunk_path) != len(state.chunks) or len(bm25) != sum(c is not None for c in state.chunks):
        raise CorruptIndexError(f"{where} is inconsistent: rebuilding")
    return state


def _to_json(state: RepoState, root: Path, config: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION, "root": str(root), "config": config,
        "chunks": [None if c is None else [c.text, c.path, c.start_line, c.end_line, c.kind, c.metadata]
                   for c in state.chunks],
        "chunk_path": state.chunk_path,
        "files": {path: {
            "mtime_ns": r.mtime_ns, "size": r.size, "chunk_ids": r.chunk_ids,
            "symbols": [[d.name, d.qualname, d.kind, d.start_line, d.end_line, d.chunk_id] for d in r.symbols],
            "imports": [[i.module, list(i.names), i.line] for i in r.imports],
            "targets": r.targets, "abstract_id": r.abstract_id, "calls": r.calls,
        } for path, r in state.files.items()},
    }


def _from_json(document: dict, bm25: BM25Index) -> RepoState:
    chunks = [None if c is None else Chunk(c[0], c[1], int(c[2]), int(c[3]), c[4], dict(c[5]))
              for c in document["chunks"]]
    files = {}
    for path, r in document["files"].items():
        files[path] = FileRecord(
            mtime_ns=int(r["mtime_ns"]), size=int(r["size"]), chunk_ids=list(r["chunk_ids"]),
            symbols=[Definition(d[0], d[1], d[2], path, d[3], d[4], d[5]) for d in r["symbols"]],
            imports=[Import(i[0], tuple(i[1]), i[2]) for i in r["imports"]],
            targets=list(r["targets"]), abstract_id=r["abstract_id"],
            calls=[(name, line) for name, line in r["calls"]])
    return RepoState(chunks, list(document["chunk_path"]), files, bm25)


def _clean(directory: Path, keep: str) -> None:
    """Drop older generations, the pickle of format 1, and temp dirs of runs killed an hour ago
    (a younger one may belong to a process saving right now)."""
    for entry in directory.iterdir():
        if entry.name == "repo_index.pkl":
            entry.unlink(missing_ok=True)
        elif entry.name.startswith("gen-") and entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(".tmp-gen-"):
            try:
                if time.time() - entry.stat().st_mtime > 3600:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                pass

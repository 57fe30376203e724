"""On-disk generations of a collection's indexes: staged, fsynced, renamed, then named by a manifest.

A collection directory holds ``gen-NNNNNN/`` (``bm25/``, ``bm25_documents/``, ``dense/``,
``dense_documents/``, ``pending.npy``) for the committed generation and ``manifest.json`` naming it. ``pending.npy`` lists the chunk row
ids that have no vector in ``dense/`` yet (progressive indexing: BM25 first, vectors after);
a generation without it (older builds) is complete. `stage_generation` writes a generation into a temp
dir, fsyncs every file and renames it into place; `write_manifest` replaces the manifest
atomically (temp + fsync + rename + directory fsync). Readers only ever follow the manifest, so
a half-written generation is never seen; `clean` removes older generations and killed runs'
temp dirs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from index.atomic import atomic_write
from index.bm25 import BM25Index
from index.document_bm25 import DocumentBM25
from index.document_vectors import DocumentVectors
from index.dense import DenseIndex, create_dense_index, load_dense_index
from runtime.errors import CorruptIndexError, MissingDependencyError

# Index files are read one collection at a time per process. np.load parses each array's header
# with ast.literal_eval, and CPython 3.11's AST constructor keeps its recursion depth in state
# that threads share (gh-106905): the shards of a sharded collection, loading in threads on
# their first search, failed once in CI with "SystemError: AST constructor recursion depth
# mismatch". Loads are rare and short; searches never take this lock.
LOAD_LOCK = threading.Lock()

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCUMENTS = "bm25_documents"  # BM25 over whole documents (index.document_bm25); absent in older builds
DOCUMENT_VECTORS = "dense_documents"  # each document's mean chunk vector (index.document_vectors); likewise


def dense_backend(kind: str):
    """(create, load) functions for a dense kind; a clear error when its module is missing."""
    from index.dense import _backend

    try:
        _backend(kind)
    except ModuleNotFoundError as error:
        raise MissingDependencyError(
            f"dense index {kind!r} is not available here ({error}); use --dense flat") from error
    return create_dense_index, load_dense_index


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(root))


def versions() -> dict[str, str]:
    """Versions recorded in every manifest (to tell which build wrote an index)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "index_format": str(FORMAT_VERSION)}
    for package in ("codehop", "numpy", "bm25s", "sentence-transformers", "faiss-cpu"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def stage_generation(directory: Path, generation: int, bm25: BM25Index,
                     dense: DenseIndex | None, pending=None,
                     bm25_from: Path | None = None,
                     documents: DocumentBM25 | None = None,
                     document_vectors: DocumentVectors | None = None) -> tuple[Path, dict[str, int]]:
    """Write a generation durably as ``directory/gen-NNNNNN``; returns (its path, counts).

    Args:
        pending: chunk row ids without a vector in `dense` (None or empty: complete).
        bm25_from: a committed generation whose ``bm25/`` equals `bm25` (a commit that only
            added vectors): its files are hard-linked instead of written again. Committed
            generations are never modified in place, so sharing their files is safe.
        documents: BM25 over whole documents, written as ``bm25_documents/`` (linked from
            `bm25_from` too when it has one).
        document_vectors: each document's mean chunk vector, written as ``dense_documents/``.
    """
    import numpy as np

    temp = directory / f".tmp-gen-{generation:06d}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    if bm25_from is not None and (bm25_from / "bm25").is_dir():
        shutil.copytree(bm25_from / "bm25", temp / "bm25", copy_function=os.link)
    else:
        bm25.save(temp / "bm25")
    if documents is not None:
        if bm25_from is not None and (bm25_from / DOCUMENTS).is_dir():
            shutil.copytree(bm25_from / DOCUMENTS, temp / DOCUMENTS, copy_function=os.link)
        else:
            documents.save(temp / DOCUMENTS)
    if dense is not None:
        dense.save(temp / "dense")
    if document_vectors is not None:
        document_vectors.save(temp / DOCUMENT_VECTORS)
    pending = np.asarray([] if pending is None else pending, dtype=np.int64)
    np.save(temp / "pending.npy", pending)
    counts = {"bm25": len(bm25), "dense": 0 if dense is None else len(dense), "pending": len(pending)}
    if documents is not None:
        counts["documents"] = len(documents)
    if document_vectors is not None:
        counts["document_vectors"] = len(document_vectors)
    (temp / "counts.json").write_text(json.dumps(counts))
    fsync_tree(temp)
    final = directory / f"gen-{generation:06d}"
    shutil.rmtree(final, ignore_errors=True)  # debris of a killed run with this number
    os.rename(temp, final)
    fsync_dir(directory)
    return final, counts


def new_manifest(name: str, generation: int, index_dir: str, dense: DenseIndex | None,
                 dense_kind: str, counts: dict[str, int], model: str) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION, "collection": name, "generation": generation,
        "index_dir": index_dir, "dense_kind": dense_kind,
        "dim": None if dense is None else int(dense.dim), "counts": counts,
        "embedding_model": model, "versions": versions(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write(directory / MANIFEST, lambda path: Path(path).write_text(json.dumps(manifest, indent=2)))
    fsync_dir(directory)


def read_manifest(directory: Path, name: str) -> dict[str, Any] | None:
    """The manifest, None when there is none yet; CorruptIndexError when it is unreadable."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        generation = int(manifest["generation"])
        version = manifest["format_version"]
        manifest["index_dir"], manifest["dense_kind"], manifest["counts"]["bm25"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorruptIndexError(
            f"manifest {path} is unreadable ({type(error).__name__}); rebuild with "
            f"codehop index --rebuild --collection {name}") from error
    if version != FORMAT_VERSION:
        raise CorruptIndexError(
            f"collection {name!r} has index format {version}, this codehop reads "
            f"{FORMAT_VERSION}: rebuild with codehop index --rebuild")
    if generation < 0:
        raise CorruptIndexError(f"manifest {path} has a negative generation")
    return manifest


def manifest_stamp(directory: Path) -> tuple | None:
    """Cheap change detector for the manifest (one stat per search)."""
    try:
        stat = (directory / MANIFEST).stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def load_pending(directory: Path, manifest: dict[str, Any]):
    """Chunk row ids of the manifest's generation that have no vector yet (int64, sorted)."""
    import numpy as np

    path = directory / manifest["index_dir"] / "pending.npy"
    if not path.exists():
        return np.empty(0, dtype=np.int64)
    try:
        pending = np.load(path).astype(np.int64)
    except (OSError, ValueError) as error:
        raise CorruptIndexError(f"{path} is unreadable ({error}); rebuild with codehop index --rebuild") from error
    if len(pending) != manifest["counts"].get("pending", len(pending)):
        raise CorruptIndexError(f"{path} does not match its manifest; rebuild with codehop index --rebuild")
    return np.sort(pending)


def load_generation(directory: Path, manifest: dict[str, Any],
                    name: str) -> tuple[BM25Index, DenseIndex | None]:
    """Load the indexes a manifest names and check them against its counts."""
    generation = directory / manifest["index_dir"]
    if not generation.is_dir():
        raise CorruptIndexError(
            f"index dir {generation} is missing; rebuild with codehop index --rebuild")
    bm25 = BM25Index.load(generation / "bm25")
    dense = None
    if (generation / "dense").is_dir():
        _, load = dense_backend(manifest["dense_kind"])
        dense = load(manifest["dense_kind"], generation / "dense")
    counts = manifest["counts"]
    if len(bm25) != counts["bm25"] or (0 if dense is None else len(dense)) != counts["dense"]:
        raise CorruptIndexError(
            f"indexes of collection {name!r} do not match their manifest; "
            "rebuild with codehop index --rebuild")
    return bm25, dense


def load_documents(directory: Path, manifest: dict[str, Any]) -> DocumentBM25 | None:
    """The generation's document BM25, or None when it was written before it existed."""
    return _load_optional(directory, manifest, DOCUMENTS, DocumentBM25.load, "documents")


def load_document_vectors(directory: Path, manifest: dict[str, Any]) -> DocumentVectors | None:
    """The generation's document vectors, or None when it was written without them."""
    return _load_optional(directory, manifest, DOCUMENT_VECTORS, DocumentVectors.load, "document_vectors")


def _load_optional(directory: Path, manifest: dict[str, Any], folder: str, load, count: str):
    """An index a generation may lack (older builds): loaded and checked against the
    manifest's count, or None."""
    path = directory / manifest["index_dir"] / folder
    if not path.is_dir():
        return None
    index = load(path)
    if len(index) != manifest["counts"].get(count, len(index)):
        raise CorruptIndexError(f"{path} does not match its manifest; rebuild with codehop index --rebuild")
    return index


def clean(directory: Path, keep: str) -> None:
    """Remove older generations and temp dirs left by killed runs."""
    for entry in directory.iterdir():
        stale = entry.name.startswith("gen-") and entry.name != keep
        if stale or entry.name.startswith(".tmp-gen-"):
            shutil.rmtree(entry, ignore_errors=True)

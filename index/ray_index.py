"""`codehop index PATH --ray`: chunking and embedding as a Ray Data job across a cluster.

The job does the slow work in parallel and the commit stays the collection's own, so the
files it writes are those of a single-process build of the same input:

1. the driver walks the paths as `Collection.add_paths` does (cheap: names and stat);
2. Ray Data reads and chunks the new or changed files (`_ChunkFiles`, one task per batch of
   files) and returns each chunk's indexed text (title/headings + chunk, index.context);
3. the driver drops texts already in the collection's vector cache and cuts the rest exactly
   as `Embedder.encode` would (de-duplicated, sorted by length, its encoder's slices), so each
   vector comes out of the same batch, hence the same bits, as in one process;
4. Ray Data embeds the slices on actors (`_EmbedSlices`, one model per actor) and the driver
   writes the vectors into the owning collection's (or shard's) cache;
5. `add_paths` commits: it reads and chunks again on the driver (cheap next to embedding)
   and finds every vector cached, so nothing is embedded twice and the commit is the usual
   atomic one.
Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from index.collection import Collection
from index.collection_config import CollectionConfig, IndexReport
from index.context import indexed_text
from index.files import read_file
from index.generated import generated_reason
from index.ingest import Chunker, chunk_text
from index.walk import walk
from runtime.embed import Embedder, EmbedderConfig, content_hash
from runtime.errors import MissingDependencyError

__all__ = ["RayIndexConfig", "index_with_ray", "slices_like_encode"]


@dataclass(frozen=True)
class RayIndexConfig:
    """Where and how wide: `address` None starts a local Ray, "auto" or "ray://host:10001" joins
    a cluster; `actors` embedding actors (None: one per 4 CPUs of the cluster); `files_per_task`
    files read and chunked per Ray Data task."""

    address: str | None = None
    actors: int | None = None
    files_per_task: int = 64


def slices_like_encode(texts: list[str], slice_size: int) -> list[list[str]]:
    """The slices `Embedder.encode(texts)` embeds, in order: unique texts, sorted by length
    (stable), `slice_size` each. Example: ["bb", "a", "bb"], 8 -> [["a", "bb"]]."""
    unique = list(dict.fromkeys(texts))
    unique.sort(key=len)
    return [unique[at:at + slice_size] for at in range(0, len(unique), slice_size)]


def _slice_size(collection: Collection) -> int:
    """Texts per slice of the collection's `Embedder.encode` (the unit a batch is cut from)."""
    embedder = collection.embedder
    if hasattr(embedder, "encoder"):  # each encoder says its own
        return int(embedder.encoder().slice_size)
    remote = getattr(embedder, "_remote", None)
    return remote.batch_size if remote is not None else collection.config.embed_batch_size * 8


class _ChunkFiles:
    """Ray Data task: read and chunk files as Collection._scan_file does; rows of indexed texts."""

    def __init__(self, config: CollectionConfig, chunker: Chunker | None) -> None:
        self.config, self.chunker = config, chunker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"file": [], "ordinal": [], "text": []}
        for at, key, old, judge in zip(batch["file"], batch["key"], batch["old"], batch["judge"]):
            for ordinal, text in enumerate(self._texts(str(key), str(old), bool(judge))):
                out["file"].append(int(at))
                out["ordinal"].append(ordinal)
                out["text"].append(text)
        return out

    def _texts(self, key: str, old: str, judge: bool) -> list[str]:
        config = self.config
        read = read_file(Path(key), config.ingest.max_file_bytes)
        if read.text is None:
            return []
        if judge and config.walk.skip_generated and not _included(Path(key), config):
            if generated_reason(Path(key).name, read.text):
                return []
        if old and old == content_hash(read.text):
            return []
        try:
            chunks, _ = chunk_text(key, read.text, config.ingest, self.chunker)
        except (ValueError, RecursionError):
            return []
        if read.encoding != "utf-8":
            chunks = [dataclasses.replace(c, metadata={**c.metadata, "encoding": read.encoding}) for c in chunks]
        return [indexed_text(c.text, c.path, c.kind, c.metadata, enabled=bool(config.context)) for c in chunks]


def _included(file: Path, config: CollectionConfig) -> bool:
    walk_config = config.walk
    return bool(walk_config.include) and any(
        walk_config.included(file.relative_to(parent).as_posix()) for parent in file.parents)


class _EmbedSlices:
    """Ray Data actor: one embedder (no cache), each row one slice as `Embedder.encode` cuts it."""

    def __init__(self, config: EmbedderConfig) -> None:
        self.embedder = Embedder(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        vectors = [self.embedder.encode(list(texts)) for texts in batch["texts"]]
        return {"slice": batch["slice"], "vectors": vectors}


def _shards(collection) -> list[Collection]:
    return list(getattr(collection, "shards", [collection]))


def index_with_ray(collection, paths: list[str | Path], chunker: Chunker | None = None,
                   config: RayIndexConfig = RayIndexConfig(),
                   on_scan: Callable[[dict[str, int]], None] | None = None,
                   on_embed: Callable[[dict[str, int]], None] | None = None) -> IndexReport:
    """Index `paths` into `collection` (a Collection or index.sharded.ShardedCollection) with the
    chunking and embedding done by Ray Data; returns the commit's IndexReport.

    Args:
        collection: where the documents go (each shard gets the files it owns).
        paths: files and directories, as for add_paths.
        chunker: the injected chunker (e.g. code_tools' tree-sitter one); must pickle.
        config: the cluster and the job's width.
        on_scan, on_embed: progress callbacks as add_paths's (files chunked; chunks embedded).
    """
    try:
        import ray
    except ImportError as error:
        raise MissingDependencyError("codehop index --ray needs Ray: pip install 'codehop[ray]'") from error
    shards = _shards(collection)
    owner = getattr(collection, "owner", None)
    first = shards[0]
    roots = first._roots(paths)
    files, olds = _files(first, roots, owner, shards)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=config.address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, runtime_env=_runtime_env())
    try:
        texts_of = _chunk(ray, files, olds, roots, first.config, chunker, config, on_scan)
        _embed(ray, shards, owner, files, texts_of, config, on_embed)
    finally:
        if started_here:
            ray.shutdown()
    return collection.add_paths(paths, chunker=chunker, progress=False)


def _files(first: Collection, roots: list[Path], owner, shards: list[Collection]):
    """The files add_paths would look at (resolved keys) and each one's stored content hash."""
    workspace = str(first.workspace.resolve()) + os.sep
    existing: dict[str, Any] = {}
    for shard in shards:
        existing.update(shard.store.documents(shard.name))
    files, seen = [], set()
    for file in walk(roots, first.config.walk):
        key = str(file.resolve())
        if key in seen or key.startswith(workspace):
            continue
        seen.add(key)
        files.append(key)
    olds = [existing[key].hash if key in existing else "" for key in files]
    return files, olds


def _chunk(ray, files: list[str], olds: list[str], roots: list[Path], collection_config: CollectionConfig,
           chunker, config: RayIndexConfig, on_scan) -> dict[int, list[str]]:
    """file position -> indexed texts of its chunks (new or changed files only)."""
    named = {str(root) for root in roots if not root.is_dir()}
    items = [{"file": at, "key": key, "old": old, "judge": key not in named}
             for at, (key, old) in enumerate(zip(files, olds))]
    texts_of: dict[int, list[tuple[int, str]]] = {}
    if not items:
        return {}
    data = ray.data.from_items(items, override_num_blocks=max(1, len(items) // config.files_per_task))
    chunked = data.map_batches(_ChunkFiles, fn_constructor_args=(collection_config, chunker),
                               batch_size=config.files_per_task, batch_format="numpy", concurrency=(1, 64))
    done = chunks = 0
    for batch in chunked.iter_batches(batch_size=None, batch_format="numpy"):
        for at, ordinal, text in zip(batch["file"], batch["ordinal"], batch["text"]):
            texts_of.setdefault(int(at), []).append((int(ordinal), str(text)))
            chunks += 1
        done = len(texts_of)
        if on_scan is not None:
            on_scan({"files_done": done, "files_total": len(files), "chunks": chunks, "unchanged": 0,
                     "skipped": 0})
    return {at: [text for _, text in sorted(pairs)] for at, pairs in texts_of.items()}


def _embed(ray, shards: list[Collection], owner, files: list[str], texts_of: dict[int, list[str]],
           config: RayIndexConfig, on_embed) -> None:
    """Embed the uncached texts of each shard on Ray actors, into that shard's vector cache."""
    per_shard: dict[int, list[str]] = {}
    for at in sorted(texts_of):
        shard = shards.index(owner(files[at])) if owner is not None else 0
        per_shard.setdefault(shard, []).extend(texts_of[at])
    jobs: list[tuple[int, list[str]]] = []  # (shard, slice)
    for shard, texts in sorted(per_shard.items()):
        cached = shards[shard].embedder.cached(texts)
        missing = [t for t in texts if content_hash(t) not in cached]
        jobs += [(shard, part) for part in slices_like_encode(missing, _slice_size(shards[shard]))]
    if not jobs:
        return
    c = shards[0].config
    embedder_config = EmbedderConfig(model=c.embedding_model, batch_size=c.embed_batch_size,
                                      backend=c.embedding_backend, endpoint=shards[0].embedding_endpoint)
    actors = config.actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // 4)
    data = ray.data.from_items([{"slice": i, "texts": part} for i, (_, part) in enumerate(jobs)],
                               override_num_blocks=len(jobs))
    embedded = data.map_batches(_EmbedSlices, fn_constructor_args=(embedder_config,), batch_size=1,
                                batch_format="numpy", concurrency=min(actors, len(jobs)))
    total, done = sum(len(part) for _, part in jobs), 0
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        for i, vectors in zip(batch["slice"], batch["vectors"]):
            shard, part = jobs[int(i)]
            shards[shard].embedder.put_cached(part, vectors)
            done += len(part)
        if on_embed is not None:
            on_embed({"done": done, "total": total})


def _runtime_env() -> dict[str, Any]:
    """Workers import codehop from this checkout (an installed codehop on every node works too)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {"env_vars": {"PYTHONPATH": root + (os.pathsep + path if path else ""),
                         "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}}

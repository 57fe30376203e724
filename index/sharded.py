"""A sharded collection: N ordinary Collections searched as one, with the ranking of one.

Layout (each shard is a whole workspace, so one can live on another node's disk)::

    <workspace>/shards/<name>/sharding.json      {"format_version", "name", "shards"}
    <workspace>/shards/<name>/<i>/               shard i: store.sqlite, embeddings/, collections/<name>/

A document goes to shard `shard_of(path, N)`, a stable hash of its path (its id to a user), so
re-adding a file always reaches the shard that holds it, and every write is that shard's own
atomic commit. Shard i numbers its documents and chunks from i << 40 (`ID_BITS`): chunk ids
("doc:ordinal") and row ids are unique across shards and name their shard.

Search is a scatter-gather in three rounds, each sent to every shard at once:
1. statistics: each shard reports its document count, total length and the document frequency
   of the query's terms; they are summed (Elasticsearch's dfs_query_then_fetch);
2. candidates: each shard returns its BM25 top n scored with those *global* statistics (and,
   for hybrid's chunk+document voters, its top n documents by whole-document BM25, also with
   global statistics, and by mean chunk vector, with their chunk ids), its dense top n, which of them a filter rejects,
   and the rows (text, metadata) of the first k of each list. The per-shard top n lists are merged into the global top n of each retriever
   (exact: a document in the global top n is in its shard's top n), then fused as an
   unsharded collection fuses them;
3. rows: only for a fused top-k chunk whose row did not come with round 2 (a hybrid hit that
   is in neither of its shard's top k lists; never for bm25 or dense alone), its shard returns
   it.
BM25 scores equal an unsharded collection's (same idf, same average length, same float32
arithmetic in the same order), so the ranking is the same; only ties between shards may be
ordered otherwise. Sharded collections need Lucene's idf (the default): Okapi's floor is a
mean over the whole vocabulary, which no query-time exchange gives.

`scatter_gather` runs the rounds over any `Shard`: `LocalShard` here, Ray actors in
codehop.ray_serve. A shard that does not answer is left out and named in the outcome
(`missing`): the others still answer, and the caller reports the result as partial.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from index.bm25 import BM25Statistics
from index.collection import Collection, check_search, unnamed_text_path
from index.collection_config import CollectionConfig, IndexReport
from index.document_evidence import chunk_document_mix, lend
from index.document_names import lift_named
from index.hybrid import rrf_fuse, weighted_fuse
from index.query import echoes, is_question, search_text
from index.tokenize import tokenize
from index.types import Chunk, Hits, SearchFilter, SearchResult
from runtime.errors import InvalidInputError, NotFoundError

__all__ = ["ShardedCollection", "LocalShard", "Shard", "ShardCandidates", "ShardStatistics", "SearchOutcome",
           "scatter_gather",
           "shard_of", "shard_of_id", "sharding", "ID_BITS"]

FORMAT_VERSION = 1
SHARDING_FILE = "sharding.json"
ID_BITS = 40  # shard i's document and chunk ids lie in [i << 40, (i + 1) << 40)
MAX_SHARDS = 1024


def shard_of(path: str, shards: int) -> int:
    """The shard that owns a document path: stable across processes, machines and versions.

    Example: shard_of("/src/a.py", 3) is the same number on every machine (blake2b, not hash()).
    """
    digest = hashlib.blake2b(str(path).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_of_id(row_or_doc_id: int) -> int:
    """The shard whose store handed out this document or chunk row id."""
    return int(row_or_doc_id) >> ID_BITS


def directory(workspace: Path, name: str) -> Path:
    return Path(workspace).expanduser() / "shards" / name


def sharding(workspace: Path, name: str) -> int:
    """How many shards collection `name` has in `workspace` (0: it is not sharded)."""
    path = directory(workspace, name) / SHARDING_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"{path} is unreadable ({error}): restore it or re-index the collection") from error
    if data.get("format_version") != FORMAT_VERSION:
        raise InvalidInputError(f"{path} has format {data.get('format_version')}, this codehop reads "
                                f"{FORMAT_VERSION}: re-index the collection")
    return int(data["shards"])


# ---------------------------------------------------------------- one shard's side


@dataclass(frozen=True)
class ShardCandidates:
    """One shard's answer to round 2: its top n of each retriever (BM25 with the global
    statistics), how many chunks its indexes hold, and the candidates a filter rejects."""

    bm25: Hits
    dense: Hits
    total: int
    rejected: np.ndarray
    rows: dict[int, SearchResult] = field(default_factory=dict)
    # hybrid with lexical "chunk+document": its top n documents by whole-document BM25 (global
    # statistics; ids are document ids) and each one's chunk row ids
    documents: Hits = field(default_factory=Hits.empty)
    document_chunks: dict[int, np.ndarray] = field(default_factory=dict)
    # hybrid with semantic "chunk+document": its top n documents by mean chunk vector and
    # the chunk row ids each mean was taken over
    dense_documents: Hits = field(default_factory=Hits.empty)
    dense_document_chunks: dict[int, np.ndarray] = field(default_factory=dict)
    # hybrid with a name_weight: the chunk row ids of its documents whose name the query says
    named: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


@dataclass(frozen=True)
class ShardStatistics:
    """Round 1's answer: BM25 statistics of the query's terms over chunks and over documents."""

    chunks: BM25Statistics
    documents: BM25Statistics | None = None

    @classmethod
    def merge(cls, parts: "list[ShardStatistics]") -> "ShardStatistics":
        documents = [p.documents for p in parts if p.documents is not None]
        return cls(BM25Statistics.merge([p.chunks for p in parts]),
                   BM25Statistics.merge(documents) if documents else None)


class Shard(Protocol):
    """What scatter_gather asks of a shard (in process, or a Ray actor behind a handle)."""

    name: str

    def statistics(self, tokens: list[str]) -> ShardStatistics: ...

    def candidates(self, tokens: list[str], vector: np.ndarray | None, n: int, mode: str,
                   statistics: ShardStatistics | None, filters: SearchFilter | None,
                   prefetch: int = 0, query: str = "") -> ShardCandidates: ...

    def results(self, ids: list[int]) -> dict[int, SearchResult]: ...


def shard_statistics(collection: Collection, tokens: list[str]) -> ShardStatistics:
    documents = collection.document_statistics(tokens) if collection.config.lexical == "chunk+document" else None
    return ShardStatistics(collection.bm25_statistics(tokens), documents)


def shard_candidates(collection: Collection, tokens: list[str], vector: np.ndarray | None, n: int,
                     mode: str, statistics: ShardStatistics | None,
                     filters: SearchFilter | None, prefetch: int = 0, query: str = "") -> ShardCandidates:
    """Round 2 on one shard; `prefetch`: the rows of the first that many admitted hits of each
    list come along (saving round 3 whenever the fused top k is among them); `query`: the
    search text, whose named documents a hybrid search lifts (index.document_names)."""
    chunk_statistics = None if statistics is None else statistics.chunks
    bm25 = collection.bm25_search(tokens, n, chunk_statistics) if mode != "dense" else Hits.empty()
    documents, document_chunks = Hits.empty(), {}
    if mode == "hybrid" and collection.config.lexical == "chunk+document":
        documents, document_chunks = collection.document_search(
            tokens, n, None if statistics is None else statistics.documents)
    dense_documents, dense_document_chunks = Hits.empty(), {}
    if mode == "hybrid" and vector is not None and collection.config.semantic == "chunk+document":
        dense, dense_documents, dense_document_chunks = collection.dense_and_document_hits(vector, n)
    else:
        dense = collection.dense_hits(vector, n) if mode != "bm25" and vector is not None else Hits.empty()
    rejected = np.empty(0, dtype=np.int64)
    if filters is not None:
        ids = sorted(set(bm25.ids.tolist()) | set(dense.ids.tolist()))
        admitted = collection.store.admitted_row_ids(ids, filters.path_prefix, filters.kind)
        rejected = np.asarray([i for i in ids if i not in admitted], dtype=np.int64)
    rows: dict[int, SearchResult] = {}
    if prefetch:
        skip = set(rejected.tolist())
        wanted = {i for hits in (bm25, dense) for i in [i for i in hits.ids.tolist() if i not in skip][:prefetch]}
        rows = shard_results(collection, sorted(wanted))
    named = collection.named_chunks(query) if mode == "hybrid" else np.empty(0, dtype=np.int64)
    return ShardCandidates(bm25, dense, collection.indexed_count(), rejected, rows, documents, document_chunks,
                           dense_documents, dense_document_chunks, named)


def shard_results(collection: Collection, ids: list[int]) -> dict[int, SearchResult]:
    """Results (score 0: the caller sets it) of the row ids this shard's store holds."""
    rows = collection.store.get_chunks([int(i) for i in ids])
    return {row_id: SearchResult(row.chunk_id, 0.0, row.path, row.start_line, row.end_line, row.text,
                                 {**row.metadata, "kind": row.kind})
            for row_id, row in rows.items()}


class LocalShard:
    """A shard in this process: its Collection, called directly."""

    def __init__(self, collection: Collection, name: str) -> None:
        self.collection, self.name = collection, name

    def statistics(self, tokens: list[str]) -> ShardStatistics:
        return shard_statistics(self.collection, tokens)

    def candidates(self, tokens, vector, n, mode, statistics, filters, prefetch=0, query="") -> ShardCandidates:
        return shard_candidates(self.collection, tokens, vector, n, mode, statistics, filters, prefetch, query)

    def results(self, ids: list[int]) -> dict[int, SearchResult]:
        return shard_results(self.collection, ids)


# ---------------------------------------------------------------- the gathering side


@dataclass
class SearchOutcome:
    """Results of a scatter-gather search, and the shards that did not answer."""

    results: list[SearchResult]
    missing: list[str] = field(default_factory=list)
    rounds: int = 0  # scatter rounds the search took (2 when the candidates carried every row)

    @property
    def partial(self) -> bool:
        return bool(self.missing)


Scatter = Callable[[list[Shard], Callable[[Shard], Any]], list[Any]]


def scatter_in_threads(shards: list[Shard], call: Callable[[Shard], Any]) -> list[Any]:
    """Call every shard at once; an exception is raised (in process a shard never 'goes away')."""
    if len(shards) == 1:
        return [call(shards[0])]
    with ThreadPoolExecutor(len(shards)) as pool:
        return list(pool.map(call, shards))


class ShardDown(Exception):
    """What a scatter function returns in place of the answer of a shard that is down."""


def merge_hits(lists: Sequence[Hits], n: int) -> Hits:
    """The top n of several shards' lists by score (ties: lower id first).

    Example: merge_hits([Hits([1, 2], [3., 1.]), Hits([9], [2.])], 2) -> ids [1, 9]."""
    lists = [h for h in lists if len(h)]
    if not lists:
        return Hits.empty()
    ids = np.concatenate([h.ids for h in lists]).astype(np.int64)
    scores = np.concatenate([h.scores for h in lists]).astype(np.float32)
    order = np.lexsort((ids, -scores))[:n]
    return Hits(ids[order], scores[order])


def scatter_gather(shards: list[Shard], query: str, k: int, mode: str, config: CollectionConfig,
                   embed_query: Callable[[str], np.ndarray] | None, dense_weight: float,
                   filters: SearchFilter | None = None, group_by: str | None = None,
                   scatter: Scatter = scatter_in_threads, reranker=None) -> SearchOutcome:
    """Top-k of the collection the shards make up, as `Collection.search` ranks one collection.

    Args:
        shards: every shard (their order is the shard number).
        query, k, mode, filters, group_by: as in Collection.search.
        config: the collection's settings (tokenizer, candidates, fusion).
        embed_query: text -> unit vector (called once per search; None: no dense side).
        dense_weight: the dense list's weight in convex fusion.
        scatter: runs one call on every shard and returns their answers in order, a ShardDown
            for a shard that did not answer.
        reranker: a served re-ranker for hybrid searches (index.rerank), or None.
    Returns:
        the results and the names of shards that did not answer.
    """
    check_search(query, mode, k, group_by)
    if filters is not None and filters.admits_everything:
        filters = None
    reranker = reranker if mode == "hybrid" else None
    question = is_question(query)
    depth = k if reranker is None and not question else max(
        k, reranker.candidates if reranker else 0, 2 * k if question else 0)
    gather = _Gather(shards, config, scatter, dense_weight)
    text = search_text(query)
    vector = embed_query(text) if mode != "bm25" and embed_query is not None else None
    results = gather.search(text, vector, depth, mode, filters, group_by)
    if reranker is not None:
        results = reranker.rerank(query, results)
    if question:
        results = [r for r in results if not echoes(query, r.text)] + [r for r in results if echoes(query, r.text)]
    return SearchOutcome(results[:k], [shards[i].name for i in sorted(gather.down)], gather.rounds)


def _lent(answers: list[ShardCandidates], n: int, evidence: np.ndarray, dense: bool = False) -> Hits:
    """The global top n documents by whole-document BM25 (or with `dense`, by mean chunk
    vector), merged from the shards' own top n (exact as for chunks), each score lent to its
    chunks among the merged candidates `evidence` (index.document_evidence)."""
    chunks = {d: ids for a in answers
              for d, ids in (a.dense_document_chunks if dense else a.document_chunks).items()}
    return lend(merge_hits([a.dense_documents if dense else a.documents for a in answers], n),
                lambda d: chunks.get(d, np.empty(0, dtype=np.int64)), evidence)


class _Gather:
    """One search's rounds; remembers which shards did not answer."""

    def __init__(self, shards: list[Shard], config: CollectionConfig, scatter: Scatter, dense_weight: float):
        self.shards, self.config, self.scatter, self.dense_weight = shards, config, scatter, dense_weight
        self.down: set[int] = set()
        self.rounds = 0

    def _ask(self, call: Callable[[Shard], Any]) -> list[Any]:
        """The answers of the shards still up (None for those down)."""
        self.rounds += 1
        live = [i for i in range(len(self.shards)) if i not in self.down]
        answers: list[Any] = [None] * len(self.shards)
        for i, answer in zip(live, self.scatter([self.shards[i] for i in live], call)):
            if isinstance(answer, BaseException):
                self.down.add(i)
            else:
                answers[i] = answer
        return answers

    def search(self, text: str, vector, k: int, mode: str, filters, group_by) -> list[SearchResult]:
        """Collection._search over the shards (same candidate depths, same widening)."""
        if self.config.bm25.idf != "lucene":
            raise InvalidInputError("a sharded collection needs BM25 idf = 'lucene' (Okapi's idf floor "
                                    "is a mean over the whole vocabulary): re-index it with the default")
        tokens = tokenize(text, self.config.tokenizer)
        statistics = None
        if mode != "dense" and tokens and len(self.shards) > 1:  # one shard's own are the global ones
            statistics = ShardStatistics.merge([s for s in self._ask(lambda s: s.statistics(tokens)) if s])
        results: dict[int, SearchResult] = {}
        skip: set[int] = set()
        if filters is not None or group_by is not None:
            n = max(4 * k, self.config.candidates)
        else:
            n = max(k, self.config.candidates) if mode == "hybrid" else k
        while True:
            prefetch = 2 * k if group_by else k
            answers = [a for a in self._ask(lambda s: s.candidates(tokens, vector, n, mode,
                                                                   statistics, filters, prefetch, text)) if a]
            lists = []
            if mode != "dense":
                lists.append(merge_hits([a.bm25 for a in answers], n))
            if mode != "bm25":
                lists.append(merge_hits([a.dense for a in answers], n))
            total = sum(a.total for a in answers)
            complete = n >= total or all(len(hits) < n for hits in lists)
            if mode == "hybrid":  # each voter with its document evidence, as Collection._candidates
                evidence = np.concatenate([hits.ids for hits in lists]).astype(np.int64)
                if self.config.lexical == "chunk+document":
                    lists[0] = chunk_document_mix(lists[0], _lent(answers, n, evidence))
                if self.config.semantic == "chunk+document" and vector is not None:
                    lists[1] = chunk_document_mix(lists[1], _lent(answers, n, evidence, dense=True))
            hits = lists[0] if len(lists) == 1 else self._fuse(lists)
            if mode == "hybrid":
                hits = lift_named(hits, np.concatenate([a.named for a in answers] or [np.empty(0, dtype=np.int64)]),
                                  self.config.name_weight)
            for a in answers:
                skip.update(a.rejected.tolist())
                results.update(a.rows)
            top = self._top(hits, k, results, skip, group_by)
            if len(top) >= k or complete:
                return top
            n *= 4

    def _fuse(self, lists: list[Hits]) -> Hits:
        if self.config.fusion == "rrf":
            return rrf_fuse(lists, k=self.config.rrf_k)
        return weighted_fuse(lists, [1 - self.dense_weight, self.dense_weight])

    def _fetch(self, ids: list[int], results: dict[int, SearchResult], skip: set[int]) -> None:
        """Read the rows of `ids` from the shards that hold them (only those are asked); ids no
        shard returns go into `skip`."""
        wanted = [i for i in ids if i not in results and i not in skip]
        by_shard: dict[int, list[int]] = {}
        for i in wanted:
            by_shard.setdefault(shard_of_id(i), []).append(i)
        asked = [s for s in sorted(by_shard) if s < len(self.shards) and s not in self.down]
        if asked:
            self.rounds += 1
            answers = self.scatter([self.shards[s] for s in asked],
                                   lambda shard: shard.results(by_shard[self.shards.index(shard)]))
            for s, answer in zip(asked, answers):
                if isinstance(answer, BaseException):
                    self.down.add(s)
                else:
                    results.update(answer)
        skip.update(i for i in wanted if i not in results)

    def _top(self, hits: Hits, k: int, results: dict[int, SearchResult], skip: set[int],
             group_by: str | None) -> list[SearchResult]:
        """The first k of `hits` (k documents with group_by) whose rows exist; rows that did not
        come with the candidates are read in one round for the next few missing ones."""
        ids, scores = hits.ids.tolist(), hits.scores.tolist()
        out: list[SearchResult] = []
        documents: set[str] = set()
        for at, (i, score) in enumerate(zip(ids, scores)):
            if len(out) >= k:
                break
            if i in skip:
                continue
            if i not in results:
                need = k - len(out)
                self._fetch(ids[at:at + (4 * need if group_by else 2 * need)], results, skip)
                if i not in results:
                    continue
            result = results[i]
            if group_by == "document":
                document = result.id.split(":")[0]
                if document in documents:
                    continue
                documents.add(document)
            out.append(SearchResult(result.id, float(score), result.path, result.start_line,
                                    result.end_line, result.text, result.metadata))
        return out


# ---------------------------------------------------------------- the collection in one process


class ShardedCollection:
    """N Collections behind the search and write API of one (index.collection.Collection)."""

    def __init__(self, workspace: Path, name: str, shards: list[Collection]) -> None:
        self.workspace, self.name, self.shards = Path(workspace), name, shards
        self.directory = directory(workspace, name)
        self.reranker = shards[0].reranker
        self._local = [LocalShard(c, f"{name}/{i}") for i, c in enumerate(shards)]

    @classmethod
    def open(cls, workspace: Path, name: str = "default", shards: int | None = None,
             config: CollectionConfig | None = None, create: bool = True, **kwargs: Any) -> "ShardedCollection":
        """Open (or create with `shards` shards) a sharded collection.

        Args:
            workspace: the workspace directory.
            name: collection name.
            shards: the shard count a new collection gets; for an existing one None or its count
                (re-sharding means re-indexing into a new collection).
            config, create, **kwargs: as Collection.open, applied to every shard.
        """
        workspace = Path(workspace).expanduser()
        have = sharding(workspace, name)
        if have and shards not in (None, have):
            raise InvalidInputError(
                f"collection {name!r} has {have} shards, the settings ask for {shards}: re-sharding is "
                "re-indexing (index into another --collection with the new [collection] shards)")
        if not have:
            if not create:
                raise NotFoundError(f"no sharded collection {name!r} in {workspace}")
            if not shards or not 1 <= shards <= MAX_SHARDS:
                raise InvalidInputError(f"shards must be between 1 and {MAX_SHARDS}, got {shards!r}")
            if (config or CollectionConfig()).bm25.idf != "lucene":
                raise InvalidInputError("a sharded collection needs BM25 idf = 'lucene'")
        count = have or shards
        opened: list[Collection] = []
        try:
            for i in range(count):
                collection = Collection.open(directory(workspace, name) / str(i), name, config=config,
                                             create=create or bool(have), **kwargs)
                opened.append(collection)
                _number_from(collection, i)
        except BaseException:
            for collection in opened:
                collection.close()
            raise
        if not have:
            path = directory(workspace, name) / SHARDING_FILE
            temp = path.with_suffix(".tmp")
            temp.write_text(json.dumps({"format_version": FORMAT_VERSION, "name": name, "shards": count}))
            os.replace(temp, path)
        return cls(workspace, name, opened)

    def close(self) -> None:
        for collection in self.shards:
            collection.close()

    def __enter__(self) -> "ShardedCollection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def config(self) -> CollectionConfig:
        return self.shards[0].config

    def search_with(self, config: CollectionConfig) -> None:
        """As Collection.search_with, on every shard."""
        for shard in self.shards:
            shard.search_with(config)

    @property
    def embedder(self):
        return self.shards[0].embedder

    def __len__(self) -> int:
        return sum(len(c) for c in self.shards)

    def owner(self, path: str) -> Collection:
        return self.shards[shard_of(path, len(self.shards))]

    # ---- searching

    def search(self, query: str, k: int = 10, mode: str = "hybrid", filters: SearchFilter | None = None,
               group_by: str | None = None) -> list[SearchResult]:
        """As Collection.search; every shard answers (in process none can be missing)."""
        return self.search_outcome(query, k, mode, filters, group_by).results

    def search_outcome(self, query: str, k: int = 10, mode: str = "hybrid",
                       filters: SearchFilter | None = None, group_by: str | None = None) -> SearchOutcome:
        # The embedder is touched only when the search is dense (its settings check included).
        return scatter_gather(self._local, query, k, mode, self.config, lambda text: self.embedder.encode_query(text),
                              self.dense_weight(), filters, group_by, reranker=self.reranker)

    def dense_weight(self) -> float:
        """The dense weight of convex fusion: configured, or the mean of the shards' estimates
        (each estimated from its own shard's pseudo-queries)."""
        return float(np.mean([c.dense_weight() for c in self.shards]))

    def fusion_settings(self) -> dict[str, Any]:
        settings = self.shards[0].fusion_settings()
        if settings["method"] == "convex" and self.config.fusion == "auto":
            settings = {"method": "convex", "dense_weight": round(self.dense_weight(), 4),
                        "source": "shards", "reason": f"mean of the {len(self.shards)} shards' estimates"}
        return settings

    def get_chunks(self, ids: list[str | int]) -> list[Chunk]:
        """Chunks by id ("doc:ordinal" or row id), in the given order."""
        found: dict[int, Chunk] = {}
        by_shard: dict[int, list[int]] = {}
        for at, chunk_id in enumerate(ids):
            number = int(chunk_id) if isinstance(chunk_id, (int, np.integer)) else _document_number(chunk_id)
            by_shard.setdefault(shard_of_id(number), []).append(at)
        for shard, positions in by_shard.items():
            if shard >= len(self.shards):
                raise NotFoundError(f"no chunk {ids[positions[0]]!r} in collection {self.name!r}")
            for at, chunk in zip(positions, self.shards[shard].get_chunks([ids[at] for at in positions])):
                found[at] = chunk
        return [found[at] for at in range(len(ids))]

    def stats(self) -> dict[str, Any]:
        counts = [c.store.counts(self.name) for c in self.shards]
        first = self.shards[0].stats()
        return {**first, "documents": sum(c["documents"] for c in counts),
                "chunks": sum(c["chunks"] for c in counts), "shards": len(self.shards),
                "shard_chunks": [c["chunks"] for c in counts], "fusion": self.fusion_settings()}

    def pending_ids(self) -> np.ndarray:
        return np.concatenate([c.pending_ids() for c in self.shards])

    def dense_fraction(self) -> float:
        sizes = [len(c) for c in self.shards]
        total = sum(sizes)
        return 1.0 if not total else sum(c.dense_fraction() * n for c, n in zip(self.shards, sizes)) / total

    # ---- writing: every document to its owning shard, each shard's own atomic commit

    def add_paths(self, paths: list[str | Path], chunker=None, progress: bool = True,
                  defer_dense: bool = False, write_lock=None, on_scan=None, on_embed=None,
                  within=None) -> IndexReport:
        """As Collection.add_paths; each shard walks the paths and takes the files it owns."""
        total = IndexReport(self.name)
        for i, collection in enumerate(self.shards):
            report = collection.add_paths(
                paths, chunker=chunker, progress=progress, defer_dense=defer_dense, write_lock=write_lock,
                on_scan=on_scan, on_embed=on_embed, within=within,
                owns=lambda path, i=i: shard_of(path, len(self.shards)) == i)
            _add_reports(total, report, first=i == 0)
        self._finish(total)
        return total

    def add_texts(self, texts: list[str], paths: list[str] | None = None,
                  metadatas: list[dict[str, Any]] | None = None) -> list[str]:
        if isinstance(texts, str) or not texts:
            raise InvalidInputError("add_texts needs a non-empty list of texts")
        keys = [paths[i] if paths else unnamed_text_path(t) for i, t in enumerate(texts)]
        ids: list[str | None] = [None] * len(texts)
        for shard, positions in _group(keys, len(self.shards)).items():
            got = self.shards[shard].add_texts([texts[at] for at in positions], [keys[at] for at in positions],
                                               [metadatas[at] for at in positions] if metadatas else None)
            for at, chunk_id in zip(positions, got):
                ids[at] = chunk_id
        return ids  # type: ignore[return-value]

    def add_documents(self, documents: dict[str, list[Chunk]],
                      metadatas: dict[str, dict[str, Any]] | None = None, progress: bool = False) -> list[int]:
        paths = list(documents)
        ids: list[int | None] = [None] * len(paths)
        for shard, positions in _group(paths, len(self.shards)).items():
            part = {paths[at]: documents[paths[at]] for at in positions}
            got = self.shards[shard].add_documents(part, metadatas, progress)
            for at, doc_id in zip(positions, got):
                ids[at] = doc_id
        return ids  # type: ignore[return-value]

    def delete(self, path_or_doc_id: str | int | Path) -> int:
        """Remove one document by path, document id or chunk id (from the shard that holds it)."""
        key = str(path_or_doc_id)
        number = key.split(":")[0]
        if number.isdigit() and shard_of_id(int(number)) < len(self.shards):
            try:
                return self.shards[shard_of_id(int(number))].delete(key)
            except NotFoundError:
                pass
        for candidate in (key, str(Path(key).expanduser().resolve())):
            collection = self.owner(candidate)
            try:
                return collection.delete(candidate)
            except NotFoundError:
                continue
        raise NotFoundError(f"no document {key!r} in collection {self.name!r}")

    def rebuild(self, progress: bool = True, defer_dense: bool = False) -> IndexReport:
        total = IndexReport(self.name)
        for i, collection in enumerate(self.shards):
            _add_reports(total, collection.rebuild(progress=progress, defer_dense=defer_dense), first=i == 0)
        self._finish(total)
        return total

    def fill_dense(self, **kwargs: Any) -> dict[str, int]:
        counts = {"embedded": 0, "cached": 0, "commits": 0}
        for collection in self.shards:
            for key, value in collection.fill_dense(**kwargs).items():
                counts[key] += value
        return counts

    def refresh_fusion_weight(self, force: bool = False, limit: int = 200):
        for collection in self.shards:
            collection.refresh_fusion_weight(force=force, limit=limit)

    def _finish(self, report: IndexReport) -> None:
        report.documents = sum(c.store.counts(self.name)["documents"] for c in self.shards)
        report.chunks = len(self)


def _document_number(chunk_id: str) -> int:
    head = str(chunk_id).split(":")[0]
    if not head.isdigit():
        raise NotFoundError(f"no chunk {chunk_id!r}: chunk ids look like 'document:ordinal'")
    return int(head)


def _group(keys: list[str], shards: int) -> dict[int, list[int]]:
    """Positions of `keys` by owning shard."""
    groups: dict[int, list[int]] = {}
    for at, key in enumerate(keys):
        groups.setdefault(shard_of(key, shards), []).append(at)
    return groups


def _add_reports(total: IndexReport, report: IndexReport, first: bool) -> None:
    """Sum a shard's report into the total (each shard counts and skips only the files it owns)."""
    for key in ("files", "added", "updated", "unchanged", "removed", "chunks_added", "chunks_removed",
                "chunks_embedded"):
        setattr(total, key, getattr(total, key) + getattr(report, key))
    total.skipped += report.skipped
    total.elapsed_s += report.elapsed_s


def _number_from(collection: Collection, shard: int) -> None:
    """Make shard `shard`'s store hand out document and chunk ids from shard << ID_BITS (once,
    while it holds none): ids then name their shard and never collide across shards."""
    if shard == 0:
        return
    store = collection.store
    base = shard << ID_BITS
    with store.transaction():
        for table in ("documents", "chunks"):
            row = store.db.execute("SELECT seq FROM sqlite_sequence WHERE name=?", [table]).fetchone()
            if row is None:
                store.db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", [table, base])
            elif row[0] < base:
                store.db.execute("UPDATE sqlite_sequence SET seq=? WHERE name=?", [base, table])

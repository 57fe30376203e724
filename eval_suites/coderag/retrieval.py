"""Retrieval half of CodeRAG-Bench: index a BEIR corpus in `index.Collection`s, run retrievers.

A corpus document is split into chunks the way our index splits a file (`index.ingest.
chunk_text`, passages of whole paragraphs for .txt pages; a solution doc is one chunk), the
chunks are added to one Collection per dense index kind (flat, spann, pq; the embedding cache
in the workspace is shared, so each text is embedded once), and a document's score for a query
is its best chunk's score (max-passage), so the ranking and the qrels are per document.

Retrievers (`RETRIEVERS`):
    bm25          Collection.search(mode="bm25")
    dense-flat / dense-spann / dense-pq   Collection.search(mode="dense") per dense kind
    hybrid        Collection.search(mode="hybrid"): the product default (BM25 + flat dense,
                  convex fusion at the collection's own weight, chunks indexed with context)
    hybrid-rrf    ablation: the same two lists, reciprocal-rank fused (the old default)
    hybrid-chunk-lexical   ablation: hybrid whose BM25 voter scores chunks alone (without
                  whole-document BM25, index.document_bm25)
    hybrid-chunk-dense     ablation: hybrid whose dense voter scores chunks alone (without
                  each document's mean chunk vector, index.document_vectors)
    hybrid-chunks  ablation: both voters on chunks alone (the default before document evidence)
    hybrid-no-names   ablation: hybrid without lifting the pages a query names (name_weight 0,
                  index.document_names; the default before it)
    bm25-nocontext / dense-nocontext / hybrid-nocontext   ablation: a collection whose chunks
                  are indexed without their page title (CollectionConfig(context=False))
    dense-tuned / hybrid-tuned   the flat collection after `codehop tune` (index.collection_tune:
                  the embedder fine-tuned on the corpus's own pseudo-queries, no benchmark
                  question seen); if the tune fails its held-out check the collection keeps the
                  base model and these rows equal dense-flat / hybrid
    hybrid+prf    hybrid for the query and for its pseudo-relevance-feedback expansion, RRF-fused
    hybrid+llm    hybrid for the query and for LLM-rewritten queries, RRF-fused
The rewriters are rag.rewrite's (`make_rewriters`). Each page is one document of the
collection (its chunks added with `Collection.add_documents`), and a page's score is its best
chunk's: `Collection.search(group_by="document")`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from eval_suites.ablation import SEARCH_ABLATIONS, collection_settings
from runtime.errors import InvalidInputError

RETRIEVERS = ("bm25", "dense-flat", "dense-spann", "dense-pq", "hybrid", "hybrid-rrf", "hybrid-chunk-lexical",
              "hybrid-chunk-dense", "hybrid-chunks", "hybrid-no-names", "bm25-nocontext",
              "dense-nocontext", "hybrid-nocontext", "dense-tuned", "hybrid-tuned", "hybrid+prf",
              "hybrid+llm")
# The backend a new collection of the shipped MiniLM gets (runtime.embed.default_backend), so
# the benchmark's default rows measure the search the product ships.
PRODUCT_EMBEDDER = "onnx-int8"
# The collection a retriever searches: a dense kind, the flat one without context headers, or
# the flat one with its embedder tuned on the corpus.
NOCONTEXT = "flat-nocontext"
TUNED = "flat-tuned"


@dataclass(frozen=True)
class RetrievalConfig:
    """How a corpus is indexed and searched.

    Args:
        k: documents returned per query (Recall@100 needs 100).
        max_chunks_per_doc: keep only a document's first N chunks (None: all, as the product
            indexes a page). Long devdocs pages (sklearn, matplotlib) run to hundreds of
            passages; rounds before issue 26 kept the first 4 to save embedding time.
        prf_docs / prf_terms: pseudo-relevance feedback: terms taken from the top docs.
        max_query_chars: long queries (DS-1000 prompts) are cut to their last N characters
            for the LLM rewriter's prompt; llm_max_new_tokens: its output budget.
        ann_min_build: SPANN/PQ `min_build` (below it they search exactly; their defaults,
            512 and 1024, exceed the scaled-down corpora here). None keeps the defaults.
        embedding_backend: the collections' embedder ("sentence-transformers", "onnx-int8",
            "static"; see runtime.embed); by default PRODUCT_EMBEDDER.
        tune_pairs: pseudo-query pairs `codehop tune` mines for the *-tuned rows.
    """

    k: int = 100
    max_chunks_per_doc: int | None = None
    prf_docs: int = 3
    prf_terms: int = 10
    max_query_chars: int = 1500
    llm_max_new_tokens: int = 64
    ann_min_build: int | None = 256
    embedding_backend: str = PRODUCT_EMBEDDER
    tune_pairs: int = 2400


def dense_kind(retriever: str) -> str:
    """The collection a retriever needs: its dense kind ("flat" for bm25/hybrid: the default
    collection), or NOCONTEXT for the ablation without context headers."""
    if retriever.endswith("-nocontext"):
        return NOCONTEXT
    if retriever.endswith("-tuned"):
        return TUNED
    return retriever.split("-", 1)[1] if retriever.startswith("dense-") else "flat"


def _ann_config(kind: str, config: RetrievalConfig):
    """The dense backend's config with `min_build` lowered (None for flat / defaults)."""
    from index.pq import PQConfig
    from index.spann import SpannConfig

    if kind in ("flat", NOCONTEXT, TUNED) or config.ann_min_build is None:
        return None
    return {"spann": SpannConfig, "pq": PQConfig}[kind](min_build=config.ann_min_build)


def chunk_corpus(corpus: dict[str, dict[str, str]], config: RetrievalConfig,
                 chunked: bool) -> tuple[list[str], list[str]]:
    """(texts, doc ids) of the chunks to index; `chunked=False` keeps one chunk per doc."""
    from index.ingest import IngestConfig, chunk_text

    ingest = IngestConfig()
    texts, owners = [], []
    for doc_id, doc in corpus.items():
        if chunked:
            path = doc_id if doc_id.endswith(".txt") else doc_id + ".txt"
            chunks, _ = chunk_text(path, doc["text"], ingest, None)
            pieces = [c.text for c in chunks][: config.max_chunks_per_doc]
        else:
            pieces = [doc["text"]]
        for piece in pieces:
            if piece.strip():
                texts.append(piece)
                owners.append(doc_id)
    return texts, owners


class CorpusIndex:
    """One corpus in a workspace: a Collection per dense kind, searched per document."""

    def __init__(self, workspace: Path, name: str, corpus: dict[str, dict[str, str]],
                 config: RetrievalConfig, chunked: bool, kinds: tuple[str, ...] = ("flat",),
                 progress: bool = True) -> None:
        from index import Collection, CollectionConfig

        self.config, self.name = config, name
        texts, owners = chunk_corpus(corpus, config, chunked)
        self.chunks = len(texts)
        self.documents = len(corpus)
        self.collections = {}
        self.tune_report = None  # the TuneReport of the TUNED collection, when tuned in this run
        self.tune_error = ""  # why it could not be tuned
        self.tuned_before = ""  # the tuned model an earlier run switched the TUNED collection to
        # The corpus fingerprint names the collection, so a changed subset never mixes with
        # an old one while the shared embedding cache still spares re-embedding known texts.
        digest = hashlib.sha1("\0".join(o + "\1" + t for o, t in zip(owners, texts)).encode()).hexdigest()
        for kind in kinds:
            backend = config.embedding_backend
            suffix = "" if backend == "sentence-transformers" else f"-{backend}"
            dense = "flat" if kind in (NOCONTEXT, TUNED) else kind
            settings = CollectionConfig(dense=dense, dense_config=_ann_config(kind, config),
                                        embedding_backend=backend, context=kind != NOCONTEXT)
            collection_name = f"{name}-{digest[:10]}-{kind}{suffix}"
            if kind == TUNED:  # a run before this one may have tuned it: keep its model
                self.tuned_before = self._tuned_model(Path(workspace), collection_name)
                if self.tuned_before:
                    settings = replace(settings, embedding_model=self.tuned_before)
            collection = Collection.open(Path(workspace), collection_name, settings)
            if len(collection) != len(texts):
                self._fill(collection, texts, owners, progress)
            if kind == TUNED:
                try:
                    self.tune_report = self._tune(collection, config, progress)
                except InvalidInputError as error:  # e.g. a corpus of code with too little prose
                    self.tune_error = str(error)
            self.collections[kind] = collection

    @staticmethod
    def _fill(collection, texts: list[str], owners: list[str], progress: bool) -> None:
        from index.types import Chunk

        if len(collection):
            raise InvalidInputError(
                f"collection {collection.name!r} holds {len(collection)} chunks, expected "
                f"{len(texts)}: the corpus changed; use a fresh --workspace")
        documents: dict[str, list[Chunk]] = {}
        for text, owner in zip(texts, owners):
            documents.setdefault(owner, []).append(Chunk(text, owner, 1, 1, "passage"))
        collection.add_documents(documents, progress=progress)

    @staticmethod
    def _tuned_model(workspace: Path, name: str) -> str:
        """The tuned model an earlier run's `codehop tune` switched collection `name` to, or ""
        (no such collection, or not tuned): a second run opens it with that model, as it is."""
        from index import Collection
        from runtime.embed_tune import tuned_from
        from runtime.errors import NotFoundError

        try:
            stored = Collection.open(workspace, name, create=False)
        except NotFoundError:
            return ""
        try:
            model = stored.config.embedding_model
        finally:
            stored.close()
        return model if tuned_from(model) else ""

    @staticmethod
    def _tune(collection, config: RetrievalConfig, progress: bool):
        """`codehop tune` on the collection once (a tuned collection is reused as it is)."""
        from index.collection_tune import TuneSettings, tune_collection
        from index.pseudo_pairs import PairConfig
        from runtime.embed_tune import tuned_from

        if tuned_from(collection.config.embedding_model):
            return None
        say = (lambda text: print(f"coderag: {text}", flush=True)) if progress else None
        return tune_collection(collection, TuneSettings(pairs=PairConfig(max_pairs=config.tune_pairs)),
                               on_stage=say)

    def close(self) -> None:
        for collection in self.collections.values():
            collection.close()

    def search(self, query: str, mode: str, kind: str = "flat", k: int | None = None,
               voters: dict[str, str] | None = None) -> dict[str, float]:
        """Document id -> score (best chunk), best first, at most k documents; `voters`
        overrides the collection's hybrid voters for this search (an ablation row's
        SEARCH_ABLATIONS entry)."""
        k = k or self.config.k
        if not query.strip():
            return {}
        collection = self.collections[kind]
        with collection_settings(collection, **(voters or {})):
            results = collection.search(query, k=min(k, self.documents), mode=mode, group_by="document")
        return {result.path: float(result.score) for result in results}

    def fused(self, query: str, method: str, k: int | None = None) -> dict[str, float]:
        """Document id -> score of the flat collection's BM25 and dense chunk lists fused by
        `method` ("rrf"), for ablation rows; the product's fusion is `search(..., "hybrid")`."""
        from index.hybrid import rrf_fuse_keys

        if method != "rrf":
            raise InvalidInputError(f"unknown ablation fusion {method!r}")
        k = k or self.config.k
        collection = self.collections["flat"]
        n = collection.config.candidates
        path_of, lists = {}, []
        for mode in ("bm25", "dense"):
            results = collection.search(query, k=min(n, self.chunks), mode=mode)
            path_of.update((result.id, result.path) for result in results)
            lists.append([result.id for result in results])
        docs: dict[str, float] = {}
        for chunk, score in rrf_fuse_keys(lists, k=collection.config.rrf_k).items():
            docs.setdefault(path_of[chunk], score)  # a document scores as its best chunk
            if len(docs) >= k:
                break
        return docs

    def chunk_texts(self, query: str, k: int, kind: str = "flat", mode: str = "bm25") -> list[str]:
        return [r.text for r in self.collections[kind].search(query, k=k, mode=mode)]


def rrf_docs(runs: list[dict[str, float]], k: int, rrf_k: int = 60) -> dict[str, float]:
    """Reciprocal-rank fusion of per-document runs (index.hybrid.rrf_fuse_keys), top k."""
    from index.hybrid import rrf_fuse_keys

    return dict(itertools.islice(rrf_fuse_keys(runs, k=rrf_k).items(), k))


# ------------------------------------------------------------------ query rewriting


def make_rewriters(generator_factory: Callable[[], object], config: RetrievalConfig):
    """(prf, llm, description): callables (CorpusIndex, query) -> extra queries, from
    rag.rewrite (RM3 `PRFRewriter` over the flat collection, Query Rewriter+ `LLMRewriter`).
    The generator is loaded on the first LLM rewrite."""
    from rag.rewrite import LLMRewriter, PRFRewriter, RewriteConfig

    rw_config = RewriteConfig(n_questions=1, n_queries=3, max_new_tokens=config.llm_max_new_tokens,
                              prf_docs=config.prf_docs, prf_terms=config.prf_terms)
    state: dict[str, LLMRewriter] = {}

    def prf(index: "CorpusIndex", query: str) -> list[str]:
        return list(PRFRewriter(index.collections["flat"], rw_config).rewrite(query).queries)

    def llm(index: "CorpusIndex", query: str) -> list[str]:
        if "llm" not in state:
            state["llm"] = LLMRewriter(generator_factory(), rw_config)
        tail = query[-config.max_query_chars:]
        return [q for q in state["llm"].rewrite(tail).all_queries if q.strip() != tail.strip()]

    description = {"prf": "rag.rewrite.PRFRewriter (RM3, BM25 feedback chunks)",
                   "llm": f"rag.rewrite.LLMRewriter (Query Rewriter+, {rw_config})"}
    return prf, llm, description


def run_retriever(index: CorpusIndex, retriever: str, queries: dict[str, str], config: RetrievalConfig,
                  rewriters=None, progress: bool = True,
                  rewrite_cache: dict[str, list[str]] | None = None) -> dict[str, dict[str, float]]:
    """query id -> {doc id: score} for one retriever over all queries."""
    from tqdm import tqdm

    if retriever not in RETRIEVERS:
        raise InvalidInputError(f"unknown retriever {retriever!r}; choose from {', '.join(RETRIEVERS)}")
    run = {}
    for qid, query in tqdm(queries.items(), desc=f"{index.name} {retriever}", unit="q",
                           disable=not progress, leave=False):
        if retriever == "bm25":
            run[qid] = index.search(query, "bm25")
        elif retriever.startswith("dense-"):
            run[qid] = index.search(query, "dense", dense_kind(retriever))
        elif retriever == "hybrid":
            run[qid] = index.search(query, "hybrid")
        elif retriever == "hybrid-rrf":
            run[qid] = index.fused(query, "rrf")
        elif retriever in SEARCH_ABLATIONS:
            run[qid] = index.search(query, "hybrid", voters=SEARCH_ABLATIONS[retriever])
        elif retriever.endswith("-nocontext"):
            run[qid] = index.search(query, retriever.split("-", 1)[0], NOCONTEXT)
        elif retriever.endswith("-tuned"):
            run[qid] = index.search(query, retriever.split("-", 1)[0], TUNED)
        else:
            prf, llm = rewriters
            key = f"{retriever}\t{qid}\t{hashlib.sha1(query.encode()).hexdigest()[:16]}"
            if rewrite_cache is not None and key in rewrite_cache:
                extra = rewrite_cache[key]
            elif retriever == "hybrid+prf":
                extra = prf(index, query)
            else:
                extra = llm(index, query)
            if rewrite_cache is not None:
                rewrite_cache[key] = extra
            runs = [index.search(query, "hybrid")] + [index.search(q, "hybrid") for q in extra if q.strip()]
            run[qid] = rrf_docs(runs, config.k)
    return run


def ratio(value: float, baseline: float) -> float:
    """value / baseline (nan when the baseline is 0)."""
    return value / baseline if baseline else math.nan

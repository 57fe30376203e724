"""The generation contract every behaviour package shares: settings, result, interface.

rag/ implements generators (rag.llm: transformers, vllm, llama.cpp); code_tools/ (repository
completion) and agents/ (the code agent) only drive one. They may not import each other, so the
types they exchange live here, beside the model resolver (runtime.resolver) that names the
generator to load. rag.llm re-exports them, so `from rag.llm import GenerationConfig` works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

from runtime.errors import InvalidInputError


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. temperature 0 = greedy; `stop` strings end the text (not included).

    Args:
        repetition_penalty: CTRL-style penalty (Keskar et al. 2019) on tokens already
            generated in this answer: a positive logit is divided by it, a negative one
            multiplied. 1.0 = off. Prompt tokens are not penalised, so an answer may still
            quote its sources.
        no_repeat_ngram_size: n > 0 forbids any n-gram of generated tokens from occurring
            twice (the loop breaker for small models). 0 = off.
        json_schema: constrain the output to this JSON schema (local backends decode under a
            grammar; OpenAI-compatible servers get it as `response_format`). None = free text.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    json_schema: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise InvalidInputError("need temperature >= 0 and 0 < top_p <= 1")
        # Far below 1 the penalty multiplies repeated logits into overflow: keep it sane.
        if not 0.1 <= self.repetition_penalty <= 10 or self.no_repeat_ngram_size < 0:
            raise InvalidInputError("need 0.1 <= repetition_penalty <= 10 and no_repeat_ngram_size >= 0")
        if self.json_schema is not None and not isinstance(self.json_schema, Mapping):
            raise InvalidInputError("json_schema must be a JSON schema object (a dict)")


@dataclass
class Generation:
    """One finished generation: text (stop string cut off), its token ids and how it ended."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str  # "stop" (eos or stop string) | "length"
    prompt_tokens: int
    elapsed_s: float
    fim: bool = False  # the text was generated with the text after the cursor (complete_fim)
    # The server's own count of generated tokens (usage.completion_tokens) when a remote
    # backend reports one; local backends leave it None and count `token_ids`.
    completion_tokens: int | None = None
    note: str = ""  # why the backend did less than asked (e.g. the suffix was not used)
    # What a local decoding loop did, when it reports it (rag.llm.TransformersGenerator):
    # forwards, drafted, accepted, and whether prompt-lookup drafting ran and why.
    decode: dict[str, Any] | None = None

    @property
    def generated_tokens(self) -> int:
        """Tokens generated: the server's count when it gave one, else len(token_ids)."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.token_ids)


@runtime_checkable
class Generator(Protocol):
    """What every backend offers; `fim_prompt` is None when the model has no FIM format.

    `parameters` is the model's parameter count when the backend knows it (a local model),
    None for a remote server; the RAG pipeline reads it to keep instruction-heavy stages
    (LLM rewrite, LLM filter) away from models too small to follow them.
    """

    name: str
    supports_fim: bool
    parameters: int | None

    def complete(self, prompt: str, config: GenerationConfig = ...) -> Generation: ...
    def stream(self, prompt: str, config: GenerationConfig = ...) -> Iterator[str]: ...
    def chat(self, messages: list[dict[str, str]], config: GenerationConfig = ...) -> Generation: ...
    def chat_stream(self, messages: list[dict[str, str]], config: GenerationConfig = ...) -> Iterator[str]: ...
    def count_tokens(self, text: str) -> int: ...
    def fim_prompt(self, prefix: str, suffix: str) -> str | None: ...
    def complete_fim(self, prefix: str, suffix: str, config: GenerationConfig = ...) -> Generation:
        """Fill in between prefix and suffix; a backend that cannot use the suffix completes the
        prefix alone and returns `fim=False`, so callers can say so instead of hiding it."""
        ...

"""The generation contract every behaviour package shares: settings, result, interface.

rag/ implements generators (rag.llm: transformers, vllm, llama.cpp); code_tools/ (repository
completion) and agents/ (the code agent) only drive one. They may not import each other, so the
types they exchange live here, beside the model resolver (index.models) that names the
generator to load. rag.llm re-exports them, so `from rag.llm import GenerationConfig` works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

from index.errors import InvalidInputError


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. temperature 0 = greedy; `stop` strings end the text (not included)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidInputError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise InvalidInputError("need temperature >= 0 and 0 < top_p <= 1")


@dataclass
class Generation:
    """One finished generation: text (stop string cut off), its token ids and how it ended."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str  # "stop" (eos or stop string) | "length"
    prompt_tokens: int
    elapsed_s: float


@runtime_checkable
class Generator(Protocol):
    """What every backend offers; `fim_prompt` is None when the model has no FIM format."""

    name: str
    supports_fim: bool

    def complete(self, prompt: str, config: GenerationConfig = ...) -> Generation: ...
    def stream(self, prompt: str, config: GenerationConfig = ...) -> Iterator[str]: ...
    def chat(self, messages: list[dict[str, str]], config: GenerationConfig = ...) -> Generation: ...
    def chat_stream(self, messages: list[dict[str, str]], config: GenerationConfig = ...) -> Iterator[str]: ...
    def count_tokens(self, text: str) -> int: ...
    def fim_prompt(self, prefix: str, suffix: str) -> str | None: ...

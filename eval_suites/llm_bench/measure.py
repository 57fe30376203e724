"""Pure helpers of llm_bench: the loop detector, a recording generator, the agent's action schema.

Kept free of model loading so tests/eval_suites/test_llm_bench.py can check them in milliseconds.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def repeated_ngram(text: str, n: int = 8) -> str | None:
    """The first word n-gram that occurs at least twice in `text` (lower-cased, whitespace
    normalised), or None.

    Example: "a b c d e f g h a b c d e f g h" -> "a b c d e f g h"; "a b c" -> None.
    """
    words = text.lower().split()
    counts: Counter[tuple[str, ...]] = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    for gram, count in counts.items():
        if count >= 2:
            return " ".join(gram)
    return None


def strict_json_object(text: str) -> bool:
    """The whole reply (whitespace and a ``` fence aside) is one JSON object."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile of a non-empty list (q in 0..100); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(after: float, before: float) -> float:
    """after / before, NaN when before is 0 (a ratio with nothing to compare against)."""
    return after / before if before else float("nan")


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def action_schema(tools) -> dict:
    """JSON schema of one agent turn: a call of one of `tools`' tools, or a final answer.

    Uses `tools.json_schema()` when the ToolBox has it; otherwise builds the same shape from its
    specs (name, typed params, required ones): {"thought", "tool": <const>, "args": {...}} or
    {"thought", "answer", "patch"}.
    """
    if hasattr(tools, "json_schema"):
        return tools.json_schema()
    calls = []
    for spec in tools._specs.values():
        properties = {name: {"type": _JSON_TYPES.get(p.type, "string")} for name, p in spec.params.items()}
        required = [name for name, p in spec.params.items() if p.required]
        calls.append({"type": "object",
                      "properties": {"thought": {"type": "string"}, "tool": {"const": spec.name},
                                     "args": {"type": "object", "properties": properties, "required": required,
                                              "additionalProperties": False}},
                      "required": ["thought", "tool", "args"], "additionalProperties": False})
    finish = {"type": "object",
              "properties": {"thought": {"type": "string"}, "answer": {"type": "string"}, "patch": {"type": "string"}},
              "required": ["thought", "answer", "patch"], "additionalProperties": False}
    return {"anyOf": [*calls, finish]}


@dataclass
class Call:
    """One recorded chat call."""

    tag: str
    kind: str  # "rewrite" | "filter" | "other"
    attempt: int  # 1 for the first request, 2 for chat_with_retry's correction
    structured: bool
    messages: list[dict[str, str]]
    text: str
    tokens: int
    prompt_tokens: int
    seconds: float
    finish: str


@dataclass
class RecordingGenerator:
    """Wraps a generator and records every `chat` call (the pipeline's rewrite and filter
    calls go through `chat`; its answer goes through `chat_stream`, timed by the pipeline)."""

    inner: Any
    tag: str = ""
    calls: list[Call] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def chat(self, messages, config):
        generation = self.inner.chat(messages, config)
        first = messages[0]["content"]
        kind = "rewrite" if first.startswith("Rewrite the question") else "filter" if first.startswith("Question:") else "other"
        attempt = sum(1 for m in messages if m["role"] == "user")
        self.calls.append(Call(self.tag, kind, attempt, config.json_schema is not None, list(messages), generation.text,
                               generation.generated_tokens, generation.prompt_tokens, generation.elapsed_s,
                               generation.finish_reason))
        return generation

"""A ReAct-style code agent: the model picks a tool with JSON arguments, sees the observation,
and finishes with an answer or a patch (Yao et al., "ReAct", ICLR 2023).

Each turn the model must emit exactly one JSON object, either a tool call

    {"thought": "find where Collection is defined", "tool": "find_definition",
     "args": {"symbol": "Collection"}}

or a final answer, optionally with a unified diff that must apply cleanly to the repository:

    {"thought": "done", "answer": "It is in index/collection.py:40", "patch": ""}

Each turn is decoded under the ToolBox's JSON schema (one object per tool, or the answer), so a
local backend cannot produce a malformed turn; a backend that ignores the schema may, and a
malformed turn is answered with an error observation (that observation is the retry). The loop
stops at the step budget or when the conversation would exceed the token budget. Every step is
recorded.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from agents.patch import apply_patch
from agents.tools import ToolBox
from runtime.errors import CodehopError, InvalidInputError
from runtime.generation import GenerationConfig


@dataclass(frozen=True)
class AgentConfig:
    """Budgets and decoding settings of one agent run."""

    max_steps: int = 12
    max_tokens: int = 24_000  # prompt + generated tokens summed over all turns
    max_new_tokens: int = 512
    temperature: float = 0.0
    observation_chars: int = 3_000  # an observation longer than this is cut, with a note
    structured: bool = True  # decode each turn under ToolBox.json_schema()
    # CTRL penalty over the turn's own tokens. Off by default: a JSON turn repeats quotes, keys
    # and braces by design, and a penalty on them pushes a small model off the format.
    repetition_penalty: float = 1.0


@dataclass
class AgentStep:
    index: int
    raw_output: str
    thought: str = ""
    tool: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    observation: str = ""
    error: str | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    elapsed_s: float = 0.0


@dataclass
class AgentResult:
    task: str
    status: str  # "answered" | "patched" | "bad_patch" | "step_budget" | "token_budget"
    answer: str | None
    patch: str | None
    patch_error: str | None
    steps: list[AgentStep]
    tokens_used: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SYSTEM_PROMPT = """You are a code assistant working inside a repository through tools.
Reply with exactly ONE JSON object and nothing else.
To call a tool: {{"thought": "...", "tool": "<name>", "args": {{...}}}}
To finish: {{"thought": "...", "answer": "<answer for the user>", "patch": "<unified diff or empty>"}}
A patch uses repository-relative paths with ---/+++ headers and @@ hunks.

Tools:
{tools}"""


def parse_action(text: str) -> dict[str, Any]:
    """The first JSON object in `text` that looks like an action; InvalidInputError otherwise.

    Models wrap JSON in prose or ``` fences; we scan for each "{" and decode from there.
    """
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            value, _ = decoder.raw_decode(text[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and ("tool" in value or "answer" in value):
            return value
    raise InvalidInputError(
        'no action found: reply with one JSON object, {"tool": ..., "args": {...}} or {"answer": ...}'
    )


class CodeAgent:
    """Runs the tool loop for one task at a time over a ToolBox bound to a repository."""

    def __init__(self, generator, tools: ToolBox, config: AgentConfig = AgentConfig()) -> None:
        self.generator = generator
        self.tools = tools
        self.config = config

    def _system_message(self) -> dict[str, str]:
        return {"role": "system", "content": SYSTEM_PROMPT.format(tools=self.tools.describe())}

    def _count(self, messages: list[dict[str, str]]) -> int:
        return sum(self.generator.count_tokens(m["content"]) + 4 for m in messages)

    def run(self, task: str) -> AgentResult:
        """Run to completion and return the result with every step."""
        result = None
        for event in self.run_stream(task):
            if isinstance(event, AgentResult):
                result = event
        assert result is not None  # run_stream always ends with a result
        return result

    def run_stream(self, task: str) -> Iterator[AgentStep | AgentResult]:
        """Yield each AgentStep as it completes, then the AgentResult."""
        if not task.strip():
            raise InvalidInputError("empty task: say what the agent should do")
        messages = [self._system_message(), {"role": "user", "content": task}]
        decoding = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature,
            repetition_penalty=self.config.repetition_penalty,
            json_schema=self.tools.json_schema() if self.config.structured else None,
        )
        steps: list[AgentStep] = []
        used = 0
        for index in range(1, self.config.max_steps + 1):
            prompt_tokens = self._count(messages)
            if used + prompt_tokens + self.config.max_new_tokens > self.config.max_tokens:
                yield AgentResult(task, "token_budget", None, None, None, steps, used)
                return
            start = time.perf_counter()
            generation = self.generator.chat(messages, decoding)
            step = AgentStep(index, generation.text, prompt_tokens=prompt_tokens,
                             generated_tokens=generation.generated_tokens)  # the server's count, if any
            used += prompt_tokens + step.generated_tokens
            final = self._act(step)
            step.elapsed_s = time.perf_counter() - start
            steps.append(step)
            yield step
            if final is not None:
                final.steps, final.tokens_used, final.task = steps, used, task
                yield final
                return
            messages.append({"role": "assistant", "content": generation.text})
            messages.append({"role": "user", "content": "Observation:\n" + step.observation})
        yield AgentResult(task, "step_budget", None, None, None, steps, used)

    def _act(self, step: AgentStep) -> AgentResult | None:
        """Parse and execute one model turn; a finished run returns its (partial) result."""
        try:
            action = parse_action(step.raw_output)
        except InvalidInputError as error:
            step.error = str(error)
            step.observation = f"ERROR: {error}"
            return None
        step.thought = str(action.get("thought", ""))
        if "answer" in action and "tool" not in action:
            return self._finish(step, str(action.get("answer") or ""), str(action.get("patch") or ""))
        step.tool = str(action.get("tool"))
        args = action.get("args") or {}
        step.args = args if isinstance(args, dict) else {}
        try:
            if not isinstance(args, dict):
                raise InvalidInputError('"args" must be a JSON object')
            observation = self.tools.call(step.tool, args)
        except CodehopError as error:
            step.error = str(error)
            observation = f"ERROR: {error}"
        step.observation = self._clip(observation)
        return None

    def _finish(self, step: AgentStep, answer: str, patch: str) -> AgentResult:
        if not patch.strip():
            step.observation = "finished with an answer"
            return AgentResult("", "answered", answer, None, None, [], 0)
        try:
            applied = apply_patch(Path(self.tools.root), patch, dry_run=True)
        except InvalidInputError as error:
            step.error = str(error)
            step.observation = f"patch rejected: {error}"
            return AgentResult("", "bad_patch", answer, patch, str(error), [], 0)
        step.observation = f"patch applies cleanly to {', '.join(applied.files)}"
        return AgentResult("", "patched", answer, patch, None, [], 0)

    def _clip(self, text: str) -> str:
        limit = self.config.observation_chars
        if len(text) <= limit:
            return text
        return text[:limit] + f"\n[... cut: {len(text) - limit} more characters]"

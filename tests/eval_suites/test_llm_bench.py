"""Pure helpers of eval_suites.llm_bench (no model)."""

from dataclasses import dataclass
from pathlib import Path

from eval_suites.llm_bench.measure import (RecordingGenerator, action_schema, percentile, repeated_ngram,
                                           strict_json_object)
from runtime.generation import Generation, GenerationConfig


def test_repeated_ngram_finds_a_loop_across_case_and_whitespace():
    text = "The index is atomic because the index is written\n then RENAMED. the index is atomic because the  index is written"
    assert repeated_ngram(text) == "the index is atomic because the index is"


def test_repeated_ngram_none_for_short_or_distinct_text():
    assert repeated_ngram("a b c") is None
    assert repeated_ngram(" ".join(str(i) for i in range(40))) is None
    assert repeated_ngram("") is None


def test_repeated_ngram_needs_the_whole_gram_twice():
    assert repeated_ngram("a b c d e f g h x b c d e f g h") is None
    assert repeated_ngram("a b c d e f g h a b c d e f g h") == "a b c d e f g h"


def test_strict_json_object():
    assert strict_json_object(' {"label": "neutral"} ')
    assert strict_json_object('```json\n{"a": 1}\n```')
    assert not strict_json_object('Sure! {"label": "neutral"}')
    assert not strict_json_object('["a"]')


def test_percentile_interpolates():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_action_schema_from_specs(tmp_path: Path):
    from agents.tools import ToolBox

    schema = action_schema(ToolBox(tmp_path))
    tools = [option["properties"]["tool"]["const"] for option in schema["anyOf"] if "tool" in option["properties"]]
    assert tools == ToolBox(tmp_path).names
    assert any("answer" in option["properties"] for option in schema["anyOf"])


@dataclass
class _Echo:
    name: str = "echo"
    parameters: int = 1

    def chat(self, messages, config):
        return Generation("ok", [1, 2], None, "stop", 3, 0.5)


def test_recording_generator_records_kind_attempt_and_schema():
    recorder = RecordingGenerator(_Echo(), tag="old:0")
    recorder.chat([{"role": "user", "content": "Question: q\nPassage: p"}], GenerationConfig(json_schema={"type": "object"}))
    recorder.chat([{"role": "user", "content": "Rewrite the question"}, {"role": "assistant", "content": "x"},
                   {"role": "user", "content": "again"}], GenerationConfig())
    assert [(c.kind, c.attempt, c.structured, c.tokens) for c in recorder.calls] == [("filter", 1, True, 2),
                                                                                      ("rewrite", 2, False, 2)]
    assert recorder.name == "echo" and recorder.parameters == 1

import json

import pytest

from agents.code_agent import AgentConfig, CodeAgent, parse_action
from runtime.errors import InvalidInputError
from tests.agents.conftest import ScriptedGenerator


def call(tool, **args):
    return json.dumps({"thought": f"use {tool}", "tool": tool, "args": args})


def test_parse_action_finds_json_in_prose_and_fences():
    text = 'Sure!\n```json\n{"thought": "t", "tool": "read_file", "args": {"path": "a.py"}}\n```'
    assert parse_action(text)["tool"] == "read_file"
    assert parse_action('{"x": 1} then {"answer": "done"}')["answer"] == "done"
    with pytest.raises(InvalidInputError):
        parse_action("I will read the file now.")


def test_loop_calls_tools_and_finishes_with_answer(tools):
    model = ScriptedGenerator([
        call("read_file", path="shapes/geometry.py", start_line=5, end_line=10),
        '{"thought": "found it", "answer": "Circle is in shapes/geometry.py line 5"}',
    ])
    result = CodeAgent(model, tools).run("Where is Circle defined?")
    assert result.status == "answered"
    assert result.answer.startswith("Circle is in shapes/geometry.py")
    assert [s.tool for s in result.steps] == ["read_file", None]
    assert "class Circle" in result.steps[0].observation
    # The observation went back to the model as the next user message.
    assert "class Circle" in model.seen[1][-1]["content"]
    assert result.tokens_used > 0


def test_malformed_turns_and_bad_tools_become_error_observations(tools):
    model = ScriptedGenerator([
        "I think I should look at the file",  # no JSON at all
        call("delete_everything"),  # unknown tool
        call("read_file", path="../../etc/passwd"),  # outside the root
        call("read_file", path="shapes/geometry.py", start_line="x"),  # wrong type
        '{"answer": "gave up"}',
    ])
    result = CodeAgent(model, tools).run("task")
    errors = [s.error for s in result.steps[:4]]
    assert all(errors)
    assert "no action found" in errors[0]
    assert "unknown tool" in errors[1]
    assert "outside the repository" in errors[2]
    assert "must be int" in errors[3]
    assert result.status == "answered"


def test_step_budget_stops_the_loop(tools):
    model = ScriptedGenerator([call("find_references", symbol="Circle")] * 10)
    result = CodeAgent(model, tools, AgentConfig(max_steps=3)).run("loop forever")
    assert result.status == "step_budget"
    assert len(result.steps) == 3
    assert "shapes/report.py" in result.steps[0].observation


def test_token_budget_stops_before_overrunning(tools):
    model = ScriptedGenerator([call("read_file", path="shapes/geometry.py")] * 10)
    config = AgentConfig(max_steps=10, max_tokens=700, max_new_tokens=100)
    result = CodeAgent(model, tools, config).run("read a lot")
    assert result.status == "token_budget"
    assert 1 <= len(result.steps) < 10
    assert result.tokens_used <= 700


def test_finish_with_a_patch_that_applies(small_repo, tools):
    patch = (
        "--- a/shapes/geometry.py\n+++ b/shapes/geometry.py\n@@ -17,2 +17,5 @@\n"
        "     def area(self):\n         return self.side * self.side\n+\n"
        "+    def perimeter(self):\n+        return 4 * self.side\n"
    )
    model = ScriptedGenerator([json.dumps({"thought": "add it", "answer": "added", "patch": patch})])
    result = CodeAgent(model, tools).run("add Square.perimeter")
    assert result.status == "patched", result.patch_error
    # The agent only proposes: the repository itself is untouched.
    assert "perimeter" not in (small_repo / "shapes/geometry.py").read_text()


def test_finish_with_a_patch_that_does_not_apply(tools):
    patch = "--- a/shapes/geometry.py\n+++ b/shapes/geometry.py\n@@ -1,1 +1,1 @@\n-nothing\n+else\n"
    model = ScriptedGenerator([json.dumps({"answer": "x", "patch": patch})])
    result = CodeAgent(model, tools).run("break it")
    assert result.status == "bad_patch"
    assert "does not apply" in result.patch_error


def test_empty_task_is_rejected(tools):
    with pytest.raises(InvalidInputError):
        CodeAgent(ScriptedGenerator([]), tools).run("  ")


def test_stream_yields_steps_then_result(tools):
    model = ScriptedGenerator([call("list_symbols", path="shapes/report.py"), '{"answer": "ok"}'])
    events = list(CodeAgent(model, tools).run_stream("list"))
    assert [type(e).__name__ for e in events] == ["AgentStep", "AgentStep", "AgentResult"]
    assert "function describe" in events[0].observation


class RecordingGenerator(ScriptedGenerator):
    """The scripted model, also recording the GenerationConfig of every turn."""

    def __init__(self, turns):
        super().__init__(turns)
        self.configs = []

    def chat(self, messages, config):
        self.configs.append(config)
        return super().chat(messages, config)


def test_turn_schema_has_one_object_per_tool_and_the_answer(tools):
    schema = tools.json_schema()
    *calls, answer = schema["anyOf"]
    assert [c["properties"]["tool"] for c in calls] == [{"const": name} for name in tools.names]
    read = calls[tools.names.index("read_file")]
    assert read["required"] == ["thought", "tool", "args"] and read["additionalProperties"] is False
    assert read["properties"]["args"] == {
        "type": "object", "additionalProperties": False, "required": ["path"],
        "properties": {"path": {"type": "string"}, "start_line": {"type": "integer"}, "end_line": {"type": "integer"}}}
    assert answer["required"] == ["thought", "answer", "patch"]


def test_agent_sends_the_turn_schema_and_optional_penalty(tools):
    model = RecordingGenerator([call("list_symbols", path="shapes/report.py"), '{"answer": "ok"}'])
    CodeAgent(model, tools).run("list")
    assert [c.json_schema for c in model.configs] == [tools.json_schema()] * 2
    assert model.configs[0].repetition_penalty == 1.0
    free = RecordingGenerator(['{"answer": "ok"}'])
    CodeAgent(free, tools, AgentConfig(structured=False, repetition_penalty=1.1)).run("x")
    assert free.configs[0].json_schema is None and free.configs[0].repetition_penalty == 1.1


def test_xgrammar_compiles_the_turn_schema_and_enforces_it(tools, smollm2_tokenizer):
    xgr = pytest.importorskip("xgrammar")
    info = xgr.TokenizerInfo.from_huggingface(smollm2_tokenizer, vocab_size=len(smollm2_tokenizer))
    grammar = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(tools.json_schema()), any_whitespace=False)

    def accepts(text):
        return xgr.GrammarMatcher(grammar).accept_string(text)

    assert accepts(json.dumps({"thought": "t", "tool": "read_file", "args": {"path": "a.py", "start_line": 3}}))
    assert accepts(json.dumps({"thought": "t", "answer": "done", "patch": ""}))
    assert not accepts(json.dumps({"thought": "t", "tool": "delete_everything", "args": {}}))
    assert not accepts(json.dumps({"thought": "t", "tool": "read_file", "args": {"start_line": 3}}))
    assert not accepts(json.dumps({"thought": "t", "tool": "read_file", "args": {"path": "a", "start_line": "x"}}))


@pytest.mark.slow
def test_smollm2_first_turn_under_the_schema_is_an_action(tools):
    pytest.importorskip("xgrammar")
    from rag.llm import load_generator

    model = load_generator()
    agent = CodeAgent(model, tools, AgentConfig(max_steps=1, max_new_tokens=160))
    step = agent.run("Where is the class Circle defined?").steps[0]
    action = parse_action(step.raw_output)
    assert action.get("tool") in tools.names or "answer" in action
    assert not (step.error or "").startswith("no action found")

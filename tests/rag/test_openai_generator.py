"""OpenAIGenerator against a real scripted HTTP server: what goes over the wire and back."""

from __future__ import annotations

import pytest

from runtime.generation import GenerationConfig, Generator
from runtime.openai_http import OpenAIClient, OpenAIEndpoint
from rag.openai_generator import OpenAIGenerator, OpenAIGeneratorConfig
from tests.scripted_server import Reply, ScriptedServer

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["yes", "no"]}}, "required": ["label"]}


def chat_reply(text: str, finish: str = "stop") -> Reply:
    return Reply(200, {"choices": [{"message": {"role": "assistant", "content": text},
                                    "finish_reason": finish}], "usage": {"prompt_tokens": 7}})


def models_reply(owner: str) -> Reply:
    return Reply(200, {"data": [{"id": "m", "owned_by": owner}]})


@pytest.fixture
def server():
    with ScriptedServer() as running:
        yield running


def generator_for(server: ScriptedServer, **options) -> OpenAIGenerator:
    endpoint = OpenAIEndpoint(server.base_url, "m", max_retries=0)
    return OpenAIGenerator(endpoint, OpenAIGeneratorConfig(**options), OpenAIClient(endpoint))


def test_is_a_generator_and_passes_sampling_through(server):
    server.script("/v1/models", models_reply("vllm"))
    server.script("/v1/chat/completions", chat_reply("hello END world"))
    generator = generator_for(server)
    assert isinstance(generator, Generator) and generator.parameters is None
    config = GenerationConfig(max_new_tokens=9, temperature=0.7, top_p=0.9, seed=3, stop=("END",),
                              repetition_penalty=1.2)
    result = generator.chat([{"role": "user", "content": "hi"}], config)
    assert result.text == "hello " and result.prompt_tokens == 7  # stop cut client-side too
    sent = server.bodies("/v1/chat/completions")[0]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"], sent["stop"]) == \
        (9, 0.7, 0.9, 3, ["END"])
    assert sent["repetition_penalty"] == 1.2 and "response_format" not in sent


@pytest.mark.parametrize("owner, field", [("llamacpp", "repeat_penalty"), ("openai", "frequency_penalty"),
                                          ("library", "frequency_penalty")])
def test_repetition_penalty_goes_where_the_server_understands_it(server, owner, field):
    server.script("/v1/models", models_reply(owner))
    server.script("/v1/chat/completions", chat_reply("x"))
    generator_for(server).chat([{"role": "user", "content": "hi"}], GenerationConfig(repetition_penalty=1.3))
    sent = server.bodies("/v1/chat/completions")[0]
    assert {k for k in ("repetition_penalty", "repeat_penalty", "frequency_penalty") if k in sent} == {field}


def test_json_schema_is_sent_as_response_format_and_dropped_once_rejected(server):
    server.script("/v1/chat/completions", Reply(400, {"error": {"message": "unknown field response_format"}}),
                  chat_reply('{"label": "yes"}'), chat_reply('{"label": "no"}'))
    generator = generator_for(server, server_kind="ollama")
    config = GenerationConfig(json_schema=SCHEMA)
    assert generator.chat([{"role": "user", "content": "q"}], config).text == '{"label": "yes"}'
    generator.chat([{"role": "user", "content": "q"}], config)
    first, retry, later = server.bodies("/v1/chat/completions")
    assert first["response_format"]["json_schema"]["schema"] == SCHEMA
    assert "response_format" not in retry and "response_format" not in later


def test_streams_chat_and_completion_deltas(server):
    server.script("/v1/chat/completions", Reply(200, [
        'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}',
        'data: {"choices": [{"delta": {"content": "Hel"}}]}',
        'data: {"choices": [{"delta": {"content": "lo"}}]}', "data: [DONE]"]))
    server.script("/v1/completions", Reply(200, ['data: {"choices": [{"text": "a"}]}',
                                                 'data: {"choices": [{"text": "b"}]}', "data: [DONE]"]))
    generator = generator_for(server, server_kind="vllm")
    assert list(generator.chat_stream([{"role": "user", "content": "hi"}])) == ["Hel", "lo"]
    assert "".join(generator.stream("x")) == "ab"


def test_fim_through_suffix_and_the_servers_word_on_it(server):
    completion = {"choices": [{"text": "middle", "finish_reason": "stop"}]}
    server.script("/v1/completions", Reply(200, completion, {"x-codehop-fim": "true"}),
                  Reply(200, completion, {"x-codehop-fim": "false"}))
    generator = generator_for(server, server_kind="codehop")
    used = generator.complete_fim("def f(", "\n    return x")
    assert used.text == "middle" and used.fim and not used.note
    sent = server.bodies("/v1/completions")[0]
    assert sent["prompt"] == "def f(" and sent["suffix"] == "\n    return x"
    refused = generator.complete_fim("def f(", "\n    return x")  # a codehop server said no
    assert not refused.fim and "after the cursor was not used" in refused.note


@pytest.mark.parametrize("kind, fim", [("ollama", True), ("unknown", False)])
def test_suffix_is_claimed_only_where_the_server_kind_honours_it(server, kind, fim):
    server.script("/v1/completions", Reply(200, {"choices": [{"text": "m"}]}))
    result = generator_for(server, server_kind=kind).complete_fim("a", "b")
    assert result.fim is fim and bool(result.note) is not fim


def test_suffix_refused_by_vllm_falls_back_to_the_prefix_with_a_note(server):
    server.script("/v1/completions", Reply(400, {"error": {"message": "suffix is not currently supported"}}),
                  Reply(200, {"choices": [{"text": "z"}], "usage": {"completion_tokens": 1}}))
    result = generator_for(server, server_kind="vllm").complete_fim("a", "b")
    assert result.text == "z" and not result.fim and "refused `suffix`" in result.note
    assert "suffix" not in server.bodies("/v1/completions")[1]


def test_fim_through_llamacpp_infill(server):
    server.script("/v1/models", models_reply("llamacpp"))
    server.script("/infill", Reply(200, {"content": "x, y"}))
    result = generator_for(server).complete_fim("f(", ")")
    assert result.text == "x, y" and result.fim
    assert server.bodies("/infill")[0]["input_suffix"] == ")"


def test_fim_none_completes_the_prefix_and_says_so(server):
    server.script("/v1/completions", Reply(200, {"choices": [{"text": "z"}]}))
    result = generator_for(server, fim="none", server_kind="vllm").complete_fim("a", "b")
    assert not result.fim and "suffix" not in server.bodies("/v1/completions")[0]


def test_token_counting_server_then_estimate(server):
    server.script("/tokenize", Reply(200, {"count": 1}), Reply(200, {"count": 42}))
    counted = generator_for(server)
    assert counted.count_tokens("some text") == 42 and counted.token_counting == "server"
    # No /tokenize (OpenAI itself): about 4 characters per token.
    estimated = generator_for(server)
    assert estimated.count_tokens("x" * 40) == 10 and estimated.token_counting == "estimate"


def test_answer_without_choices_is_a_clear_error(server):
    from runtime.errors import ModelServerError

    server.script("/v1/chat/completions", Reply(200, {"object": "error"}))
    with pytest.raises(ModelServerError, match="without choices"):
        generator_for(server).chat([{"role": "user", "content": "hi"}])


def test_capability_verdict_is_kept_on_disk_for_the_next_process(server, tmp_path):
    import json

    from rag import capability

    store = tmp_path / "capability.json"
    # The probe's three calls: a rewrite that copies the template fails at once.
    server.script("/v1/chat/completions", chat_reply('{"rewritten_questions": ["<clearer version of the question>"], '
                                                    '"queries": ["x"]}'))
    first = capability.probe_capability(generator_for(server, server_kind="vllm"), store)
    assert not first.follows and "copied the prompt's template" in first.why
    asked = len(server.bodies("/v1/chat/completions"))
    capability._CACHE.clear()  # as in a new process
    again = capability.probe_capability(generator_for(server, server_kind="vllm"), store)
    assert not again.follows and "cached in" in again.why
    assert len(server.bodies("/v1/chat/completions")) == asked  # not probed again
    # After a day the verdict is probed afresh.
    data = json.loads(store.read_text())
    for entry in data.values():
        entry["at"] -= capability.CACHE_TTL_S + 1
    store.write_text(json.dumps(data))
    capability._CACHE.clear()
    server.script("/v1/chat/completions", chat_reply("not json"), chat_reply("still not"))
    assert "did not parse" in capability.probe_capability(generator_for(server, server_kind="vllm"), store).why

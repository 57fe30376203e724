"""OpenAIGenerator against llama.cpp's real HTTP server (xllamacpp serving the shipped SmolLM2
GGUF): FIM that degrades honestly, token counting in llama.cpp's shape, usage relayed, JSON
schemas on every request kind with the fallback decided by the server's actual refusal, and
the capability probe that keeps a 135M model away from the LLM stages."""

from __future__ import annotations

import json
import logging

import pytest

from runtime.generation import GenerationConfig
from runtime.openai_http import OpenAIEndpoint
from rag.capability import probe_capability
from rag.openai_generator import OpenAIGenerator, OpenAIGeneratorConfig, repetition_fields

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PREFIX, SUFFIX = "def add(a, b):\n    return", "\n\n\nprint(add(1, 2))\n"


def generator_for(url: str, **options) -> OpenAIGenerator:
    return OpenAIGenerator(OpenAIEndpoint(url, "smollm2", max_retries=0), OpenAIGeneratorConfig(**options))


def test_fim_falls_back_to_the_prefix_with_a_note_when_infill_is_unsupported(llamacpp_url, caplog):
    generator = generator_for(llamacpp_url)
    assert generator.server_kind == "llamacpp"
    config = GenerationConfig(max_new_tokens=8)
    with caplog.at_level(logging.WARNING, logger="rag.openai_generator"):
        first = generator.complete_fim(PREFIX, SUFFIX, config)
        second = generator_for(llamacpp_url).complete_fim(PREFIX, SUFFIX, config)  # same process
    for result in (first, second):
        assert result.text and result.fim is False
        assert "no fill-in-the-middle tokens" in result.note and "501" in result.note
    # The 501 was met (and logged) once per process; the second generator did not ask again.
    assert sum("/infill is not available" in r.getMessage() for r in caplog.records) == 1


def test_suffix_mode_never_claims_fim_on_llamacpp(llamacpp_url):
    result = generator_for(llamacpp_url, fim="suffix").complete_fim(PREFIX, SUFFIX, GenerationConfig(max_new_tokens=4))
    assert result.fim is False and "ignores `suffix`" in result.note


def test_tokens_are_counted_by_llamacpp_in_its_own_request_shape(llamacpp_url, smollm2_tokenizer):
    generator = generator_for(llamacpp_url)
    text = "def total(values):\n    return sum(v * 2 for v in values)  # doubled"
    assert generator.count_tokens(text) == len(smollm2_tokenizer.encode(text, add_special_tokens=False))
    assert generator.token_counting == "server"


def test_server_only_counting_is_refused_when_the_shape_gives_no_tokens(llamacpp_url):
    from runtime.errors import ModelServerError

    # Told it is vLLM, the client sends llama.cpp a `prompt` body: 200 with no tokens.
    with pytest.raises(ModelServerError, match="empty token list"):
        generator_for(llamacpp_url, tokenizer="server", server_kind="vllm").count_tokens("some text")
    estimated = generator_for(llamacpp_url, server_kind="vllm")
    assert estimated.count_tokens("x" * 40) == 10 and estimated.token_counting == "estimate"


def test_usage_is_relayed_from_the_server(llamacpp_url):
    generator = generator_for(llamacpp_url)
    chat = generator.chat([{"role": "user", "content": "Name a colour."}], GenerationConfig(max_new_tokens=6))
    assert chat.completion_tokens == chat.generated_tokens == 6 and chat.finish_reason == "length"
    assert chat.prompt_tokens > 10  # the chat template's system turn counts too
    plain = generator.complete("The capital of France is", GenerationConfig(max_new_tokens=3))
    assert plain.completion_tokens == 3 and plain.prompt_tokens == generator.count_tokens("The capital of France is")


def test_json_schema_on_chat_completion_and_stream(llamacpp_url):
    generator = generator_for(llamacpp_url)
    config = GenerationConfig(max_new_tokens=24, json_schema=SCHEMA)
    messages = [{"role": "user", "content": "Which city is the capital of France? Reply in JSON."}]
    assert "city" in json.loads(generator.chat(messages, config).text)
    assert "city" in json.loads("".join(generator.chat_stream(messages, config)))
    # llama.cpp's /v1/completions takes the schema as `json_schema` (it ignores response_format).
    assert "city" in json.loads(generator.complete("The capital of France as JSON:", config).text)


def test_a_schema_the_server_refuses_is_dropped_for_that_schema_only(llamacpp_url):
    generator = generator_for(llamacpp_url)
    broken = GenerationConfig(max_new_tokens=8, json_schema={"type": "object", "properties": {"a": {"$ref": "#/nope"}}})
    messages = [{"role": "user", "content": "Say hi."}]
    assert generator.chat(messages, broken).text  # refused with 400, answered without the schema
    assert "".join(generator.chat_stream(messages, broken))  # streams take the same path
    # A 400 about one schema does not switch structured output off for the others.
    good = GenerationConfig(max_new_tokens=24, json_schema=SCHEMA)
    assert "city" in json.loads(generator.chat([{"role": "user", "content": "Capital of Italy, JSON."}], good).text)


def test_a_request_after_a_stream_finds_a_live_connection(llamacpp_url):
    generator = generator_for(llamacpp_url)
    for _ in range(2):  # llama.cpp closes a streamed connection while announcing keep-alive
        assert "".join(generator.chat_stream([{"role": "user", "content": "Hi"}], GenerationConfig(max_new_tokens=3)))
        assert generator.chat([{"role": "user", "content": "Hi"}], GenerationConfig(max_new_tokens=3)).text


def test_the_135m_model_fails_the_capability_probe_once_per_server(llamacpp_url):
    generator = generator_for(llamacpp_url)
    verdict = probe_capability(generator)
    assert verdict.follows is False and "failed the instruction probe" in verdict.why
    assert probe_capability(generator_for(llamacpp_url)) is verdict  # cached per (base_url, model)


def test_repetition_control_goes_in_each_servers_own_field(llamacpp_url):
    assert repetition_fields("vllm", 1.1) == {"repetition_penalty": 1.1}
    assert repetition_fields("codehop", 1.1, 8) == {"repetition_penalty": 1.1}
    assert repetition_fields("openai", 1.1) == repetition_fields("unknown", 1.1) == {"frequency_penalty": 0.5}
    assert repetition_fields("llamacpp", 1.1, 8, 256) == {
        "repeat_penalty": 1.1, "repeat_last_n": 256, "dry_multiplier": 0.8, "dry_allowed_length": 2,
        "dry_penalty_last_n": 256}
    assert repetition_fields("llamacpp", 1.0) == {}
    # llama.cpp accepts the fields and values sent (it refuses a bad value with 400).
    text = generator_for(llamacpp_url).chat([{"role": "user", "content": "List fruits."}], GenerationConfig(
        max_new_tokens=32, repetition_penalty=1.1, no_repeat_ngram_size=8)).text
    assert text

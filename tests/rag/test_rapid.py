"""RAPID speculative decoding: exactness of greedy mode, the sampling rule, caches, context builder.

The tiny random Llamas check mechanics, never quality: the target is the shared `tiny_llama`,
the "other" drafter the same architecture with another seed, so its drafts are often rejected.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch

from runtime.errors import InvalidInputError
from rag.llm import Generator, GenerationConfig, TransformersGenerator
from rag.rapid import (DraftContextConfig, RapidConfig, RapidDecoder, RapidGenerator, adjusted_distribution,
                       build_draft_context, chunk_spans, prefill, residual_distribution, select_chunks,
                       speculative_step)

PROMPTS = ["def add(a, b):\n    return", "The quick brown fox jumps over", "import numpy as np\nx = np.zeros("]
ALL_DRAFTS = RapidConfig(confidence_stop=0.0)  # the random drafters are never confident


@pytest.fixture(scope="module")
def target(tiny_llama):
    model, tokenizer = tiny_llama
    return TransformersGenerator.from_model(model, tokenizer, name="tiny-target")


@pytest.fixture(scope="module")
def other(tiny_llama):
    """Same architecture and vocabulary, different random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tokenizer = tiny_llama
    torch.manual_seed(1)
    drafter = LlamaForCausalLM(LlamaConfig.from_dict(model.config.to_dict())).eval()
    return TransformersGenerator.from_model(drafter, tokenizer, name="tiny-drafter")


def _count_forwards(generator):
    calls = []
    handle = generator.model.register_forward_hook(lambda module, args, kwargs, out: calls.append(
        kwargs["input_ids"].shape[1]), with_kwargs=True)
    return calls, handle


# -- exactness --------------------------------------------------------------------------------

def test_greedy_rapid_equals_target_greedy_when_drafts_are_rejected(target, other):
    config = GenerationConfig(max_new_tokens=30)
    drafted = accepted = 0
    for prompt in PROMPTS:
        result = RapidDecoder(target, other, ALL_DRAFTS).generate(prompt, prompt, config)
        assert result.generation.token_ids == target.complete(prompt, config).token_ids
        drafted, accepted = drafted + result.drafted, accepted + result.accepted
    assert 0 < accepted < drafted  # partial acceptances: caches were cropped mid-draft


def test_greedy_rapid_of_a_context_sensitive_target_equals_its_plain_greedy(smollm2_tokenizer):
    """The tiny_llama target repeats a token whatever it reads, so it cannot tell a stale KV row
    from a fresh one: here a one-layer Llama with large weights, whose tokens depend on what
    the cache holds, and a drafter that is the same model slightly perturbed (drafts partly
    accepted). RAPID over caches that grow in place and crop rejected rows gives the tokens of
    plain greedy decoding over transformers' own cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from runtime.prompt_lookup import LookupConfig

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.5,
        tie_word_embeddings=False, eos_token_id=smollm2_tokenizer.eos_token_id)).eval()
    drafter = copy.deepcopy(model)
    with torch.no_grad():
        for weight in drafter.model.layers.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    target = TransformersGenerator.from_model(model, smollm2_tokenizer, "target")
    reference = TransformersGenerator.from_model(model, smollm2_tokenizer, "plain", lookup=LookupConfig(draft_tokens=0))
    reference.growing_cache = False
    rapid = RapidDecoder(target, TransformersGenerator.from_model(drafter, smollm2_tokenizer, "drafter"), ALL_DRAFTS)
    config = GenerationConfig(max_new_tokens=30)
    drafted = accepted = 0
    for prompt in PROMPTS:
        result = rapid.generate(prompt, prompt, config)
        assert result.generation.token_ids == reference.complete(prompt, config).token_ids
        drafted, accepted = drafted + result.drafted, accepted + result.accepted
    assert 0 < accepted < drafted  # partial acceptances: both caches were cropped mid-draft


def test_drafter_equal_to_target_accepts_every_draft(target):
    config = GenerationConfig(max_new_tokens=33)
    result = RapidDecoder(target, target, ALL_DRAFTS).generate(PROMPTS[0], PROMPTS[0], config)
    assert result.generation.token_ids == target.complete(PROMPTS[0], config).token_ids
    assert result.acceptance_rate == 1.0
    assert result.steps == result.target_forwards == 3  # 10 drafts + 1 target token per step
    assert result.mean_accepted == 10.0 and result.tokens_per_target_forward == 11.0


def test_caches_are_reused_one_target_forward_per_verify_step(target, other):
    config = GenerationConfig(max_new_tokens=24)
    prompt_ids = target.encode(PROMPTS[2])
    target_calls, handle_t = _count_forwards(target)
    drafter_calls, handle_d = _count_forwards(other)
    try:
        result = RapidDecoder(target, other, ALL_DRAFTS).generate_ids(prompt_ids, prompt_ids, config)
    finally:
        handle_t.remove()
        handle_d.remove()
    assert len(target_calls) == result.target_forwards == result.steps < config.max_new_tokens
    # The prompt is fed once; later steps feed only the last token plus the new drafts.
    assert sum(target_calls) == len(prompt_ids) + result.drafted + result.steps - 1
    assert len(drafter_calls) == result.drafter_forwards == result.drafted
    assert sum(drafter_calls) <= len(prompt_ids) + result.drafted + 2 * result.steps


def test_a_prefilled_prompt_cache_gives_the_same_tokens(target, other):
    config = GenerationConfig(max_new_tokens=16)
    ids = target.encode(PROMPTS[1])
    shared = prefill(target, ids)
    decoder = RapidDecoder(target, other, ALL_DRAFTS)
    first = decoder.generate_ids(ids, ids, config, target_prefix=shared.fork(), draft_prefix=prefill(other, ids))
    second = decoder.generate_ids(ids, ids, config, target_prefix=shared.fork())
    assert first.generation.token_ids == second.generation.token_ids == target.complete(PROMPTS[1], config).token_ids
    with pytest.raises(InvalidInputError):
        decoder.generate_ids(target.encode("something else entirely"), ids, config, target_prefix=shared.fork())


def test_confidence_early_stop_ends_drafts(target, other):
    config = GenerationConfig(max_new_tokens=20)
    cautious = RapidDecoder(target, other, RapidConfig(confidence_stop=0.4)).generate(PROMPTS[0], PROMPTS[0], config)
    # A random model never reaches 0.4: each draft is its first, below-threshold token only.
    assert cautious.drafted == cautious.drafter_forwards <= cautious.steps
    eager = RapidDecoder(target, other, RapidConfig(confidence_stop=0.0, max_draft_tokens=4)).generate(
        PROMPTS[0], PROMPTS[0], config)
    assert eager.drafted > eager.steps
    assert cautious.generation.token_ids == eager.generation.token_ids


def test_eos_and_stop_strings_end_like_the_target(target, other, tiny_llama):
    config = GenerationConfig(max_new_tokens=40)
    free = target.complete(PROMPTS[0], config)
    # Make a token the target emits mid-answer its end-of-sequence token.
    index = next(i for i in range(1, len(free.token_ids)) if free.token_ids[i] not in free.token_ids[:i])
    ending = TransformersGenerator.from_model(*tiny_llama, name="tiny-eos")
    ending.eos_ids = {free.token_ids[index]}
    plain = ending.complete(PROMPTS[0], config)
    rapid = RapidDecoder(ending, other, ALL_DRAFTS).generate(PROMPTS[0], PROMPTS[0], config)
    assert rapid.generation.token_ids == plain.token_ids == free.token_ids[:index]
    assert rapid.generation.finish_reason == plain.finish_reason == "stop"

    stop = free.text[len(free.text) // 2: len(free.text) // 2 + 3]
    config = GenerationConfig(max_new_tokens=40, stop=(stop,))
    plain = target.complete(PROMPTS[0], config)
    rapid = RapidDecoder(target, other, ALL_DRAFTS).generate(PROMPTS[0], PROMPTS[0], config)
    assert rapid.generation.text == plain.text and stop not in rapid.generation.text
    assert rapid.generation.token_ids == plain.token_ids and rapid.generation.finish_reason == "stop"


def test_logprobs_are_the_targets(target, other):
    config = GenerationConfig(max_new_tokens=12, logprobs=True)
    plain = target.complete(PROMPTS[2], config)
    rapid = RapidDecoder(target, other, ALL_DRAFTS).generate(PROMPTS[2], PROMPTS[2], config).generation
    assert rapid.logprobs == pytest.approx(plain.logprobs, abs=1e-4)


# -- the sampling rule ---------------------------------------------------------------------

def test_adjusted_distribution_matches_a_hand_computed_example():
    z = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    q = torch.tensor([0.1, 0.6, 0.3])
    # alpha = 0.5: only q >= 0.3 counts, g = [0, -0.3, -0.1]; p_hat ∝ [.5, .3 e^.3, .2 e^.1].
    weights = [0.5, 0.3 * math.exp(0.3), 0.2 * math.exp(0.1)]
    expected = [w / sum(weights) for w in weights]
    assert adjusted_distribution(z, q, eta=1.0, alpha=0.5).tolist() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx([0.4440, 0.3597, 0.1963], abs=1e-4)
    # alpha = 0.1 counts every token: g = [0.4, -0.3, -0.1].
    weights = [0.5 * math.exp(-0.4), 0.3 * math.exp(0.3), 0.2 * math.exp(0.1)]
    assert adjusted_distribution(z, q, eta=1.0, alpha=0.1).tolist() == pytest.approx(
        [w / sum(weights) for w in weights], abs=1e-6)
    assert adjusted_distribution(z, q, eta=0.0).tolist() == pytest.approx([0.5, 0.3, 0.2], abs=1e-6)


def test_residual_distribution():
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.1, 0.6, 0.3])
    assert residual_distribution(p, q, p).tolist() == pytest.approx([1.0, 0.0, 0.0])
    p_hat = torch.tensor([0.3, 0.5, 0.2])
    # max(p - q, p - p_hat) = [max(.4, .2), max(-.3, -.2), max(-.1, 0)] -> [.4, 0, 0]
    assert residual_distribution(p, q, p_hat).tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert residual_distribution(p, p, p).tolist() == pytest.approx(p.tolist())  # no mass: fall back to p


def _trials(p, q, p_hat, n: int, seed: int):
    rng = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(p))
    accepted = 0
    for _ in range(n):
        draft = int(torch.multinomial(q, 1, generator=rng))
        ok, token = speculative_step(p, q, p_hat, draft, float(torch.rand((), generator=rng)), rng)
        accepted += ok
        counts[token] += 1
    return counts, accepted / n


def test_sampling_rule_with_eta_zero_reproduces_the_target_distribution():
    p = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.07, 0.03])
    q = torch.tensor([0.10, 0.10, 0.40, 0.20, 0.10, 0.10])
    n = 4000
    counts, acceptance = _trials(p, q, adjusted_distribution(torch.log(p), q, eta=0.0), n, seed=0)
    chi_square = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi_square < 20.5  # 5 degrees of freedom, p = 0.001
    expected = float(torch.minimum(p, q).sum())  # speculative sampling accepts sum(min(p, q))
    assert abs(acceptance - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    # Knowledge transfer moves p_hat towards q, so more drafts pass.
    _, transferred = _trials(p, q, adjusted_distribution(torch.log(p), q, eta=10.0), n, seed=0)
    assert transferred > acceptance + 0.05


def test_sampling_mode_is_seeded_and_accepts_a_perfect_drafter(target):
    config = GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=3)
    decoder = RapidDecoder(target, target, ALL_DRAFTS)
    first = decoder.generate(PROMPTS[1], PROMPTS[1], config)
    assert first.generation.token_ids == decoder.generate(PROMPTS[1], PROMPTS[1], config).generation.token_ids
    assert first.acceptance_rate > 0.9  # p == q up to float noise: r <= p/q almost surely
    assert len(first.generation.token_ids) == 20


def test_greedy_with_knowledge_transfer_still_decodes(target, other):
    result = RapidDecoder(target, other, RapidConfig(eta=20.0, confidence_stop=0.0)).generate(
        PROMPTS[0], PROMPTS[0], GenerationConfig(max_new_tokens=16))
    assert len(result.generation.token_ids) == 16 and result.steps == result.target_forwards


# -- settings and inputs -------------------------------------------------------------------

@pytest.mark.parametrize("settings", [dict(max_draft_tokens=0), dict(max_draft_tokens=2.5), dict(confidence_stop=1.5),
                                      dict(alpha=-0.1), dict(eta=-1.0), dict(eta=float("inf")), dict(greedy="yes")])
def test_bad_rapid_config(settings):
    with pytest.raises(InvalidInputError):
        RapidConfig(**settings)


def test_bad_models_and_context_settings(target, tiny_llama):
    with pytest.raises(InvalidInputError, match="forward"):
        RapidDecoder(target, object())
    tokenizer = copy.deepcopy(tiny_llama[1])
    tokenizer.add_tokens(["<codehop-extra>"])
    with pytest.raises(InvalidInputError, match="vocabulary"):
        RapidDecoder(target, TransformersGenerator.from_model(tiny_llama[0], tokenizer, "bigger-vocab"))
    with pytest.raises(InvalidInputError):
        DraftContextConfig(chunk_tokens=8)
    with pytest.raises(InvalidInputError):
        DraftContextConfig(chunk_tokens=512, budget_tokens=256)
    with pytest.raises(InvalidInputError):
        prefill(target, [1])


def test_module_import_is_cheap():
    code = "import sys, rag.rapid; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# -- the drafter's context -----------------------------------------------------------------

def test_chunk_spans_end_at_newlines():
    assert chunk_spans(["a\n", "b", "c", "d\n", "e"], 4) == [(0, 4), (4, 5)]
    pieces = ["w"] * 6 + ["x\n"] + ["w"] * 5
    assert chunk_spans(pieces, 8) == [(0, 7), (7, 12)]
    assert chunk_spans(["w"] * 10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_select_chunks_keeps_the_best_in_document_order():
    texts = ["intro to the library", "the quokka flux capacitor", "unrelated filler text",
             "more filler about nothing", "configure the zebra frobnicator", "closing remarks"]
    kept = select_chunks(texts, [10] * 6, "how to configure the zebra frobnicator and quokka flux", 20)
    assert kept == [1, 4]
    assert select_chunks(texts, [10] * 6, "no shared words here", 30) == [0, 1, 2]  # ties: positions


def _section(topic: str) -> str:
    return f"The {topic} section describes settings, defaults and examples in some detail. " * 3 + "\n"


def test_build_draft_context_keeps_head_relevant_chunks_in_order_and_tail(target):
    topics = ["alpha", "bravo", "charlie", "zebra frobnicator", "delta", "echo", "foxtrot",
              "quokka flux", "golf", "hotel"]
    question = "\nQuestion: how do the quokka flux and the zebra frobnicator work?\nAnswer:"
    prompt = "Docs:\n" + "".join(_section(t) for t in topics) + question
    ids = target.encode(prompt)
    config = DraftContextConfig(chunk_tokens=40, budget_tokens=100, head_tokens=3, tail_tokens=20)
    context = build_draft_context(ids, lambda i: target.tokenizer.decode([i]), config)
    assert context.chunks > 5
    assert context.ids[:3] == ids[:3] and context.ids[-20:] == ids[-20:]
    assert len(context.ids) <= 3 + 100 + 20
    assert context.spans == sorted(context.spans)
    assert all(a < b <= c for (a, b), (c, _) in zip(context.spans, context.spans[1:]))
    text = target.tokenizer.decode(context.ids)
    assert "zebra frobnicator section" in text and "quokka flux section" in text
    assert text.index("zebra frobnicator section") < text.index("quokka flux section")  # document order
    assert "golf" not in text and "alpha" not in text
    short = target.encode("a short prompt")
    assert build_draft_context(short, lambda i: target.tokenizer.decode([i]), config).ids == short


# -- the Generator face and the pipeline ---------------------------------------------------

def test_rapid_generator_is_a_generator_and_stays_exact_with_a_retrieved_drafter_context(target, other):
    context = DraftContextConfig(chunk_tokens=40, budget_tokens=80, head_tokens=3, tail_tokens=20)
    rapid = RapidGenerator(target, other, ALL_DRAFTS, context)
    assert isinstance(rapid, Generator)
    assert rapid.fim_prompt("a", "b") == target.fim_prompt("a", "b") and rapid.supports_fim == target.supports_fim
    messages = [{"role": "user", "content": "".join(_section(t) for t in ("alpha", "bravo", "charlie", "delta"))
                 + "What is in the charlie section?"}]
    prompt = target.render_chat(messages)
    assert rapid.count_tokens(prompt) == target.count_tokens(prompt)
    assert len(rapid.draft_context(prompt).ids) < target.count_tokens(prompt)
    config = GenerationConfig(max_new_tokens=20)
    answer = rapid.chat(messages, config)
    assert answer.token_ids == target.chat(messages, config).token_ids
    assert "".join(rapid.chat_stream(messages, config)) == answer.text
    assert rapid.rapid(prompt, config).target_prompt_tokens == target.count_tokens(prompt)


def test_pipeline_drafts_with_rapid_for_long_contexts(small_collection, target, other):
    from rag.pipeline import PipelineConfig, RagPipeline

    config = PipelineConfig(k=2, candidates=5, rewrite="off", filter="off", reservoir=False,
                            rapid_min_tokens=1, max_new_tokens=12)
    question = "How do I read a csv file?"
    with_rapid = RagPipeline(small_collection, target, config, drafter=other).run(question)
    plain = RagPipeline(small_collection, target, config).run(question)
    stages = {stage.name: stage for stage in with_rapid.stages}
    assert "acceptance_rate" in stages["rapid"].detail and stages["generate"].detail["rapid"]
    assert stages["rapid"].detail["draft_prompt_tokens"] <= stages["rapid"].detail["target_prompt_tokens"]
    assert with_rapid.answer == plain.answer  # greedy RAPID with eta = 0 is exact
    # The RAPID answer streams as verified tokens arrive, not in one piece at the end.
    events = list(RagPipeline(small_collection, target, config, drafter=other).stream(question))
    pieces = [e["text"] for e in events if e["type"] == "token"]
    assert len(pieces) > 1 and "".join(pieces).strip() == plain.answer

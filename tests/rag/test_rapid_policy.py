"""RAPID's "auto" decision: the cost model, the calibration file, the rules and their reasons."""

from __future__ import annotations

import json

import pytest

from rag.llm import GenerationConfig, TransformersGenerator
from rag.rapid_policy import (Calibration, ForwardCost, RapidPolicy, decide, fit_cost, machine_key,
                              plan_chat, predict)


@pytest.fixture(scope="module")
def target(tiny_llama):
    return TransformersGenerator.from_model(*tiny_llama, name="tiny-target")


def _calibration(target_cost: ForwardCost, drafter_cost: ForwardCost, tokens_per_step=3.98,
                 drafts_per_step=3.35) -> Calibration:
    stats = {"steps": 100, "tokens": int(100 * tokens_per_step), "drafted": int(100 * drafts_per_step),
             "accepted": int(100 * (tokens_per_step - 1))}
    return Calibration("t", "d", machine_key(), target_cost, drafter_cost, 0.0, 0.0, stats=stats)


def test_fit_cost_recovers_the_coefficients():
    truth = ForwardCost(0.01, 0.002, 1e-6)
    samples = [(n, ctx, truth.seconds(n, ctx)) for n in (1, 5) for ctx in (256, 1024)] + [(1024, 0, truth.seconds(1024, 0))]
    fitted = fit_cost(samples)
    for n, ctx, seconds in samples:
        assert fitted.seconds(n, ctx) == pytest.approx(seconds, rel=1e-6)


class _Clock:
    """A perf_counter that only moves when a fake forward says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9


class _Cache:
    """A KV cache reduced to its length, with DynamicCache's crop(-k)."""

    def __init__(self) -> None:
        self.length = 0

    def crop(self, n: int) -> None:
        assert n <= 0
        self.length += n


class _TimedModel:
    """A local generator whose forward of n tokens over a cache of ctx takes exactly
    truth.seconds(n, ctx) on the fake clock (TransformersGenerator.forward's signature)."""

    model = "a local model"  # what local_model_reason looks for, with a callable forward

    def __init__(self, name: str, truth: ForwardCost, clock: _Clock) -> None:
        self.name, self.truth, self.clock = name, truth, clock
        self.tokenizer = [None] * 1000  # calibration draws random ids below len(tokenizer)

    def forward(self, input_ids, cache=None, logits_to_keep: int = 0):
        import torch

        cache = cache if cache is not None else _Cache()
        self.clock.now += self.truth.seconds(input_ids.shape[1], cache.length)
        cache.length += input_ids.shape[1]
        return torch.zeros(1, logits_to_keep, 8), cache


def test_calibration_fits_the_costs_of_known_synthetic_timings(monkeypatch):
    import rag.rapid_policy as rapid_policy

    clock = _Clock()
    monkeypatch.setattr(rapid_policy, "time", clock)
    target_truth = ForwardCost(0.012, 0.003, 2e-6)  # CPU-like: a verify of 5 tokens ~ 1.6 steps
    drafter_truth = ForwardCost(0.004, 0.0005, 0.0)
    target = _TimedModel("t", target_truth, clock)
    drafter = _TimedModel("d", drafter_truth, clock)
    measured = rapid_policy.calibrate(target, drafter, lengths=(256, 1024), new_tokens=(1, 5), repeats=2)
    for fitted, truth in ((measured.target_cost, target_truth), (measured.drafter_cost, drafter_truth)):
        for n, ctx in ((1, 256), (5, 1024), (1, 4000), (6, 3000), (1024, 0)):
            assert fitted.seconds(n, ctx) == pytest.approx(truth.seconds(n, ctx), rel=1e-6)
    # every sample is (tokens, context it saw, its seconds) as the model was actually run
    samples = sorted(measured.samples["target"])
    assert [(n, ctx) for n, ctx, _ in samples] == sorted(
        [(1024, 0)] + [(n, ctx) for ctx in (1024, 256) for n in (1, 5) for _ in range(2)])
    assert [s for *_, s in samples] == pytest.approx([target_truth.seconds(n, ctx) for n, ctx, _ in samples])
    assert measured.calibration_s == pytest.approx(sum(s for *_, s in measured.samples["target"])
                                                   + sum(s for *_, s in measured.samples["drafter"]))


def test_prediction_reproduces_the_cpu_loss_and_a_gpu_like_win():
    # rapid_bench on 2 CPU cores: step 184 ms, verify of ~4.35 tokens 430 ms, drafter step 159 ms
    cpu = _calibration(ForwardCost(0.184 - (0.430 - 0.184) / 3.35, (0.430 - 0.184) / 3.35, 0.0),
                       ForwardCost(0.159, 0.0, 0.0))
    guess = predict(cpu, 2782, 1232, 64)
    assert guess.decode_speedup == pytest.approx(0.76, abs=0.06)
    # memory-bound verification (a forward costs the same for 1 or 5 tokens) and a cheap drafter
    gpu = _calibration(ForwardCost(0.03, 0.0, 1e-8), ForwardCost(0.005, 0.0, 0.0))
    assert predict(gpu, 8000, 1280, 256).speedup > 2


def test_decide_rules_say_why(target):
    class Remote:
        name = "remote"

    assert decide("off", target, target, 5000, 1280, 64).why == "rapid = 'off'"
    remote = decide("on", Remote(), Remote(), 5000, 1280, 64)
    assert not remote.use and "no local KV cache or logits" in remote.why
    assert "no drafter" in decide("on", target, None, 5000, 1280, 64).why
    assert decide("on", target, target, 10, 10, 64).use  # asked for: even a short prompt
    short = decide("auto", target, target, 100, 100, 64, min_tokens=2048)
    assert not short.use and "100 tokens" in short.why
    assert decide("auto", target, target, 3000, 1280, 64).use  # no cost model: length alone
    with pytest.raises(Exception, match="rapid must be one of"):
        decide("sometimes", target, target, 1, 1, 1)


def test_plan_chat_settles_what_it_can_before_loading_the_drafter_or_rendering(target):
    """The one decision setup of the pipeline and REST chat: "off", a server backend and a JSON
    schema never load the drafter; otherwise the real prompt is rendered and counted."""
    class Remote:
        name = "remote"

    loads = []

    def drafter_and_policy():
        loads.append(1)
        return target, None

    messages = [{"role": "user", "content": "word " * 300}]
    plain, schema = GenerationConfig(max_new_tokens=8), GenerationConfig(max_new_tokens=8, json_schema={"type": "object"})
    for mode, generator, config, why in (("off", target, plain, "rapid = 'off'"),
                                         ("on", Remote(), plain, "no local KV cache or logits"),
                                         ("on", target, schema, "JSON schema")):
        decision, prompt, drafter, policy = plan_chat(mode, generator, messages, config, 2048, drafter_and_policy)
        assert not decision.use and why in decision.why and decision.detail == {"mode": mode}
        assert prompt is drafter is policy is None
    assert loads == []
    decision, prompt, drafter, _ = plan_chat("auto", target, messages, plain, 100, drafter_and_policy)
    assert loads == [1] and drafter is target and prompt == target.render_chat(messages)
    assert decision.use and decision.detail["target_tokens"] == target.count_tokens(prompt) > 100
    short, *_ = plan_chat("auto", target, messages, plain, 10**6, drafter_and_policy)
    assert not short.use and "under the 1000000" in short.why


def test_auto_calibrates_once_persists_and_follows_the_prediction(target, tmp_path, monkeypatch):
    import rag.rapid_policy as rapid_policy

    path = tmp_path / "rapid_calibration.json"
    policy = RapidPolicy(path, lengths=(16, 64), new_tokens=(1, 3), repeats=1)
    first = decide("auto", target, target, 3000, 1280, 32, policy)
    assert first.detail["calibrated_now"] and path.exists() and "calibrated now" in first.why
    second = decide("auto", target, target, 3000, 1280, 32, policy)
    assert not second.detail["calibrated_now"]  # measured once per (target, drafter, machine)
    assert second.detail["predicted_speedup"] == first.detail["predicted_speedup"]

    # measured on known timings, the verdict is known: a verify pass that costs about one step
    # and a drafter 20x cheaper drafts (the GPU case); a verify of d + 1 tokens that costs d + 1
    # steps and a drafter as slow as the target does not (the CPU case)
    clock = _Clock()
    monkeypatch.setattr(rapid_policy, "time", clock)
    gpu_like = RapidPolicy(None, lengths=(256, 1024), new_tokens=(1, 5))
    fast, cheap = _TimedModel("fast", ForwardCost(0.02, 0.0, 1e-9), clock), \
        _TimedModel("cheap", ForwardCost(0.001, 0.0, 0.0), clock)
    win = decide("auto", fast, cheap, 3000, 1280, 64, gpu_like)
    assert win.use and win.detail["calibrated_now"] and win.detail["predicted_speedup"] > 2
    cpu_like = RapidPolicy(None, lengths=(256, 1024), new_tokens=(1, 5))
    slow, same = _TimedModel("slow", ForwardCost(0.0, 0.05, 0.0), clock), \
        _TimedModel("same", ForwardCost(0.0, 0.05, 0.0), clock)
    loss = decide("auto", slow, same, 3000, 1280, 64, cpu_like)
    assert not loss.use and "plain decoding is faster" in loss.why and loss.detail["predicted_speedup"] < 1
    stored = json.loads(path.read_text())
    assert stored["format_version"] == 1 and len(stored["pairs"]) == 1

    # the decision follows the cost model: a slow verify pass means plain decoding, and says so
    key = RapidPolicy.key(target, target)
    slow = _calibration(ForwardCost(0.0, 0.1, 0.0), ForwardCost(0.09, 0.0, 0.0))
    stored["pairs"][key] = slow.to_dict()
    path.write_text(json.dumps(stored))
    no = decide("auto", target, target, 3000, 1280, 32, policy)
    assert not no.use and "plain decoding is faster" in no.why and no.detail["predicted_speedup"] < 1
    fast = _calibration(ForwardCost(0.1, 0.0, 0.0), ForwardCost(0.001, 0.0, 0.0))
    stored["pairs"][key] = fast.to_dict()
    path.write_text(json.dumps(stored))
    yes = decide("auto", target, target, 3000, 1280, 32, policy)
    assert yes.use and "drafting" in yes.why

    lazy = RapidPolicy(tmp_path / "none.json", calibrate_now=False)
    assert "not calibrated" in decide("auto", target, target, 3000, 1280, 32, lazy).why


def test_pipeline_records_why_auto_declined_and_acceptance_when_drafting(small_collection, target, tmp_path):
    from rag.pipeline import PipelineConfig, RagPipeline

    policy = RapidPolicy(tmp_path / "cal.json")
    key = RapidPolicy.key(target, target)
    slow = _calibration(ForwardCost(0.0, 0.1, 0.0), ForwardCost(0.09, 0.0, 0.0))
    policy._save({key: slow.to_dict()})
    config = PipelineConfig(k=2, candidates=5, rewrite="off", filter="off", reservoir=False,
                            rapid_min_tokens=1, max_new_tokens=12)
    question = "How do I read a csv file?"
    declined = RagPipeline(small_collection, target, config, drafter=target, rapid_policy=policy).run(question)
    rapid = {s.name: s for s in declined.stages}["rapid"]
    assert not rapid.ran and "plain decoding is faster" in rapid.detail["why"]
    forced = RagPipeline(small_collection, target, PipelineConfig(**{**config.__dict__, "rapid": "on"}),
                         drafter=target, rapid_policy=policy).run(question)
    rapid = {s.name: s for s in forced.stages}["rapid"]
    assert rapid.ran and rapid.detail["acceptance_rate"] == 1.0 and forced.answer == declined.answer
    stats = json.loads((tmp_path / "cal.json").read_text())["pairs"][key]["stats"]
    assert stats["drafted"] > slow.stats["drafted"]  # the run updated the pair's acceptance record


def test_rapid_follows_the_loop_control_of_plain_decoding(target, tiny_llama):
    """Repetition penalty and n-gram ban apply at each drafted position: still exact."""
    from rag.rapid import RapidConfig, RapidDecoder

    config = GenerationConfig(max_new_tokens=30, repetition_penalty=1.3, no_repeat_ngram_size=2)
    prompt = "def add(a, b):\n    return"
    plain = target.complete(prompt, config)
    result = RapidDecoder(target, target, RapidConfig(confidence_stop=0.0)).generate(prompt, prompt, config)
    assert result.generation.token_ids == plain.token_ids and result.acceptance_rate == 1.0
    assert plain.token_ids != target.complete(prompt, GenerationConfig(max_new_tokens=30)).token_ids


@pytest.fixture(scope="module")
def disagreeing_pair(smollm2_tokenizer):
    """(target, drafter): a tiny random Llama (seed 0) with weights large enough that greedy
    decoding follows the context, and a drafter made from it with seed-1 noise (5% of each
    tensor's spread), so that it agrees with the target on some tokens and not on most."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
        initializer_range=0.5, tie_word_embeddings=False,
        bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    noisy = copy.deepcopy(model)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=noise) * 0.05 * parameter.std())
    return (TransformersGenerator.from_model(model, smollm2_tokenizer, name="tiny-target-0"),
            TransformersGenerator.from_model(noisy, smollm2_tokenizer, name="tiny-drafter-1"))


def test_pipeline_drafting_with_a_disagreeing_drafter_rejects_crops_and_answers_as_plain_decoding(
        small_collection, disagreeing_pair, monkeypatch):
    """The serving path (RagPipeline, as /v1/ask runs it) with a drafter that is often wrong: the
    target rejects drafts, both KV caches are cropped back, and the greedy answer is still the
    target's own."""
    from transformers import DynamicCache

    from rag.pipeline import PipelineConfig, RagPipeline

    target, drafter = disagreeing_pair
    crops = []
    crop = DynamicCache.crop
    monkeypatch.setattr(DynamicCache, "crop", lambda self, n: (crops.append(n), crop(self, n))[1])
    config = PipelineConfig(k=3, candidates=5, rewrite="off", filter="off", reservoir=False, rapid="on",
                            max_new_tokens=24)
    question = "How do I read a csv file and parse its rows?"
    drafted = RagPipeline(small_collection, target, config, drafter=drafter).run(question)
    rapid = {s.name: s for s in drafted.stages}["rapid"]
    assert rapid.ran and rapid.detail["target_prompt_tokens"] > 100  # a real prompt, not a stub
    assert 0 < rapid.detail["accepted"] < rapid.detail["drafted"]  # some drafts kept, most rejected
    assert crops and all(n < 0 for n in crops)  # the rejected drafts' rows dropped from the caches
    plain = RagPipeline(small_collection, target, PipelineConfig(**{**config.__dict__, "rapid": "off"})).run(question)
    assert drafted.answer == plain.answer and {s.name: s for s in plain.stages}["rapid"].ran is False

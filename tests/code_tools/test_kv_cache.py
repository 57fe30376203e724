"""KVCacheStore: per-document PIE caches, LRU eviction by memory, fall-back to a prefill."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from code_tools.kv_cache import KVCacheConfig, KVCacheStore, cache_bytes  # noqa: E402
from code_tools.pie import PieCache  # noqa: E402


def _ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 40000, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def one_layer_llama(smollm2_tokenizer):
    """(model, tokenizer): a one-layer random Llama with large weights. With one layer a key or
    value row depends only on its token and position, so PIE's rerotated cache is exact and its
    decoding must equal a fresh prefill's token for token; the large weights make greedy decoding
    depend on the context (the shared two-layer tiny_llama repeats one token whatever it reads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
        initializer_range=0.5, tie_word_embeddings=False,
        bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), smollm2_tokenizer


def test_second_prompt_reuses_the_cache_and_decodes_like_a_fresh_prefill(one_layer_llama):
    model, tok = one_layer_llama
    store = KVCacheStore(model, tok)
    old = _ids(80, 1)
    before, first = store.complete("doc", old, 8)
    assert first["mode"] == "prefill" and not first["reused"] and first["tokens_encoded"] == 80
    new = old[:40] + [7, 8, 9] + old[40:]  # the user typed three tokens mid-prompt
    generated, report = store.complete("doc", new, 8)
    assert report["reused"] and report["mode"] == "pie" and report["tokens_encoded"] == 3
    assert report["rerotated"] == 40 and report["sequence_length"] == 83
    fresh = PieCache(model, tok)
    fresh.prefill(new)
    assert generated == fresh.generate(8)
    assert generated != before  # the edit changed the continuation: the comparison can tell


def test_a_large_edit_falls_back_to_a_full_prefill(tiny_llama):
    model, tok = tiny_llama
    store = KVCacheStore(model, tok, KVCacheConfig(recompute_above=0.5))
    store.complete("doc", _ids(60, 2), 1)
    _, report = store.complete("doc", _ids(60, 3), 1)  # a different file pasted in
    assert report["mode"] == "prefill" and not report["reused"] and "more than 50%" in report["reason"]
    assert report["tokens_encoded"] == 60


def test_lru_eviction_keeps_the_store_within_its_memory_budget(tiny_llama):
    model, tok = tiny_llama
    probe = PieCache(model, tok)
    probe.prefill(_ids(50, 4))
    per_doc = cache_bytes(probe)
    store = KVCacheStore(model, tok, KVCacheConfig(max_bytes=int(2.5 * per_doc)))
    for name, seed in (("a", 5), ("b", 6), ("c", 7)):
        store.complete(name, _ids(50, seed), 1)
    assert len(store) == 2 and "a" not in store and store.total_bytes <= 2.5 * per_doc
    assert store.evictions == 1
    _, report = store.complete("a", _ids(50, 5), 1)  # evicted: encoded again, and says why
    assert not report["reused"] and "evicted" in report["reason"]
    tiny = KVCacheStore(model, tok, KVCacheConfig(max_bytes=0))  # nothing fits: never kept
    tiny.complete("x", _ids(20, 8), 1)
    assert len(tiny) == 0


def test_nearby_edits_merge_into_one_segment_and_many_segments_cost_a_prefill(tiny_llama):
    model, tok = tiny_llama
    old = _ids(200, 9)
    new = list(old)
    for at in (50, 54, 58, 62):  # four one-token changes a few tokens apart: one replacement
        new[at] = 7
    store = KVCacheStore(model, tok, KVCacheConfig(merge_gap=16, segment_cost_tokens=32))
    store.complete("doc", old, 1)
    _, report = store.complete("doc", new, 1)
    assert report["mode"] == "pie" and report["edits"] == 1 and report["tokens_encoded"] == 13
    scattered = list(new)
    for at in range(0, 200, 25):  # eight separate segments: 8 x 32 token-equivalents > half of 200
        scattered[at] = 8
    _, report = store.complete("doc", scattered, 1)
    assert report["mode"] == "prefill" and "per segment" in report["reason"]


def test_a_prompt_that_extends_into_its_answer_reuses_the_rest(one_layer_llama):
    """The user typed the first two suggested tokens: the rest of the answer comes back without
    running the model, equal to decoding the longer prompt afresh."""
    model, tok = one_layer_llama
    store = KVCacheStore(model, tok)
    prompt = _ids(60, 4)
    answer, first = store.complete("doc", prompt, 12, stop_when=lambda o: len(o) == 6)
    assert first["finish"] == "stop" and len(answer) == 6
    typed = prompt + answer[:2]
    rest, report = store.complete("doc", typed, 12, stop_when=lambda o: len(o) == 4)
    assert report["mode"] == "extend" and report["forwards"] == 0 and rest == answer[2:]
    fresh = PieCache(model, tok)
    fresh.prefill(typed)
    assert fresh.generate(12, stop_when=lambda o: len(o) == 4) == rest
    # typed something else, or an answer cut by the budget: decoded as usual
    _, other = store.complete("doc", prompt + [answer[0], 5], 12, stop_when=lambda o: len(o) == 4)
    assert other["mode"] != "extend" and other["forwards"] > 0
    cut, _ = store.complete("doc2", prompt, 3)
    _, again = store.complete("doc2", prompt + cut[:1], 3)
    assert again["mode"] != "extend" and again["forwards"] > 0


def test_a_warmed_document_encodes_only_what_its_first_prompt_changed(one_layer_llama):
    """warm prefills the prompt an opened document would give; the first completion then
    encodes only what changed (the user typed 3 tokens at the end) and decodes exactly as a
    cold prefill of its prompt. A document with a cache keeps it; a stopped warm-up stores
    nothing."""
    model, tok = one_layer_llama
    store = KVCacheStore(model, tok)
    opened = _ids(80, 11)
    warm = store.warm("doc", opened)
    assert warm["mode"] == "warm" and warm["tokens_encoded"] == 80 and "doc" in store
    typed = opened + [7, 8, 9]
    generated, report = store.complete("doc", typed, 8)
    assert report["mode"] == "prefix" and report["reused"] and report["warmed"]
    assert report["tokens_encoded"] == 3 and report["rerotated"] == 0
    cold = KVCacheStore(model, tok)
    expected, cold_report = cold.complete("doc", typed, 8)
    assert cold_report["mode"] == "prefill" and not cold_report["warmed"] and generated == expected
    _, again = store.complete("doc", typed + [10], 8)
    assert not again["warmed"]  # only the first completion after a warm-up says so
    assert store.warm("doc", opened)["mode"] == "cached"  # never replaces a completion's cache
    stopped = store.warm("other", opened, stop_at_layer=lambda done: True)
    assert stopped["mode"] == "stopped" and "other" not in store


def test_a_warm_up_never_evicts_another_documents_cache(tiny_llama):
    model, tok = tiny_llama
    probe = PieCache(model, tok)
    probe.prefill(_ids(50, 4))
    store = KVCacheStore(model, tok, KVCacheConfig(max_bytes=int(1.5 * cache_bytes(probe))))
    store.complete("typing", _ids(50, 5), 1)
    assert store.warm("opened", _ids(50, 6))["mode"] == "full"
    assert "typing" in store and "opened" not in store and store.evictions == 0


def test_edit_cost_is_what_complete_then_encodes(tiny_llama):
    """edit_cost predicts complete's edit without encoding: PIE's tokens plus 32 per segment,
    the whole prompt for a prefill, the tail after the first difference for a warmed cache."""
    model, tok = tiny_llama
    store = KVCacheStore(model, tok, KVCacheConfig(segment_cost_tokens=32, merge_gap=16))
    old = _ids(200, 12)
    assert store.edit_cost("doc", old) is None  # no cache: a prefill whatever the prompt
    store.complete("doc", old, 1)
    assert store.edit_cost("doc", old) == 0
    typed = old[:120] + [7, 8, 9, 10] + old[120:]
    assert store.edit_cost("doc", typed) == 4 + 32
    _, report = store.complete("doc", typed, 1)
    assert report["mode"] == "pie" and report["tokens_encoded"] == 4
    pasted = _ids(200, 13)
    assert store.edit_cost("doc", pasted) == 200
    _, report = store.complete("doc", pasted, 1)
    assert report["mode"] == "prefill" and report["tokens_encoded"] == 200
    store.warm("opened", old)
    assert store.edit_cost("opened", old[:150] + [5, 6]) == 2
    assert store.edit_cost("opened", [5] + old) == 201


def test_a_refresh_replaces_the_cache_when_done_and_leaves_it_when_stopped(one_layer_llama):
    """refresh brings a document's cache to a prompt without decoding: the next completion of
    that prompt encodes nothing and decodes as a fresh prefill (one layer: PIE is exact); a
    refresh stopped between layers leaves the cache as it was."""
    model, tok = one_layer_llama
    store = KVCacheStore(model, tok, KVCacheConfig(recompute_above=1.0))
    shown = _ids(100, 14)
    store.complete("doc", shown, 4)
    fresh = shown[:30] + _ids(20, 15) + shown[50:]  # another context chunk
    stopped = store.refresh("doc", fresh, stop_at_layer=lambda done: True)
    assert stopped["mode"] == "stopped" and store.edit_cost("doc", shown) == 0
    report = store.refresh("doc", fresh)
    assert report["mode"] == "refreshed" and report["tokens_encoded"] == 20 and store.edit_cost("doc", fresh) == 0
    generated, after = store.complete("doc", fresh, 4)
    assert after["mode"] == "pie" and after["tokens_encoded"] == 0
    cold = PieCache(model, tok)
    cold.prefill(fresh)
    assert generated == cold.generate(4)
    assert store.refresh("nothing", fresh)["mode"] == "gone"

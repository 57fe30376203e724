"""PIE on the tiny random Llama: first-layer exactness, pure position shifts, naive reuse, undo."""

from __future__ import annotations

import pytest
import torch

from code_tools.pie import Edit, PieCache, PieConfig
from runtime.errors import InvalidInputError


def _ids(n: int, seed: int, vocab: int = 40000) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (n,), generator=g).tolist()


def _maxdiff(a: PieCache, b: PieCache, layer: int) -> float:
    (ka, va), (kb, vb) = a.layers[layer], b.layers[layer]
    assert ka.shape == kb.shape
    return max(float((ka - kb).abs().max()), float((va - vb).abs().max()))


def _fresh(model, ids, **kw) -> PieCache:
    cache = PieCache(model, None, **kw)
    cache.prefill(ids)
    return cache


EDIT_CASES = {
    "insert-middle": lambda old: [Edit(20, 20, (7, 8, 9, 10))],
    "delete-middle": lambda old: [Edit(15, 22)],
    "replace-middle": lambda old: [Edit(30, 33, (11, 12))],
    "multi-place": lambda old: [Edit(5, 5, (13, 14)), Edit(25, 28), Edit(40, 41, (15, 16, 17))],
}


@pytest.mark.parametrize("case", sorted(EDIT_CASES))
def test_first_layer_equals_full_recomputation(tiny_llama, case):
    model, tok = tiny_llama
    old = _ids(60, 1)
    edits = EDIT_CASES[case](old)
    pie = PieCache(model, tok)
    pie.prefill(old)
    stats = pie.apply_edits(edits)
    full = _fresh(model, pie.token_ids)
    assert pie.token_ids == full.token_ids
    assert _maxdiff(pie, full, 0) < 1e-5  # layer-0 keys/values depend only on token + position
    inserted = sum(len(e.new_token_ids) for e in edits)
    assert stats.tokens_encoded == inserted and stats.sequence_length == len(full.token_ids)
    assert stats.compute_fraction < 0.2 and stats.flops > 0
    # later layers are PIE's approximation: suffix rows still reflect the old context
    assert _maxdiff(pie, full, 1) > 1e-4


def test_naive_reuse_does_not_match_at_first_layer(tiny_llama):
    model, _ = tiny_llama
    old = _ids(60, 2)
    naive = _fresh(model, old, config=PieConfig(correct_positions=False))
    naive.apply_edits([Edit(10, 10, (7, 8, 9))])
    full = _fresh(model, naive.token_ids)
    assert _maxdiff(naive, full, 0) > 1e-2


def test_pure_position_shift_matches_whole_model(tiny_llama):
    """Insert X before S that never attended anything: PIE == [X cache, S encoded alone at its new positions]."""
    model, _ = tiny_llama
    s_ids, x_ids = _ids(30, 3), _ids(9, 4)
    pie = _fresh(model, s_ids)
    pie.apply_edits([Edit(0, 0, tuple(x_ids))])
    # reference: X encoded at 0.., then S encoded on its own (no attention to X) at positions 9..
    ref = PieCache(model)
    ref.prefill(x_ids)
    from transformers import DynamicCache

    with torch.no_grad():
        past = DynamicCache()
        model(input_ids=torch.tensor([s_ids]), position_ids=torch.arange(9, 39).view(1, -1),
              cache=past, use_cache=True)
    ref.layers = [(torch.cat([kx, l.keys], 2), torch.cat([vx, l.values], 2))
                  for (kx, vx), l in zip(ref.layers, past.layers)]
    ref.token_ids = x_ids + s_ids
    for layer in range(len(pie.layers)):
        assert _maxdiff(pie, ref, layer) < 1e-4
    assert torch.allclose(pie.next_token_logits(), ref.next_token_logits(), atol=1e-4)
    assert pie.generate(6) == ref.generate(6)

    naive = _fresh(model, s_ids, config=PieConfig(correct_positions=False))
    naive.apply_edits([Edit(0, 0, tuple(x_ids))])
    assert not torch.allclose(naive.next_token_logits(), ref.next_token_logits(), atol=1e-3)


def test_append_at_end_is_exact_at_every_layer(tiny_llama):
    model, _ = tiny_llama
    old, extra = _ids(40, 5), _ids(6, 6)
    pie = _fresh(model, old)
    stats = pie.sync(old + extra)
    full = _fresh(model, old + extra)
    assert stats.tokens_encoded == 6 and stats.rerotated == 0
    for layer in range(len(pie.layers)):
        assert _maxdiff(pie, full, layer) < 1e-4


def test_edit_then_undo_round_trip(tiny_llama):
    model, _ = tiny_llama
    old = _ids(50, 7)
    pie = _fresh(model, old)
    original = [(k.clone(), v.clone()) for k, v in pie.layers]
    pie.apply_edits([Edit(12, 12, (7, 8, 9, 10, 11)), Edit(30, 30, (12,))])
    pie.apply_edits([Edit(12, 17), Edit(35, 36)])  # undo: delete what was inserted
    assert pie.token_ids == old
    for (k, v), (k0, v0) in zip(pie.layers, original):
        assert float((k - k0).abs().max()) < 1e-4 and float((v - v0).abs().max()) < 1e-6


def test_sync_diffs_and_generate_leaves_cache_intact(tiny_llama):
    model, tok = tiny_llama
    old = _ids(45, 8)
    new = old[:10] + [21, 22] + old[10:30] + old[34:]
    pie = _fresh(model, old)
    stats = pie.sync(new)
    assert pie.token_ids == new
    assert stats.inserted == 2 and stats.deleted == 4 and stats.edits == 2
    before = [k.clone() for k, _ in pie.layers]
    first = pie.generate(5, stop_token_ids=())
    assert len(first) == 5 and pie.generate(5) == first
    assert all(torch.equal(a, k) for a, (k, _) in zip(before, pie.layers))
    assert len(pie) == len(new)


ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},  # attention_scaling != 1
}


@pytest.mark.parametrize("scaling", sorted(ROPE_SCALINGS))
def test_rope_scaling_is_respected(scaling):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={**ROPE_SCALINGS[scaling], "rope_theta": 10000.0})
    model = LlamaForCausalLM(config).eval()
    old = _ids(40, 9)
    pie = _fresh(model, old)
    pie.apply_edits([Edit(8, 8, (5, 6, 7)), Edit(20, 25)])
    assert _maxdiff(pie, _fresh(model, pie.token_ids), 0) < 1e-5


def test_bad_edits_raise_clear_errors(tiny_llama):
    model, _ = tiny_llama
    pie = PieCache(model)
    with pytest.raises(InvalidInputError):
        pie.apply_edits([Edit(0, 0, (1,))])
    pie.prefill(_ids(10, 10))
    with pytest.raises(InvalidInputError):
        pie.apply_edits([Edit(5, 20)])
    with pytest.raises(InvalidInputError):
        pie.apply_edits([Edit(2, 6), Edit(4, 8)])


def test_large_rewrite_falls_back_to_prefill(tiny_llama):
    model, _ = tiny_llama
    pie = _fresh(model, _ids(20, 11))
    new = _ids(30, 12)
    stats = pie.sync(new)
    assert stats.full_recompute and stats.tokens_encoded == 30
    for layer in range(len(pie.layers)):
        assert _maxdiff(pie, _fresh(model, new), layer) < 1e-6


def test_a_prefill_stopped_between_layers_leaves_the_cache_empty(tiny_llama):
    """stop_at_layer is asked before each of the 2 layers with the fraction done; True at the
    second abandons the forward, and the hooks go with it: the next prefill runs in full and
    equals one never interrupted."""
    from code_tools.pie import PrefillStopped

    model, tok = tiny_llama
    ids = torch.randint(100, 40000, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    cache, asked = PieCache(model, tok), []
    with pytest.raises(PrefillStopped):
        cache.prefill(ids, stop_at_layer=lambda done: asked.append(done) or done >= 0.5)
    assert asked == [0.0, 0.5] and len(cache) == 0 and cache.layers == []
    stats = cache.prefill(ids, stop_at_layer=lambda done: False)
    reference = PieCache(model, tok)
    reference.prefill(ids)
    assert stats.tokens_encoded == 40 and cache.token_ids == ids
    assert all(torch.equal(k, rk) for (k, _), (rk, _) in zip(cache.layers, reference.layers))
    assert not any(layer._forward_pre_hooks for layer in model.model.layers)


def test_sync_prefix_keeps_the_shared_rows_and_equals_a_prefill_at_every_layer(tiny_llama):
    """[a..] -> the same first 30 tokens, then a different tail: 30 rows kept, the tail encoded
    against them, and every layer's keys and values equal a prefill of the new sequence; a
    sequence sharing nothing is a prefill."""
    model, tok = tiny_llama
    g = torch.Generator().manual_seed(5)
    old = torch.randint(100, 40000, (50,), generator=g).tolist()
    new = old[:30] + torch.randint(100, 40000, (12,), generator=g).tolist()
    cache = PieCache(model, tok)
    cache.prefill(old)
    stats = cache.sync_prefix(new)
    assert stats.reused == 30 and stats.tokens_encoded == 12 and stats.deleted == 20 and stats.rerotated == 0
    reference = PieCache(model, tok)
    reference.prefill(new)
    assert cache.token_ids == new
    for (k, v), (rk, rv) in zip(cache.layers, reference.layers):
        assert torch.allclose(k, rk, atol=1e-5) and torch.allclose(v, rv, atol=1e-5)
    shorter = cache.sync_prefix(new[:20])  # a prefix of the cache: rows dropped, nothing encoded
    assert shorter.tokens_encoded == 0 and cache.token_ids == new[:20] and cache.layers[0][0].shape[2] == 20
    assert cache.sync_prefix([7] + new[1:]).full_recompute

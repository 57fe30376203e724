"""Attention for a few query rows over a KV cache without copying the shared key/value heads.

A model with grouped-query attention (SmolLM2-135M: 9 query heads share 3 key/value heads)
runs transformers' "sdpa" attention. With a mask and more than one query row (a prompt-lookup
verify of 2-4 tokens, a PIE segment) transformers copies every key/value head to each query
head that uses it (`repeat_kv`) before the kernel; on a CPU that copy is the whole cache twice
per layer (SmolLM2 with 750 cached tokens: 2 x 1.7 MB per layer, ~6 ms of a ~50 ms 4-token
verify). torch's kernel takes the shared heads itself (`enable_gqa=True`) and computes each
query head against the same rows, so the output is bit for bit the same without the copy.

Everything else (one query row, no mask, a GPU, position biases) goes to transformers' sdpa.
`use_gqa_attention(model)` switches a model to it; `prepare_for_cpu` does so on a CPU.

Prompts of a model with int8 weights (`use_bfloat16_prompts`): a forward of more than
INT8_MAX_ROWS query rows (a prefill, a PIE segment) already multiplies its linear layers in
bfloat16; its attention then runs in bfloat16 too (q, k, v rounded to bfloat16, float32
accumulation and softmax in torch's flash kernel), which AMX runs ~2x faster than float32: at
800 tokens attention was ~42% of a SmolLM2 prefill (~260 of ~620 ms). Not bit for bit: the
tolerance and what it changed are in tests/rag/test_cpu_attention.py and docs/models.md. The KV
cache stays float32, and decoding and 2-4-token verifies (float32 attention) are unchanged.
"""

from __future__ import annotations

from rag.cpu_rows import INT8_MAX_ROWS

NAME = "codehop_sdpa_gqa"
BF16_NAME = "codehop_sdpa_bf16_prompts"


def gqa_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature; returns ([batch, rows, heads, dim], None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if (groups == 1 or attention_mask is None or query.shape[2] == 1 or query.device.type != "cpu"
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
            or kwargs.get("output_attentions", False)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def bf16_prompt_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """gqa_sdpa_attention, with more than INT8_MAX_ROWS query rows computed in bfloat16."""
    import torch

    rows, cached = query.shape[2], key.shape[2]
    causal = attention_mask is None and rows == cached and getattr(module, "is_causal", True) \
        and is_causal is not False
    if (rows <= INT8_MAX_ROWS or query.device.type != "cpu" or (attention_mask is None and not causal)
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
            or kwargs.get("output_attentions", False)):
        return gqa_sdpa_attention(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, is_causal=is_causal, **kwargs)
    mask = attention_mask
    if mask is not None and mask.dtype.is_floating_point:
        mask = mask.to(torch.bfloat16)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.to(torch.bfloat16), key.to(torch.bfloat16), value.to(torch.bfloat16), attn_mask=mask,
        dropout_p=dropout, is_causal=causal, scale=scaling,
        enable_gqa=getattr(module, "num_key_value_groups", 1) > 1)
    return out.transpose(1, 2).to(query.dtype).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, gqa_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks sdpa gets
    AttentionInterface.register(BF16_NAME, bf16_prompt_attention)
    AttentionMaskInterface.register(BF16_NAME, sdpa_mask)


def use_gqa_attention(model) -> bool:
    """Switch `model` from "sdpa" to gqa_sdpa_attention; False (unchanged) for another
    implementation (eager, flash), a model without grouped key/value heads or off the CPU."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or not heads \
            or kv_heads == heads or not on_cpu:
        return False
    _register()
    model.set_attn_implementation(NAME)
    return True


def use_bfloat16_prompts(model) -> bool:
    """Switch `model`'s sdpa attention (or gqa_sdpa_attention) to bf16_prompt_attention; False
    (unchanged) for another implementation or off the CPU. For models whose linear layers
    already take bfloat16 prompts (rag.cpu_weights' "int8")."""
    config = getattr(model, "config", None)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME) or not on_cpu:
        return False
    _register()
    model.set_attn_implementation(BF16_NAME)
    return True

"""A one-to-few-token Llama forward for decoding on a CPU, without transformers' per-call machinery.

A decode step of SmolLM2-135M with 4-bit weights (rag.cpu_weights) ran ~30 ms on one core, of which
the matrix products, the attention kernel and the output head were ~18 ms; the rest was ~6,000 small
aten calls and the Python around them: output-recording decorators, keyword merging, the causal-mask
builder, a module call per linear layer, a bfloat16 cast of the same input per product, three ops
per `rotate_half`. `DecodeStep` runs the same model over the same weights with one Python function
per forward:

- q, k and v (and gate and up) as one 4-bit product each over weights concatenated at load (the
  kernel computes each output column on its own: the same bits as three products), on one bfloat16
  cast of the normed input;
- rotary position embedding on q and k together, with ``rotate_half(x) * sin`` as
  ``roll(x, half) * sin_signed``, where sin_signed is sin with its first half negated: ``(-a) * b``
  and ``-(a * b)`` are the same float, so the sums are bit for bit transformers';
- the keys and values written into the cache's layers (``update``), the attention as transformers'
  sdpa calls it (one row: no mask, shared heads; more rows: the same boolean causal mask);
- the norms, residuals, activation and output head as the model's own ops, in the same order.

Greedy decoding calls it for every forward of at most INT8_MAX_ROWS tokens (one token, a 2-4-token
prompt-lookup verify); tests/rag/test_cpu_decode.py checks logits and cache rows bit for bit
against the model's own forward. `decode_step_for(model)` builds it for a model prepared by
`prepare_for_cpu(model, "int8")` whose layers are exactly what it reproduces, else returns None
(the caller runs the model as before).
"""

from __future__ import annotations

from rag.cpu_rows import INT8_MAX_ROWS


# aten's CPU int4 packing stores the outputs in blocks of up to 64 (AVX-512; fewer elsewhere),
# each block [K, block / 2]: packed layers concatenate into the packing of their concatenation
# when every layer but the last fills whole blocks
INT4_BLOCK_N = 64


def _fused(layers):
    """(kind, parts, sizes) for rag.cpu_weights.Int8Linear `layers` of one kind (all 4-bit
    groups or all int8, no bias) concatenated along their outputs: parts is one (qweight,
    scales) for the concatenation, or one per layer where the int4 packing does not concatenate
    (INT4_BLOCK_N). Each layer's own qweight becomes a view of the concatenation (the same
    values, no second copy)."""
    import torch

    kinds = {layer.kind for layer in layers}
    assert len(kinds) == 1 and all(layer.bias is None and not layer.refine_top for layer in layers)
    kind = kinds.pop()
    sizes = [layer.out_features for layer in layers]
    if kind == "int4" and any(size % INT4_BLOCK_N for size in sizes[:-1]):
        return kind, [(layer.qweight, layer.scales) for layer in layers], sizes
    qweight = torch.cat([layer.qweight for layer in layers])  # int4 [n, k/2] (blocked) / int8 [n, k]
    # scales: int4 [k/32, n, 2] (outputs along dim 1), int8 [n]
    scales = torch.cat([layer.scales for layer in layers], dim=1 if kind == "int4" else 0).contiguous()
    start = 0
    for layer, size in zip(layers, sizes):
        layer.qweight = qweight[start:start + size]
        start += size
    return kind, [(qweight, scales)], sizes


def _product(fused, rows):
    """`rows` (bfloat16 [n, in]) times a _fused weight, float32 [n, sum(sizes)]: the kernel
    Int8Linear.forward runs for a few rows (each output column is computed on its own)."""
    import torch

    kind, parts, _ = fused
    if kind == "int4":
        outs = [torch.ops.aten._weight_int4pack_mm_for_cpu(rows, qweight, 32, scales) for qweight, scales in parts]
    else:
        outs = [torch.ops.aten._weight_int8pack_mm(rows, qweight, scales) for qweight, scales in parts]
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)).float()


class _Layer:
    __slots__ = ("norm1", "eps1", "qkv", "o", "norm2", "eps2", "gate_up", "inter", "down")


class DecodeStep:
    """``step(token_ids, position, cache) -> logits`` (float32 [len(token_ids), vocab]) for at most
    INT8_MAX_ROWS tokens at positions ``position, position + 1, ...`` after the cache's rows,
    appending their keys and values to the cache (a transformers Cache whose `layers[i].update`
    returns the layer's full keys and values). Bit for bit the model's forward."""

    def __init__(self, model) -> None:
        import torch

        base = model.model
        config = model.config
        self.embed = base.embed_tokens.weight
        self.rotary = base.rotary_emb
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        attn0 = base.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.scaling = attn0.scaling
        self.half = self.head_dim // 2
        self.layers = []
        for layer in base.layers[:config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            item = _Layer()
            item.norm1, item.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
            item.norm2, item.eps2 = layer.post_attention_layernorm.weight, \
                layer.post_attention_layernorm.variance_epsilon
            item.qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj])
            item.o = _fused([attn.o_proj])
            item.gate_up = _fused([mlp.gate_proj, mlp.up_proj])
            item.inter = mlp.gate_proj.out_features
            item.down = _fused([mlp.down_proj])
            self.layers.append(item)
        self.norm, self.norm_eps = base.norm.weight, base.norm.variance_epsilon
        self.head = model.lm_head
        self.max_rows = INT8_MAX_ROWS
        self.positions = torch.arange(INT8_MAX_ROWS)

    @staticmethod
    def _rms(x, weight, eps):
        # LlamaRMSNorm on float32 input: the same ops in the same order
        import torch

        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def __call__(self, token_ids, position: int, cache):
        import torch

        n = len(token_ids)
        if not 0 < n <= INT8_MAX_ROWS:
            raise ValueError(f"DecodeStep takes 1 to {INT8_MAX_ROWS} tokens, not {n}")
        ids = torch.tensor(token_ids)
        position_ids = (self.positions[:n] + position).view(1, n)
        h = self.embed[ids]  # [n, hidden] float32, as nn.Embedding
        cos, sin = self.rotary(h, position_ids)  # [1, n, head_dim]
        cos, sin = cos.view(n, 1, -1), sin.view(n, 1, -1)
        sin_signed = torch.cat([-sin[..., :self.half], sin[..., self.half:]], dim=-1)
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        q_end, k_end = heads * dim, (heads + kv_heads) * dim
        rms = self._rms
        mask = None
        if n > 1:  # the boolean mask transformers' sdpa_mask builds: cached rows, then causal
            total = cache.layers[0].get_seq_length() + n
            mask = (torch.arange(total) <= (torch.arange(n) + (total - n))[:, None]).view(1, 1, n, total)
        for i, layer in enumerate(self.layers):
            x = rms(h, layer.norm1, layer.eps1).to(torch.bfloat16)
            qkv = _product(layer.qkv, x)  # [n, (heads + 2 kv_heads) * dim]
            qk = qkv[:, :k_end].view(n, heads + kv_heads, dim)
            qk = qk * cos + torch.roll(qk, self.half, -1) * sin_signed
            q = qk[:, :heads].transpose(0, 1).unsqueeze(0)  # [1, heads, n, dim]
            k = qk[:, heads:].transpose(0, 1).unsqueeze(0)
            v = qkv[:, k_end:].view(n, kv_heads, dim).transpose(0, 1).unsqueeze(0)
            keys, values = cache.layers[i].update(k, v)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=True)
            out = out.transpose(1, 2).reshape(n, q_end)
            h = h + _product(layer.o, out.to(torch.bfloat16))
            x = rms(h, layer.norm2, layer.eps2).to(torch.bfloat16)
            gate_up = _product(layer.gate_up, x)
            act = torch.nn.functional.silu(gate_up[:, :layer.inter]) * gate_up[:, layer.inter:]
            h = h + _product(layer.down, act.to(torch.bfloat16))
        h = rms(h, self.norm, self.norm_eps)
        return self.head(h)


def _compact(layer) -> bool:
    # rag.cpu_weights.Int8Linear, by name: cpu_weights imports this module (no import cycle)
    return type(layer).__name__ == "Int8Linear" and getattr(layer, "kind", None) in ("int4", "int8")


def decode_step_for(model):
    """A DecodeStep for `model`, or None when it is not a Llama model prepared for "int8" whose
    layers DecodeStep reproduces (then the caller runs the model's own forward)."""
    config = getattr(model, "config", None)
    base = getattr(model, "model", None)
    if getattr(model, "codehop_precision", None) != "int8" or type(model).__name__ != "LlamaForCausalLM" \
            or getattr(config, "model_type", None) != "llama" or base is None:
        return None
    rope = getattr(config, "rope_parameters", None) or {}
    if config._attn_implementation not in ("codehop_sdpa_gqa", "codehop_sdpa_bf16_prompts") \
            or rope.get("rope_type", "default") != "default" or not _compact(model.lm_head) \
            or model.lm_head.bias is not None or type(base.norm).__name__ != "LlamaRMSNorm" \
            or len(base.layers) != config.num_hidden_layers \
            or any(p.device.type != "cpu" for p in model.parameters()):
        return None
    for layer in base.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if type(layer).__name__ != "LlamaDecoderLayer" or type(mlp).__name__ != "GatedMLP" \
                or type(layer.input_layernorm).__name__ != "LlamaRMSNorm" \
                or type(layer.post_attention_layernorm).__name__ != "LlamaRMSNorm" \
                or attn.num_key_value_groups * config.num_key_value_heads != config.num_attention_heads:
            return None
        for group in ((attn.q_proj, attn.k_proj, attn.v_proj), (attn.o_proj,),
                      (mlp.gate_proj, mlp.up_proj), (mlp.down_proj,)):
            if not all(_compact(p) and p.bias is None and not p.refine_top for p in group) \
                    or len({p.kind for p in group}) != 1:
                return None
    return DecodeStep(model)

"""Weights for fast CPU decoding: int8 weight-only linear layers with bfloat16 compute.

Decoding one token of a small model on a CPU is bound by reading the weights: with
SmolLM2-135M in float32 the matrix products are ~70% of a step and read 540 MB per token.
`Int8Linear` keeps each linear layer's weight as int8 with one scale per output row
(symmetric, absmax / 127) and multiplies:

- a few rows (decoding: 1 row; a short verify): ``aten._weight_int8pack_mm`` on bfloat16
  activations, which reads a quarter of the float32 bytes (on this CPU: 43 us vs 125 us for a
  1536x576 layer, 1.8 ms vs 7.8 ms for the 49k-row output head);
- more rows (a prefill): a dense bfloat16 matmul over the same dequantised int8 weights, which
  AVX-512 BF16 / AMX run 4-8x faster than float32 (a 700-token prompt: ~0.35 s vs ~1.4 s).

Everything else stays float32 (embeddings, norms, the residual stream, the KV cache, the
attention of a few rows), so only the linear layers' inputs are rounded to bfloat16, and, for a
prompt (more rows), the attention's inputs (rag.cpu_attention.use_bfloat16_prompts). The output head refines its
top `refine_top` logits in float32, so greedy argmax is not decided by bfloat16 rounding of the
logits (two logits of ~20 are 0.125 apart in bfloat16). Precision choices:

- "float32": the model as loaded (the reference);
- "bfloat16": the whole model in bfloat16 (fast prefill, decoding no faster here);
- "int8": the layers above; the fastest decoding measured here (serving_bench report);
- "auto": "int8" on a CPU with AVX-512 BF16 or AMX (bfloat16 arithmetic in hardware), else
  "float32".

The quantised model is not the float32 one: tests check its greedy output against the float32
reference on fixed prompts within a stated tolerance (tests/rag/test_cpu_weights.py).
"""

from __future__ import annotations

import functools
from typing import Any

from rag.cpu_rows import INT8_MAX_ROWS
from runtime.errors import InvalidInputError

PRECISIONS = ("auto", "float32", "bfloat16", "int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> dict[str, bool]:
    """The features that decide the precision (recorded by the benchmarks)."""
    flags = cpu_flags()
    return {"avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "avx512_vnni": "avx512_vnni" in flags, "amx_bf16": "amx_bf16" in flags,
            "amx_int8": "amx_int8" in flags}


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """The precision `precision` means on `device`: "auto" becomes "int8" on a CPU with
    bfloat16 in hardware, else "float32" (a GPU keeps the model as loaded)."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    if not str(device).startswith("cpu"):
        return "float32"
    features = cpu_features()
    return "int8" if features["avx512_bf16"] or features["amx_bf16"] else "float32"


def _module_base():
    import torch

    return torch.nn.Module


def _exact_groups(weight, group: int = 32):
    """(q [n, k] int32 in 0..15, scale [n, k/group], minimum [n, k/group]) when `weight` is
    exactly 4-bit levels per group of `group` inputs (a Q4_0/Q4_1 GGUF dequantised), else None.

    Example: a group [0.1, 0.3, 0.2, ...] with 16 or fewer levels 0.1 + j * d -> q = j, scale d.
    """
    import torch

    n, k = weight.shape
    if k % group:
        return None
    groups = weight.view(n, k // group, group)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15.0).clamp(min=1e-12)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
    rebuilt = q * scale[..., None] + low[..., None]
    if (rebuilt - groups).abs().max() > 1e-3 * float(weight.abs().max()):
        return None
    return q.view(n, k).to(torch.int32), scale, low


def _packed_bfloat16(weight):
    """`weight` (bfloat16 [out, in]) reordered once into oneDNN's blocked layout for
    torch.ops.mkldnn._linear_pointwise, or None where this torch has no oneDNN kernels."""
    import torch

    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight)
    except RuntimeError:
        return None


class Int8Linear(_module_base()):
    """A linear layer with compact weights for a few rows, bfloat16 for many; float32 in/out.

    The weight is kept as int8 with one scale per output row, or, when it is exactly 4-bit
    levels per group of 32 inputs (the shipped SmolLM2 is a Q4_1 GGUF: every linear layer),
    as those 4-bit groups: the same speed here and no rounding beyond the file's own.

    Args:
        linear: the torch.nn.Linear to replace (its weight is read once).
        refine_top: recompute this many of the largest outputs per row in float32 against the
            bfloat16 weights (for an output head, so argmax does not hinge on bfloat16 rounding
            of the logits nor on int8 rounding of the weights); 0 = off.
    """

    def __init__(self, linear, refine_top: int = 0) -> None:
        import torch

        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.refine_top = refine_top
        exact = _exact_groups(weight) if not refine_top else None
        if exact is not None:
            q, scale, low = exact
            self.kind = "int4"
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1),
                                 persistent=False)
            # aten's int4 layout: w = (q - 8) * scale + zero, per group; [k/group, n, 2]
            zeros = low + 8 * scale
            self.register_buffer("scales", torch.stack([scale, zeros], dim=-1).transpose(0, 1)
                                 .contiguous().to(torch.bfloat16), persistent=False)
            dense = weight
        else:
            scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
            self.kind = "int8"
            self.register_buffer("qweight", q, persistent=False)
            self.register_buffer("scales", scales.to(torch.bfloat16), persistent=False)
            # the head refines against its own weights; a body layer's dense copy holds the int8
            # values, so both kernels compute one model
            dense = weight if refine_top else q.float() * scales[:, None]
        self.register_buffer("weight", dense.to(torch.bfloat16), persistent=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(
            linear.bias.detach().float(), requires_grad=False)
        self.__dict__["_packed"] = _packed_bfloat16(self.weight)

    def prompt_product(self, rows):
        """`rows` (bfloat16 [n, in_features]) times the bfloat16 weight, bfloat16 out: oneDNN's
        matmul on the weight reordered once, where torch.nn.functional.linear reorders it on
        every call (a 1536x576 layer: 105 vs 186 us at 5 rows, 263 vs 552 us at 135, 1.49 vs
        1.71 ms at 800); the same kernel, bit for bit the same products."""
        import torch

        if "_packed" not in self.__dict__:  # a copy (see __getstate__)
            self.__dict__["_packed"] = _packed_bfloat16(self.weight)
        packed = self.__dict__["_packed"]
        if packed is None:
            return torch.nn.functional.linear(rows, self.weight)
        return torch.ops.mkldnn._linear_pointwise(rows, packed, None, "none", [], "")

    def __getstate__(self):
        # oneDNN's reordered weight has no storage to copy or pickle: a copy rebuilds it on use
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state

    def forward(self, x):
        import torch

        shape = x.shape
        rows = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if rows.shape[0] > INT8_MAX_ROWS:
            out = self.prompt_product(rows)
        elif self.kind == "int4":
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.qweight, 32, self.scales)
        else:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales)
        out = out.float()
        if self.refine_top:
            top = out.topk(min(self.refine_top, out.shape[-1]), dim=-1).indices  # [rows, top]
            exact = torch.einsum("rk,rtk->rt", rows.float(), self.weight[top].float())
            out.scatter_(-1, top, exact)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.kind} weights"


# Rows of the gated MLP's [rows, intermediate] activations handled at a time: 64 x 1536 float32
# (SmolLM2) is 384 KB, inside a core's L2; measured 64 <= 128 < 256 < all 800 rows at once.
MLP_CHUNK_ROWS = 64


class GatedMLP(_module_base()):
    """Llama's MLP, down(silu(gate(x)) * up(x)), over Int8Linear layers, with a prompt path
    that keeps the [rows, intermediate] activations out of main memory.

    The reference path casts gate's and up's bfloat16 products to float32 tensors, runs silu and
    the product over them and casts the result back to bfloat16 for down: five passes over
    [rows, intermediate] float32 arrays (SmolLM2, 800 rows: 4.9 MB each, past L2), which took
    more time than the three matrix products (a layer: 11.6 ms vs ~3.4 ms in the products).
    Here the input is cast once, gate and up return bfloat16 and silu and the product run
    in place on float32 chunks of MLP_CHUNK_ROWS rows that stay in cache: 5.3 ms. The same
    operations on the same values in the same order, so the output is bit for bit the
    reference's. A few rows (decoding) take the reference path as it is.
    """

    def __init__(self, mlp) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(self, x):
        import torch

        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] <= INT8_MAX_ROWS:
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
        rows = rows.to(torch.bfloat16)
        gate, up = self.gate_proj.prompt_product(rows), self.up_proj.prompt_product(rows)
        for start in range(0, rows.shape[0], MLP_CHUNK_ROWS):
            part = gate[start:start + MLP_CHUNK_ROWS]
            act = torch.nn.functional.silu(part.float(), inplace=True)
            part.copy_(act.mul_(up[start:start + MLP_CHUNK_ROWS]))  # rounded to bfloat16 as down's input
        return self.down_proj(gate).view(*x.shape[:-1], -1)


def _gated_mlp(module) -> bool:
    """Whether `module` is a Llama-style MLP whose prompt path GatedMLP reproduces bit for bit:
    silu, three Int8Linear layers without bias or refinement, the reference's forward."""
    import torch

    layers = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"
    return (silu and all(isinstance(layer, Int8Linear) and layer.bias is None and not layer.refine_top
                         for layer in layers)
            and "self.down_proj(self.act_fn(self.gate_proj(x))*self.up_proj(x))" in _source(type(module).forward))


@functools.cache
def _source(function) -> str:
    import inspect

    try:
        return "".join(inspect.getsource(function).split())
    except (OSError, TypeError):
        return ""


def prepare_for_cpu(model, precision: str) -> Any:
    """`model` converted for `precision` (resolved: "float32", "bfloat16" or "int8"), in place.

    "int8" replaces every torch.nn.Linear by an Int8Linear (the output head with float32
    refinement of its top 16 logits) and every Llama-style gated MLP over them by a GatedMLP
    (the same arithmetic, faster prompts), and runs the attention of prompts (more than
    INT8_MAX_ROWS rows) in bfloat16 (rag.cpu_attention.use_bfloat16_prompts); tied input
    embeddings stay float32. A Llama model also gets `codehop_decode_step`
    (rag.cpu_decode.DecodeStep: its forwards of up to INT8_MAX_ROWS tokens, bit for bit, with
    less Python and fewer ops per layer), which greedy decoding uses. Every precision
    switches a grouped-query model's "sdpa" attention to rag.cpu_attention's, which is bit for
    bit the same without copying key/value heads for several query rows.
    """
    import torch

    from rag.cpu_attention import use_bfloat16_prompts, use_gqa_attention
    from rag.cpu_decode import decode_step_for

    use_gqa_attention(model)  # bit for bit the same attention, without copying key/value heads
    if precision == "float32":
        return model
    if precision == "bfloat16":
        return model.to(torch.bfloat16)
    if precision != "int8":
        raise InvalidInputError(f"cannot prepare a model for precision {precision!r}")
    # the model's own count (tied weights once): Int8Linear keeps its weights as buffers, so
    # model.parameters() no longer counts them (SmolLM2-135M would read as 28M)
    model.codehop_parameters = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, Int8Linear(child, refine_top=16 if child is head else 0))
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if _gated_mlp(child):
                setattr(module, name, GatedMLP(child))
    use_bfloat16_prompts(model)  # prompts' attention in bfloat16 too, as their products
    # transformers re-ties weights on some calls: the head is no longer a Linear sharing them
    if hasattr(model.config, "tie_word_embeddings"):
        model.config.tie_word_embeddings = False
    model.codehop_precision = "int8"
    # greedy decoding's forwards of a few tokens without transformers' per-call machinery (bit for
    # bit the same); None for a model it does not reproduce (code_tools.prompt_lookup reads it)
    model.codehop_decode_step = decode_step_for(model)
    return model

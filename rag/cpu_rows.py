"""Where a CPU forward switches from decoding arithmetic to prompt arithmetic.

Shared by rag.cpu_weights (int8 kernel or bfloat16 matmul per linear layer) and
rag.cpu_attention (float32 or bfloat16 attention), so both switch at the same row count.
"""

# Up to this many rows the int8 kernel is faster than a bfloat16 matmul (measured on the
# serving machine: 1536x576 at 3 rows 68 us vs 110 us, at 5 rows 121 us vs 113 us). Past it,
# attention runs in bfloat16 too (rag.cpu_attention.bf16_prompt_attention).
INT8_MAX_ROWS = 4

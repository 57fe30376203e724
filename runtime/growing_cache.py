"""A transformers KV cache that grows in place: the decode loops' cache on a CPU.

transformers' DynamicCache concatenates a new tensor per layer at every step: with a 700-token
prompt that copies every layer's keys and values for each token (~12% of a decode step of
SmolLM2-135M on this CPU). `GrowingCache`'s layers write into preallocated tensors (doubling
when full), and `crop` only moves the end. Both local decoders use it: completions
(code_tools.prompt_lookup over a PIE cache) and answers (rag.llm.TransformersGenerator).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer over preallocated key/value tensors: `update` writes in place (the
    capacity doubles when full) and `crop` only moves the end."""

    def __init__(self, keys, values, spare: int = 64) -> None:
        super().__init__()
        self.device = keys.device
        n = keys.shape[-2]
        self._k = keys.new_empty(keys.shape[:-2] + (n + spare, keys.shape[-1]))
        self._v = values.new_empty(values.shape[:-2] + (n + spare, values.shape[-1]))
        self._k[..., :n, :] = keys
        self._v[..., :n, :] = values
        self._n = n
        self._views()
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]

    def update(self, key_states, value_states, *args, **kwargs):
        m = key_states.shape[-2]
        if self._n + m > self._k.shape[-2]:
            grow = max(m, self._k.shape[-2])
            self._k = torch.cat([self._k[..., :self._n, :], self._k.new_empty(
                self._k.shape[:-2] + (grow, self._k.shape[-1]))], dim=-2)
            self._v = torch.cat([self._v[..., :self._n, :], self._v.new_empty(
                self._v.shape[:-2] + (grow, self._v.shape[-1]))], dim=-2)
        self._k[..., self._n:self._n + m, :] = key_states
        self._v[..., self._n:self._n + m, :] = value_states
        self._n += m
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._n

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        self._n -= -tokens_to_remove
        self._views()


class GrowingCache(DynamicCache):
    """A DynamicCache of GrowingLayers built over existing per-layer (keys, values) rows
    ``[batch, kv_heads, seq, head_dim]`` (copied: the rows passed in stay untouched)."""

    def __init__(self, rows: Sequence[tuple[torch.Tensor, torch.Tensor]], spare: int = 64) -> None:
        Cache.__init__(self, layers=[GrowingLayer(k, v, spare) for k, v in rows])

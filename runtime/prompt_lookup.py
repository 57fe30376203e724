"""Prompt-lookup drafts (Saxena 2023, "Prompt Lookup Decoding"): the draft rule both local
decoders share, code_tools.prompt_lookup (completions over a PIE KV cache) and rag.llm's
TransformersGenerator (ask, chat and REST answers, which copy much from their sources).

The rule finds the most recent earlier occurrence of the sequence's last n-gram (n = `ngram`
down to `min_ngram`) and proposes the tokens that followed it. The model then verifies the
draft in one forward pass; only tokens equal to its own greedy choice are kept, so drafting
changes how many forwards run, never which tokens come out.

Worked example: ids ``[5, 6, 7, 8, 5, 6]``, ngram 2, k 3: the last 2-gram ``(5, 6)`` occurred
at 0, followed by ``[7, 8, 5]`` -> draft ``[7, 8, 5]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from runtime.errors import InvalidInputError


def lookup_draft(ids: Sequence[int], max_tokens: int, ngram: int = 3, min_ngram: int = 1,
                 search_from: int = 0) -> list[int]:
    """Up to `max_tokens` ids that followed the most recent earlier occurrence of the last
    n-gram of `ids` (n from `ngram` down to `min_ngram`); [] when none occurs.

    Example: ids=[5, 6, 7, 8, 5, 6], max_tokens=3, ngram=2 -> [7, 8, 5].
    `search_from` skips the ids before it (e.g. a prompt's special tokens).
    """
    n_ids = len(ids)
    if max_tokens <= 0:
        return []
    seq = list(ids)
    for n in range(min(ngram, n_ids - 1), min_ngram - 1, -1):
        if n <= 0:
            break
        tail = seq[n_ids - n:]
        first = tail[0]
        # most recent occurrence that ends before the tail itself
        for start in range(n_ids - n - 1, search_from - 1, -1):
            if seq[start] == first and seq[start:start + n] == tail:
                follow = seq[start + n:start + n + max_tokens]
                if follow:
                    return follow
    return []


@dataclass(frozen=True)
class LookupConfig:
    """Args:
        draft_tokens: most tokens drafted per verify step (0 = plain one-token greedy steps).
        ngram / min_ngram: the n-gram sizes matched, longest first.
    """

    draft_tokens: int = 8
    ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if self.draft_tokens < 0 or not 1 <= self.min_ngram <= self.ngram:
            raise InvalidInputError("need draft_tokens >= 0 and 1 <= min_ngram <= ngram")

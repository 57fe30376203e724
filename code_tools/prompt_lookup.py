"""Greedy decoding with prompt-lookup drafts, verified by the model itself (lossless).

Code completions often copy from the prompt: a call spelt like the one ten lines up, an
argument list repeated, a name from the retrieved context. Prompt lookup (Saxena 2023,
"Prompt Lookup Decoding"; transformers' `prompt_lookup_num_tokens`) finds the most recent
earlier occurrence of the sequence's last n-gram (n = `ngram` down to 1) and proposes the k
tokens that followed it as a draft. One forward pass over ``[pending token] + draft`` gives the
model's own next token at every drafted position; the longest prefix of the draft that agrees
with those argmaxes is accepted, plus the model's token after it (the "bonus"), so a step adds
1 to k + 1 tokens for one forward. The KV rows of rejected draft tokens are cropped.

Greedy output is the same as decoding one token per forward: every emitted token is the
argmax of the model's logits after exactly the tokens before it (only the batching of the
matrix products differs, so two logits within float rounding of each other may order
differently; the tests check equality on fixed prompts).

Worked example of a draft: ids ``[5, 6, 7, 8, 5, 6]``, ngram 2, k 3: the last 2-gram
``(5, 6)`` occurred at 0, followed by ``[7, 8, 5]`` -> draft ``[7, 8, 5]``.

The decode runs over a runtime.growing_cache.GrowingCache (re-exported here), whose layers
write into preallocated tensors instead of concatenating a new tensor per token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# The cache and the draft rule live in the runtime, shared with rag.llm's answers.
from runtime.growing_cache import GrowingCache, GrowingLayer  # noqa: F401 (re-exported)
from runtime.prompt_lookup import LookupConfig, lookup_draft  # noqa: F401 (re-exported)


@dataclass
class DecodeStats:
    """What a decode did: forwards run, tokens drafted and accepted, how it ended."""

    tokens: int = 0
    forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    finish: str = "length"  # "length", "eos" (a stop id), "stop" (stop_when), "cancelled"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "forwards": self.forwards, "drafted": self.drafted,
                "accepted": self.accepted, "finish": self.finish, "decode_s": self.seconds}


def greedy_decode(model, cache, context_ids: Sequence[int], max_new_tokens: int,
                  stop_token_ids: Sequence[int] = (),
                  stop_when: Callable[[list[int]], bool] | None = None,
                  lookup: LookupConfig = LookupConfig(),
                  cancelled: Callable[[], bool] | None = None) -> tuple[list[int], DecodeStats]:
    """Greedy continuation of `context_ids` with prompt-lookup drafts (see the module doc).

    Args:
        model: a transformers causal LM.
        cache: a KV cache holding rows for ``context_ids[:-1]`` (positions 0..n-2); it is
            extended in place (a GrowingCache avoids a copy per step). The last context id is
            run first. The decode runs under torch.inference_mode, so rows a cache allocates
            meanwhile (a GrowingCache that grows) are inference tensors: fine to read or to
            decode on, not to edit in place outside inference mode.
        context_ids: the prompt ids (drafts are looked up in them and in the output so far).
        max_new_tokens: upper bound on generated tokens.
        stop_token_ids: ids that end generation (not included).
        stop_when: predicate on the ids generated so far (included); True stops.
        lookup: drafting settings (draft_tokens 0 = one token per forward).
        cancelled: polled before every forward; True stops with finish "cancelled".
    Returns:
        (generated ids, DecodeStats).
    """
    started = time.perf_counter()
    stops = {int(t) for t in stop_token_ids}
    seq = [int(t) for t in context_ids]
    n_context = len(seq)
    pending = seq[-1]
    position = n_context - 1
    out: list[int] = []
    stats = DecodeStats()
    device = next(model.parameters()).device
    budget = lookup.draft_tokens
    # a model prepared for CPU decoding carries a leaner forward of a few tokens, bit for bit its
    # own (rag.cpu_decode.DecodeStep); it writes a GrowingCache's layers directly
    step = getattr(model, "codehop_decode_step", None) \
        if isinstance(cache, GrowingCache) and device.type == "cpu" else None
    # inference_mode, not no_grad: no version counters or view tracking per op, ~5% of a one-token
    # step of SmolLM2-135M here, with the same arithmetic
    with torch.inference_mode():
        while len(out) < max_new_tokens:
            if cancelled is not None and cancelled():
                stats.finish = "cancelled"
                break
            room = max_new_tokens - len(out) - 1  # the bonus token always comes
            draft = lookup_draft(seq, min(budget, room), lookup.ngram, lookup.min_ngram) \
                if budget > 0 and room > 0 else []
            inputs = [pending] + draft
            if step is not None and len(inputs) <= step.max_rows:
                logits = step(inputs, position, cache)
            else:
                logits = model(input_ids=torch.tensor([inputs], device=device),
                               position_ids=torch.arange(position, position + len(inputs),
                                                         device=device).view(1, -1),
                               cache=cache, use_cache=True, logits_to_keep=len(inputs)).logits[0]
            stats.forwards += 1
            choices = logits.argmax(dim=-1).tolist()
            accepted = 0
            while accepted < len(draft) and draft[accepted] == choices[accepted]:
                accepted += 1
            stats.drafted += len(draft)
            stats.accepted += accepted
            if accepted < len(draft):  # rows of rejected drafts: gone
                cache.crop(accepted - len(draft))
            if draft:  # adapt: a fully accepted draft grows the next one, a miss shrinks it
                budget = lookup.draft_tokens if accepted == len(draft) else max(1, accepted + 1)
            elif lookup.draft_tokens:
                budget = lookup.draft_tokens
            new = choices[:accepted + 1]
            position += accepted + 1
            ended = False
            for token in new:
                if token in stops:
                    stats.finish, ended = "eos", True
                    break
                out.append(token)
                seq.append(token)
                if stop_when is not None and stop_when(out):
                    stats.finish, ended = "stop", True
                    break
                if len(out) >= max_new_tokens:
                    ended = True
                    break
            if ended:
                break
            pending = new[-1]
    stats.tokens = len(out)
    stats.seconds = time.perf_counter() - started
    return out, stats

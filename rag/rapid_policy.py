"""When RAPID pays on this machine: a calibrated cost model and the "auto" decision.

RAPID (rag/rapid.py) trades one target step per token for, per verify step, d drafter steps
over the short retrieved context plus one target forward over d + 1 tokens. Whether that wins
depends on the hardware: on a GPU a verify pass costs about one step (memory-bound), on a
2-core CPU it costs ~2.3 steps and RAPID runs at 0.75x (docs/benchmarks/rapid_bench). So
"auto" never guesses: it measures each model's forward cost once per (target, drafter, machine)
and predicts the speed-up of the answer at hand.

Cost model, fitted by least squares on relative error from timed forwards:

    cost(n new tokens over ctx cached tokens) = a + b * n + c * (n * ctx + n * (n + 1) / 2)

(per-forward overhead, per-token matmuls, attention over what each new token sees). With
E = tokens committed per verify step and d = tokens drafted per step (running averages of this
pair's past RAPID runs, started from the rapid_bench figures),

    plain  = N * cost_t(1, L)
    rapid  = prefill_d(L_d) + N / E * (d * cost_d(1, L_d) + cost_t(d + 1, L))

for N new tokens over a target prompt of L and a drafter prompt of L_d tokens. Example, the
rapid_bench CPU figures (step 184 ms, verify 430 ms, drafter step 159 ms, E = 3.98, d = 3.35):
rapid / plain = (3.35 * 159 + 430) / (3.98 * 184) = 1.32, a predicted 0.76x: plain decoding.
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from runtime.errors import InvalidInputError

FORMAT_VERSION = 1
MODES = ("auto", "on", "off")
# Pseudo-counts from docs/benchmarks/rapid_bench (SmolLM2 drafting for itself, eta = 0):
# 3.98 tokens per verify step, 3.35 drafts per step, 89% acceptance.
PRIOR_STATS = {"steps": 4, "tokens": 16, "drafted": 13, "accepted": 12}


@dataclass(frozen=True)
class ForwardCost:
    """Seconds of one forward pass: a + b * n + c * (n * ctx + n * (n + 1) / 2)."""

    overhead_s: float
    per_token_s: float
    per_attended_s: float

    def seconds(self, tokens: int, context: int) -> float:
        attended = tokens * context + tokens * (tokens + 1) / 2
        return self.overhead_s + self.per_token_s * tokens + self.per_attended_s * attended


def fit_cost(samples: list[tuple[int, int, float]]) -> ForwardCost:
    """Least squares on relative error over (tokens, context, seconds) samples, coefficients >= 0.

    Example: samples from cost = 0.01 + 0.002 n + 1e-6 attended are fitted back exactly.
    """
    import numpy as np

    rows = np.array([[1.0, n, n * ctx + n * (n + 1) / 2] for n, ctx, _ in samples])
    seconds = np.array([s for _, _, s in samples])
    weights = 1.0 / np.maximum(seconds, 1e-9)
    active = [0, 1, 2]
    while True:  # drop a negative coefficient and refit (tiny non-negative least squares)
        coef, *_ = np.linalg.lstsq(rows[:, active] * weights[:, None], seconds * weights, rcond=None)
        if (coef >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(coef)))
    full = [0.0, 0.0, 0.0]
    for i, value in zip(active, coef):
        full[i] = max(0.0, float(value))
    return ForwardCost(*full)


@dataclass
class Calibration:
    """Measured forward costs of one (target, drafter) pair on one machine, and how well the
    drafter has done so far (running totals of RAPID runs, from PRIOR_STATS)."""

    target: str
    drafter: str
    machine: str
    target_cost: ForwardCost
    drafter_cost: ForwardCost
    measured_at: float
    calibration_s: float
    samples: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: dict(PRIOR_STATS))

    @property
    def tokens_per_step(self) -> float:
        return self.stats["tokens"] / max(1, self.stats["steps"])

    @property
    def drafts_per_step(self) -> float:
        return self.stats["drafted"] / max(1, self.stats["steps"])

    @property
    def acceptance(self) -> float:
        return self.stats["accepted"] / max(1, self.stats["drafted"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        data = dict(data)
        data["target_cost"] = ForwardCost(**data["target_cost"])
        data["drafter_cost"] = ForwardCost(**data["drafter_cost"])
        return cls(**data)


@dataclass(frozen=True)
class Prediction:
    plain_s: float
    rapid_s: float
    target_prefill_s: float

    @property
    def decode_speedup(self) -> float:
        return self.plain_s / self.rapid_s if self.rapid_s else 0.0

    @property
    def speedup(self) -> float:
        """End to end: both decode after the same target prefill."""
        return (self.target_prefill_s + self.plain_s) / (self.target_prefill_s + self.rapid_s)


def predict(calibration: Calibration, target_tokens: int, draft_tokens: int, new_tokens: int) -> Prediction:
    """Expected seconds of plain decoding and of RAPID for one answer (see the module docstring)."""
    t, d = calibration.target_cost, calibration.drafter_cost
    middle = new_tokens // 2  # costs grow with the context: price each step at its middle
    plain = new_tokens * t.seconds(1, target_tokens + middle)
    per_step = calibration.drafts_per_step
    steps = new_tokens / max(1.0, calibration.tokens_per_step)
    rapid = (d.seconds(draft_tokens, 0)
             + steps * (per_step * d.seconds(1, draft_tokens + middle)
                        + t.seconds(int(round(per_step)) + 1, target_tokens + middle)))
    return Prediction(plain, rapid, t.seconds(target_tokens, 0))


def machine_key() -> str:
    """What the costs depend on: processor, cores and torch's thread count."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return (f"{platform.machine()} {platform.processor() or ''}".strip()
            + f", {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {device}")


def _time_forwards(generator, lengths: tuple[int, ...], new_tokens: tuple[int, ...],
                   repeats: int, seed: int = 0) -> list[tuple[int, int, float]]:
    """(tokens, context, seconds) of timed forwards over one cache cropped to each length."""
    import torch

    from rag.rapid import _forward

    vocab = len(generator.tokenizer)
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.randint(min(100, vocab - 1), vocab, (longest + max(new_tokens),), generator=g).tolist()
    samples = []
    start = time.perf_counter()
    _, cache = _forward(generator, ids[:longest], None, 1)
    samples.append((longest, 0, time.perf_counter() - start))
    cached = longest
    for length in sorted(lengths, reverse=True):
        cache.crop(length - cached)
        cached = length
        for n in new_tokens:
            for _ in range(repeats):
                start = time.perf_counter()
                _, cache = _forward(generator, ids[length:length + n], cache, 1)
                samples.append((n, length, time.perf_counter() - start))
                cache.crop(-n)
    return samples


def calibrate(target, drafter, lengths: tuple[int, ...] = (256, 1024), new_tokens: tuple[int, ...] = (1, 5),
              repeats: int = 2) -> Calibration:
    """Time target and drafter forwards (one prefill per model of max(lengths) tokens, then
    `repeats` forwards of each size at each length) and fit their cost models."""
    if not lengths or min(lengths) < 1 or not new_tokens or min(new_tokens) < 1:
        raise InvalidInputError("calibration needs positive lengths and new-token counts")
    started = time.perf_counter()
    lock = getattr(target, "_lock", None)
    with lock if lock is not None else _NoLock():
        target_samples = _time_forwards(target, lengths, new_tokens, repeats)
        drafter_samples = (target_samples if drafter is target
                           else _time_forwards(drafter, lengths, new_tokens, repeats, seed=1))
    return Calibration(target.name, drafter.name, machine_key(), fit_cost(target_samples),
                       fit_cost(drafter_samples), time.time(), time.perf_counter() - started,
                       {"target": target_samples, "drafter": drafter_samples})


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@dataclass(frozen=True)
class RapidDecision:
    """Whether an answer is decoded with RAPID, and why (for the stage record)."""

    use: bool
    why: str
    detail: dict[str, Any] = field(default_factory=dict)


def local_model_reason(generator) -> str | None:
    """None when `generator` exposes the local forward/KV cache RAPID needs, else why not."""
    if generator is None:
        return "no generator configured"
    if getattr(generator, "model", None) is None or not callable(getattr(generator, "forward", None)):
        return (f"the {type(generator).__name__} backend ({generator.name}) has no local KV cache or "
                "logits: RAPID is off")
    return None


class RapidPolicy:
    """Decides "auto"/"on"/"off" for each answer; calibrations persist in `path` (JSON).

    Args:
        path: the workspace's calibration file (None: calibrate in memory, never saved).
        min_speedup: "auto" drafts only when the predicted end-to-end speed-up reaches this.
        calibrate_now: False makes "auto" without a stored calibration decode plainly (and say
            so) instead of measuring on the spot.
        lengths / new_tokens / repeats: calibration sizes (see `calibrate`).
    """

    def __init__(self, path: Path | None, min_speedup: float = 1.05,
                 calibrate_now: bool = True, lengths: tuple[int, ...] = (256, 1024),
                 new_tokens: tuple[int, ...] = (1, 5), repeats: int = 2) -> None:
        self.path = Path(path) if path is not None else None
        self.min_speedup = min_speedup
        self.calibrate_now = calibrate_now
        self.lengths, self.new_tokens, self.repeats = lengths, new_tokens, repeats
        self._lock = threading.Lock()
        self._memory: dict[str, dict[str, Any]] = {}

    # -- persistence --------------------------------------------------------------------
    @staticmethod
    def key(target, drafter) -> str:
        return f"{target.name} | {drafter.name} | {machine_key()}"

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return dict(self._memory)
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a broken file is recalibrated and rewritten
        if data.get("format_version") != FORMAT_VERSION:
            return {}
        return data.get("pairs", {})

    def _save(self, pairs: dict[str, dict[str, Any]]) -> None:
        self._memory = pairs
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, "pairs": pairs}, indent=1))
        tmp.replace(self.path)

    def stored(self, target, drafter) -> Calibration | None:
        with self._lock:
            entry = self._load().get(self.key(target, drafter))
        return Calibration.from_dict(entry) if entry else None

    def calibration(self, target, drafter) -> tuple[Calibration, bool]:
        """(the pair's calibration, whether it was measured just now)."""
        found = self.stored(target, drafter)
        if found is not None:
            return found, False
        measured = calibrate(target, drafter, self.lengths, self.new_tokens, self.repeats)
        with self._lock:
            pairs = self._load()
            pairs[self.key(target, drafter)] = measured.to_dict()
            self._save(pairs)
        return measured, True

    def record(self, target, drafter, result) -> None:
        """Add a RAPID run (rag.rapid.RapidResult) to the pair's acceptance statistics."""
        with self._lock:
            pairs = self._load()
            entry = pairs.get(self.key(target, drafter))
            if entry is None:
                return
            stats = entry.setdefault("stats", dict(PRIOR_STATS))
            stats["steps"] += result.steps
            stats["tokens"] += len(result.generation.token_ids)
            stats["drafted"] += result.drafted
            stats["accepted"] += result.accepted
            self._save(pairs)


def decide(mode: str, target, drafter, target_tokens: int, draft_tokens: int, new_tokens: int,
           policy: RapidPolicy | None = None, min_tokens: int = 2048) -> RapidDecision:
    """Use RAPID for an answer of `new_tokens` over these prompts? The reason says why.

    The rules, in order: "off"; a backend without local logits; no drafter; "on"; for "auto" a
    prompt shorter than min_tokens, then the calibrated prediction (without a policy: length only).
    """
    if mode not in MODES:
        raise InvalidInputError(f"rapid must be one of {MODES}, not {mode!r}")
    base = {"mode": mode, "target_tokens": target_tokens, "draft_tokens": draft_tokens}
    if mode == "off":
        return RapidDecision(False, "rapid = 'off'", base)
    for role, model in (("target", target), ("drafter", drafter)):
        reason = local_model_reason(model) if model is not None else None
        if reason is not None:
            return RapidDecision(False, reason if role == "target" else f"drafter: {reason}", base)
    if drafter is None:
        return RapidDecision(False, "no drafter configured ([generator] drafter)", base)
    if mode == "on":
        return RapidDecision(True, "rapid = 'on' was requested", base)
    threshold = min_tokens
    if target_tokens < threshold:
        return RapidDecision(False, f"auto: the prompt has {target_tokens} tokens, under the "
                                    f"{threshold} where drafting is considered", base)
    if policy is None:
        return RapidDecision(True, f"auto: the prompt has {target_tokens} >= {threshold} tokens "
                                   "(no cost model given: length alone decides)", base)
    if policy.stored(target, drafter) is None and not policy.calibrate_now:
        return RapidDecision(False, "auto: this (target, drafter) pair is not calibrated on this "
                                    "machine yet; decoding plainly", base)
    calibration, fresh = policy.calibration(target, drafter)
    guess = predict(calibration, target_tokens, draft_tokens, new_tokens)
    t = calibration.target_cost
    numbers = (f"target step {1000 * t.seconds(1, target_tokens):.0f} ms, verify of "
               f"{calibration.drafts_per_step + 1:.1f} tokens "
               f"{1000 * t.seconds(int(round(calibration.drafts_per_step)) + 1, target_tokens):.0f} ms, "
               f"drafter step {1000 * calibration.drafter_cost.seconds(1, draft_tokens):.0f} ms, "
               f"{calibration.tokens_per_step:.2f} tokens per verify step")
    detail = {**base, "predicted_speedup": round(guess.speedup, 3),
              "predicted_decode_speedup": round(guess.decode_speedup, 3),
              "min_speedup": policy.min_speedup, "calibrated_now": fresh,
              "calibration_s": round(calibration.calibration_s, 2) if fresh else None,
              "calibration": policy.key(target, drafter)}
    use = guess.speedup >= policy.min_speedup and math.isfinite(guess.speedup)
    verdict = "drafting" if use else "plain decoding is faster"
    why = (f"auto: predicted {guess.speedup:.2f}x end to end ({guess.decode_speedup:.2f}x decoding) on "
           f"this machine, {'at or above' if use else 'below'} {policy.min_speedup:.2f}x: {verdict} "
           f"({numbers}{'; calibrated now' if fresh else ''})")
    return RapidDecision(use, why, detail)


def plan_chat(mode: str, generator, messages: list[dict[str, str]], config, min_tokens: int,
              drafter_and_policy: Callable[[], tuple[Any, RapidPolicy | None]]) -> tuple[RapidDecision, str | None, Any, Any]:
    """Whether to answer the chat `messages` with RAPID, for every face (the RAG pipeline, REST chat).

    What is settled before a prompt is rendered is decided first ("off", a backend without local
    logits, a JSON schema), so a server backend never renders or counts; otherwise the chat prompt is
    rendered, its tokens and the drafter's share of them (`rag.rapid.DraftContextConfig`) counted, and
    `decide` rules.

    Args:
        drafter_and_policy: () -> (drafter, RapidPolicy or None); called only when needed (a face
            may load its drafter lazily).
    Returns:
        (decision, the rendered prompt or None, drafter, policy); the last three None when settled early.
    """
    if mode == "off":
        return RapidDecision(False, "rapid = 'off'", {"mode": mode}), None, None, None
    reason = local_model_reason(generator)
    if reason is None and config.json_schema is not None:
        reason = "RAPID does not decode under a JSON schema (response_format)"
    if reason is not None:
        return RapidDecision(False, reason, {"mode": mode}), None, None, None
    from rag.rapid import DraftContextConfig

    drafter, policy = drafter_and_policy()
    prompt = generator.render_chat(messages)
    tokens = generator.count_tokens(prompt)
    context = DraftContextConfig()
    draft_tokens = min(tokens, context.head_tokens + context.budget_tokens + context.tail_tokens)
    decision = decide(mode, generator, drafter, tokens, draft_tokens, config.max_new_tokens, policy, min_tokens)
    return decision, prompt, drafter, policy

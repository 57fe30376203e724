"""RagPipeline: trigger -> rewrite -> retrieve (all queries, fused) -> multi-hop -> filter ->
prompt with numbered sources -> generate (streamed) -> answer with citations -> reservoir.

Every stage can be switched off in PipelineConfig, and the result records what each stage did
and how long it took, so a user can see where time and recall go.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np

from runtime.errors import CodehopError, InvalidInputError
from index.hybrid import rrf_fuse
from index.types import Hits, SearchResult
from rag.filter import (CrossEncoderKnowledgeFilter, EmbeddingKnowledgeFilter, FilterConfig,
                        LLMKnowledgeFilter, apply_filter)
from rag.capability import probe_capability
from rag.prompts import answer_messages, format_sources
from rag.reservoir import RetrieverTrigger
from rag.rewrite import LLMRewriter, PRFRewriter, Rewrite, RewriteConfig


@dataclass(frozen=True)
class PipelineConfig:
    """Switches and sizes of each stage.

    Args:
        rewrite: "auto", "llm", "prf" or "off". "auto" uses the LLM rewriter when the generator
            can follow its instructions (see `follows_instructions`), else no rewrite: RM3
            expansion ("prf") lowered NDCG@10 on the code-doc suites (docs/benchmarks.md,
            CodeRAG full corpus), so it runs only when asked for; "llm" falls back to "prf"
            only without a generator, and an unusable LLM reply leaves the question as asked.
        filter: "auto", "llm", "embedding", "cross-encoder" (needs filter_config.cross_encoder)
            or "off"; "auto" is the LLM judge for a capable generator, else "embedding".
        answer_repetition_penalty, answer_no_repeat_ngram: loop control for the answer of a
            generator too small to follow instructions (a strong model decodes unchanged).
        multihop: "off", "on" or "auto" (TreeHop when the question looks multi-hop); without an
            injected retriever the shipped TreeHop checkpoint is loaded on first use.
        rapid: "auto", "on" or "off": RAPID speculative drafting of the answer (rag.rapid). "on"
            drafts whenever a drafter is given and the generator is a local model; "auto" only
            for prompts of at least rapid_min_tokens tokens and, when the pipeline has a
            RapidPolicy, only where its calibrated cost model predicts a speed-up on this machine.
            The "rapid" stage record says which and why.
        rapid_min_tokens: the prompt length from which "auto" considers drafting.
    """

    k: int = 5
    candidates: int = 20
    mode: str = "hybrid"
    rewrite: str = "auto"
    filter: str = "auto"
    reservoir: bool = True
    namespace: str = "default"
    multihop: str = "off"
    generate: bool = True
    rapid: str = "auto"
    rapid_min_tokens: int = 2048
    max_source_chars: int = 1500
    max_new_tokens: int = 256
    temperature: float = 0.0  # of the answer; 0 = greedy ([generator] temperature)
    answer_repetition_penalty: float = 1.1
    answer_no_repeat_ngram: int = 8
    rewrite_config: RewriteConfig = RewriteConfig()
    filter_config: FilterConfig = FilterConfig()

    def __post_init__(self) -> None:
        checks = {"rewrite": ("auto", "llm", "prf", "off"),
                  "filter": ("auto", "llm", "embedding", "cross-encoder", "off"),
                  "multihop": ("off", "on", "auto"), "mode": ("hybrid", "bm25", "dense"),
                  "rapid": ("auto", "on", "off")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise InvalidInputError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.k < 1 or self.candidates < self.k:
            raise InvalidInputError("need k >= 1 and candidates >= k")


@dataclass
class StageRecord:
    name: str
    ran: bool
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RagResult:
    question: str
    answer: str
    sources: list[SearchResult]
    cited: list[int]  # 1-based source numbers the answer cites
    stages: list[StageRecord]
    from_reservoir: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer,
                "sources": [s.to_dict() for s in self.sources], "cited": self.cited,
                "from_reservoir": self.from_reservoir, "stages": [asdict(s) for s in self.stages]}


# Below this many parameters a model does not follow the rewrite/filter prompts (SmolLM2-135M
# answers the question instead of rewriting it and never emits a usable NLI label; see
# docs/benchmarks/llm_bench). A server reports no size: its model is probed (rag.capability).
MIN_INSTRUCTION_PARAMETERS = 1_000_000_000


def follows_instructions(generator) -> tuple[bool, str]:
    """(can the generator do the LLM stages, why). Local models are judged by size, a model
    behind a server by a one-off probe cached per (base_url, model)."""
    if generator is None:
        return False, "no generator configured"
    parameters = getattr(generator, "parameters", None)
    if parameters is None and hasattr(generator, "capability_key"):
        verdict = probe_capability(generator)
        return verdict.follows, verdict.why
    if parameters is None or parameters >= MIN_INSTRUCTION_PARAMETERS:
        return True, f"generator {generator.name} follows instructions"
    return False, (f"generator {generator.name} has {parameters / 1e6:.0f}M parameters, too few to "
                   f"follow the prompt (LLM stages start at {MIN_INSTRUCTION_PARAMETERS / 1e9:.0f}B); "
                   "set it to 'llm' to force, or configure a stronger model")


def cited_numbers(answer: str, n_sources: int) -> list[int]:
    """Source numbers cited as [n] (or [1, 2]) that exist. "see [2] and [5]", 3 -> [2]."""
    found = []
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", answer):
        for number in re.split(r"\s*,\s*", group):
            value = int(number)
            if 1 <= value <= n_sources and value not in found:
                found.append(value)
    return found


def citation_record(answer: str, n_sources: int) -> StageRecord:
    """The check of an answer's inline citations, as a stage record: which sources it cites,
    [n] that name no source, and, when it cites none, a warning saying so (the prompt asks for
    [n]; a small model often forgets, and the reader should know the answer is unreferenced).

    Example: ("Writes are atomic [2] [7].", 3) -> detail {"cited": [2], "unknown": [7]}
    """
    cited = cited_numbers(answer, n_sources)
    named = [int(n) for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", answer)
             for n in re.split(r"\s*,\s*", group)]
    detail: dict[str, Any] = {"cited": cited, "unknown": sorted({n for n in named if not 1 <= n <= n_sources})}
    if not cited:
        detail["warning"] = ("the answer cites no source: no [n] in its text" if n_sources
                             else "there were no sources to cite")
    return StageRecord("citations", True, detail=detail)


class RagPipeline:
    """Grounded answers over a Collection; `generator=None` gives retrieval-only results.

    `drafter` (often the generator itself) and `rapid_policy` (rag.rapid_policy.RapidPolicy,
    the calibrated cost model) serve RAPID drafting of long answers; see PipelineConfig.rapid.
    """

    def __init__(self, collection, generator=None, config: PipelineConfig = PipelineConfig(),
                 trigger: RetrieverTrigger | None = None, treehop=None, drafter=None,
                 rapid_policy=None) -> None:
        self.collection = collection
        self.generator = generator
        self.config = config
        self.trigger = trigger
        self.treehop = treehop
        self.drafter = drafter
        self.rapid_policy = rapid_policy
        self._cross_encoder = None

    # -- stages ---------------------------------------------------------------------------
    def _rewrite(self, question: str) -> tuple[Rewrite, StageRecord]:
        method, why = self._choose("rewrite", "off")
        if method == "off":
            if self.config.rewrite == "auto":
                why += ("; RM3 expansion is not the fallback: it lowered NDCG@10 on the code-doc "
                        "suites (docs/benchmarks.md), set rewrite = 'prf' to use it")
            return Rewrite(question), StageRecord("rewrite", False, detail={"reason": why})
        rewriter = (LLMRewriter(self.generator, self.config.rewrite_config) if method == "llm"
                    else PRFRewriter(self.collection, self.config.rewrite_config))
        rewrite = rewriter.rewrite(question)
        if method == "llm" and rewrite.method == "none":  # the question alone, as "auto" would
            why = (f"the LLM rewrite ({self.generator.name}) was unusable (no parse, or only the "
                   "prompt's placeholders), so the question is searched as asked")
        detail = {"method": rewrite.method, "why": why, "queries": rewrite.all_queries[1:]}
        return rewrite, StageRecord("rewrite", True, rewrite.seconds, detail)

    def _choose(self, stage: str, fallback: str) -> tuple[str, str]:
        """The method a stage runs ("llm", `fallback`, ...) and the reason, for the record."""
        requested = getattr(self.config, stage)
        if requested not in ("auto", "llm"):
            return requested, f"{stage} = {requested!r} was requested"
        capable, why = follows_instructions(self.generator)
        if requested == "llm" and self.generator is not None:
            return "llm", f"{stage} = 'llm' was requested"
        return ("llm", why) if capable else (fallback, why)

    def _retrieve(self, queries: list[str]) -> tuple[list[SearchResult], StageRecord]:
        start = time.perf_counter()
        by_id: dict[str, SearchResult] = {}
        lists = []
        for query in queries:
            results = self.collection.search(query, k=self.config.candidates, mode=self.config.mode)
            for result in results:
                by_id.setdefault(result.id, result)
            keys = [list(by_id).index(r.id) for r in results]
            lists.append(Hits(np.array(keys, np.int64), np.array([r.score for r in results], np.float32)))
        fused = rrf_fuse(lists) if len(lists) > 1 else (lists[0] if lists else Hits.empty())
        ordered = list(by_id.values())
        sources = [ordered[int(i)] for i in fused.ids[: self.config.k]]
        detail = {"queries": len(queries), "candidates": len(by_id), "kept": len(sources)}
        return sources, StageRecord("retrieve", True, time.perf_counter() - start, detail)

    def _multihop(self, question: str, sources: list[SearchResult]) -> tuple[list[SearchResult], StageRecord]:
        mode = self.config.multihop
        if mode == "off":
            return sources, StageRecord("multihop", False)
        from rag.treehop import TreeHopRetriever, load_treehop, looks_multihop  # a missing checkpoint skips the hop
        if mode == "auto" and not looks_multihop(question):
            return sources, StageRecord("multihop", False, detail={"reason": "not multi-hop"})
        if self.treehop is None:
            try:
                self.treehop = TreeHopRetriever(self.collection, load_treehop())
            except CodehopError as error:
                return sources, StageRecord("multihop", False, detail={"reason": str(error)})
        start = time.perf_counter()
        hops = self.treehop.search(question, k=self.config.k)
        merged = {s.id: s for s in [*hops, *sources]}
        detail = {"treehop_passages": len(hops)}
        return list(merged.values())[: self.config.k * 2], StageRecord("multihop", True, time.perf_counter() - start, detail)

    def _filter(self, question: str, sources: list[SearchResult]) -> tuple[list[SearchResult], StageRecord]:
        method, why = self._choose("filter", "embedding")
        if method == "off" or not sources:
            return sources, StageRecord("filter", False, detail={"reason": why if sources else "no sources"})
        config = self.config.filter_config
        if method == "llm":
            judge = LLMKnowledgeFilter(self.generator, config)
        elif method == "cross-encoder":
            if self._cross_encoder is None:  # loading a model per question would dominate latency
                self._cross_encoder = CrossEncoderKnowledgeFilter(config)
            judge = self._cross_encoder
        else:
            judge = EmbeddingKnowledgeFilter(self.collection.embedder, config)
        kept, judgements, seconds = apply_filter(judge, question, sources, config)
        detail = {"method": judge.name, "why": why, "labels": [j.label for j in judgements],
                  "kept": len(kept), "passed_ids": [j.source.id for j in judgements if j.kept]}
        return kept, StageRecord("filter", True, seconds, detail)

    # -- the run --------------------------------------------------------------------------
    def stream(self, question: str) -> Iterator[dict[str, Any]]:
        """Events: {"type": "stage", ...} per stage, {"type": "token", "text"}, then
        {"type": "result", "result": RagResult}."""
        question = question.strip()
        if not question:
            raise InvalidInputError("empty question")
        stages: list[StageRecord] = []

        decision = None
        if self.config.reservoir and self.trigger is not None:
            decision = self.trigger.check(self.config.namespace, question)
            stages.append(StageRecord("trigger", True, decision.seconds, {
                "reuse": decision.reuse, "matches": len(decision.matches),
                "past_questions": decision.questions, "stale_dropped": decision.dropped}))
            yield {"type": "stage", "stage": stages[-1]}
        if decision is not None and decision.reuse:
            sources = [SearchResult(f"reservoir:{e.id}", sim, e.source, 0, 0, e.content,
                                    {"title": e.title, "chunk_id": e.chunk_id})
                       for e, sim in decision.matches]
            from_reservoir = True
        else:
            from_reservoir = False
            rewrite, record = self._rewrite(question)
            stages.append(record)
            yield {"type": "stage", "stage": record}
            sources, record = self._retrieve(rewrite.all_queries)
            stages.append(record)
            yield {"type": "stage", "stage": record}
            sources, record = self._multihop(question, sources)
            stages.append(record)
            sources, record = self._filter(question, sources)
            stages.append(record)
            yield {"type": "stage", "stage": record}

        answer = ""
        if self.generator is not None and self.config.generate:
            start = time.perf_counter()
            messages = answer_messages(question, format_sources(sources, self.config.max_source_chars))
            from rag.llm import GenerationConfig

            config = self._answer_decoding(GenerationConfig)
            pieces, decode = [], {}
            for piece in self._generate(question, messages, sources, config, stages, decode):
                pieces.append(piece)
                yield {"type": "token", "text": piece}
            answer = "".join(pieces).strip()
            rapid = next((s for s in reversed(stages) if s.name == "rapid"), None)
            # plus the local decoder's record: forwards, drafted, accepted, drafting and why
            stages.append(StageRecord("generate", True, time.perf_counter() - start,
                                      {"chars": len(answer), "rapid": bool(rapid and rapid.ran), **decode}))
        else:
            reason = "switched off" if self.generator is not None else "no generator configured"
            stages.append(StageRecord("generate", False, detail={"reason": reason}))

        cited = cited_numbers(answer, len(sources))
        if answer:
            stages.append(citation_record(answer, len(sources)))
        if self.config.reservoir and self.trigger is not None and not from_reservoir:
            # Only what the filter judged relevant is knowledge: not the passages kept by its
            # keep_at_least fallback, and nothing when it did not run.
            start = time.perf_counter()
            filtered = next((s for s in stages if s.name == "filter"), None)
            if filtered is None or not filtered.ran:
                why = filtered.detail.get("reason", "filter off") if filtered is not None else "no filter stage"
                stages.append(StageRecord("reservoir", False, detail={
                    "stored": 0, "reason": f"nothing passed the knowledge filter: it did not run ({why})"}))
            else:
                passed = set(filtered.detail.get("passed_ids", []))
                kept = [s for s in sources if s.id in passed]
                stored = self.trigger.remember(self.config.namespace, question, kept)
                stages.append(StageRecord("reservoir", True, time.perf_counter() - start, {
                    "stored": stored, "passed": len(kept), "not_passed": len(sources) - len(kept)}))
        result = RagResult(question, answer, sources, cited, stages, from_reservoir)
        yield {"type": "result", "result": result}

    def _answer_decoding(self, config_type):
        """Decoding of the answer: loop control only for a model too small to stop by itself."""
        capable, _ = follows_instructions(self.generator)
        if capable:
            return config_type(max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature)
        return config_type(max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature,
                           repetition_penalty=self.config.answer_repetition_penalty,
                           no_repeat_ngram_size=self.config.answer_no_repeat_ngram)

    def _generate(self, question, messages, sources, config, stages, decode: dict) -> Iterator[str]:
        """Plain streamed generation, or RAPID when `_rapid_decision` says so: the target reads
        every source in full, the drafter only the prompt's chunks that best match the question
        (BM25, kept in document order); verified tokens stream as they come. A local plain
        decode's record (Generation.decode: forwards, prompt-lookup drafts) lands in `decode`."""
        start = time.perf_counter()
        decision, prompt = self._rapid_decision(messages, config)
        detail = {"why": decision.why, **decision.detail, "decision_s": time.perf_counter() - start}
        if not decision.use:
            stages.append(StageRecord("rapid", False, detail=detail))
            last = getattr(self.generator, "last_decode", None)  # local models only
            before = last() if callable(last) else None
            yield from self.generator.chat_stream(messages, config)
            record = last() if callable(last) else None
            if isinstance(record, dict) and record is not before:
                decode.update(record)
            return
        from rag.rapid import RapidGenerator

        rapid = RapidGenerator(self.generator, self.drafter)
        for delta, final in rapid.rapid_stream(prompt, config, question):
            if delta:
                yield delta
            if final is not None:
                stats = final.to_dict()
                detail.update({key: stats[key] for key in (
                    "acceptance_rate", "mean_accepted", "drafted", "accepted", "tokens", "target_forwards",
                    "drafter_forwards", "target_prompt_tokens", "draft_prompt_tokens", "target_seconds",
                    "drafter_seconds")})
                stages.append(StageRecord("rapid", True, stats["target_seconds"] + stats["drafter_seconds"], detail))
                if self.rapid_policy is not None:
                    self.rapid_policy.record(self.generator, self.drafter, final)

    def _rapid_decision(self, messages, config):
        """(rag.rapid_policy.RapidDecision, the rendered prompt or None) for this answer."""
        from rag.rapid_policy import plan_chat

        decision, prompt, _, _ = plan_chat(self.config.rapid, self.generator, messages, config,
                                           self.config.rapid_min_tokens,
                                           lambda: (self.drafter, self.rapid_policy))
        return decision, prompt

    def run(self, question: str) -> RagResult:
        result = None
        for event in self.stream(question):
            if event["type"] == "result":
                result = event["result"]
        return result

"""Knowledge Filter: keep only passages that carry evidence for the question.

The LLM judge labels each (question, passage) pair entailment / neutral / contradiction, NLI
style, and only entailment is kept. The reply is asked for as {"label": ...} under a JSON schema
(an enum of the three labels); a reply we cannot parse is asked for once more, and one that still
does not parse counts as a rejection ("unparsable"). Without a
generator, an embedding-similarity threshold (or a cross-encoder, when one is configured) is the
cheaper stand-in (named as such).

Long passages are first pruned to their best sentences by BM25 against the question, keeping
sentences that score >= max(80th percentile, 2), in their original order.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from index.bm25 import BM25Config, BM25Index
from runtime.generation import GenerationConfig
from index.tokenize import tokenize
from index.types import SearchResult
from rag.llm import chat_with_retry
from rag.prompts import FILTER_CORRECTION, FILTER_PROMPT

LABELS = ("entailment", "neutral", "contradiction")
LABEL_SCHEMA = {"type": "object", "properties": {"label": {"enum": list(LABELS)}},
                "required": ["label"], "additionalProperties": False}
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n{2,}")


@dataclass(frozen=True)
class FilterConfig:
    """method: "llm" (NLI judge), "embedding" (cosine >= threshold), "cross-encoder" or "off".

    cross_encoder: model name/path for the cross-encoder filter (resolved like every model);
    it keeps passages whose relevance logit is >= cross_encoder_threshold.
    structured: the LLM judge sends LABEL_SCHEMA with its request (False: the prompt alone).
    """

    method: str = "llm"
    threshold: float = 0.35
    cross_encoder: str | None = None
    cross_encoder_threshold: float = 0.0
    max_passage_chars: int = 1200
    prune_long_passages: bool = True
    prune_min_chars: int = 800
    keep_at_least: int = 1  # never leave the generator with nothing
    structured: bool = True


@dataclass
class Judgement:
    source: SearchResult
    label: str
    kept: bool
    score: float | None = None
    attempts: int = 1  # LLM judge calls: 2 when the first reply did not parse


def parse_label(text: str) -> str | None:
    """First NLI label in the model's reply, or None.

    '{"label": "neutral"}' -> "neutral"; "Entailment." -> "entailment"; "yes" -> None.
    """
    found = re.search(r"\b(entail\w*|neutral|contradict\w*)\b", text.lower())
    if not found:
        return None
    word = found.group(1)
    return "entailment" if word.startswith("entail") else "contradiction" if word.startswith("contradict") else "neutral"


def prune_sentences(question: str, text: str, min_chars: int = 800) -> str:
    """Keep the sentences BM25 scores >= max(80th percentile, 2) against the question."""
    if len(text) < min_chars:
        return text
    sentences = [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]
    if len(sentences) < 3:
        return text
    index = BM25Index(BM25Config(idf="lucene"))
    index.index([tokenize(s) for s in sentences])
    scores = index.scores(tokenize(question))
    cutoff = max(float(np.percentile(scores, 80)), 2.0)
    keep = [s for s, score in zip(sentences, scores) if score >= cutoff]
    if not keep:
        keep = [sentences[int(np.argmax(scores))]]
    return " ".join(keep)


class LLMKnowledgeFilter:
    """NLI-style judge over each passage with the configured generator."""

    name = "llm-nli"

    def __init__(self, generator, config: FilterConfig = FilterConfig()) -> None:
        self.generator = generator
        self.config = config

    def judge(self, question: str, sources: list[SearchResult]) -> list[Judgement]:
        # {"label": "contradiction"} is 8 SmolLM2 tokens; 16 leaves room for spacing and the end token.
        decoding = GenerationConfig(max_new_tokens=16,
                                    json_schema=LABEL_SCHEMA if self.config.structured else None)
        return [self._judge_one(question, source, decoding) for source in sources]

    def _judge_one(self, question: str, source: SearchResult, decoding: GenerationConfig) -> Judgement:
        passage = source.text[: self.config.max_passage_chars]
        prompt = FILTER_PROMPT.format(question=question, passage=passage)
        label, replies = chat_with_retry(self.generator, [{"role": "user", "content": prompt}],
                                         decoding, parse_label, FILTER_CORRECTION)
        label = label or "unparsable"
        return Judgement(source, label, label == "entailment", attempts=len(replies))


class EmbeddingKnowledgeFilter:
    """Cheaper non-LLM filter: keep passages whose cosine with the question >= threshold."""

    name = "embedding-threshold"

    def __init__(self, embedder, config: FilterConfig = FilterConfig(method="embedding")) -> None:
        self.embedder = embedder
        self.config = config

    def judge(self, question: str, sources: list[SearchResult]) -> list[Judgement]:
        if not sources:
            return []
        query = self.embedder.encode_query(question)
        vectors = self.embedder.encode([s.text[: self.config.max_passage_chars] for s in sources])
        sims = vectors @ query
        return [Judgement(s, "entailment" if sim >= self.config.threshold else "neutral",
                          bool(sim >= self.config.threshold), float(sim)) for s, sim in zip(sources, sims)]


class CrossEncoderKnowledgeFilter:
    """Non-LLM filter with a sentence-transformers cross-encoder scoring (question, passage)."""

    name = "cross-encoder"

    def __init__(self, config: FilterConfig) -> None:
        from runtime.errors import InvalidInputError, ModelNotFoundError
        from runtime.resolver import resolve_model

        if not config.cross_encoder:
            raise InvalidInputError("the cross-encoder filter needs FilterConfig.cross_encoder (a model name or path)")
        resolved = resolve_model(config.cross_encoder)
        from sentence_transformers import CrossEncoder

        try:
            self.model = CrossEncoder(resolved.location, device="cpu")
        except OSError as error:
            raise ModelNotFoundError(f"cannot load cross-encoder {config.cross_encoder!r}: {error}") from error
        self.config = config

    def judge(self, question: str, sources: list[SearchResult]) -> list[Judgement]:
        if not sources:
            return []
        pairs = [(question, s.text[: self.config.max_passage_chars]) for s in sources]
        scores = np.asarray(self.model.predict(pairs, show_progress_bar=False), dtype=np.float32).reshape(len(sources), -1)[:, -1]
        limit = self.config.cross_encoder_threshold
        return [Judgement(s, "entailment" if score >= limit else "neutral", bool(score >= limit), float(score))
                for s, score in zip(sources, scores)]


def apply_filter(judge, question: str, sources: list[SearchResult],
                 config: FilterConfig) -> tuple[list[SearchResult], list[Judgement], float]:
    """Prune long passages, judge them, keep the entailed ones (at least `keep_at_least`)."""
    start = time.perf_counter()
    if config.prune_long_passages:
        sources = [_pruned(question, s, config.prune_min_chars) for s in sources]
    judgements = judge.judge(question, sources)
    kept = [j.source for j in judgements if j.kept]
    if len(kept) < config.keep_at_least:
        kept = [j.source for j in judgements[: config.keep_at_least]]
    return kept, judgements, time.perf_counter() - start


def _pruned(question: str, source: SearchResult, min_chars: int) -> SearchResult:
    text = prune_sentences(question, source.text, min_chars)
    if text == source.text:
        return source
    return SearchResult(source.id, source.score, source.path, source.start_line, source.end_line,
                        text, {**source.metadata, "pruned_from_chars": len(source.text)})

"""Query Rewriter+: clarified questions and facet queries from one LLM call, with an RM3-style
pseudo-relevance-feedback fallback that needs no generator.

The LLM is asked for {"rewritten_questions": [...], "queries": [...]}, with that JSON schema
sent along (`rewrite_schema`), so a local backend decodes under a grammar. A backend may ignore
the schema, and small models then wrap the JSON in prose, use single quotes or trailing commas,
or give up on JSON altogether: `parse_rewrite` accepts all of that and falls back to bullet
lines, and a reply with nothing usable is asked for once more with a one-line correction.

RM3 (Abdul-Jaleel et al., TREC 2004; Lavrenko & Croft 2001) estimates a relevance model from
the top feedback documents, P(w|R) ~ sum_d P(w|d) * P(d|q), and adds its strongest terms to the
query:  question "read csv pandas" + top docs about read_csv -> "+ dataframe sep header".
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from runtime.generation import GenerationConfig
from index.tokenize import TokenizerConfig, tokenize
from rag.llm import chat_with_retry
from rag.prompts import REWRITE_CORRECTION, REWRITE_PROMPT


@dataclass(frozen=True)
class RewriteConfig:
    """n_questions/n_queries: how many the LLM is asked for; prf_*: RM3 settings.

    structured: send the JSON schema with the request (False: the prompt alone asks for JSON).
    """

    n_questions: int = 3
    n_queries: int = 5
    max_new_tokens: int = 192
    prf_docs: int = 5
    prf_terms: int = 10
    structured: bool = True


@dataclass
class Rewrite:
    original: str
    questions: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    method: str = "none"  # "llm" | "prf" | "none"
    raw: str = ""  # the LLM's last reply (the PRF terms for "prf")
    seconds: float = 0.0
    attempts: int = 0  # LLM calls made: 1, or 2 when the first reply did not parse
    structured: bool = False  # whether the JSON schema was sent

    @property
    def all_queries(self) -> list[str]:
        """The original first, then every distinct rewrite."""
        seen, ordered = set(), []
        for query in [self.original, *self.questions, *self.queries]:
            key = query.strip().lower()
            if key and key not in seen:
                seen.add(key)
                ordered.append(query.strip())
        return ordered


def _as_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if isinstance(v, (str, int, float)) and str(v).strip()]
    return []


def _decode_object(text: str) -> dict | None:
    cleaned = re.sub(r",\s*([}\]])", r"\1", text)  # trailing commas
    for loader in (json.loads, ast.literal_eval):
        try:
            value = loader(cleaned)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_rewrite(text: str) -> tuple[list[str], list[str]]:
    """(questions, queries) from messy model output; ([], []) when nothing usable is there.

    Example: 'Sure! {"rewritten_questions": ["How to read CSV?"], "queries": ["pandas read_csv",]}'
    -> (["How to read CSV?"], ["pandas read_csv"])
    """
    for match in re.finditer(r"\{", text):
        depth, end = 0, None
        for position in range(match.start(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            if depth == 0:
                end = position + 1
                break
        if end is None:
            continue
        value = _decode_object(text[match.start():end])
        if value is None:
            continue
        questions = _as_strings(value.get("rewritten_questions") or value.get("questions"))
        queries = _as_strings(value.get("queries") or value.get("facet_queries"))
        if questions or queries:
            return questions, queries
    # No JSON: take bullet or numbered lines as queries.
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines()]
    bullets = [line for line, raw in zip(lines, text.splitlines())
               if line and re.match(r"^\s*(?:[-*•]|\d+[.)])\s+", raw)]
    return [], bullets


def rewrite_schema(n_questions: int, n_queries: int) -> dict:
    """The JSON schema of the rewriter's reply: at most n_questions questions, n_queries queries."""
    def strings(limit: int) -> dict:
        return {"type": "array", "items": {"type": "string"}, "maxItems": limit}

    return {"type": "object",
            "properties": {"rewritten_questions": strings(n_questions), "queries": strings(n_queries)},
            "required": ["rewritten_questions", "queries"], "additionalProperties": False}


# A reply item that copies the prompt's placeholders ("<clearer version of the question>") instead
# of filling them in; rag.capability fails a generator on it, `usable_rewrites` drops it. A `<`
# right after a name, `.` or `::` opens type arguments (`Optional<QueryResult>`, `collect::<Vec<_>>`),
# not a tag; after a label's colon ("Q:<clearer version ...>") it is the prompt's placeholder.
_OPENS = r"(?<![\w.])(?<!::)<"
TEMPLATE_ECHO = re.compile(_OPENS + r"/?[^<>]*(version|query|question)[^<>]*>|^\.\.\.$", re.IGNORECASE)
_TAG = re.compile(_OPENS + r"/?[^<>]*>|</[^<>]*>")
_WORD = re.compile(r"[^\W_]")  # a letter or digit


def usable_rewrites(items: list[str]) -> list[str]:
    """`items` without template echoes and without what holds no word once markup tags are gone.

    Small models fill the rewriter's shape with its own placeholders, or tags and punctuation:
    searched, those find pages about nothing the user asked (SmolLM2's rewrites of CodeRAG's
    DS-1000/ODEX questions were 80% such items, and fused with the question they took NDCG@10
    from 0.59 / 0.73 to 0.27 / 0.19).

    usable_rewrites(["<clearer version of the question>", "<remark 1>drop rows with NaN", ","])
    -> ["drop rows with NaN"]"""
    kept = []
    for item in items:
        if TEMPLATE_ECHO.search(item.strip()):
            continue
        text = _TAG.sub(" ", item).strip(" \t\n'\",")
        if _WORD.search(text):
            kept.append(" ".join(text.split()))
    return kept


def _parsed(text: str) -> tuple[list[str], list[str]] | None:
    questions, queries = parse_rewrite(text)
    questions, queries = usable_rewrites(questions), usable_rewrites(queries)
    return (questions, queries) if questions or queries else None


class LLMRewriter:
    """One generator call -> clarified questions + facet queries (a second call if unparsable)."""

    def __init__(self, generator, config: RewriteConfig = RewriteConfig()) -> None:
        self.generator = generator
        self.config = config

    def rewrite(self, question: str) -> Rewrite:
        start = time.perf_counter()
        n_questions, n_queries = self.config.n_questions, self.config.n_queries
        prompt = REWRITE_PROMPT.format(question=question, n_questions=n_questions, n_queries=n_queries)
        schema = rewrite_schema(n_questions, n_queries) if self.config.structured else None
        decoding = GenerationConfig(max_new_tokens=self.config.max_new_tokens, json_schema=schema)
        parsed, replies = chat_with_retry(self.generator, [{"role": "user", "content": prompt}],
                                          decoding, _parsed, REWRITE_CORRECTION)
        questions, queries = parsed or ([], [])
        return Rewrite(question, questions[:n_questions], queries[:n_queries],
                       "llm" if parsed else "none", replies[-1], time.perf_counter() - start,
                       attempts=len(replies), structured=schema is not None)


class PRFRewriter:
    """RM3-style expansion from the collection's own top BM25 documents."""

    def __init__(self, collection, config: RewriteConfig = RewriteConfig(),
                 tokenizer: TokenizerConfig = TokenizerConfig()) -> None:
        self.collection = collection
        self.config = config
        self.tokenizer = tokenizer

    def expansion_terms(self, question: str) -> list[str]:
        feedback = self.collection.search(question, k=self.config.prf_docs, mode="bm25")
        if not feedback:
            return []
        query_terms = set(tokenize(question, self.tokenizer))
        scores = np.array([max(r.score, 0.0) for r in feedback], dtype=np.float64)
        weights = scores / scores.sum() if scores.sum() > 0 else np.full(len(feedback), 1 / len(feedback))
        relevance: Counter[str] = Counter()
        for result, weight in zip(feedback, weights):
            counts = Counter(tokenize(result.text, self.tokenizer))
            total = sum(counts.values()) or 1
            for term, count in counts.items():
                relevance[term] += weight * count / total  # P(w|d) * P(d|q)
        ranked = [t for t, _ in relevance.most_common() if t not in query_terms and len(t) > 2
                  and not t.isdigit()]
        return ranked[: self.config.prf_terms]

    def rewrite(self, question: str) -> Rewrite:
        start = time.perf_counter()
        terms = self.expansion_terms(question)
        queries = [f"{question} {' '.join(terms)}"] if terms else []
        return Rewrite(question, [], queries, "prf" if terms else "none", " ".join(terms),
                       time.perf_counter() - start)

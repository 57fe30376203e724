"""Prompt templates of the RAG pipeline; sources are numbered so answers can cite [n]."""

from __future__ import annotations

from index.types import SearchResult

ANSWER_SYSTEM = (
    "You answer questions using only the numbered sources. After each statement, cite the source "
    "it comes from inline as [1] or [2]; every answer cites at least one source. "
    "If the sources do not contain the answer, say that you do not know."
)

REWRITE_PROMPT = """Rewrite the question for a search engine.
Reply with one JSON object and nothing else, in this shape:
{{"rewritten_questions": ["<clearer version of the question>", ...], "queries": ["<short keyword query>", ...]}}
Give up to {n_questions} rewritten questions and up to {n_queries} keyword queries, one per facet.
Question: {question}"""

REWRITE_CORRECTION = ('That was not valid JSON. Reply with only the JSON object '
                      '{"rewritten_questions": [...], "queries": [...]}.')

FILTER_PROMPT = """Question: {question}
Passage: {passage}
Does the passage contain clear evidence that answers the question? The label is entailment (it does), neutral (unrelated or insufficient) or contradiction (it contradicts).
Reply with one JSON object and nothing else: {{"label": "entailment"}}, {{"label": "neutral"}} or {{"label": "contradiction"}}"""

FILTER_CORRECTION = 'Reply with only {"label": "entailment"}, {"label": "neutral"} or {"label": "contradiction"}.'


def format_sources(sources: list[SearchResult], max_chars: int = 1500) -> str:
    """Numbered source blocks: "[1] path:10-24\\ntext"."""
    blocks = []
    for number, source in enumerate(sources, start=1):
        text = source.text if len(source.text) <= max_chars else source.text[:max_chars] + " ..."
        blocks.append(f"[{number}] {source.path}:{source.start_line}-{source.end_line}\n{text}")
    return "\n\n".join(blocks)


def answer_messages(question: str, sources_block: str) -> list[dict[str, str]]:
    if not sources_block:
        return [{"role": "user", "content": question}]
    user = f"Sources:\n{sources_block}\n\nQuestion: {question}\nAnswer with citations:"
    return [{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": user}]

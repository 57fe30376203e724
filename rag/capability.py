"""Can a generator follow the pipeline's instruction-heavy prompts? Decided by evidence.

A local model is judged by its size (it is known). A remote model's size is not, and a server
may serve a 135M model as readily as a 70B one: it gets the LLM rewriter and the LLM filter
only after a one-off probe with the stages' own prompts and schemas, cached per
(base_url, model) for the life of the process:

- rewrite: a schema-constrained reply to REWRITE_PROMPT for a fixed question must parse, must
  not copy the prompt's template (`<clearer version of the question>`), and must stay on the
  question's topic (name one of its content words);
- filter: FILTER_PROMPT must label a passage that answers the question `entailment` and an
  unrelated passage anything else.

Example: SmolLM2-135M behind llama.cpp rewrites "How does BM25 handle deleted documents?" into
["<clearer version of the question>", ...] -> fails, so `ask` runs RM3 and the embedding filter.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from index.errors import ModelServerError
from index.generation import GenerationConfig
from rag.filter import LABEL_SCHEMA, parse_label
from rag.prompts import FILTER_PROMPT, REWRITE_PROMPT
from rag.rewrite import parse_rewrite, rewrite_schema

PROBE_QUESTION = "How does the BM25 index handle deleted documents?"
PROBE_TOPIC = ("bm25", "delet", "index", "document", "remov")
PROBE_ANSWERING = ("Deleting a document from the BM25 index removes its postings and lowers the "
                   "document count used by the IDF; the deleted id is never returned again.")
PROBE_UNRELATED = "The bakery opens at seven and sells rye bread, croissants and apple pie."
_TEMPLATE = re.compile(r"<[^<>]*(version|query|question)[^<>]*>|^\.\.\.$", re.IGNORECASE)


@dataclass(frozen=True)
class Capability:
    """The probe's verdict: `follows` and the reason shown in the stage records."""

    follows: bool
    why: str
    seconds: float = 0.0


_CACHE: dict[tuple, Capability] = {}
_LOCK = threading.Lock()


def probe_capability(generator) -> Capability:
    """The cached verdict for `generator.capability_key` (probing it the first time)."""
    key = getattr(generator, "capability_key", None) or (type(generator).__name__, generator.name)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _probe(generator)
        return _CACHE[key]


def _probe(generator) -> Capability:
    start = time.perf_counter()
    try:
        failure = _rewrite_failure(generator) or _filter_failure(generator)
    except ModelServerError as error:
        failure = f"the probe request failed ({error})"
    seconds = time.perf_counter() - start
    if failure:
        return Capability(False, f"generator {generator.name} failed the instruction probe: {failure}; "
                                 "set it to 'llm' to force", seconds)
    return Capability(True, f"generator {generator.name} passed the instruction probe "
                            "(schema-constrained rewrite and NLI judgements)", seconds)


def _rewrite_failure(generator) -> str | None:
    prompt = REWRITE_PROMPT.format(question=PROBE_QUESTION, n_questions=2, n_queries=3)
    reply = generator.chat([{"role": "user", "content": prompt}],
                           GenerationConfig(max_new_tokens=128, json_schema=rewrite_schema(2, 3))).text
    questions, queries = parse_rewrite(reply)
    rewrites = [r for r in questions + queries if r.strip()]
    if not rewrites:
        return f"its rewrite did not parse ({reply[:80]!r})"
    if any(_TEMPLATE.search(r.strip()) for r in rewrites):
        return f"its rewrite copied the prompt's template ({rewrites[0][:80]!r})"
    if not any(word in r.lower() for r in rewrites for word in PROBE_TOPIC):
        return f"its rewrite left the question's topic ({rewrites[0][:80]!r})"
    return None


def _filter_failure(generator) -> str | None:
    decoding = GenerationConfig(max_new_tokens=16, json_schema=LABEL_SCHEMA)
    for passage, wanted in ((PROBE_ANSWERING, True), (PROBE_UNRELATED, False)):
        prompt = FILTER_PROMPT.format(question=PROBE_QUESTION, passage=passage)
        reply = generator.chat([{"role": "user", "content": prompt}], decoding).text
        label = parse_label(reply)
        if label is None:
            return f"its NLI label did not parse ({reply[:80]!r})"
        if (label == "entailment") != wanted:
            which = "an answering" if wanted else "an unrelated"
            return f"it labelled {which} passage {label!r}"
    return None

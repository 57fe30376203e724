"""Can a generator follow the pipeline's instruction-heavy prompts? Decided by evidence.

A local model is judged by its size (it is known). A remote model's size is not, and a server
may serve a 135M model as readily as a 70B one: it gets the LLM rewriter and the LLM filter
only after a one-off probe with the stages' own prompts and schemas, cached per
(base_url, model) in the process and, for a day, in the machine's cache directory
(`capability.json` beside the model cache), so each `codehop ask` does not probe again:

- rewrite: a schema-constrained reply to REWRITE_PROMPT for a fixed question must parse, must
  not copy the prompt's template (`<clearer version of the question>`), and must stay on the
  question's topic (name one of its content words);
- filter: FILTER_PROMPT must label a passage that answers the question `entailment` and an
  unrelated passage anything else.

Example: SmolLM2-135M behind llama.cpp rewrites "How does BM25 handle deleted documents?" into
["<clearer version of the question>", ...] -> fails, so `ask` runs RM3 and the embedding filter.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ModelServerError
from runtime.generation import GenerationConfig
from rag.filter import LABEL_SCHEMA, parse_label
from rag.prompts import FILTER_PROMPT, REWRITE_PROMPT
from rag.rewrite import TEMPLATE_ECHO, parse_rewrite, rewrite_schema

PROBE_QUESTION = "How does the BM25 index handle deleted documents?"
PROBE_TOPIC = ("bm25", "delet", "index", "document", "remov")
PROBE_ANSWERING = ("Deleting a document from the BM25 index removes its postings and lowers the "
                   "document count used by the IDF; the deleted id is never returned again.")
PROBE_UNRELATED = "The bakery opens at seven and sells rye bread, croissants and apple pie."


@dataclass(frozen=True)
class Capability:
    """The probe's verdict: `follows` and the reason shown in the stage records."""

    follows: bool
    why: str
    seconds: float = 0.0


_CACHE: dict[tuple, Capability] = {}
_LOCK = threading.Lock()
# A verdict on disk is trusted this long: a server may be restarted with another model under
# the same name. PROBE_VERSION changes whenever the probe itself does.
CACHE_TTL_S = 24 * 3600
PROBE_VERSION = 1


def probe_capability(generator, store: Path | None = None) -> Capability:
    """The cached verdict for `generator.capability_key` (probing it the first time).

    Args:
        generator: a generator with `capability_key` (base_url, model).
        store: the JSON file verdicts persist in (default: capability.json in the machine's
            codehop cache directory, runtime.model_cache.default_cache_root()).
    """
    key = tuple(generator.capability_key)
    with _LOCK:
        if key not in _CACHE:
            path = store or _default_store()
            _CACHE[key] = _read(path, key) or _write(path, key, _probe(generator))
        return _CACHE[key]


def _default_store() -> Path:
    from runtime.model_cache import default_cache_root

    return default_cache_root() / "capability.json"


def _disk_key(key: tuple) -> str:
    return json.dumps([PROBE_VERSION, *key])


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read(path: Path, key: tuple) -> Capability | None:
    entry = _load(path).get(_disk_key(key))
    if not isinstance(entry, dict) or time.time() - float(entry.get("at", 0)) > CACHE_TTL_S:
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(entry["at"])))
    return Capability(bool(entry.get("follows")), f"{entry.get('why', '')} (probed {stamp} UTC, cached in {path})")


def _write(path: Path, key: tuple, verdict: Capability) -> Capability:
    """Persist `verdict` (temp file + rename: a reader never sees half a file); a cache that
    cannot be written only costs the next process a probe."""
    try:
        data = _load(path)
        data[_disk_key(key)] = {"follows": verdict.follows, "why": verdict.why, "at": time.time()}
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(data, indent=1))
        temp.replace(path)
    except OSError:
        pass
    return verdict


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
    if any(TEMPLATE_ECHO.search(r.strip()) for r in rewrites):
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

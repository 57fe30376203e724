"""Repository-level code completion (docs/methods.md, "Repository-level completion").

`RepoCompleter.complete(path, line, col)`:
1. query = the last ~20 non-empty lines before the cursor;
2. context = the definitions of symbols imported or called near the cursor, + BM25 top-50 over
   the pool (syntax chunks, blocks, abstracts) -> dense re-rank top-5, + the abstracts of imported
   files; chunks of the file being completed are never candidates (no leakage). Retrieval is
   skipped when those definitions already fill the context budget (nothing retrieved could be
   shown), and the dense re-rank when BM25's top hits lie in the open file's neighbourhood
   (CompletionConfig.skip_retrieval_when_full, dense_skip_neighbours). With the KV cache, the
   chunks the file's last prompt showed keep their places against newcomers that score less
   than 20% better (sticky_context), so typing on re-encodes the typed text, not a swapped chunk;
   with context_edit_budget, a request whose fresh context would cost the KV cache more than
   that many tokens to encode keeps the context the cache holds, and the face encodes the fresh
   one after the response (`refresh`);
3. a token-budgeted prompt: cross-file context, the file path, the left context, and the right
   context when the generator has a fill-in-the-middle format (else a plain prefix prompt);
4. greedy generation with stop rules, then truncation to one line or one statement.

Every stage is timed; `Completion.timings` holds seconds per stage.
"""

from __future__ import annotations

import io
import threading
import time
import tokenize as pytokenize
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from code_tools.languages import language_for_path, outline
from code_tools.repo import RepoIndex
from index.types import Hits
from runtime.errors import InvalidInputError, NotFoundError
from runtime.generation import GenerationConfig


@dataclass(frozen=True)
class CompletionConfig:
    """Settings of one completer.

    Args:
        use_context: False = "no context" (no cross-file retrieval at all).
        query_lines: non-empty lines before the cursor that form the retrieval query.
        bm25_candidates / rerank_top: BM25 pool size and how many chunks survive re-ranking.
        dense_rerank: False keeps the BM25 order (the "BM25 only" variant).
        max_definitions / max_abstracts: caps on symbol definitions and import abstracts.
        near_lines: lines before the cursor whose calls/imported names count as "near".
        context_tokens / left_tokens / right_tokens: prompt budgets.
        max_new_tokens: generation budget.
        truncate: "statement" or "line".
        fim: use fill-in-the-middle when the generator supports it.
        reuse_kv_cache: keep each document's last prompt in a KV cache and bring it to the next
            prompt through PIE edits instead of re-encoding (a local model only; greedy decoding
            from the cache; code_tools.kv_cache). Off = every prompt is encoded by the generator.
        kv_cache_mb: memory budget of those caches (LRU over documents).
        kv_recompute_above: re-encode from scratch when an edit would encode more than this
            fraction of the prompt.
        draft_tokens: with the KV cache, draft this many tokens per step from the prompt
            (prompt lookup, verified by the model: same greedy output; code_tools.prompt_lookup).
            0 = one token per forward.
        early_stop: with the KV cache, stop decoding as soon as the truncated text is decided
            (the line ended, or the statement is complete at a line end): the text is the same
            as decoding to the budget and truncating. False decodes to the budget or a stop string.
        context_cache: retrieval per cursor neighbourhood. The query is then the complete lines
            before the cursor's line (not the part of the line being typed), and its ranked
            chunks are kept for this many neighbourhoods (LRU): keystrokes within a line reuse
            them while every chunk still exists (no BM25 or query embedding), and the prompt's
            context stays the same, so the KV cache edit is only the typed text. 0 = the query
            includes the partial line and every request retrieves.
        context_order: "document" shows the chosen chunks (definitions first) in repository
            order (path, line), so consecutive prompts differ only where the context changed
            and the KV cache edit stays small; "score" shows them by priority and score.
        sticky_context: with the KV cache, a retrieved chunk shown in the file's previous prompt
            keeps its place while its fresh score is within this fraction of a newcomer's (it
            competes with score + sticky_context * |score|). A near-tie no longer swaps a
            chunk in and out of the prompt as the user types, which PIE would re-encode (the
            swapped chunk) and which leaves the rows after it stale; a chunk the fresh query no
            longer retrieves among its candidates is dropped. 0 = every prompt shows the fresh
            selection.
        warm_on_open: with the KV cache, a face may call `RepoCompleter.warm` when the editor
            opens a document: the prompt a completion at its end would build is prefilled in
            the background, so the document's first completion encodes only the tokens from
            its first difference on, not the whole prompt (the LSP does, on didOpen). False:
            the first completion prefills.
        context_edit_budget: with the KV cache, the most prompt tokens a request may re-encode
            because its cross-file context changed (a re-ranked or swapped chunk, a re-indexed
            file, a cursor whose retrieval differs from the warm-up's guess), counted as PIE
            counts an edit: inserted tokens plus segment_cost_tokens (32) per inserted segment,
            the whole prompt when that is a prefill (KVCacheStore.edit_cost). When the fresh
            context would cost more than the context the document's cache holds plus this
            budget, the request keeps the cached context (the typed text is always current)
            and, when the face asks (`complete(defer_context=True)`), the fresh prompt is
            remembered and encoded into the cache after the response (`refresh`), so the next
            request finds it encoded. The LSP does this on its generation lane, stopped by any
            request. 0 = off: every request shows the fresh context whatever it costs. 128 (~130-200
            ms of prefill for SmolLM2 on one core) took the serving_bench p95 from 690 to 597 ms
            (docs/benchmarks/serving_bench/typing_context_budget).
        skip_retrieval_when_full: no BM25 and no dense re-rank when the definitions of the
            symbols imported or called near the cursor already leave less than the 32 tokens
            `_budget` needs to place another item: retrieved chunks could not be shown, so the
            prompt is the same as with retrieval (lossless).
        dense_skip_neighbours: keep BM25's order (no query embedding) when at least this many
            of BM25's top `rerank_top` hits lie in the open file's neighbourhood (its directory
            or the repository files it imports): lexical context from the code the file uses
            suffices. 0 = always re-rank densely. Lossy: the context can differ from the re-ranked
            one (measured in eval_suites/repo_completion/typing_latency).
    """

    use_context: bool = True
    query_lines: int = 20
    bm25_candidates: int = 50
    rerank_top: int = 5
    dense_rerank: bool = True
    max_definitions: int = 4
    max_abstracts: int = 2
    near_lines: int = 10
    context_tokens: int = 1024
    left_tokens: int = 1024
    right_tokens: int = 256
    max_new_tokens: int = 48
    truncate: str = "statement"
    fim: bool = True
    reuse_kv_cache: bool = False
    kv_cache_mb: float = 512.0
    kv_recompute_above: float = 0.5
    draft_tokens: int = 3
    early_stop: bool = True
    context_cache: int = 64
    context_order: str = "document"
    skip_retrieval_when_full: bool = True
    dense_skip_neighbours: int = 0
    sticky_context: float = 0.2
    warm_on_open: bool = True
    context_edit_budget: int = 128

    def __post_init__(self) -> None:
        if self.truncate not in ("statement", "line"):
            raise InvalidInputError(f"truncate must be 'statement' or 'line', not {self.truncate!r}")
        if min(self.context_tokens, self.left_tokens, self.right_tokens) < 0:
            raise InvalidInputError("token budgets must be >= 0")
        if self.context_order not in ("document", "score"):
            raise InvalidInputError(f"context_order must be 'document' or 'score', not {self.context_order!r}")
        if self.draft_tokens < 0 or self.context_cache < 0 or self.dense_skip_neighbours < 0 \
                or self.sticky_context < 0 or self.context_edit_budget < 0:
            raise InvalidInputError("draft_tokens, context_cache, dense_skip_neighbours, sticky_context and "
                                    "context_edit_budget must be >= 0 (0 = off)")


@dataclass
class ContextItem:
    """One piece of cross-file context in the prompt."""

    source: str  # "retrieved", "definition" or "abstract"
    path: str
    start_line: int
    end_line: int
    score: float
    text: str
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Completion:
    """A completion: truncated `text`, the raw generation, the prompt and per-stage timings."""

    text: str
    prompt_tokens: int
    context: list[ContextItem]
    timings: dict[str, float]
    raw_text: str = ""
    prompt: str = ""
    fim: bool = False
    kv_reuse: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # e.g. why the text after the cursor was not used

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text, "raw_text": self.raw_text, "prompt_tokens": self.prompt_tokens,
            "fim": self.fim, "note": self.note, "timings": self.timings, "kv_reuse": self.kv_reuse,
            "context": [item.to_dict() for item in self.context],
        }


# ---------------------------------------------------------------- truncation


def _balanced_python(snippet: str) -> bool:
    """True when Python's own tokenizer sees no open bracket or unterminated string."""
    try:
        for _ in pytokenize.generate_tokens(io.StringIO(snippet + "\n").readline):
            pass
    except (pytokenize.TokenError, IndentationError, SyntaxError):
        return False
    return True


def _balanced_generic(snippet: str) -> bool:
    """Bracket/quote balance for C-like languages (// and /* */ comments skipped)."""
    depth, quote, i = 0, None, 0
    while i < len(snippet):
        ch = snippet[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif snippet.startswith("//", i):
            newline = snippet.find("\n", i)
            i = len(snippet) if newline < 0 else newline
            continue
        elif snippet.startswith("/*", i):
            end = snippet.find("*/", i + 2)
            if end < 0:
                return False
            i = end + 2
            continue
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        i += 1
    return depth <= 0 and quote is None


def truncate_completion(generated: str, line_prefix: str, mode: str = "statement",
                        language: str = "python") -> str:
    """Cut a generation to the rest of the current line or of the current statement.

    `line_prefix` is the text between the last newline and the cursor. In statement mode the
    cut is the first line end where the statement (line_prefix + text) is balanced: Python's
    tokenizer for Python, a bracket/quote scanner elsewhere. Example:
    ``truncate_completion("foo(a,\\n    b)\\nx = 1", "y = ")`` -> ``"foo(a,\\n    b)"``.
    """
    if mode == "line" or "\n" not in generated:
        return generated.split("\n", 1)[0].rstrip()
    lines = generated.split("\n")
    balanced = _balanced_python if language == "python" else _balanced_generic
    for n in range(1, len(lines) + 1):
        snippet = "\n".join(lines[:n])
        if not snippet.strip():
            continue
        if balanced(line_prefix + snippet):
            return snippet.rstrip()
    return lines[0].rstrip()  # never balanced within the budget: keep the first line


def truncation_decided(generated: str, line_prefix: str, mode: str = "statement",
                       language: str = "python") -> bool:
    """True once more text cannot change `truncate_completion(generated, ...)`: a line has
    ended (line mode), or a complete line ends a balanced, non-blank statement (statement
    mode). Decoding can stop there with the same truncated text.

    Example: ``truncation_decided("x = 1\n", "")`` -> True; ``("foo(a,\n", "y = ")`` -> False.
    """
    if "\n" not in generated:
        return False
    if mode == "line":
        return True
    lines = generated.split("\n")
    balanced = _balanced_python if language == "python" else _balanced_generic
    for n in range(1, len(lines)):  # complete lines only: each is followed by a newline
        snippet = "\n".join(lines[:n])
        if snippet.strip() and balanced(line_prefix + snippet):
            return True
    return False


# ---------------------------------------------------------------- the completer


# Characters per budget token of the window `_fit` counts first (code runs ~3-4 characters a
# token; 8 leaves room for long tokens such as runs of indentation).
_FIT_WINDOW_CHARS = 8
# `_budget` places no further item once fewer context tokens than this are left.
_MIN_ITEM_TOKENS = 32


def _tail_lines(text: str, n: int) -> str:
    lines = [line for line in text.split("\n") if line.strip()]
    return "\n".join(lines[-n:])


def _overlaps(a: tuple[str, int, int], b: tuple[str, int, int]) -> bool:
    if a[0] != b[0]:
        return False
    inter = min(a[2], b[2]) - max(a[1], b[1]) + 1
    return inter > 0 and inter >= 0.5 * min(a[2] - a[1] + 1, b[2] - b[1] + 1)


class RepoCompleter:
    """Completes code at a cursor with context assembled from a RepoIndex.

    Args:
        repo: the indexed repository.
        generator: an runtime.generation.Generator, e.g. from rag.llm.load_generator (None:
            assemble context and prompt only).
        config: CompletionConfig.
    """

    def __init__(self, repo: RepoIndex, generator=None, config: CompletionConfig = CompletionConfig()):
        self.repo = repo
        self.generator = generator
        self.config = config
        self._kv = None  # code_tools.kv_cache.KVCacheStore, built on the first reuse
        # (path, query) -> ranked Hits of that cursor neighbourhood; chunk text -> its token
        # count, and "<budget>\0<text>" -> the text cut to that budget; the last left context
        self._retrieved: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._token_counts: OrderedDict[str, Any] = OrderedDict()
        self._left_memo: tuple[int, str, str] | None = None
        # path -> ids of the retrieved chunks its last prompt showed (CompletionConfig.sticky_context)
        self._shown: OrderedDict[str, frozenset[int]] = OrderedDict()
        # document -> the context items of the prompt its KV cache holds (context_edit_budget:
        # the items themselves, not chunk ids, since a re-index renumbers and rewrites chunks
        # while the cache still holds their old text); document -> (ids, items) of the fresh
        # prompt a budgeted request deferred, for `refresh`
        self._held: OrderedDict[str, list[ContextItem]] = OrderedDict()
        self._deferred: dict[str, tuple[list[int], list[ContextItem]]] = {}
        self._ids_memo: tuple[str, list[int]] | None = None  # the last prompt tokenised
        self._cache_lock = threading.Lock()

    def warm(self, path: str, prefix: str, suffix: str = "", document: str | None = None,
             stop_at_layer=None) -> dict[str, Any]:
        """Prefill `document`'s KV cache with the prompt `complete` would build after `prefix`,
        ahead of its first completion (e.g. the editor just opened the file). That completion
        keeps the rows up to its prompt's first difference and encodes the rest, exactly
        (KVCacheStore.complete, mode "prefix"): a cursor before the end drops the rows after it;
        a context chunk the cursor's retrieval changes is re-encoded with what follows it.
        Nothing is generated, and neither the chunks
        shown (sticky_context) nor the ranking (context_cache) are remembered: the completion's
        prompt is the one it would be without the warm-up; only its KV cache is reached by an
        edit instead of a prefill.

        Args:
            path, prefix, suffix, document: as for `complete` (prefix: the text before the
                cursor; the whole text when the cursor is unknown).
            stop_at_layer: polled before each layer of the prefill with the fraction done; True
                abandons it (code_tools.pie.PieCache.prefill), e.g. when a request comes.
        Returns:
            KVCacheStore.warm's report ("mode": "warm", "cached", "stopped" or "full") plus
            "context_s" and "total_s"; {"mode": "off", "reason": ...} without a local KV cache.
        """
        if not (self.config.reuse_kv_cache and getattr(self.generator, "model", None) is not None):
            return {"mode": "off", "reason": "no local KV cache (reuse_kv_cache off, or a server backend)"}
        started = time.perf_counter()
        path = self.repo.relative(path)
        items, timings = self.assemble_context(path, prefix, remember=False)
        prompt, _ = self.build_prompt(path, prefix, suffix or "", items)
        ids = self.generator.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        lock = getattr(self.generator, "_lock", None)  # torch modules are not re-entrant
        with lock if lock is not None else _no_lock():
            report = self._kv_store().warm(document or path, ids, stop_at_layer=stop_at_layer)
        if report["mode"] == "warm":
            self._hold(document or path, items)
        report["context_s"] = timings.get("context", 0.0)
        report["total_s"] = time.perf_counter() - started
        return report

    def _kv_store(self):
        """The documents' KV caches (code_tools.kv_cache.KVCacheStore), built on first use."""
        from code_tools.kv_cache import KVCacheConfig, KVCacheStore

        if self._kv is None:
            self._kv = KVCacheStore(self.generator.model, self.generator.tokenizer, KVCacheConfig(
                max_bytes=int(self.config.kv_cache_mb * 2**20),
                recompute_above=self.config.kv_recompute_above, draft_tokens=self.config.draft_tokens))
        return self._kv

    def forget(self, document: str) -> None:
        """Free the KV cache kept for `document` (the editor closed it)."""
        if self._kv is not None:
            self._kv.forget(document)
        with self._cache_lock:
            self._held.pop(document, None)
            self._deferred.pop(document, None)

    def refresh(self, document: str, stop_at_layer=None) -> dict[str, Any]:
        """Encode into `document`'s KV cache the fresh prompt its last request deferred
        (CompletionConfig.context_edit_budget), without decoding, so the next request shows the
        fresh context and encodes only its own edit. Run it after the response, off the request
        path (the LSP runs it on its generation lane).

        Args:
            stop_at_layer: polled before each decoder layer; True abandons the refresh, leaving
                the cache and the deferred prompt as they were (a later call can retry).
        Returns:
            KVCacheStore.refresh's report ("refreshed", "stopped", "gone", "replaced"), or
            {"mode": "none"} when nothing was deferred.
        """
        with self._cache_lock:
            deferred = self._deferred.pop(document, None)
        if deferred is None:
            return {"mode": "none", "document": document}
        ids, items = deferred
        lock = getattr(self.generator, "_lock", None)  # torch modules are not re-entrant
        with lock if lock is not None else _no_lock():
            report = self._kv_store().refresh(document, ids, stop_at_layer=stop_at_layer)
        if report["mode"] == "refreshed":
            self._hold(document, items)
        elif report["mode"] == "stopped":
            with self._cache_lock:  # unless a newer request deferred another prompt meanwhile
                self._deferred.setdefault(document, deferred)
        return report

    def deferred(self, document: str) -> bool:
        """True when `document` has a fresh prompt waiting for `refresh`."""
        with self._cache_lock:
            return document in self._deferred

    def _hold(self, document: str, items: list[ContextItem]) -> None:
        """Record `items` as the context of the prompt `document`'s KV cache now holds."""
        with self._cache_lock:
            self._held[document] = [replace(item) for item in items]
            self._held.move_to_end(document)
            while len(self._held) > max(64, self.config.context_cache):
                self._held.popitem(last=False)

    def _tokens(self, prompt: str) -> list[int]:
        """The generator's token ids of `prompt` (the last one remembered: the budget check
        and the generation tokenise the same prompt)."""
        memo = self._ids_memo
        if memo is not None and memo[0] == prompt:
            return memo[1]
        ids = self.generator.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        self._ids_memo = (prompt, ids)
        return ids

    # ---- token counting

    def count_tokens(self, text: str) -> int:
        if self.generator is not None:
            return int(self.generator.count_tokens(text))
        return max(1, len(text) // 4) if text else 0  # no tokenizer: ~4 chars per token

    def _fit_tail(self, text: str, budget: int) -> str:
        """The longest suffix of whole lines within `budget` tokens (the left context)."""
        return self._fit(text, budget, tail=True)

    def _fit(self, text: str, budget: int, tail: bool) -> str:
        if budget <= 0 or not text:
            return ""
        window = _FIT_WINDOW_CHARS * budget
        if len(text) > 2 * window:
            # A long file: count the tokens of a window of whole lines at the kept end first
            # (tokenising a 50 KB prefix on every keystroke cost more than retrieval), and use it
            # when it already holds more than the budget.
            part = text[-window:] if tail else text[:window]
            newline = part.find("\n") if tail else part.rfind("\n")
            if newline > 0:
                part = part[newline + 1:] if tail else part[:newline]
            if self.count_tokens(part) > budget:
                text = part
        tokens = self.count_tokens(text)
        while tokens > budget:
            # Cut proportionally at a line boundary, then re-check (usually one pass).
            keep = max(1, int(len(text) * budget / tokens * 0.95))
            if tail:
                cut = text[-keep:]
                newline = cut.find("\n")
                text = cut[newline + 1:] if 0 <= newline < len(cut) - 1 else cut
            else:
                cut = text[:keep]
                newline = cut.rfind("\n")
                text = cut[:newline] if newline > 0 else cut
            tokens = self.count_tokens(text)
        return text

    # ---- context assembly

    def assemble_context(self, path: str, prefix: str,
                         remember: bool = True) -> tuple[list[ContextItem], dict[str, float]]:
        """Cross-file context for a cursor in `path` after `prefix`, within the context budget.
        `remember` records the retrieved chunks shown (sticky_context) and the neighbourhood's
        ranking (context_cache); a warm-up's guessed cursor must not steer a real prompt (False)."""
        timings: dict[str, float] = {}
        if not self.config.use_context:
            return [], timings
        cfg = self.config
        started = time.perf_counter()
        # Definitions first: a retrieved chunk covering the same lines adds nothing.
        spans: list[tuple[str, int, int]] = []
        definitions, abstracts, targets = self._symbol_context(path, prefix, spans)
        timings["symbols"] = time.perf_counter() - started
        if cfg.skip_retrieval_when_full and self._room_after(definitions) < _MIN_ITEM_TOKENS:
            ranked = Hits.empty()  # nothing retrieved would fit: the prompt is the same without it
            timings["bm25"] = timings["rerank"] = 0.0
            timings["retrieval_skipped"] = 1.0
        else:
            ranked = self._retrieve(path, prefix, timings, targets, remember)
        retrieved: list[ContextItem] = []
        chunk_ids: dict[int, int] = {}  # id(item) -> its chunk
        for chunk_id, score in self._sticky_order(path, ranked):
            chunk = self.repo.chunk(chunk_id)
            span = (chunk.path, chunk.start_line, chunk.end_line)
            if chunk.kind == "abstract":
                if any(a.path == chunk.path for a in abstracts):
                    continue
            elif any(_overlaps(span, s) for s in spans):
                continue  # a block and a syntax chunk of the same lines: keep the better one
            spans.append(span)
            retrieved.append(ContextItem("retrieved", chunk.path, chunk.start_line, chunk.end_line,
                                         score, chunk.text))
            chunk_ids[id(retrieved[-1])] = chunk_id
            if len(retrieved) >= cfg.rerank_top:
                break

        t = time.perf_counter()
        items = self._budget(definitions + retrieved + abstracts, cfg.context_tokens)
        if self._sticky() and remember:
            with self._cache_lock:
                self._shown[path] = frozenset(chunk_ids[id(i)] for i in items if id(i) in chunk_ids)
                self._shown.move_to_end(path)
                while len(self._shown) > max(1, cfg.context_cache):
                    self._shown.popitem(last=False)
        if cfg.context_order == "document":
            # Chosen by priority, shown in repository order: a re-ranked or swapped chunk then
            # moves no other chunk, so the next prompt differs from this one only where the
            # context changed (PIE re-encodes 128 instead of 311 tokens per serving_bench step)
            items = [i for i in items if i.source == "definition"] + sorted(
                (i for i in items if i.source != "definition"), key=lambda i: (i.path, i.start_line))
        timings["budget"] = time.perf_counter() - t
        timings["context"] = time.perf_counter() - started
        return items, timings

    def _sticky(self) -> bool:
        return self.config.sticky_context > 0 and self.config.reuse_kv_cache

    def _sticky_order(self, path: str, ranked) -> list[tuple[int, float]]:
        """(chunk id, fresh score) of `ranked` in the order `assemble_context` considers them:
        the ranking, with the chunks `path`'s last prompt showed competing at score +
        sticky_context * |score| (CompletionConfig.sticky_context). Example, sticky_context
        0.2 and chunk 7 shown last time: [(3, 10.0), (7, 9.0), (5, 8.5)] -> [(7, 9.0), (3, 10.0),
        (5, 8.5)], since 9.0 * 1.2 = 10.8; chunk 5 at 8.5 would still follow chunk 3."""
        pairs = [(int(i), float(s)) for i, s in zip(ranked.ids, ranked.scores)]
        if not self._sticky():
            return pairs
        with self._cache_lock:
            shown = self._shown.get(path, frozenset())
        if not shown:
            return pairs
        margin = self.config.sticky_context
        # sorted() is stable: equal scores keep the ranking's order
        return sorted(pairs, key=lambda p: p[1] + margin * abs(p[1]) if p[0] in shown else p[1], reverse=True)

    def _room_after(self, definitions: list[ContextItem]) -> int:
        """Context tokens `_budget` has left after placing `definitions` (on copies: the same
        greedy pass, so fewer than _MIN_ITEM_TOKENS means it places nothing after them)."""
        kept = self._budget([replace(d) for d in definitions], self.config.context_tokens)
        return self.config.context_tokens - sum(item.tokens for item in kept)

    def _neighbours(self, path: str, targets: list[str], hits) -> int:
        """How many of BM25's top `rerank_top` hits lie in `path`'s directory or in a file it imports."""
        directory = path.rsplit("/", 1)[0] if "/" in path else ""
        near = set(targets)
        count = 0
        for chunk_id in hits.ids[: self.config.rerank_top]:
            other = self.repo.path_of(int(chunk_id))
            if other in near or (other.rsplit("/", 1)[0] if "/" in other else "") == directory:
                count += 1
        return count

    def _retrieve(self, path: str, prefix: str, timings: dict[str, float], targets: list[str] = (),
                  remember: bool = True):
        """BM25 top candidates re-ranked densely (or kept in BM25's order when enough of them are
        the open file's neighbours), for the cursor's neighbourhood (cached)."""
        cfg = self.config
        query = _tail_lines(prefix, cfg.query_lines)
        if cfg.context_cache:
            settled = _tail_lines(prefix[: prefix.rfind("\n") + 1], cfg.query_lines)
            query = settled or query  # the first line of a file has nothing settled yet
            with self._cache_lock:
                cached = self._retrieved.get((path, query))
                if cached is not None and all(self.repo.chunks[int(i)] is not None for i in cached.ids):
                    self._retrieved.move_to_end((path, query))
                    timings["bm25"] = timings["rerank"] = 0.0
                    timings["context_cached"] = 1.0
                    return cached
        t = time.perf_counter()
        hits = self.repo.search_bm25(query, cfg.bm25_candidates, exclude_paths=(path,))
        timings["bm25"] = time.perf_counter() - t
        t = time.perf_counter()
        if (cfg.dense_rerank and len(hits) and cfg.dense_skip_neighbours
                and self._neighbours(path, list(targets), hits) >= cfg.dense_skip_neighbours):
            ranked = hits  # lexical context from the file's neighbourhood suffices
            timings["dense_skipped"] = 1.0
        elif cfg.dense_rerank and len(hits):
            ranked = self.repo.rerank(query, hits.ids, len(hits))
        else:
            ranked = hits
        timings["rerank"] = time.perf_counter() - t
        if cfg.context_cache and remember:
            with self._cache_lock:
                self._retrieved[(path, query)] = ranked
                while len(self._retrieved) > cfg.context_cache:
                    self._retrieved.popitem(last=False)
        return ranked

    def _count_chunk_tokens(self, text: str) -> int:
        """count_tokens of a context item, remembered (the same chunks recur request after request)."""
        with self._cache_lock:
            known = self._token_counts.get(text)
        if known is None:
            known = self.count_tokens(text)
            with self._cache_lock:
                self._token_counts[text] = known
                while len(self._token_counts) > 4096:
                    self._token_counts.popitem(last=False)
        return known

    def _fit_left(self, prefix: str, budget: int) -> str:
        """The left context: the complete lines before the cursor's line cut to the budget less
        the partial line's tokens, then the partial line. The cut of the complete lines is
        remembered, so keystrokes on one line tokenise only that line."""
        cut = prefix.rfind("\n") + 1
        settled, partial = prefix[:cut], prefix[cut:]
        rest = budget - self.count_tokens(partial)
        if not settled or rest <= 0:
            return self._fit_tail(prefix, budget)
        memo = self._left_memo
        if memo is not None and memo[0] == rest and memo[1] == settled:
            return memo[2] + partial
        fitted = self._fit_tail(settled, rest)
        self._left_memo = (rest, settled, fitted)
        return fitted + partial

    def _fit_head_cached(self, text: str, budget: int) -> str:
        """`_fit(text, budget, tail=False)`, remembered: the same chunks are cut to the same
        remaining budgets request after request while the context is reused."""
        key = f"{budget}\0{text}"
        with self._cache_lock:
            known = self._token_counts.get(key)
        if known is None:
            known = self._fit(text, budget, tail=False)
            with self._cache_lock:
                self._token_counts[key] = known
        return known

    def _symbol_context(self, path: str, prefix: str, spans: list) -> tuple[list, list, list[str]]:
        """Definitions of symbols imported or called near the cursor + imported files' abstracts
        + the repository files the prefix imports."""
        cfg = self.config
        parsed = outline(path, prefix)
        if parsed is None:
            return [], [], []
        cursor_line = prefix.count("\n") + 1
        near = cursor_line - cfg.near_lines
        names: list[str] = [name for name, line in reversed(parsed.calls) if line >= near]
        imported = {n for imp in parsed.imports for n in imp.names}
        recent = prefix.split("\n")[-cfg.near_lines:]
        names += [n for n in imported if any(n in line for line in recent)]
        targets = self.repo.resolve_imports(path, parsed.imports)
        defined_here = {s.name for s in parsed.symbols}

        definitions: list[ContextItem] = []
        seen: set[int] = set()
        for name in dict.fromkeys(names):
            if name in defined_here and name not in imported:
                continue
            options = [d for d in self.repo.definition(name) if d.path != path and d.chunk_id is not None]
            # Prefer a definition in a file this file imports, then the shortest path.
            options.sort(key=lambda d: (d.path not in targets, len(d.path), d.path))
            for d in options[:1]:
                if d.chunk_id in seen:
                    continue
                seen.add(d.chunk_id)
                chunk = self.repo.chunk(d.chunk_id)
                span = (chunk.path, chunk.start_line, chunk.end_line)
                if any(_overlaps(span, s) for s in spans):
                    continue
                spans.append(span)
                definitions.append(ContextItem("definition", chunk.path, chunk.start_line,
                                               chunk.end_line, 1.0, chunk.text))
            if len(definitions) >= cfg.max_definitions:
                break

        abstracts: list[ContextItem] = []
        for target in targets:
            if target == path or len(abstracts) >= cfg.max_abstracts:
                continue
            chunk = self.repo.abstract(target)
            if chunk is not None:
                abstracts.append(ContextItem("abstract", chunk.path, chunk.start_line,
                                             chunk.end_line, 0.0, chunk.text))
        return definitions, abstracts, targets

    def _budget(self, items: list[ContextItem], budget: int) -> list[ContextItem]:
        """Greedy fill in priority order; an item that does not fit is cut at a line end."""
        kept: list[ContextItem] = []
        left = budget
        for item in items:
            if left < _MIN_ITEM_TOKENS:
                break
            tokens = self._count_chunk_tokens(item.text) + 1
            if tokens > left:
                item.text = self._fit_head_cached(item.text, left - 1)
                tokens = self._count_chunk_tokens(item.text) + 1
                if not item.text.strip() or tokens > left:
                    continue
            item.tokens = tokens
            kept.append(item)
            left -= tokens
        return kept

    # ---- prompt and generation

    def build_prompt(self, path: str, prefix: str, suffix: str,
                     items: list[ContextItem]) -> tuple[str, bool]:
        """Cross-file context + path + left context (+ right context in FIM form)."""
        spec = language_for_path(path)
        comment = spec.comment if spec else "#"
        context = "\n\n".join(item.text for item in items)
        left = self._fit_left(prefix, self.config.left_tokens)
        head = (context + "\n\n" if context else "") + f"{comment} {path}\n"
        if self._wants_fim(suffix):
            right = self._fit(suffix, self.config.right_tokens, tail=False)
            fim = self.generator.fim_prompt(head + left, right)
            if fim is not None:
                return fim, True
        return head + left, False

    def _wants_fim(self, suffix: str) -> bool:
        return self.config.fim and bool(suffix.strip()) and self.generator is not None

    def _server_fim(self, prompt: str, suffix: str) -> tuple[str, str] | None:
        """(prefix, suffix) for a backend whose server builds the FIM prompt itself (it has
        `complete_fim` and no local FIM format); None otherwise."""
        if not self._wants_fim(suffix) or not hasattr(self.generator, "complete_fim"):
            return None
        return prompt, self._fit(suffix, self.config.right_tokens, tail=False)

    def _split(self, path: str, line: int | None, col: int | None) -> tuple[str, str]:
        full = self.repo.root / path
        try:
            text = full.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise NotFoundError(f"cannot read {full}: {error}") from error
        lines = text.split("\n")
        if line is None:
            return text, ""
        if not 1 <= line <= len(lines):
            raise InvalidInputError(f"--line {line} is outside {path} (1..{len(lines)})")
        col = 1 if col is None else col
        if not 1 <= col <= len(lines[line - 1]) + 1:
            raise InvalidInputError(
                f"--col {col} is outside line {line} of {path} (1..{len(lines[line - 1]) + 1})"
            )
        offset = sum(len(x) + 1 for x in lines[: line - 1]) + col - 1
        return text[:offset], text[offset:]

    def complete(self, path: str, line: int | None = None, col: int | None = None,
                 prefix: str | None = None, suffix: str | None = None,
                 document: str | None = None, defer_context: bool = False) -> Completion:
        """Complete at (line, col) (1-based) of `path`, or after an explicit prefix/suffix.

        Args:
            path: file path (relative to the repository root, or absolute inside it).
            line, col: cursor position; used when `prefix` is None.
            prefix, suffix: the text before/after the cursor (e.g. an unsaved editor buffer).
            document: whose KV cache to reuse (e.g. the editor's URI; default: the path).
            defer_context: the caller will run `refresh(document)` after the response, so a
                fresh context over CompletionConfig.context_edit_budget may be deferred to it
                (the prompt keeps the context the cache holds; kv_reuse["context_held"]).
                False: the prompt always shows the fresh context.
        Returns:
            Completion with the truncated text, prompt size, context and timings.
        """
        started, cpu_started = time.perf_counter(), time.thread_time()
        path = self.repo.relative(path)
        if prefix is None:
            prefix, file_suffix = self._split(path, line, col)
            suffix = file_suffix if suffix is None else suffix
        suffix = suffix or ""
        items, timings = self.assemble_context(path, prefix)
        t = time.perf_counter()
        prompt, fim = self.build_prompt(path, prefix, suffix, items)
        timings["prompt"] = time.perf_counter() - t
        document = document or path
        budget: dict[str, Any] = {}
        if defer_context and self._budgeted():
            t = time.perf_counter()
            items, prompt, fim, budget = self._within_budget(path, prefix, suffix, document, items, prompt, fim)
            timings["context_budget"] = time.perf_counter() - t
        result = Completion(text="", prompt_tokens=self.count_tokens(prompt), context=items,
                            timings=timings, prompt=prompt, fim=fim)
        if self.generator is not None:
            t = time.perf_counter()
            line_prefix = prefix.rsplit("\n", 1)[-1]
            spec = language_for_path(path)
            raw = self._generate(prompt, result, None if fim else self._server_fim(prompt, suffix),
                                 document, line_prefix, spec.name if spec else "python")
            if result.kv_reuse.get("used"):
                self._hold(document, items)  # the cache now holds this prompt's context
                result.kv_reuse.update(budget)
            if self._wants_fim(suffix) and not result.fim and not result.note:
                result.note = (f"model {self.generator.name} has no fill-in-the-middle format: the text "
                               "after the cursor was not used")
            timings["generate"] = time.perf_counter() - t
            if result.kv_reuse.get("used"):  # PIE's edit vs the decode (prefill inside the first)
                timings["prefill"] = result.kv_reuse.get("update_s", 0.0)
                timings["decode"] = result.kv_reuse.get("decode_s", 0.0)
            result.raw_text = raw
            result.text = truncate_completion(raw, line_prefix, self.config.truncate,
                                              spec.name if spec else "python")
        timings["total"] = time.perf_counter() - started
        # this thread's CPU seconds: the latency on an idle core, whatever else the machine runs
        # (torch computes on the calling thread with one intra-op thread)
        timings["cpu"] = time.thread_time() - cpu_started
        return result

    def _budgeted(self) -> bool:
        return (self.config.context_edit_budget > 0 and self.config.reuse_kv_cache
                and getattr(self.generator, "model", None) is not None)

    def _within_budget(self, path: str, prefix: str, suffix: str, document: str, items: list[ContextItem],
                       prompt: str, fim: bool) -> tuple[list[ContextItem], str, bool, dict[str, Any]]:
        """(items, prompt, fim, report) of the prompt to answer with under context_edit_budget:
        the fresh one, unless its context would cost the document's KV cache more than the
        context the cache holds plus the budget; then the held context with the typed text, and
        the fresh prompt is deferred to `refresh`. With no cache (a prefill whatever the
        context) or no held context, the fresh one.

        Example, budget 128: the cache holds chunks [A, B]; the fresh retrieval shows [A, C]
        (C: 300 tokens), and the typed line costs 40: fresh 340 > 40 + 128, so the prompt shows
        [A, B] and the typed line (40 tokens encoded), and [A, C] is encoded after the response."""
        with self._cache_lock:
            held = self._held.get(document)
            self._deferred.pop(document, None)  # this request's fresh prompt supersedes it
        store = self._kv_store()
        report: dict[str, Any] = {"context_held": False}
        if held is None or [i.text for i in held] == [i.text for i in items]:
            return items, prompt, fim, report
        fresh_ids = self._tokens(prompt)
        fresh_cost = store.edit_cost(document, fresh_ids)
        report["context_fresh_cost"] = fresh_cost
        if fresh_cost is None or fresh_cost <= self.config.context_edit_budget:
            return items, prompt, fim, report
        kept = [replace(item) for item in held]
        held_prompt, held_fim = self.build_prompt(path, prefix, suffix, kept)
        held_cost = store.edit_cost(document, self._tokens(held_prompt))
        report["context_held_cost"] = held_cost
        if held_cost is None or fresh_cost - held_cost <= self.config.context_edit_budget:
            return items, prompt, fim, report
        with self._cache_lock:
            self._deferred[document] = (fresh_ids, [replace(item) for item in items])
        report["context_held"] = True
        return kept, held_prompt, held_fim, report

    def _stop(self) -> tuple[str, ...]:
        return ("\n",) if self.config.truncate == "line" else ("\n\n\n", "\ndef ", "\nclass ")

    def _generate(self, prompt: str, result: Completion, server_fim: tuple[str, str] | None,
                  document: str, line_prefix: str = "", language: str = "python") -> str:
        config = GenerationConfig(max_new_tokens=self.config.max_new_tokens, temperature=0.0,
                                  stop=self._stop())
        if self.config.reuse_kv_cache:
            if getattr(self.generator, "model", None) is not None:
                # A local model has no server-side FIM: `prompt` is the prefix prompt complete_fim
                # would decode, so the cached path gives the same text.
                text = self._generate_pie(prompt, result, document, line_prefix, language)
                if text is not None:
                    return text
            else:
                result.kv_reuse = {"used": False, "reused": False, "mode": "off", "reason": (
                    f"the {type(self.generator).__name__} backend ({self.generator.name}) has no local KV "
                    "cache: the server encodes every prompt")}
        if server_fim is not None:
            generation = self.generator.complete_fim(*server_fim, config)
            # The backend's own reason when it could not use the suffix (e.g. /infill 501).
            result.fim, result.note = generation.fim, getattr(generation, "note", "")
            return generation.text
        return self.generator.complete(prompt, config).text

    def _generate_pie(self, prompt: str, result: Completion, document: str, line_prefix: str = "",
                      language: str = "python") -> str | None:
        """Greedy decoding from `document`'s KV cache, corrected by PIE for the edit since its
        last prompt (a prefill the first time, or when the edit is large), with prompt-lookup
        drafts, stopping once the truncated text is decided, and stopping early when the face
        cancels the request (runtime.cancel: the editor typed on)."""
        from runtime.cancel import cancel_requested

        tokenizer = self.generator.tokenizer
        store = self._kv_store()
        ids = self._tokens(prompt)
        eos = getattr(self.generator, "eos_ids", None) or {tokenizer.eos_token_id}
        stops = self._stop()
        mode, early = self.config.truncate, self.config.early_stop

        def stopped(new_ids: list[int]) -> bool:
            text = tokenizer.decode(new_ids, skip_special_tokens=True)
            for stop in stops:
                if stop in text:
                    return True
            return early and truncation_decided(text, line_prefix, mode, language)

        lock = getattr(self.generator, "_lock", None)  # torch modules are not re-entrant
        with lock if lock is not None else _no_lock():
            new_ids, report = store.complete(document, ids, self.config.max_new_tokens,
                                                stop_token_ids=tuple(i for i in eos if i is not None),
                                                stop_when=stopped, cancelled=cancel_requested)
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        for stop in stops:
            if stop in text:
                text = text[: text.index(stop)]
        result.kv_reuse = report
        return text


class _no_lock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

"""Per-document KV caches for completions, kept current by PIE instead of re-encoding.

A completion prompt changes little between two requests on the same document: the user typed
a few tokens, retrieval swapped a context chunk. `KVCacheStore` keeps, per document, a
`code_tools.pie.PieCache` over the last prompt; the next prompt is diffed against it and the
cache edited (rows dropped, suffix keys re-rotated by their shift, only inserted tokens encoded;
docs/methods.md, "PIE"), then greedy decoding continues from it. An edit that would encode more
than `recompute_above` of the new prompt is prefilled from scratch instead. The store is an
LRU bounded by the bytes of its tensors: least recently used documents go first.

Example: SmolLM2-135M keeps 30 layers x 3 KV heads x 64 dims x (K + V) x 4 bytes = 46 KB per
token, so a 1.5k-token prompt holds ~69 MB and the default 512 MiB keeps ~7 documents.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from runtime.errors import InvalidInputError


@dataclass(frozen=True)
class KVCacheConfig:
    """Args:
        max_bytes: memory budget of all cached documents together (K and V tensors).
        recompute_above: prefill from scratch when an edit would encode more than this
            fraction of the new prompt (code_tools.pie.PieConfig.recompute_above), counting
            `segment_cost_tokens` per inserted segment (one forward pass each).
        merge_gap: edits fewer than this many unchanged tokens apart become one (PieConfig).
        draft_tokens: prompt-lookup drafts per verify step (code_tools.prompt_lookup; 0 = one
            token per forward). 3 keeps a verify within the int8 kernel's few-row range
            (rag.cpu_rows.INT8_MAX_ROWS = 4 rows).
        draft_min_ngram: shortest n-gram matched for a draft (1-token matches draft mostly noise).
    """

    max_bytes: int = 512 * 2**20
    recompute_above: float = 0.5
    segment_cost_tokens: int = 32
    merge_gap: int = 16
    draft_tokens: int = 3
    draft_min_ngram: int = 2

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or not 0.0 < self.recompute_above <= 1.0:
            raise InvalidInputError("need max_bytes >= 0 and 0 < recompute_above <= 1")
        if self.draft_tokens < 0 or self.draft_min_ngram < 1:
            raise InvalidInputError("need draft_tokens >= 0 and draft_min_ngram >= 1")


def cache_bytes(cache) -> int:
    """Bytes held by a PieCache's per-layer key and value tensors."""
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cache.layers)


class KVCacheStore:
    """PieCaches of the last prompt per document, LRU-evicted to stay within `max_bytes`.

    Args:
        model, tokenizer: the local causal LM with RoPE (a TransformersGenerator's) and its tokenizer.
        config: KVCacheConfig.
    """

    def __init__(self, model, tokenizer, config: KVCacheConfig = KVCacheConfig()) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self._entries: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, document: str) -> bool:
        return document in self._entries

    @property
    def total_bytes(self) -> int:
        return sum(cache_bytes(c) for c in self._entries.values())

    def forget(self, document: str) -> None:
        """Drop a document's cache (e.g. the editor closed it)."""
        with self._lock:
            self._entries.pop(document, None)

    def complete(self, document: str, token_ids: Sequence[int], max_new_tokens: int,
                 stop_token_ids: Sequence[int] = (),
                 stop_when: Callable[[list[int]], bool] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> tuple[list[int], dict[str, Any]]:
        """Bring `document`'s cache to `token_ids` (PIE, or a prefill) and decode greedily.

        When the new prompt is the last prompt plus the first tokens of its answer (the user
        typed what was suggested) and that answer ended at a stop, the rest of the answer is
        what greedy decoding would produce again: it is returned without running the model
        (mode "extend").

        Args:
            cancelled: polled before every forward (runtime.cancel): True ends the decode early
                (report["finish"] == "cancelled").
        Returns:
            (generated ids, report): report["reused"] says whether the previous prompt's cache
            was reused; "mode" is "pie", "prefill" (with "reason"), "extend" or "prefix" (the
            first prompt after `warm`: its rows up to the first difference kept, the rest encoded,
            exactly: PieCache.sync_prefix; "warmed" is True); plus the
            edit's EditStats (tokens_encoded, sequence_length, rerotated, rows_reused, ...), the
            decode's (forwards, drafted, accepted, finish) and the store's size.
        """
        from code_tools.prompt_lookup import LookupConfig

        ids = [int(t) for t in token_ids]
        if not ids:
            raise InvalidInputError("a completion prompt needs at least one token")
        with self._lock:
            cache = self._entries.pop(document, None)
        extended = self._extend(cache, ids, max_new_tokens, stop_when) if cache is not None else None
        if extended is not None:
            evicted = self._keep(document, cache)
            cache.last_answer = (ids, extended[0], extended[1])
            return extended[0], {"used": True, "reused": True, "mode": "extend", "reason": None,
                                 "document": document, "tokens_encoded": 0, "sequence_length": len(ids),
                                 "compute_fraction": 0.0, "update_s": 0.0, "forwards": 0, "drafted": 0,
                                 "accepted": 0, "finish": extended[1], "decode_s": 0.0,
                                 "cache_documents": len(self._entries), "cache_mb": self.total_bytes / 2**20,
                                 "evicted": evicted}
        start = time.perf_counter()
        warmed = getattr(cache, "warmed", False)  # this cache was filled by `warm`, not a completion
        if cache is None:
            cache = self._new_cache()
            stats = cache.prefill(ids)
            reason = ("no cached prompt for this document (its first completion, or evicted to stay "
                      "within the memory budget)")
        elif warmed:
            # The warm prompt was a guess (the cursor at the end of the file): correct it exactly,
            # re-encoding from its first difference, rather than by PIE, whose stale rows after a
            # swapped context chunk would carry on into every later completion of the document
            stats = cache.sync_prefix(ids)
            reason = None
        else:
            stats = cache.sync(ids)
            reason = (f"the edit would cost more than {self.config.recompute_above:.0%} of encoding the "
                      "prompt (inserted tokens plus a forward pass per segment): encoded from scratch"
                      ) if stats.full_recompute else None
        update_s = time.perf_counter() - start
        lookup = LookupConfig(draft_tokens=self.config.draft_tokens, min_ngram=self.config.draft_min_ngram,
                              ngram=max(3, self.config.draft_min_ngram))
        generated = cache.generate(max_new_tokens, stop_token_ids=stop_token_ids, stop_when=stop_when,
                                   lookup=lookup, cancelled=cancelled)
        decode = cache.last_decode
        cache.last_answer = (ids, generated, decode.finish)
        cache.warmed = False
        evicted = self._keep(document, cache)
        edit = dict(stats.__dict__)
        edit["rows_reused"] = edit.pop("reused")  # EditStats counts rows; "reused" below is the verdict
        mode = "prefill" if reason else "prefix" if warmed else "pie"
        report = {**edit, "used": True, "reused": reason is None, "mode": mode,
                  "reason": reason, "document": document, "warmed": warmed,
                  "compute_fraction": stats.compute_fraction, "update_s": update_s, **decode.to_dict(),
                  "cache_documents": len(self._entries), "cache_mb": self.total_bytes / 2**20,
                  "evicted": evicted}
        return generated, report

    def warm(self, document: str, token_ids: Sequence[int],
             stop_at_layer: Callable[[float], bool] | None = None) -> dict[str, Any]:
        """Prefill `document`'s cache with `token_ids` ahead of its first completion (the editor
        opened it), so that completion re-encodes only the tokens from the first difference on
        (`complete`'s mode "prefix"). A document that has a cache keeps it.

        Args:
            stop_at_layer: polled before each layer with the fraction done (PieCache.prefill);
                True abandons the prefill and stores nothing.
        Returns:
            report: "mode" is "warm" (prefilled: tokens_encoded, update_s), "cached" (the
            document had a cache), "full" (it would not fit the memory budget without evicting
            another document's cache: not warmed) or "stopped" (abandoned after update_s seconds).
        """
        from code_tools.pie import PrefillStopped

        ids = [int(t) for t in token_ids]
        if not ids:
            raise InvalidInputError("a completion prompt needs at least one token")
        base = {"document": document, "sequence_length": len(ids), "tokens_encoded": 0}
        if document in self:
            return {**base, "mode": "cached", "update_s": 0.0}
        if self.total_bytes + len(ids) * self._bytes_per_token() > self.config.max_bytes:
            # a guess must not push out a cache a completion is using (an editor restoring 30 tabs)
            return {**base, "mode": "full", "update_s": 0.0}
        cache = self._new_cache()
        start = time.perf_counter()
        try:
            stats = cache.prefill(ids, stop_at_layer=stop_at_layer)
        except PrefillStopped:
            return {**base, "mode": "stopped", "update_s": time.perf_counter() - start}
        cache.warmed = True
        with self._lock:
            if document in self._entries:  # a completion stored one meanwhile: it is newer
                return {**base, "mode": "cached", "update_s": time.perf_counter() - start}
        evicted = self._keep(document, cache)
        return {**base, "mode": "warm", "tokens_encoded": stats.tokens_encoded,
                "update_s": time.perf_counter() - start, "cache_documents": len(self._entries),
                "evicted": evicted}

    def edit_cost(self, document: str, token_ids: Sequence[int]) -> int | None:
        """What bringing `document`'s cache to `token_ids` would cost `complete` before it
        decodes, in prefill tokens, with nothing encoded: PIE's inserted tokens plus a forward's
        worth per inserted segment, or the whole prompt when that is a prefill
        (PieCache.sync_cost); the tokens after the first difference for a cache `warm` filled
        (PieCache.prefix_cost). None when the document has no cache: any prompt is a prefill."""
        with self._lock:
            cache = self._entries.get(document)
        if cache is None:
            return None
        return cache.prefix_cost(token_ids) if getattr(cache, "warmed", False) else cache.sync_cost(token_ids)

    def refresh(self, document: str, token_ids: Sequence[int],
                stop_at_layer: Callable[[float], bool] | None = None) -> dict[str, Any]:
        """Bring `document`'s cache to `token_ids` without decoding, as `complete` would before
        decoding (PIE, or a prefill past recompute_above), in the background: a later prompt
        close to `token_ids` then costs `complete` only its own edit. The edit runs on a copy
        that replaces the cache only when it is done, so an abandoned refresh leaves the cache
        as it was.

        Args:
            stop_at_layer: polled before each decoder layer of every forward of the edit; True
                abandons it.
        Returns:
            report: "mode" is "refreshed" (with the edit's EditStats: tokens_encoded,
            sequence_length, ... and update_s), "stopped" (abandoned after update_s seconds),
            "gone" (the document has no cache) or "replaced" (a completion stored a newer one
            meanwhile: nothing changed).
        """
        from code_tools.pie import PrefillStopped, _layer_checks

        ids = [int(t) for t in token_ids]
        if not ids:
            raise InvalidInputError("a completion prompt needs at least one token")
        base = {"document": document, "sequence_length": len(ids), "tokens_encoded": 0}
        with self._lock:
            cache = self._entries.get(document)
        if cache is None:
            return {**base, "mode": "gone", "update_s": 0.0}
        work = cache.copy()
        start = time.perf_counter()
        try:
            with _layer_checks(self.model, stop_at_layer):
                stats = work.sync_prefix(ids) if getattr(cache, "warmed", False) else work.sync(ids)
        except PrefillStopped:
            return {**base, "mode": "stopped", "update_s": time.perf_counter() - start}
        work.last_answer = None  # that answer was decoded after another prompt
        work.warmed = False
        with self._lock:
            if self._entries.get(document) is not cache:
                return {**base, "mode": "replaced", "update_s": time.perf_counter() - start}
        self._keep(document, work)
        edit = dict(stats.__dict__)
        edit["rows_reused"] = edit.pop("reused")
        return {**edit, "document": document, "mode": "refreshed", "update_s": time.perf_counter() - start}

    def _bytes_per_token(self) -> int:
        """K and V bytes one cached token takes: measured on a cached document, else from the
        model's shape in float32 (SmolLM2-135M: 30 layers x 3 heads x 64 x 2 x 4 = 46 KB)."""
        with self._lock:
            cache = next((c for c in self._entries.values() if len(c)), None)
        if cache is not None:
            return cache_bytes(cache) // len(cache)
        cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") \
            else self.model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        return 2 * cfg.num_hidden_layers * kv_heads * head_dim * 4

    def _new_cache(self):
        from code_tools.pie import PieCache, PieConfig

        return PieCache(self.model, self.tokenizer, PieConfig(
            recompute_above=self.config.recompute_above, segment_cost_tokens=self.config.segment_cost_tokens,
            merge_gap=self.config.merge_gap))

    @staticmethod
    def _extend(cache, ids: list[int], max_new_tokens: int,
                stop_when: Callable[[list[int]], bool] | None) -> tuple[list[int], str] | None:
        """(the rest of the last answer, how it ends) when `ids` is the last prompt plus a
        proper prefix of its answer and greedy decoding would end the rest the same way; else
        None. The rest ends at the first point `stop_when` accepts, or where the last answer
        met a stop id; an answer cut by the token budget or cancelled is not reused."""
        last = getattr(cache, "last_answer", None)
        if last is None:
            return None
        prompt, answer, finish = last
        typed = len(ids) - len(prompt)
        if finish not in ("stop", "eos") or not 0 < typed < len(answer) or ids[:len(prompt)] != prompt \
                or ids[len(prompt):] != answer[:typed]:
            return None
        rest = answer[typed:]
        for i in range(1, min(len(rest), max_new_tokens) + 1):
            if stop_when is not None and stop_when(rest[:i]):
                return rest[:i], "stop"
        return (rest, "eos") if finish == "eos" and len(rest) <= max_new_tokens else None

    def _keep(self, document: str, cache) -> int:
        """Store `cache` as the most recent entry, then evict LRU entries over the budget."""
        with self._lock:
            self._entries[document] = cache
            evicted = 0
            total = self.total_bytes
            while total > self.config.max_bytes and self._entries:
                _, old = self._entries.popitem(last=False)  # the oldest; last of all, this one
                total -= cache_bytes(old)
                evicted += 1
            self.evictions += evicted
            return evicted

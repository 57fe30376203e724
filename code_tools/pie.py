"""PIE: positional integrity encoding for editing the KV cache of a RoPE transformer.

Reference: "Let the Code LLM Edit Itself When You Edit the Code" (He et al., ICLR 2025), sec. 3.
With rotary embeddings a cached key at position i is ``R(i) W_k x``. When an edit before it
shifts the token by ``delta = inserted - deleted``, the key of the edited sequence is
``R(i + delta) W_k x = R(delta) R(i) W_k x``: one rotation of the cached key, per layer and
head, fixes its position. Values carry no position and stay as they are. Deleted rows are
dropped, and only the inserted tokens are encoded, against the corrected cache. The suffix
rows are *not* recomputed: their content still reflects the old context (the PIE
approximation); at the first layer, whose keys depend only on token and position, the result
equals full recomputation up to float error.

Worked example: cached ids ``[a, b, c, d]`` and ``Edit(1, 2, [x, y])`` (replace ``b`` by
``x y``): row ``a`` is kept, row ``b`` dropped, ``x, y`` are encoded at positions 1, 2
attending to ``a``, rows ``c, d`` are rotated by ``delta = +1`` to positions 3, 4.

The cache lives as one (keys, values) tensor pair per layer, shaped
``[batch=1, kv_heads, seq, head_dim]``, and is wrapped in a transformers ``DynamicCache``
only for a forward pass (whose ``update`` concatenates into new tensors, so ours stay intact).
"""

from __future__ import annotations

import copy
import difflib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from runtime.errors import InvalidInputError

try:  # torch/transformers are core dependencies, but keep `import code_tools.pie` cheap to fail
    import torch
except ImportError:  # pragma: no cover - torch is a hard dependency of the project
    torch = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Edit:
    """Replace cached tokens ``[start, end)`` by ``new_token_ids`` (positions in the current cache).

    Insert: ``start == end``; delete: empty ``new_token_ids``; replace: both.
    """

    start: int
    end: int
    new_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "new_token_ids", tuple(int(t) for t in self.new_token_ids))


@dataclass(frozen=True)
class PieConfig:
    """Settings of a PieCache.

    Args:
        correct_positions: re-rotate suffix keys by the position delta (PIE). False gives the
            "naive reuse" baseline of the paper: rows kept with their stale positions.
        recompute_above: when an edit would encode more than this fraction of the new
            sequence, prefill from scratch instead (same cost, fewer forward passes).
        segment_cost_tokens: what one inserted segment costs beyond its tokens, in tokens of a
            prefill: each segment is its own forward pass (measured with SmolLM2 on 2 CPU cores:
            ~0.15 s fixed, ~30 tokens' worth). Counted against recompute_above; 0 = ignored.
        merge_gap: `sync` joins two edits separated by fewer unchanged tokens than this into one
            (the gap is re-encoded, exactly): a diff of retrieved context against the old one
            otherwise splits one replacement into many segments at shared newlines. 0 = off.
    """

    correct_positions: bool = True
    recompute_above: float = 0.5
    segment_cost_tokens: int = 0
    merge_gap: int = 0


@dataclass
class EditStats:
    """What one `apply_edits`/`sync` did and what it cost (not frozen: RepoCompleter reads __dict__).

    ``tokens_encoded`` counts tokens run through the model; a full recomputation would encode
    ``sequence_length`` tokens, so ``compute_fraction = tokens_encoded / sequence_length``.
    ``flops`` is an estimate: per encoded token 2 x non-embedding parameters plus the attention
    score/value products against the context it sees; plus ~3 per re-rotated key element.
    """

    edits: int = 0
    inserted: int = 0
    deleted: int = 0
    reused: int = 0
    rerotated: int = 0
    tokens_encoded: int = 0
    sequence_length: int = 0
    flops: float = 0.0
    full_recompute: bool = False
    elapsed_s: float = 0.0
    positions_corrected: bool = True

    @property
    def compute_fraction(self) -> float:
        return self.tokens_encoded / self.sequence_length if self.sequence_length else 0.0


@dataclass
class _Costs:
    """Model sizes for the FLOPs estimate."""

    params: int
    layers: int
    kv_width: int  # heads * head_dim of queries (score and value products per context token)
    key_width: int  # kv_heads * head_dim: one rotation costs ~3 flops per key element

    def flops(self, tokens: int, context_start: int) -> float:
        # token j (0-based within the chunk) attends to context_start + j + 1 keys
        attended = tokens * context_start + tokens * (tokens + 1) / 2
        return 2.0 * self.params * tokens + 4.0 * self.layers * self.kv_width * attended


def _find_rotary(model) -> Any:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is None:
        for module in model.modules():
            if type(module).__name__.endswith("RotaryEmbedding"):
                return module
        raise InvalidInputError(
            f"{type(model).__name__} has no rotary embedding; PIE needs a RoPE model (Llama family)")
    return rotary


def rotate_keys(keys, deltas, rotary) -> Any:
    """Move cached RoPE keys by ``deltas`` positions: ``k' = R(delta) k`` (rotate_half convention).

    Args:
        keys: ``[batch, heads, seq, head_dim]`` keys already rotated to their old positions.
        deltas: int tensor ``[seq]`` of position shifts (may be negative or zero).
        rotary: the model's own rotary-embedding module, so rope scaling (linear, llama3, ...)
            gives the same frequencies the model uses.
    Returns:
        The re-rotated keys, same shape and dtype.
    """
    if keys.shape[-2] == 0:
        return keys
    work = keys.float()
    cos, sin = rotary(work, deltas.to(keys.device).view(1, -1))
    if cos.shape[-1] != keys.shape[-1]:
        raise InvalidInputError("PIE needs rotary embeddings over the full head dimension (no partial rotary)")
    # the module folds attention_scaling into cos/sin; R(delta) itself must be a pure rotation
    scale = float(getattr(rotary, "attention_scaling", 1.0) or 1.0)
    cos, sin = cos[:, None] / scale, sin[:, None] / scale  # [1, 1, seq, head_dim]
    half = work.shape[-1] // 2
    rotated_half = torch.cat((-work[..., half:], work[..., :half]), dim=-1)
    return (work * cos + rotated_half * sin).to(keys.dtype)


def _ordered_edits(edits: Sequence[Edit], n: int) -> list[Edit]:
    """`edits` sorted by position without the no-ops; raises on one out of ``[0, n]`` or
    overlapping another."""
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    cursor = 0
    for e in ordered:
        if not (0 <= e.start <= e.end <= n) or e.start < cursor:
            raise InvalidInputError(
                f"edit [{e.start}, {e.end}) is out of range or overlaps another (cache has {n} tokens)")
        cursor = e.end
    return [e for e in ordered if e.end > e.start or e.new_token_ids]


@dataclass
class _Layout:
    """The edited sequence and where its rows come from: kept rows of the old cache, and
    inserted segments to encode.

    Example: ids ``[a, b, c, d]`` and ``Edit(1, 2, [x, y])`` give token_ids
    ``[a, x, y, c, d]``, kept_old ``[0, 2, 3]``, kept_new ``[0, 3, 4]``, segments
    ``[(1, (x, y))]``.
    """

    token_ids: list[int] = field(default_factory=list)
    kept_old: list[int] = field(default_factory=list)  # old row of every kept row, in new order
    kept_new: list[int] = field(default_factory=list)  # its new position
    segments: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)  # (new start, ids)

    @classmethod
    def of(cls, old_ids: list[int], ordered: list[Edit]) -> "_Layout":
        """The layout of `ordered` (sorted, non-overlapping edits) applied to `old_ids`."""
        layout = cls()
        cursor = 0
        for e in ordered:
            layout._keep(old_ids, cursor, e.start)
            if e.new_token_ids:
                layout.segments.append((len(layout.token_ids), e.new_token_ids))
                layout.token_ids.extend(e.new_token_ids)
            cursor = e.end
        layout._keep(old_ids, cursor, len(old_ids))
        return layout

    def _keep(self, old_ids: list[int], start: int, end: int) -> None:
        for i in range(start, end):
            self.kept_old.append(i)
            self.kept_new.append(len(self.token_ids))
            self.token_ids.append(old_ids[i])


class PrefillStopped(Exception):
    """`PieCache.prefill` was abandoned between two layers (its `stop_at_layer` said so)."""


@contextmanager
def _layer_checks(model, stop_at_layer: Callable[[float], bool] | None) -> Iterator[None]:
    """Within this block, every forward of `model` calls `stop_at_layer(done_fraction)` before
    each decoder layer and raises PrefillStopped when it says True. Hooks live only inside the
    block; callers hold the model's lock, so no other forward runs meanwhile."""
    if stop_at_layer is None:
        yield
        return
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = list(getattr(decoder, "layers", None) or [])
    if not layers:  # not a Llama-style decoder: one check before the forward
        if stop_at_layer(0.0):
            raise PrefillStopped()
        yield
        return

    def check(index: int):
        def hook(module, args):
            if stop_at_layer(index / len(layers)):
                raise PrefillStopped()
        return hook

    handles = [layer.register_forward_pre_hook(check(i)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class PieCache:
    """An editable KV cache over a transformers causal LM with rotary positions.

    Args:
        model: a transformers causal LM with RoPE (e.g. LlamaForCausalLM, SmolLM2).
        tokenizer: its tokenizer (kept for callers; ids are what the cache works on).
        config: PieConfig; ``PieConfig(correct_positions=False)`` is the naive-reuse baseline.
    """

    def __init__(self, model, tokenizer=None, config: PieConfig | None = None) -> None:
        if torch is None:  # pragma: no cover
            raise InvalidInputError("PIE needs torch: install codehop's core dependencies")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or PieConfig()
        self.rotary = _find_rotary(model)
        if getattr(self.rotary, "rope_type", "default") in ("dynamic", "longrope"):
            # their frequencies depend on the sequence length, so R(i + d) != R(d) R(i) across calls
            raise InvalidInputError("PIE needs static RoPE frequencies (default, linear, llama3, yarn); "
                                    f"this model uses {self.rotary.rope_type!r}")
        self.token_ids: list[int] = []
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.device = next(model.parameters()).device
        from transformers import DynamicCache

        if any(layer.is_sliding for layer in DynamicCache(config=model.config).layers):
            raise InvalidInputError("PIE supports full-attention RoPE models only (no sliding-window layers)")
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        # non-embedding parameters do the per-token work (logits are only taken for one token)
        embedding = model.get_input_embeddings().weight.numel()
        output = model.get_output_embeddings()
        untied = output is not None and output.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        params = sum(p.numel() for p in model.parameters()) - embedding - (output.weight.numel() if untied else 0)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        self._costs = _Costs(params=params, layers=cfg.num_hidden_layers, kv_width=heads * head_dim,
                             key_width=kv_heads * head_dim)
        self.last_generate_tokens = 0
        self.last_decode = None  # code_tools.prompt_lookup.DecodeStats of the last generate

    # ---- cache primitives -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_ids)

    def _encode(self, ids: Sequence[int], prefix_len: int) -> tuple[list, Any]:
        """Run ``ids`` at positions ``prefix_len..`` against cached rows ``[0, prefix_len)``.

        Returns (per-layer (k, v) rows of the new tokens, logits of the last new token).
        """
        from transformers import DynamicCache

        past = DynamicCache(ddp_cache_data=[(k[:, :, :prefix_len], v[:, :, :prefix_len])
                                            for k, v in self.layers]) if prefix_len else DynamicCache()
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        positions = torch.arange(prefix_len, prefix_len + len(ids), device=self.device).view(1, -1)
        with torch.no_grad():
            # `cache=` (transformers >= 5.24; was past_key_values) is grown in place by the model
            out = self.model(input_ids=input_ids, position_ids=positions, cache=past,
                             use_cache=True, logits_to_keep=1)
        rows = [(layer.keys[:, :, prefix_len:], layer.values[:, :, prefix_len:]) for layer in past.layers]
        return rows, out.logits[0, -1]

    def prefill(self, token_ids: Sequence[int],
                stop_at_layer: Callable[[float], bool] | None = None) -> EditStats:
        """Encode ``token_ids`` from scratch (the full-recomputation path).

        Args:
            stop_at_layer: polled before each decoder layer with the fraction of layers done
                (0.0 before the first); True abandons the forward (PrefillStopped), leaving the
                cache empty. One forward, not chunks: a 700-token prompt in chunks of 128 took
                ~1.7x as long (SmolLM2, int8, one thread), and int8's dynamic activation scales
                make chunked rows differ from a single pass.
        Returns:
            EditStats with ``tokens_encoded == len(token_ids)``.
        """
        ids = [int(t) for t in token_ids]
        if not ids:
            raise InvalidInputError("prefill needs at least one token id")
        start = time.perf_counter()
        self.layers = []
        self.token_ids = []
        with _layer_checks(self.model, stop_at_layer):
            rows, _ = self._encode(ids, 0)
        self.layers = [(k.contiguous(), v.contiguous()) for k, v in rows]
        self.token_ids = ids
        return EditStats(edits=0, inserted=len(ids), tokens_encoded=len(ids), sequence_length=len(ids),
                         flops=self._costs.flops(len(ids), 0), full_recompute=True,
                         elapsed_s=time.perf_counter() - start,
                         positions_corrected=self.config.correct_positions)

    def apply_edits(self, edits: Sequence[Edit]) -> EditStats:
        """Apply several non-overlapping edits at once (coordinates of the current cache).

        Deleted rows are dropped, every kept row is rotated once by its cumulative shift, and the
        inserted segments are encoded left to right, each against the corrected prefix before it
        (earlier insertions included). Suffix rows are reused, not recomputed.

        Returns:
            EditStats (tokens encoded, rows reused/re-rotated, FLOPs estimate, wall time).
        """
        if not self.token_ids:
            raise InvalidInputError("the cache is empty: call prefill(token_ids) before editing")
        start_time = time.perf_counter()
        ordered = _ordered_edits(edits, len(self.token_ids))
        layout = _Layout.of(self.token_ids, ordered)
        if not layout.token_ids:
            raise InvalidInputError("the edits delete every token; prefill a new sequence instead")
        inserted = sum(len(ids) for _, ids in layout.segments)
        deleted = len(self.token_ids) - len(layout.kept_old)
        stats = EditStats(edits=len(ordered), inserted=inserted, deleted=deleted,
                          reused=len(layout.kept_old), sequence_length=len(layout.token_ids),
                          positions_corrected=self.config.correct_positions)
        if self._recomputes(layout):
            full = self.prefill(layout.token_ids)
            full.edits, full.deleted = len(ordered), deleted
            return full
        self._move_kept_rows(layout, stats)
        self._encode_segments(layout.segments, stats)
        stats.elapsed_s = time.perf_counter() - start_time
        return stats

    def _segments_cost(self, layout: "_Layout") -> int:
        """What encoding `layout`'s inserted segments costs, in prefill tokens: the tokens
        plus `segment_cost_tokens` per segment (one forward pass each)."""
        inserted = sum(len(ids) for _, ids in layout.segments)
        return inserted + self.config.segment_cost_tokens * len(layout.segments)

    def _recomputes(self, layout: "_Layout") -> bool:
        """True when `apply_edits` prefills `layout` from scratch instead (recompute_above)."""
        return self._segments_cost(layout) > self.config.recompute_above * len(layout.token_ids)

    def _move_kept_rows(self, layout: "_Layout", stats: EditStats) -> None:
        """New per-layer tensors of the edited length holding the kept rows at their new
        positions (keys re-rotated by their shift when positions are corrected); the inserted
        segments' rows stay zero until `_encode_segments` fills them."""
        old_idx = torch.tensor(layout.kept_old, dtype=torch.long, device=self.device)
        dest = torch.tensor(layout.kept_new, dtype=torch.long, device=self.device)
        deltas = dest - old_idx
        stats.rerotated = int((deltas != 0).sum()) if self.config.correct_positions else 0
        stats.flops = 3.0 * stats.rerotated * self._costs.layers * self._costs.key_width
        new_len = len(layout.token_ids)
        new_layers = []
        for k, v in self.layers:
            k_kept, v_kept = k[:, :, old_idx], v[:, :, old_idx]
            if self.config.correct_positions and stats.rerotated:
                k_kept = rotate_keys(k_kept, deltas, self.rotary)
            k_new = k.new_zeros((k.shape[0], k.shape[1], new_len, k.shape[3]))
            v_new = v.new_zeros((v.shape[0], v.shape[1], new_len, v.shape[3]))
            k_new[:, :, dest] = k_kept
            v_new[:, :, dest] = v_kept
            new_layers.append((k_new, v_new))
        self.layers = new_layers
        self.token_ids = layout.token_ids

    def _encode_segments(self, segments: list[tuple[int, tuple[int, ...]]], stats: EditStats) -> None:
        """Encode each inserted segment into its rows, left to right: later segments see the
        earlier ones."""
        for seg_start, seg_ids in segments:
            rows, _ = self._encode(seg_ids, seg_start)
            for layer, (k_rows, v_rows) in enumerate(rows):
                k_new, v_new = self.layers[layer]
                k_new[:, :, seg_start:seg_start + len(seg_ids)] = k_rows
                v_new[:, :, seg_start:seg_start + len(seg_ids)] = v_rows
            stats.tokens_encoded += len(seg_ids)
            stats.flops += self._costs.flops(len(seg_ids), seg_start)

    def sync(self, new_token_ids: Sequence[int]) -> EditStats:
        """Bring the cache to ``new_token_ids``: diff against the cached ids and apply the edits.

        Args:
            new_token_ids: the full new sequence.
        Returns:
            EditStats of the edit (a prefill when the cache was empty).
        """
        new = [int(t) for t in new_token_ids]
        if not new:
            raise InvalidInputError("sync needs at least one token id")
        if not self.token_ids:
            return self.prefill(new)
        edits = self._diff(new)
        if not edits:
            return EditStats(reused=len(new), sequence_length=len(new),
                             positions_corrected=self.config.correct_positions)
        return self.apply_edits(edits)

    def _diff(self, new: list[int]) -> list[Edit]:
        """The edits that turn the cached ids into `new` (merge_gap joins near ones)."""
        matcher = difflib.SequenceMatcher(None, self.token_ids, new, autojunk=False)
        edits: list[Edit] = []
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            last = edits[-1] if edits else None
            if last is not None and i1 - last.end < self.config.merge_gap:
                # one replacement spanning both edits and the few unchanged tokens between them
                gap = tuple(self.token_ids[last.end:i1])
                edits[-1] = Edit(last.start, i2, last.new_token_ids + gap + tuple(new[j1:j2]))
            else:
                edits.append(Edit(i1, i2, tuple(new[j1:j2])))
        return edits

    def sync_cost(self, new_token_ids: Sequence[int]) -> int:
        """What `sync(new_token_ids)` would cost, in prefill tokens, without encoding anything:
        the inserted tokens plus `segment_cost_tokens` per inserted segment, or the whole new
        sequence when that passes `recompute_above` (sync then prefills) or the cache is empty.
        Example (segment_cost_tokens 32): cached ``[a, b, c, d]`` -> ``[a, x, y, c, d]`` costs
        2 + 32 = 34 when recompute_above allows it, else 5."""
        new = [int(t) for t in new_token_ids]
        if not self.token_ids:
            return len(new)
        edits = self._diff(new)
        if not edits:
            return 0
        layout = _Layout.of(self.token_ids, _ordered_edits(edits, len(self.token_ids)))
        return len(layout.token_ids) if self._recomputes(layout) else self._segments_cost(layout)

    def prefix_cost(self, new_token_ids: Sequence[int]) -> int:
        """Tokens `sync_prefix(new_token_ids)` would encode: those after the longest common prefix."""
        new = [int(t) for t in new_token_ids]
        shared = 0
        for old_id, new_id in zip(self.token_ids, new):
            if old_id != new_id:
                break
            shared += 1
        return len(new) - shared if shared else len(new)

    def copy(self) -> "PieCache":
        """A cache over the same rows that can be edited without touching this one: `sync`,
        `sync_prefix` and `prefill` build new tensors rather than write into the rows they
        keep, so only the lists are copied (a refresh abandoned midway leaves this cache as it was)."""
        twin = copy.copy(self)
        twin.layers = list(self.layers)
        twin.token_ids = list(self.token_ids)
        return twin

    def sync_prefix(self, new_token_ids: Sequence[int]) -> EditStats:
        """Bring the cache to ``new_token_ids`` exactly: keep the rows of the longest common
        prefix, drop the rest and encode the new tail against the kept rows (one forward). No
        row is re-rotated or left stale, so the result equals a prefill up to float error, at
        the cost of every token after the first change. Example: cached ``[a, b, c, d]``, new
        ``[a, b, x]``: rows a, b kept, x encoded at position 2.

        Returns:
            EditStats (a prefill when nothing is shared).
        """
        new = [int(t) for t in new_token_ids]
        if not new:
            raise InvalidInputError("sync_prefix needs at least one token id")
        shared = 0
        for old_id, new_id in zip(self.token_ids, new):
            if old_id != new_id:
                break
            shared += 1
        if shared == 0:
            return self.prefill(new)
        start = time.perf_counter()
        deleted = len(self.token_ids) - shared
        self.layers = [(k[:, :, :shared], v[:, :, :shared]) for k, v in self.layers]
        self.token_ids = new[:shared]
        stats = EditStats(edits=int(deleted > 0 or len(new) > shared), inserted=len(new) - shared,
                          deleted=deleted, reused=shared, sequence_length=len(new),
                          positions_corrected=self.config.correct_positions)
        if len(new) > shared:
            rows, _ = self._encode(new[shared:], shared)
            self.layers = [(torch.cat([k, rk], dim=2), torch.cat([v, rv], dim=2))
                           for (k, v), (rk, rv) in zip(self.layers, rows)]
            self.token_ids = new
            stats.tokens_encoded = len(new) - shared
            stats.flops = self._costs.flops(len(new) - shared, shared)
        stats.elapsed_s = time.perf_counter() - start
        return stats

    def next_token_logits(self):
        """Logits after the cached sequence, computed by re-encoding only its last token."""
        _, logits = self._encode(self.token_ids[-1:], len(self.token_ids) - 1)
        return logits

    def generate(self, max_new_tokens: int, stop_token_ids: Sequence[int] = (),
                 stop_when: Callable[[list[int]], bool] | None = None, lookup=None,
                 cancelled: Callable[[], bool] | None = None) -> list[int]:
        """Greedy continuation from the corrected cache, leaving the cache untouched.

        The last cached token is re-encoded (one token) to get the first logits; generated
        tokens live in a temporary code_tools.prompt_lookup.GrowingCache built over a copy of
        our rows, drafted from the prompt when `lookup` asks for it (lossless: the model
        verifies every drafted token). What the decode did is in `last_decode`.

        Args:
            max_new_tokens: upper bound on generated tokens.
            stop_token_ids: ids that end generation (not included in the result).
            stop_when: optional predicate on the ids generated so far (included); True stops.
            lookup: a code_tools.prompt_lookup.LookupConfig (None: one token per forward).
            cancelled: polled before every forward; True stops (runtime.cancel).
        Returns:
            Generated token ids.
        """
        from code_tools.prompt_lookup import GrowingCache, LookupConfig, greedy_decode

        if not self.token_ids:
            raise InvalidInputError("the cache is empty: call prefill(token_ids) before generate")
        n = len(self.token_ids)
        past = GrowingCache([(k[:, :, :n - 1], v[:, :, :n - 1]) for k, v in self.layers], spare=max_new_tokens + 16)
        out_ids, stats = greedy_decode(self.model, past, self.token_ids, max_new_tokens,
                                       stop_token_ids=stop_token_ids, stop_when=stop_when,
                                       lookup=lookup or LookupConfig(draft_tokens=0), cancelled=cancelled)
        self.last_decode = stats
        self.last_generate_tokens = stats.forwards + stats.drafted  # tokens run through the model
        return out_ids

"""Training pairs a collection yields itself, for tuning its embedder without labels.

`codehop tune` adapts the shipped embedder to a user's own collection the way GPL (Wang et al.
2022) and InPars do: pseudo-queries made from the collection, a contrastive loss, hard
negatives. Neither a query generator (GPL's T5 doc2query) nor a cross-encoder to label
negatives ships here, so the queries are the Inverse Cloze Task's (Lee et al. 2019): a
sentence-like line (a docstring's summary, a prose sentence, an example's caption) is lifted
out of its chunk and the chunk *without that line* is the passage it must find. The line is
removed so the model learns what a passage is about, not to match a string it contains.

Lines that recur across documents (licence footers, "View source on GitHub", navigation) say
nothing about a passage: a line found in more than `max_line_documents` documents is boilerplate
and never a query.

Hard negatives come from BM25: for each pseudo-query, a chunk of *another* document that BM25
ranks high (skipping the first `skip_top` other-document hits, the likeliest unlabelled
positives: near-duplicate pages of the same API).

    pairs = mine_pairs(texts, documents, headers, PairConfig(max_pairs=4000), bm25_search)
    pairs[0] -> TrainingPair(query="Compute the variance along the specified axis.",
                             positive="numpy / var\\nnumpy.var(a, axis=None, ...)\\n...",
                             negative="numpy / std\\n...")
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from index.fusion_weight import prose_lines
from index.types import Hits


@dataclass(frozen=True)
class PairConfig:
    """How many pairs and which negatives.

    Args:
        max_pairs: pairs to mine at most (one per chunk, chunks drawn in a seeded order).
        seed: the sample's seed (the same collection gives the same pairs).
        negatives: whether to mine a BM25 hard negative for each pair.
        skip_top: other-document BM25 hits skipped before the negative is taken.
        min_passage_words: a passage left with fewer words after the cut is not used.
        max_line_documents: a line found in more documents than this is boilerplate.
    """

    max_pairs: int = 4000
    seed: int = 0
    negatives: bool = True
    skip_top: int = 2
    min_passage_words: int = 12
    max_line_documents: int = 3

    def __post_init__(self) -> None:
        if self.max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {self.max_pairs}")
        if self.skip_top < 0:
            raise ValueError(f"skip_top must be >= 0, got {self.skip_top}")


@dataclass(frozen=True)
class TrainingPair:
    """A pseudo-query, the passage it came from (without it), and a hard negative or ""."""

    query: str
    positive: str
    negative: str = ""


def cut_line(text: str, line: str) -> str:
    """`text` without the first line that holds `line` (the Inverse Cloze cut)."""
    kept, removed = [], False
    for row in text.splitlines():
        if not removed and line in " ".join(row.split()):
            removed = True
            continue
        kept.append(row)
    return "\n".join(kept)


def mine_pairs(
    texts: Sequence[str],
    documents: Sequence[int],
    headers: Sequence[str],
    config: PairConfig,
    bm25_search: Callable[[str, int], Hits] | None = None,
) -> list[TrainingPair]:
    """One (query, positive, negative) per sampled chunk that has a sentence-like line.

    Args:
        texts: the chunks' displayed texts, by chunk index.
        documents: each chunk's document number (a negative is never from the same document).
        headers: each chunk's context header (title, heading trail), put before the positive
            and the negative as the collection indexes them; "" for none.
        config: how many pairs, which negatives.
        bm25_search: (query, k) -> Hits over the same chunk indexes; needed for negatives.
    """
    if not (len(texts) == len(documents) == len(headers)):
        raise ValueError("texts, documents and headers must be of the same length")
    boilerplate = _boilerplate(texts, documents, config.max_line_documents)
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    pairs: list[TrainingPair] = []
    for index in order:
        if len(pairs) >= config.max_pairs:
            break
        lines = [line for line in prose_lines(texts[index]) if line not in boilerplate]
        if not lines:
            continue
        # the first prose line of a chunk is most often its summary; later ones are taken too
        # so that pairs are not all summaries (seeded: the same collection, the same pairs)
        line = lines[0] if len(lines) == 1 or random.Random(config.seed + index).random() < 0.5 \
            else random.Random(config.seed + index).choice(lines[1:])
        passage = cut_line(texts[index], line)
        if len(passage.split()) < config.min_passage_words:
            continue
        negative = ""
        if config.negatives and bm25_search is not None:
            negative = _hard_negative(line, documents[index], texts, documents, headers,
                                      bm25_search, config.skip_top)
        pairs.append(TrainingPair(line, _with_header(headers[index], passage), negative))
    return pairs


def _boilerplate(texts: Sequence[str], documents: Sequence[int], max_documents: int) -> set[str]:
    """Prose lines that occur in more than `max_documents` documents."""
    seen: dict[str, set[int]] = {}
    for text, document in zip(texts, documents):
        for line in prose_lines(text):
            owners = seen.setdefault(line, set())
            if len(owners) <= max_documents:
                owners.add(document)
    return {line for line, owners in seen.items() if len(owners) > max_documents}


def _hard_negative(query: str, document: int, texts: Sequence[str], documents: Sequence[int],
                   headers: Sequence[str], bm25_search: Callable[[str, int], Hits],
                   skip_top: int) -> str:
    others = [int(i) for i in bm25_search(query, skip_top + 20).ids
              if documents[int(i)] != document]
    if len(others) <= skip_top:
        return ""
    chosen = others[skip_top]
    return _with_header(headers[chosen], texts[chosen])


def _with_header(header: str, text: str) -> str:
    return f"{header}\n{text}" if header else text

"""Contrastive fine-tuning of a sentence-transformers embedder on (query, passage) pairs.

The training half of `codehop tune` (the pairs come from `index.pseudo_pairs`): GPL-style
domain adaptation on CPU with sentence-transformers' MultipleNegativesRankingLoss (InfoNCE
over the batch: every other passage in the batch, and each pair's hard negative, is a
negative). Settings follow what GPL and sentence-transformers use for MiniLM-sized models
(AdamW, lr 2e-5, 10% linear warm-up, scale 20), with one epoch of a few thousand pairs: a
CPU-minutes budget, not GPL's 140k steps on a GPU. The loop is ours (a few lines) so that
training needs no `datasets`/Trainer stack; the model, tokenizer and loss are the library's.

The result is an ordinary sentence-transformers directory, written to a temp directory and
renamed into place, so it is loaded like any local model (`[embedding] model = <dir>`) and
exported to onnx-int8 like the shipped one. Its `codehop_tune.json` names the model it was
tuned from (`tuned_from`): a collection embedded with a tune of the model its settings name
is searched with that tune, not refused as built by another model.

    result = tune_embedder(base_dir, pairs, TuneConfig(), out_dir, on_progress=print_step)
    result.seconds, result.final_loss
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence


TUNE_RECORD = "codehop_tune.json"


class Pair(Protocol):
    query: str
    positive: str
    negative: str


@dataclass(frozen=True)
class TuneConfig:
    """Training settings.

    Args:
        epochs: passes over the pairs.
        batch_size: pairs per step (the in-batch negatives of each pair).
        learning_rate: AdamW's peak learning rate.
        warmup: share of steps with a linear warm-up.
        max_seq_length: word pieces per text while training (passages are cut; 128 keeps a
            CPU step short, and a chunk's start holds its title and summary).
        scale: the loss's inverse temperature.
        seed: shuffling and initialisation seed.
        threads: torch threads (None: torch's own setting).
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup: float = 0.1
    max_seq_length: int = 128
    scale: float = 20.0
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("tuning needs epochs >= 1 and batch_size >= 2 (in-batch negatives)")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")


@dataclass(frozen=True)
class TuneResult:
    """What a run did: where the model is, its steps, time and the loss at start and end."""

    model_dir: Path
    pairs: int
    steps: int
    seconds: float
    first_loss: float
    final_loss: float


def tune_embedder(
    base_model: str | Path,
    pairs: Sequence[Pair],
    config: TuneConfig,
    out_dir: Path,
    on_progress: Callable[[int, int, float], None] | None = None,
    tuned_from_name: str | None = None,
) -> TuneResult:
    """Fine-tune the model at `base_model` (a local directory) on `pairs`; save to `out_dir`.

    `on_progress(step, steps, loss)` is called after every step. `out_dir` appears complete
    or not at all (with its tune record naming `tuned_from_name`, default `base_model`); an
    existing one is replaced.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import get_linear_schedule_with_warmup

    if len(pairs) < config.batch_size:
        raise ValueError(f"{len(pairs)} pairs is fewer than one batch of {config.batch_size}")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = SentenceTransformer(str(base_model), device="cpu")
    model.max_seq_length = config.max_seq_length
    loss_fn = MultipleNegativesRankingLoss(model, scale=config.scale)
    with_negatives = all(pair.negative for pair in pairs)
    batches = _batches(len(pairs), config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    schedule = get_linear_schedule_with_warmup(
        optimizer, math.ceil(config.warmup * len(batches)), len(batches))
    model.train()
    started, first_loss, loss_value = time.perf_counter(), math.nan, math.nan
    for step, batch in enumerate(batches, start=1):
        columns = [[pairs[i].query for i in batch], [pairs[i].positive for i in batch]]
        if with_negatives:
            columns.append([pairs[i].negative for i in batch])
        features = [_to_device(model.preprocess(column), model.device) for column in columns]
        loss = loss_fn(features, labels=None)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        first_loss = loss_value if step == 1 else first_loss
        if on_progress:
            on_progress(step, len(batches), loss_value)
    model.eval()
    _save_atomically(model, out_dir, {"tuned_from": str(tuned_from_name or base_model)})
    return TuneResult(out_dir, len(pairs), len(batches), time.perf_counter() - started,
                      first_loss, loss_value)


def _batches(count: int, config: TuneConfig) -> list[list[int]]:
    """Seeded shuffled batches over every epoch; a last partial batch is dropped (too few
    in-batch negatives to learn from)."""
    order: list[int] = []
    rng = random.Random(config.seed)
    for _ in range(config.epochs):
        epoch = list(range(count))
        rng.shuffle(epoch)
        order.extend(epoch[: count - count % config.batch_size])
    return [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]


def _to_device(features: dict, device) -> dict:
    return {key: value.to(device) if hasattr(value, "to") else value
            for key, value in features.items()}


def tuned_from(model: str) -> str | None:
    """The model name a tuned model directory was tuned from, or None (not a tune)."""
    record = Path(model) / TUNE_RECORD
    try:
        return str(json.loads(record.read_text(encoding="utf-8"))["tuned_from"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_tune_record(model_dir: Path, record: dict) -> None:
    """Replace the directory's tune record atomically (it must keep "tuned_from")."""
    if "tuned_from" not in record:
        raise ValueError("a tune record names the model it was tuned from")
    path = Path(model_dir) / TUNE_RECORD
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    os.replace(temp, path)


def _save_atomically(model, out_dir: Path, record: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    model.save(str(temp))
    (temp / TUNE_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    temp.rename(out_dir)

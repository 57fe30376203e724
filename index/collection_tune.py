"""`codehop tune`: adapt a collection's embedder to the collection, check it, switch to it.

1. Pairs: pseudo-queries the collection yields itself (`index.pseudo_pairs`, Inverse Cloze
   lines with BM25 hard negatives); a seeded tenth is held out.
2. Training: `runtime.embed_tune` fine-tunes the collection's *base* model (a tuned model is
   re-tuned from its base, not from itself) into the machine's model cache; the directory
   records what it was tuned from (`tuned_from`).
3. Check: on the held-out pairs, each query must find its own passage among all held-out
   passages; the tuned model is kept only when it does not do worse than the base (mean
   reciprocal rank), else the collection stays as it was and the report says why.
4. Switch: every chunk is embedded with the tuned model first (into the workspace's vector
   cache, with progress), and only then does the collection's recorded embedder change and
   its dense index get rebuilt from those vectors in one commit. A run killed before the
   switch leaves the collection searchable as it was.

    report = tune_collection(collection, TuneSettings(pairs=PairConfig(max_pairs=2400)))
    report.switched, report.heldout_mrr_base, report.heldout_mrr_tuned
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from index.context import context_header
from index.pseudo_pairs import PairConfig, TrainingPair, mine_pairs
from index.types import Hits
from runtime.embed import Embedder, EmbedderConfig, default_backend
from runtime.embed_tune import TuneConfig, tune_embedder, tuned_from, write_tune_record
from runtime.errors import InvalidInputError
from runtime.model_cache import default_models_dir
from runtime.resolver import resolve_model

HELDOUT_SHARE = 0.1
MAX_HELDOUT = 300


@dataclass(frozen=True)
class TuneSettings:
    """What `tune_collection` does: the pairs, the training, where the model goes.

    Args:
        pairs: how many pairs and which negatives.
        training: the training settings.
        models_dir: where the tuned model is written (None: the machine's model cache).
        force: switch even when the held-out check finds the tuned model worse.
    """

    pairs: PairConfig = field(default_factory=PairConfig)
    training: TuneConfig = field(default_factory=TuneConfig)
    models_dir: Path | None = None
    force: bool = False


@dataclass
class TuneReport:
    """What a tune run did, for the CLI and the collection's stats."""

    collection: str
    base_model: str
    model_dir: str = ""
    pairs: int = 0
    heldout: int = 0
    train_seconds: float = 0.0
    embed_seconds: float = 0.0
    first_loss: float = float("nan")
    final_loss: float = float("nan")
    heldout_mrr_base: float = float("nan")
    heldout_mrr_tuned: float = float("nan")
    switched: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def tune_collection(collection, settings: TuneSettings = TuneSettings(),
                    on_stage: Callable[[str], None] | None = None,
                    on_train_step: Callable[[int, int, float], None] | None = None,
                    on_embed: Callable[[int], None] | None = None) -> TuneReport:
    """Tune `collection`'s embedder on itself and switch to the result if it checks out.

    Args:
        collection: an open `index.collection.Collection` with a local embedding model.
        settings: pairs, training, model directory, force.
        on_stage: called with a one-line description as each stage starts.
        on_train_step: (step, steps, loss) after each training step.
        on_embed: texts done, while the collection is embedded with the tuned model.
    """
    stage = on_stage or (lambda text: None)
    config = collection.config
    if config.embedding_backend == "openai":
        raise InvalidInputError(
            f"collection {collection.name!r} is embedded by a server ({config.embedding_model!r}): "
            "tune needs a local sentence-transformers model")
    base_name = tuned_from(config.embedding_model) or config.embedding_model
    base = resolve_model(base_name)
    if base.source == "hub" or not Path(base.location).is_dir():
        raise InvalidInputError(
            f"cannot tune {base_name!r}: tune needs a local sentence-transformers model directory "
            f"(found {base.source} {base.location})")
    report = TuneReport(collection.name, base_name)

    stage(f"mining pseudo-query pairs from {collection.name!r}")
    train, heldout = _split(_pairs(collection, settings.pairs), settings.training.batch_size)
    report.pairs, report.heldout = len(train), len(heldout)

    out_dir = (settings.models_dir or default_models_dir()) / _model_dir_name(
        base_name, collection.name, train, settings)
    stage(f"training on {len(train)} pairs ({len(heldout)} held out) into {out_dir}")
    result = tune_embedder(base.location, train, settings.training, out_dir, on_train_step,
                           tuned_from_name=base_name)
    report.model_dir, report.train_seconds = str(out_dir), result.seconds
    report.first_loss, report.final_loss = result.first_loss, result.final_loss

    # the collection's own runtime for the tune (int8 ONNX or torch); a static (model2vec)
    # collection gets the transformer's default runtime: distilling the tune is not built
    backend = config.embedding_backend if config.embedding_backend in ("sentence-transformers", "onnx-int8") \
        else default_backend(str(out_dir))
    tuned = Embedder(EmbedderConfig(model=str(out_dir), backend=backend,
                                    batch_size=config.embed_batch_size,
                                    cache_dir=collection.workspace / "embeddings"))
    base_embedder = Embedder(EmbedderConfig(model=base_name, backend=backend))
    try:
        stage("checking on the held-out pairs")
        report.heldout_mrr_base = heldout_mrr(base_embedder, heldout)
        report.heldout_mrr_tuned = heldout_mrr(tuned, heldout)
        if report.heldout_mrr_tuned < report.heldout_mrr_base and not settings.force:
            report.reason = (f"held-out MRR {report.heldout_mrr_tuned:.3f} < base "
                             f"{report.heldout_mrr_base:.3f}: kept {config.embedder_name}")
            write_tune_record(out_dir, _record(report, settings))
            return report
        stage(f"embedding {len(collection)} chunks with the tuned model")
        started = time.perf_counter()
        tuned.encode(collection.all_indexed_texts(), progress=on_embed)
        report.embed_seconds = time.perf_counter() - started
    finally:
        base_embedder.close()
        tuned.close()
    stage("switching the collection to the tuned model")
    collection.switch_embedder(str(out_dir), backend)
    report.switched = True
    write_tune_record(out_dir, _record(report, settings))
    return report


def heldout_mrr(embedder: Embedder, pairs: list[TrainingPair]) -> float:
    """Mean reciprocal rank of each query's own passage among all the held-out passages."""
    if not pairs:
        return float("nan")
    queries = np.stack([embedder.encode_query(pair.query) for pair in pairs])
    passages = embedder.encode([pair.positive for pair in pairs])
    scores = queries @ passages.T
    own = np.diag(scores)
    ranks = (scores >= own[:, None]).sum(axis=1)  # ties count against: a collapsed model ranks last
    return float(np.mean(1.0 / ranks))


def _pairs(collection, config: PairConfig) -> list[TrainingPair]:
    rows = collection.store.get_chunks(collection.store.chunk_ids(collection.name))
    ids = sorted(rows)
    position = {row_id: n for n, row_id in enumerate(ids)}
    texts = [rows[i].text for i in ids]
    documents = [rows[i].doc_id for i in ids]
    headers = [context_header(rows[i].path, rows[i].kind, rows[i].metadata)
               if collection.config.context else "" for i in ids]

    def bm25(query: str, k: int) -> Hits:
        """BM25 over the collection, as positions in the lists above."""
        hits = collection.bm25_hits(query, k)
        keep = [n for n, row_id in enumerate(hits.ids) if int(row_id) in position]
        return Hits(np.array([position[int(hits.ids[n])] for n in keep], np.int64), hits.scores[keep])

    return mine_pairs(texts, documents, headers, config, bm25)


def _split(pairs: list[TrainingPair], batch_size: int) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """A seeded held-out tenth (at most MAX_HELDOUT); refuses too few pairs to train on."""
    shuffled = list(pairs)
    random.Random(1).shuffle(shuffled)
    count = min(MAX_HELDOUT, int(len(shuffled) * HELDOUT_SHARE))
    heldout, train = shuffled[:count], shuffled[count:]
    if len(train) < 2 * batch_size or count < 8:
        raise InvalidInputError(
            f"the collection gave {len(pairs)} pseudo-query pairs; tuning needs at least "
            f"{2 * batch_size + 8} (index more text with prose: docstrings, docs pages)")
    return train, heldout


def _model_dir_name(base: str, collection: str, pairs: list[TrainingPair],
                    settings: TuneSettings) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([asdict(settings.pairs), asdict(settings.training)], default=str).encode())
    for pair in pairs:
        digest.update(f"{pair.query}\x00{pair.positive}\x00{pair.negative}\x01".encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(base).name}-{collection}").strip("_")[-60:]
    return f"tuned-{slug}-{digest.hexdigest()[:12]}"


def _record(report: TuneReport, settings: TuneSettings) -> dict:
    return {"tuned_from": report.base_model, "report": report.to_dict(),
            "pairs": asdict(settings.pairs),
            "training": asdict(settings.training)}

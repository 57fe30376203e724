"""`codehop tune [--collection NAME] [--pairs 2400] [--epochs 1] [--force] [--json]`: adapt the
collection's embedder to the collection itself (index.collection_tune), on CPU."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune", help="fine-tune the embedder on the collection's own text (no labels) and switch to it",
        description="Contrastive fine-tuning (GPL-style, Inverse Cloze pseudo-queries with BM25 hard "
                    "negatives) of the collection's local embedding model on the collection itself. "
                    "The tuned model goes to the model cache; the collection switches to it only if "
                    "it does no worse than the base model on held-out pseudo-queries.")
    parser.add_argument("--pairs", type=int, default=2400,
                        help="pseudo-query pairs to mine (a tenth held out; default: 2400)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the pairs (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step (default: 32)")
    parser.add_argument("--no-negatives", action="store_true",
                        help="in-batch negatives only (faster; no BM25 hard negatives)")
    parser.add_argument("--force", action="store_true",
                        help="switch even if the held-out check finds the tuned model worse")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--collection", help="collection name (default: from settings, 'default')")
    parser.add_argument("--workspace", help="workspace directory (default: $CODEHOP_WORKSPACE or ./.codehop)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from codehop.config import load_settings, resolve_workspace
    from codehop.model_setup import open_collection
    from index.collection_tune import TuneSettings, tune_collection
    from index.pseudo_pairs import PairConfig
    from runtime.embed_tune import TuneConfig
    from runtime.errors import InvalidInputError

    try:
        settings_ = TuneSettings(
            pairs=PairConfig(max_pairs=args.pairs, negatives=not args.no_negatives),
            training=TuneConfig(epochs=args.epochs, batch_size=args.batch_size),
            force=args.force)
    except ValueError as error:
        raise InvalidInputError(str(error)) from error
    settings = load_settings(getattr(args, "config", None))
    workspace = resolve_workspace(args.workspace, settings)
    name = args.collection or settings.collection.name
    bars: dict[str, tqdm] = {}

    def bar(key: str, total: int, unit: str) -> tqdm:
        if key not in bars:
            bars[key] = tqdm(total=total, unit=unit, file=sys.stderr, desc=f"codehop: {key}",
                             mininterval=1.0 if sys.stderr.isatty() else 15.0)
        return bars[key]

    def on_step(step: int, steps: int, loss: float) -> None:
        b = bar("training", steps, "step")
        b.set_postfix(loss=f"{loss:.3f}", refresh=False)
        b.update(1)

    with open_collection(settings, workspace, name) as collection:
        total = len(collection)
        report = tune_collection(
            collection, settings_,
            on_stage=lambda text: print(f"codehop: {text}", file=sys.stderr, flush=True),
            on_train_step=on_step,
            on_embed=lambda n: bar("embedding", total, "chunk").update(n))
    for b in bars.values():
        b.close()
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0 if report.switched else 1
    print(f"tuned {report.base_model} on {report.pairs} pseudo-query pairs of {name!r} in "
          f"{report.train_seconds / 60:.1f} min (loss {report.first_loss:.3f} -> "
          f"{report.final_loss:.3f}); held-out MRR {report.heldout_mrr_base:.3f} (base) -> "
          f"{report.heldout_mrr_tuned:.3f} (tuned) on {report.heldout} pairs")
    if report.switched:
        print(f"collection {name!r} now embeds with {report.model_dir} "
              f"({report.embed_seconds / 60:.1f} min to re-embed)")
        return 0
    print(f"collection {name!r} unchanged: {report.reason} (--force to switch anyway)")
    return 1

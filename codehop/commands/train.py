"""`codehop train treehop`: train the TreeHop query-update model on HotpotQA chains."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from runtime.errors import NotFoundError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model component (treehop)")
    parser.add_argument("component", choices=("treehop",))
    parser.add_argument("--data", default=None, help="data folder with multihop/hotpotqa_train.jsonl")
    parser.add_argument("--out", default=None, help="checkpoint path (default: the shipped one in rag/weights)")
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from codehop.config import load_settings, resolve_data_dir, resolve_workspace
    from eval_suites.hotpotqa import load_questions
    from runtime.embed import Embedder, EmbedderConfig
    from rag.treehop import SHIPPED_CHECKPOINT, TreeHopModelConfig
    from rag.treehop_train import TrainConfig, build_chains, split_heldout, train

    settings = load_settings(getattr(args, "config", None))
    data = resolve_data_dir(args.data, settings) / "multihop" / "hotpotqa_train.jsonl"
    if not data.exists():
        raise NotFoundError(f"no training data at {data}: pass --data DIR (with multihop/hotpotqa_train.jsonl)")
    workspace = resolve_workspace(args.workspace, settings)
    # sentence-transformers: the vectors the shipped TreeHop checkpoint was trained on
    embedder = Embedder(EmbedderConfig(model=settings.embedding.model, cache_dir=workspace / "embeddings",
                                       backend="sentence-transformers"))
    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    chains = build_chains(load_questions(data), embedder.encode, config.hard_negatives, args.seed)
    training, heldout = split_heldout(chains, config.heldout_fraction, args.seed)
    bar = tqdm(total=config.epochs, desc="train treehop", unit="epoch")

    def progress(epoch, history):
        bar.update(1)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", heldout_acc=f"{history['heldout_accuracy'][-1]:.3f}")

    start = time.perf_counter()
    model, history = train(training, heldout, config, TreeHopModelConfig(hidden=args.hidden), progress)
    bar.close()
    out = Path(args.out) if args.out else SHIPPED_CHECKPOINT
    model.save(out, {"data": str(data.name), "command": f"codehop train treehop --epochs {args.epochs} "
                     f"--hidden {args.hidden} --seed {args.seed}",
                     "history": json.dumps({k: v for k, v in history.items() if k != "loss"})})
    print(f"trained on {history['train_chains']} chains in {time.perf_counter() - start:.0f} s; "
          f"held-out hop accuracy {history['heldout_accuracy_untrained']:.3f} (untrained: q - c) -> "
          f"{history['heldout_accuracy'][-1]:.3f}; {model.parameters():,} parameters -> {out}")
    return 0

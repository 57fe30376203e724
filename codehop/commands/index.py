"""`codehop index PATH... [--collection NAME] [--workspace DIR] [--dense flat|spann|pq]
[--ray [--address auto|ray://host:10001] [--embed-actors N]]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from index.dense import DENSE_KINDS
from index.progress import ProgressPrinter, RunStatus


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index", help="index files and directories (incremental: only changed files are redone)")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to index")
    parser.add_argument("--collection", help="collection name (default: from settings, 'default')")
    parser.add_argument("--workspace", help="workspace directory (default: $CODEHOP_WORKSPACE or ./.codehop)")
    parser.add_argument("--dense", choices=DENSE_KINDS,
                        help="dense index kind; changing it on an existing collection rebuilds it")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild BM25 and dense indexes from the store (repairs a corrupt index; "
                             "re-embeds every chunk when [embedding] names another model)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--ray", action="store_true",
                        help="read, chunk and embed as a Ray Data job across a Ray cluster (needs "
                             "codehop[ray]); the commit and its files are those of a plain run")
    parser.add_argument("--address", help="with --ray: the cluster, 'auto' (the one `ray start` made "
                                          "here) or ray://host:10001 (default: [ray] address, else a "
                                          "local Ray)")
    parser.add_argument("--embed-actors", type=int, metavar="N",
                        help="with --ray: embedding actors (default: [ray] embed_actors, else one per 4 CPUs)")
    parser.set_defaults(func=run)


def _code_chunker():
    """code_tools' tree-sitter chunker, imported when a command indexes (its grammars are slow to load)."""
    from code_tools.chunker import chunk_for_index

    return chunk_for_index


def run(args: argparse.Namespace) -> int:
    from codehop.config import load_settings, resolve_workspace
    from codehop.model_setup import open_collection
    from runtime.errors import InvalidInputError

    if not args.paths and not args.rebuild:
        raise InvalidInputError("nothing to index: give one or more PATHs (or --rebuild)")
    if (args.address or args.embed_actors) and not args.ray:
        raise InvalidInputError("--address and --embed-actors go with --ray")
    settings = load_settings(getattr(args, "config", None))
    workspace = resolve_workspace(args.workspace, settings)
    name = args.collection or settings.collection.name
    # Only an explicit choice overrides a collection's stored settings.
    explicit = args.dense is not None or settings.source is not None
    config = settings.collection_config(dense=args.dense) if explicit else None
    progress = not args.no_progress
    # --rebuild may re-embed with another model; a plain add never mixes two models' vectors.
    with open_collection(settings, workspace, name, create=True, config=config,
                         reembed=args.rebuild) as collection:
        if args.rebuild:
            report = collection.rebuild(progress=progress)
            print(f"rebuilt {report.summary()}")
        if args.paths:
            run = _run_status(name) if progress else None
            if args.ray:
                from index.ray_index import RayIndexConfig, index_with_ray

                ray_config = RayIndexConfig(address=args.address or settings.ray.address,
                                            actors=args.embed_actors or settings.ray.embed_actors)
                report = index_with_ray(collection, args.paths, chunker=_code_chunker(), config=ray_config,
                                        on_scan=run.scan if run else None, on_embed=run.embed if run else None)
            else:
                report = collection.add_paths(
                    args.paths, chunker=_code_chunker(), progress=False,
                    on_scan=run.scan if run else None, on_embed=run.embed if run else None)
            if run:
                run.finish()
            _print_skips(report.skipped)
            print(f"indexed {report.summary()}")
        pending = len(collection.pending_ids())
        if pending:  # left by a `codehop serve` / LSP that was stopped before it finished
            run = _run_status(name) if progress else None
            counts = collection.fill_dense(progress=None if run is None else (
                lambda step: run.embed({"done": step["done"], "total": step["pending"]})))
            if run:
                run.finish()
            print(f"embedded {pending} chunks left pending ({counts['embedded']} computed, "
                  f"{counts['cached']} from the cache)")
        print(f"hybrid search: {_fusion_line(collection.fusion_settings())}")
    return 0


def _fusion_line(fusion: dict) -> str:
    """How the collection fuses, in one line: "convex fusion, dense weight 0.7 (prior: ...)"."""
    if fusion["method"] == "rrf":
        return ("reciprocal-rank fusion (this collection's stored setting; [collection] fusion = "
                "'auto' in codehop.toml gives the convex fusion new collections use)")
    line = f"convex fusion, dense weight {fusion['dense_weight']:g} ({fusion['source']}"
    reason = fusion.get("reason") or fusion.get("estimate", {}).get("reason", "")
    line += f": {reason})" if reason else ")"
    sides = [(name, fusion.get(key)) for name, key in (("BM25", "lexical"), ("dense", "semantic"))]
    names = fusion.get("name_weight", 0)
    named = (f"; a document the query names is lifted by {names:g} of the range" if names
             else "; no lift for named documents ([collection] name_weight = 0)")
    if all(value == "chunk+document" for _, value in sides):
        return line + "; each side scores a chunk by its own score and its whole document's, half each" + named
    described = [f"{name} side: " + ("chunk and whole document, half each" if value == "chunk+document"
                                     else f"chunks alone ([collection] {key} = \"chunk\")")
                 for (name, value), key in zip(sides, ("lexical", "semantic"))]
    return line + "; " + "; ".join(described) + named


def _print_skips(skipped: list[tuple[str, str]]) -> None:
    """Each skipped file and its reason on stderr; generated artefacts as one count (a
    repository has dozens), then how many symbolic links were skipped and why."""
    from collections import Counter

    from index.walk import GENERATED, LINK_REASONS

    generated = [path for path, reason in skipped if reason == GENERATED]
    for path, reason in skipped:
        if reason != GENERATED:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    if generated:
        examples = ", ".join(Path(path).name for path in generated[:3])
        print(f"left out {_count(len(generated), 'generated artefact')} (lock files, minified assets, benchmark "
              f"data: {examples}{', ...' if len(generated) > 3 else ''}); [collection] include in "
              "codehop.toml keeps one", file=sys.stderr)
    links = Counter(reason for _, reason in skipped if reason in LINK_REASONS)
    if links:
        why = "; ".join(f"{count} {reason}" for reason, count in links.most_common())
        print(f"skipped {_count(sum(links.values()), 'symbolic link')} ({why}): links are only followed to "
              "files inside the indexed directories", file=sys.stderr)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _run_status(collection: str) -> RunStatus:
    """Progress of one phase run: bars on a terminal, else a line every few seconds with
    counts, rate and ETA (logs, CI, docker)."""
    return RunStatus(collection, ProgressPrinter(sys.stderr).update)

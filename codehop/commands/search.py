"""`codehop search "query" [--k 10] [--mode bm25|dense|hybrid] [--group-by document] [--path-prefix P]
[--kind K] [--json]`."""

from __future__ import annotations

import argparse
import json
import textwrap

from index.collection import MODES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("search", help="search an indexed collection")
    parser.add_argument("query", help="what to look for")
    parser.add_argument("--k", type=int, default=10, help="number of results (default: 10)")
    parser.add_argument("--mode", choices=MODES, default="hybrid", help="retriever (default: hybrid)")
    parser.add_argument("--group-by", choices=("document",), default=None,
                        help="one result per document: its best chunk (default: chunks)")
    parser.add_argument("--path-prefix", help="only chunks of files whose path starts with this")
    parser.add_argument("--kind", help="only chunks of this kind (passage, block, syntax, abstract, ...)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON document {"results": [...]}')
    parser.add_argument("--collection", help="collection name (default: from settings, 'default')")
    parser.add_argument("--workspace", help="workspace directory (default: $CODEHOP_WORKSPACE or ./.codehop)")
    parser.set_defaults(func=run)


def _snippet(text: str, width: int = 100, lines: int = 3) -> str:
    flat = " ".join(text.split())
    return "\n".join(textwrap.wrap(flat, width)[:lines])


def run(args: argparse.Namespace) -> int:
    from codehop.config import load_settings, resolve_workspace
    from codehop.model_setup import open_collection
    from runtime.errors import InvalidInputError
    from index.types import SearchFilter

    if not args.query.strip():
        raise InvalidInputError("empty query: give some words to search for")
    if args.k <= 0:
        raise InvalidInputError(f"--k must be positive, got {args.k}")
    settings = load_settings(getattr(args, "config", None))
    workspace = resolve_workspace(args.workspace, settings)
    name = args.collection or settings.collection.name
    with open_collection(settings, workspace, name) as collection:
        results = collection.search(args.query, k=args.k, mode=args.mode,
                                    filters=SearchFilter(args.path_prefix, args.kind),
                                    group_by=args.group_by)
    if args.json:
        keys = ("id", "score", "path", "start_line", "end_line", "text")
        print(json.dumps({"results": [{key: getattr(r, key) for key in keys} for r in results]}))
        return 0
    if not results:
        print(f"no results for {args.query!r} in collection {name!r} ({args.mode})")
    for rank, result in enumerate(results, start=1):
        print(f"{rank:>2}. {result.score:.4f}  {result.path}:{result.start_line}-{result.end_line}")
        print(textwrap.indent(_snippet(result.text), "    "))
    return 0

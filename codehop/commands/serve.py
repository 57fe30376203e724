"""`codehop serve [--host 127.0.0.1] [--port 8000] [--source PATH...] [--no-index]`.

Serves first, embeds after: the REST API (codehop.rest) starts with uvicorn at once; on a
background thread (index.background.DenseFiller) the configured sources (default: the current
repository, docs included) are scanned and chunked into the default collection, BM25 is
committed (seconds), then the dense vectors are computed and committed in batches. /health
shows the phase ("scanning", then "embedding") with counts, rate and ETA; a dense or hybrid
search or ask before the end says `"partial": {"dense": share}`; stderr gets a progress bar on
a terminal, else a line every few seconds. A restart resumes: vectors already in the
workspace's cache are not computed again. `--no-index` serves the workspace as it is (no scan)
but still computes the vectors a stopped run left pending. `--wait-dense` scans and embeds
everything before serving (the old behaviour). The generator and the repository's completer
load in the background too (codehop.warm_up; `--no-warm-up` leaves them to the first request).

`--ray [--address A]` serves an indexed (sharded) collection as a Ray Serve application
instead (codehop.serve_ray): one actor per shard, [ray] ingress_replicas REST replicas.
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
    parser.add_argument("--no-index", action="store_true",
                        help="serve the workspace as it is, without scanning the sources (chunks a "
                             "stopped run left without vectors are still embedded in the background)")
    parser.add_argument("--wait-dense", action="store_true",
                        help="embed every chunk before serving (default: serve from BM25 at once "
                             "and embed in the background)")
    parser.add_argument("--embed-batch", type=int, default=128, metavar="N",
                        help="chunks per background embedding step (default 128)")
    parser.add_argument("--embed-commit-s", type=float, default=15.0, metavar="S",
                        help="seconds between commits of background vectors (default 15)")
    parser.add_argument("--embed-pause", type=float, default=0.0, metavar="S",
                        help="pause between background steps, leaving cores to queries (default 0)")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="do not load the generator and the repository's completer at start "
                             "(default: they load in the background, so the first completion "
                             "does not wait for them)")
    parser.add_argument("--ray", action="store_true",
                        help="serve as a Ray Serve application: one actor per shard of the (indexed) "
                             "collection across the cluster, [ray] ingress_replicas REST replicas "
                             "(needs codehop[ray]; no indexing: run codehop index [--ray] first)")
    parser.add_argument("--address", help="with --ray: the cluster ('auto', ray://host:10001; default: "
                                          "[ray] address, else a local Ray)")
    parser.add_argument("--progress-interval", type=float, default=5.0, metavar="S",
                        help="seconds between progress lines when stderr is not a terminal (default 5)")
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
    from runtime.errors import InvalidInputError

    settings = load_settings(getattr(args, "config", None))
    if args.embed_batch <= 0 or args.embed_commit_s < 0 or args.embed_pause < 0 or args.progress_interval <= 0:
        raise InvalidInputError("--embed-batch and --progress-interval must be positive, "
                                "--embed-commit-s and --embed-pause >= 0")
    server = settings.server
    host, port = args.host or server.host, args.port if args.port is not None else server.port
    if not 0 < port < 65536:
        raise InvalidInputError(f"--port must be 1..65535, got {port}")
    if args.ray:
        return _serve_ray(settings, args, host, port)
    if args.address:
        raise InvalidInputError("--address goes with --ray")
    listener = _listen(host, port)  # a busy port fails here, before any "serving" line or indexing
    sources = [Path(s) for s in (args.source or server.roots)] or [repository_root(Path.cwd())]
    workspace = resolve_workspace(args.workspace, settings)
    name = args.collection or settings.collection.name
    settings = dataclasses.replace(settings, collection=dataclasses.replace(
        settings.collection, name=name))
    scan = None  # what the background thread scans before it embeds
    if args.wait_dense and not args.no_index:
        _index(settings, workspace, name, sources, defer=False)
    elif not args.no_index:
        _check(settings, workspace, name)
        scan = sources
    background = _background(name, args, scan)
    app = create_app(settings, workspace=workspace, roots=[s for s in sources if s.exists()],
                     repo_root=next((s.resolve() for s in sources if s.is_dir()), None),
                     background=background, warm_up=not args.no_warm_up)
    print(f"codehop: serving http://{host}:{port} (workspace {workspace}, docs at /docs)",
          file=sys.stderr)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run(sockets=[listener])
    return 0


def _serve_ray(settings, args: argparse.Namespace, host: str, port: int) -> int:
    """Deploy the Serve application (codehop.serve_ray) and stay until interrupted."""
    import dataclasses
    import time

    from codehop.config import resolve_workspace
    from codehop.serve_ray import RayServePlan, deploy, shard_count
    from runtime.errors import InvalidInputError

    if args.source or args.wait_dense:
        raise InvalidInputError("serve --ray serves an indexed collection: index it first "
                                "(codehop index PATH [--ray]), then serve without --source/--wait-dense")
    workspace = resolve_workspace(args.workspace, settings).resolve()
    name = args.collection or settings.collection.name
    settings = dataclasses.replace(settings, collection=dataclasses.replace(settings.collection, name=name))
    r = settings.ray
    plan = RayServePlan(workspace=str(workspace), collection=name, shards=shard_count(workspace, name),
                        host=host, port=port, ray=r)
    deploy(plan, settings, address=args.address or r.address, blocking=False)
    print(f"codehop: serving http://{host}:{port} on Ray ({plan.shards} shard(s) of {name!r}, "
          f"{r.ingress_replicas if r.min_replicas is None else f'{r.min_replicas}-{r.max_replicas}'} "
          f"ingress replica(s); workspace {workspace})", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.delete("codehop")
    return 0


def _listen(host: str, port: int):
    """The bound server socket (uvicorn listens on it); ConflictError when the address is taken."""
    import socket

    from runtime.errors import ConflictError

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ConflictError(f"cannot serve on {host}:{port}: {error.strerror or error}; another server "
                            "is using it: stop it, or pick another --port (or [server] port)") from error
    return listener


def _index(settings, workspace: Path, name: str, sources: list[Path], defer: bool) -> None:
    """Scan, chunk and commit BM25 (vectors too unless `defer`); prints what it did."""
    from codehop.commands.index import _code_chunker
    from codehop.model_setup import open_collection

    config = settings.collection_config() if settings.source is not None else None
    tty = sys.stderr.isatty()
    if not tty:
        print(f"codehop: scanning {', '.join(map(str, sources))}", file=sys.stderr, flush=True)
    with open_collection(settings, workspace, name, create=True, config=config) as collection:
        report = collection.add_paths(sources, chunker=_code_chunker(), progress=tty,
                                      defer_dense=defer)
        if not defer and len(collection.pending_ids()):
            collection.fill_dense()  # left pending by an earlier run that served first
        pending = len(collection.pending_ids())
    print(f"codehop: indexed {report.summary()}", file=sys.stderr)
    if pending:
        print(f"codehop: BM25 search is ready; {pending:,} chunks lack vectors and are embedded "
              "in the background (see /health)", file=sys.stderr, flush=True)


def _check(settings, workspace: Path, name: str) -> None:
    """Create the collection, or fail now (not on the background thread) when the settings
    conflict with it (another embedder: EmbedderMismatchError)."""
    from codehop.model_setup import open_collection

    config = settings.collection_config() if settings.source is not None else None
    open_collection(settings, workspace, name, create=True, config=config).close()


def _background(name: str, args: argparse.Namespace, sources: list[Path] | None):
    """Starts the collection's DenseFiller once the server's resources exist: it scans
    `sources` first (None: no scan), then embeds the pending chunks."""
    from codehop.commands.index import _code_chunker

    chunker = _code_chunker() if sources is not None else None  # grammars load before serving

    def say(line: str) -> None:  # one write: uvicorn logs from other threads meanwhile
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def scan(collection, resources, report):
        if not sys.stderr.isatty():
            say(f"codehop: scanning {', '.join(map(str, sources))}")
        result = collection.add_paths(sources, chunker=chunker, progress=False, defer_dense=True,
                                      write_lock=resources.lock(name).write, on_scan=report)
        pending = len(collection.pending_ids())
        say(f"codehop: indexed {result.summary()}")
        if pending:
            say(f"codehop: BM25 search is ready; {pending:,} chunks lack vectors and are embedded "
                "in the background (see /health)")
        return result

    def start(resources) -> None:
        from index.background import DenseFiller
        from index.progress import ProgressPrinter

        if name not in resources.names():  # --no-index on a workspace without the collection
            return
        collection = resources.collection(name)
        if sources is None and not len(collection.pending_ids()):
            return

        def prepare() -> None:
            # Under the lock the endpoints load models with: transformers' lazy imports are
            # not thread-safe, and a request may be loading the generator right now.
            with resources._models:
                collection.embedder.dim  # noqa: B018 - loads (exports, distils) the embedder

        printer = ProgressPrinter(sys.stderr, interval_s=args.progress_interval)
        filler = DenseFiller(
            collection, write_lock=resources.lock(name).write, batch_size=args.embed_batch,
            commit_every_s=args.embed_commit_s, pause_s=args.embed_pause,
            on_progress=printer.update, prepare=prepare,
            scan=None if sources is None else lambda report: scan(collection, resources, report)).start()
        resources.indexing[name] = filler
        printer.watch(filler.status, lambda: filler.done)

    return start

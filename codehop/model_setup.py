"""Settings -> the models and collections the faces use, in one place.

Every face (CLI commands, REST, LSP) loads its generator and opens its collections through
these helpers, so `[generator]` and `[embedding]` in codehop.toml (or the `--model`,
`--backend`, `--base-url` options) mean the same thing everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from codehop.config import Settings


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model / --backend / --base-url, overriding [generator] for one command."""
    parser.add_argument("--model", default=None,
                        help="generator model: a path, a package, a hub id, or the server's model name "
                             "(default: [generator] model, the shipped SmolLM2)")
    parser.add_argument("--backend", choices=("transformers", "vllm", "llamacpp", "openai"), default=None,
                        help="generator backend (default: [generator] backend)")
    parser.add_argument("--base-url", default=None,
                        help="an OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1 "
                             "(implies --backend openai)")


def with_model_options(settings: Settings, args: argparse.Namespace) -> Settings:
    """`settings` with the command line's generator overrides applied."""
    changes = {}
    if getattr(args, "model", None):
        changes["model"] = args.model
    if getattr(args, "base_url", None):
        changes.update(base_url=args.base_url, backend="openai")
    if getattr(args, "backend", None):
        changes["backend"] = args.backend
    if not changes:
        return settings
    return dataclasses.replace(settings, generator=dataclasses.replace(settings.generator, **changes))


def load_configured_generator(settings: Settings, threads: int | None = None):
    """The generator [generator] describes (a local model, or a client of the user's server).
    A converted model goes to the machine's model cache, never into the project's workspace.
    `threads`: torch threads for a local model (None: torch's default; `codehop lsp` passes
    [completion] threads)."""
    from rag.llm import load_generator

    g = settings.generator
    if g.backend == "openai":
        return load_generator(g.model, backend="openai", endpoint=g.endpoint(g.model, "generator"),
                              openai=g.openai_options())
    return load_generator(g.model, backend=g.backend, precision=g.precision, threads=threads)


def generator_load_steps(settings: Settings) -> list[tuple[str, int]]:
    """What loading [generator]'s model will do, as (message, percent of the work) steps for a
    progress report: a conversion of the shipped GGUF (once per machine) dominates when due.
    A server backend ("openai") loads nothing: one step, a client."""
    g = settings.generator
    if g.backend == "openai":
        return [(f"loading {g.model} (a client of {g.base_url})", 100)]
    steps = [(f"loading {g.model}", 70), ("warming up", 30)]
    if g.backend == "transformers":
        from runtime.resolver import resolve_model
        from rag.llm import converted_model_dir

        resolved = resolve_model(g.model)
        gguf = Path(resolved.location) if resolved.source != "hub" else None
        if gguf is not None and gguf.suffix == ".gguf" and \
                not (converted_model_dir(g.model, gguf) / "config.json").exists():
            steps = [(f"converting {g.model} (once per machine)", 60), (f"loading {g.model}", 25), ("warming up", 10)]
    return steps


def load_configured_drafter(settings: Settings, generator, mode: str | None = None):
    """RAPID's drafter: [generator] drafter, or the generator itself when none is named.

    None when RAPID cannot run (`mode` or [generator] rapid is "off", or the generator is a
    server without local logits: the pipeline's stage record then says why).
    """
    g = settings.generator
    if (mode or g.rapid) == "off" or getattr(generator, "model", None) is None:
        return None
    if not g.drafter or g.drafter in (g.model, getattr(generator, "name", None)):
        return generator
    from rag.llm import load_generator

    return load_generator(g.drafter, backend="transformers")


def configured_rapid_policy(workspace: Path):
    """The RAPID cost model, calibrated once per (target, drafter, machine) into the workspace."""
    from rag.rapid_policy import RapidPolicy

    return RapidPolicy(Path(workspace) / "rapid_calibration.json")


def open_collection(settings: Settings, workspace: Path, name: str, create: bool = False,
                    config=None, reembed: bool = False):
    """Collection.open with the embedding server of [embedding] (when it is one) and its device,
    and the [reranker] when one is configured; dense search refuses a collection that another
    embedder than [embedding]'s built (exit 8). Without `config` (search, ask, tune) the stored
    settings are kept, except the search-time ones ([collection] fusion, lexical, semantic, ...),
    which come from `settings` unstored, so an edited codehop.toml applies at once."""
    from index.collection import Collection
    from index.sharded import ShardedCollection, sharding
    from runtime.errors import InvalidInputError

    options = dict(config=config, create=create, embedding_endpoint=settings.embedding_endpoint(),
                   reembed=reembed, device=settings.embedding.device,
                   expected_embedder=expected_embedder(settings), reranker=settings.open_reranker())
    have, shards = sharding(workspace, name), settings.collection.shards
    if have or shards > 1:  # the stored count wins, like every setting baked into a collection
        if not have and _has_collection(workspace, name):
            raise InvalidInputError(
                f"collection {name!r} is not sharded and [collection] shards = {shards}: sharding means "
                "re-indexing, into another --collection")
        collection = ShardedCollection.open(workspace, name, shards=have or shards, **options)
    else:
        collection = Collection.open(workspace, name, **options)
    if config is None:  # a reader: search as [collection] says now, store nothing
        collection.search_with(settings.collection_config())
    return collection


def _has_collection(workspace: Path, name: str) -> bool:
    """Whether the workspace's store holds an (unsharded) collection `name`."""
    from index.store import Store

    if not (Path(workspace) / "store.sqlite").exists():
        return False
    store = Store(Path(workspace) / "store.sqlite")
    try:
        return store.collection(name) is not None
    finally:
        store.close()


def expected_embedder(settings: Settings) -> tuple[str, str | None]:
    """(model, backend or None): the embedder [embedding] names, checked before dense search."""
    return settings.embedding.model, settings.embedding.backend


def configured_embedder(settings: Settings, workspace: Path):
    """The [embedding] embedder with the workspace's vector cache."""
    from runtime.embed import Embedder, EmbedderConfig

    e = settings.embedding
    return Embedder(EmbedderConfig(model=e.model, batch_size=e.batch_size, device=e.device,
                                   cache_dir=workspace / "embeddings",
                                   backend=e.backend,  # None: the product default
                                   endpoint=settings.embedding_endpoint()))

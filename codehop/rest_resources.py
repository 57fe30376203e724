"""What the REST endpoints share: the `Resources` of one app (collections, jobs, models loaded
on first use) and the FastAPI dependencies that hand them out (`get_resources`, `get_generator`,
...). Tests swap a dependency with `app.dependency_overrides`.

It lives apart from the routes so that every router module (codehop/rest.py,
codehop/rest_generation.py) imports it and none imports another: no import cycle.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from codehop import rest_schemas as m
from codehop.config import Settings
from codehop.locks import RWLock
from runtime.errors import (CodehopError, ConflictError, InvalidInputError, MissingDependencyError,
                          NotFoundError)

_MAX_JOBS = 1000


class PathOutsideRootsError(CodehopError):
    """A file path resolves outside every configured root (path traversal, symlink escape)."""

    exit_code = 2
    http_status = 403


# ---------------------------------------------------------------- resources


class Resources:
    """What the endpoints share: the workspace's collections, the jobs, lazily loaded models.

    Args:
        settings: typed settings (generator, collection defaults, server roots and API key).
        workspace: the workspace directory.
        roots: directories whose files may be indexed through the API (resolved).
        repo_root: the repository that completions draw context from (None: no completions).
    """

    def __init__(self, settings: Settings, workspace: Path, roots: list[Path],
                 repo_root: Path | None) -> None:
        self.settings, self.workspace, self.repo_root = settings, workspace, repo_root
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        self.jobs: OrderedDict[str, m.Job] = OrderedDict()
        self._collections: dict[str, Any] = {}
        self._locks: dict[str, RWLock] = {}
        self._guard = threading.RLock()
        self._attached: dict[str, Callable[[], Any]] = {}  # name -> factory (attach)
        # Models load under their own lock: a generator loading for seconds must not stall
        # searches, which only need `_guard` to find their collection.
        self._models = threading.RLock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="codehop-writer")
        self._generator = None
        self._embedder = None
        self._treehop = None
        self._repo = None
        self._completers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # Per-generator objects, keyed by the generator itself (weakly): an id() key could be
        # reused by a new generator once the old one is collected, handing it stale objects.
        self._rapid: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # -> (drafter, RapidPolicy)
        self._kv: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # -> KVCacheStore
        # Background embedding per collection (index.background.DenseFiller), shown in /health.
        self.indexing: dict[str, Any] = {}
        self.warm_up = None  # codehop.warm_up.WarmUpStatus of the model loading at start (/health)

    def close(self) -> None:
        for filler in self.indexing.values():  # between batches; embedded vectors are kept
            filler.stop(wait=False)
        for filler in self.indexing.values():
            filler.join()
        self._writer.shutdown(wait=True, cancel_futures=True)
        with self._guard:
            for collection in self._collections.values():
                collection.close()
            self._collections.clear()

    # ---- collections

    def names(self) -> list[str]:
        from index.store import Store

        attached = sorted(self._attached)
        shards = self.workspace / "shards"  # sharded collections (index.sharded)
        if shards.is_dir():
            attached = sorted(set(attached) | {d.name for d in shards.iterdir() if (d / "sharding.json").exists()})
        if not (self.workspace / "store.sqlite").exists():
            return attached
        store = Store(self.workspace / "store.sqlite")
        try:
            return sorted(set(store.collections()) | set(attached))
        finally:
            store.close()

    def collection(self, name: str):
        """The open Collection `name` (NotFoundError when it does not exist)."""
        from codehop.model_setup import expected_embedder
        from index.collection import Collection

        with self._guard:
            if name not in self._collections and name in self._attached:
                self._collections[name] = self._attached[name]()
            if name not in self._collections:
                from index.sharded import ShardedCollection, sharding

                opener = ShardedCollection.open if sharding(self.workspace, name) else Collection.open
                self._collections[name] = opener(
                    self.workspace, name, create=False,
                    embedding_endpoint=self.settings.embedding_endpoint(),
                    device=self.settings.embedding.device,
                    expected_embedder=expected_embedder(self.settings),
                    reranker=self._reranker())
                self._locks.setdefault(name, RWLock())
            return self._collections[name]

    def attach(self, name: str, factory: Callable[[], Any]) -> None:
        """Serve collection `name` as the object `factory` makes on first use instead of opening
        it from the workspace (codehop.serve_ray: the shards behind Ray Serve handles)."""
        with self._guard:
            self._attached[name] = factory
            self._locks.setdefault(name, RWLock())

    def _reranker(self):
        """The [reranker], shared by every collection of this server (None when unset)."""
        if not hasattr(self, "_shared_reranker"):
            self._shared_reranker = self.settings.open_reranker()
        return self._shared_reranker

    def lock(self, name: str) -> RWLock:
        with self._guard:
            return self._locks.setdefault(name, RWLock())

    def create(self, name: str, dense: str):
        from index.collection import Collection

        with self._guard:
            if name in self.names():
                raise ConflictError(f"collection {name!r} already exists: delete it first or pick another name")
            try:
                config = self.settings.collection_config(dense=dense)
                self._collections[name] = Collection.open(
                    self.workspace, name, config=config,
                    embedding_endpoint=self.settings.embedding_endpoint(),
                    device=self.settings.embedding.device, reranker=self._reranker())
            except MissingDependencyError as error:  # a choice this install cannot serve
                raise InvalidInputError(str(error)) from error
            return self._collections[name]

    def drop(self, name: str) -> None:
        from index.collection import drop_collection

        self.collection(name)  # NotFoundError first
        with self.lock(name).write(), self._guard:
            self._collections.pop(name).close()
            drop_collection(self.workspace, name)

    # ---- jobs: one writer thread, one job at a time

    def submit(self, name: str, kind: str, work: Callable[[Any], dict[str, Any]]) -> m.Job:
        """Queue `work(collection)` on the writer thread; returns the job (poll /v1/jobs/{id})."""
        self.collection(name)
        job = m.Job(id=uuid.uuid4().hex, collection=name, kind=kind, status="queued",
                    created=time.time())
        with self._guard:
            self.jobs[job.id] = job
            while len(self.jobs) > _MAX_JOBS:
                self.jobs.popitem(last=False)
        self._writer.submit(self._run, job, work)
        return job

    def _run(self, job: m.Job, work: Callable[[Any], dict[str, Any]]) -> None:
        job.status = "running"
        try:
            job.result = work(self.collection(job.collection))
            job.status = "done"
        except CodehopError as error:
            job.error = m.ErrorBody(type=type(error).__name__, message=str(error),
                                    code=error.http_status)
            job.status = "failed"
        except Exception as error:  # a job must never die silently: record it
            job.error = m.ErrorBody(type=type(error).__name__, message=str(error), code=500)
            job.status = "failed"
        finally:
            job.finished = time.time()

    # ---- files: only inside the configured roots

    def confine(self, given: str) -> Path:
        """Resolve `given` (relative: to the first root) and require it to lie inside a root."""
        if not self.roots:
            raise PathOutsideRootsError(
                "no roots configured: adding files is disabled; set [server] roots in codehop.toml "
                "or pass --source to codehop serve")
        try:
            path = Path(given).expanduser()
            path = (path if path.is_absolute() else self.roots[0] / path).resolve()
        except (OSError, ValueError, RuntimeError) as error:
            raise InvalidInputError(f"bad path {given!r}: {error}") from error
        if not any(path == root or path.is_relative_to(root) for root in self.roots):
            raise PathOutsideRootsError(
                f"path {given!r} is outside the configured roots "
                f"({', '.join(map(str, self.roots))}): only files inside them can be indexed")
        if not path.exists():
            raise NotFoundError(f"path {given!r} does not exist under the configured roots")
        return path

    # ---- models

    def generator(self):
        """The configured generator, loaded on first use (rag.llm.load_generator)."""
        with self._models:
            if self._generator is None:
                from codehop.model_setup import load_configured_generator

                self._generator = load_configured_generator(self.settings)
            return self._generator

    def embedder(self):
        """The configured embedding model (shares the workspace's vector cache)."""
        from codehop.model_setup import configured_embedder

        with self._models:
            if self._embedder is None:
                self._embedder = configured_embedder(self.settings, self.workspace)
            return self._embedder

    def treehop(self):
        with self._models:
            if self._treehop is None:
                from rag.treehop import load_treehop

                self._treehop = load_treehop()
            return self._treehop

    def completer(self, generator):
        """A RepoCompleter over `repo_root` for this generator (the repository indexed once),
        keeping each document's KV cache (PIE) when [generator] kv_reuse is on; the rest of its
        settings come from [completion]."""
        from code_tools.completion import RepoCompleter

        repo = self.repo_index()
        with self._models:
            if generator not in self._completers:
                config = self.settings.completion_config()
                self._completers[generator] = RepoCompleter(repo, generator, config)
            return self._completers[generator]

    def rapid(self, generator):
        """(RAPID drafter or None, the workspace's calibrated RapidPolicy) for this generator."""
        from codehop.model_setup import configured_rapid_policy, load_configured_drafter

        with self._models:
            if generator not in self._rapid:
                self._rapid[generator] = (load_configured_drafter(self.settings, generator, "on"),
                                          configured_rapid_policy(self.workspace))
            return self._rapid[generator]

    def kv_store(self, generator):
        """The per-document KV caches (PIE) of OpenAI-shaped /v1/completions; None for a
        generator without a local model (a server)."""
        from code_tools.kv_cache import KVCacheConfig, KVCacheStore

        if getattr(generator, "model", None) is None:
            return None
        with self._models:
            if generator not in self._kv:
                budget = int(self.settings.generator.kv_cache_mb * 2**20)
                self._kv[generator] = KVCacheStore(generator.model, generator.tokenizer,
                                                   KVCacheConfig(max_bytes=budget))
            return self._kv[generator]

    def repo_index(self):
        """The RepoIndex of `repo_root`, built once (completions and the agent share it)."""
        from code_tools.repo import RepoIndex

        if self.repo_root is None:
            raise InvalidInputError("no repository configured: run codehop serve inside a repository")
        with self._models:
            if self._repo is None:
                self._repo = RepoIndex.open(self.repo_root, self.workspace,
                                            self.settings.repo_config())
            return self._repo


# ---------------------------------------------------------------- dependencies


# The dependencies are `async def`: FastAPI runs a plain `def` dependency on Starlette's shared
# thread pool, where generation requests waiting on a model load would stall every search.


async def get_resources(request: Request) -> Resources:
    return request.app.state.resources


async def get_generator(resources: Resources = Depends(get_resources)):
    # The first call loads the model (seconds): on a worker thread, off the event loop and
    # off Starlette's pool.
    return await asyncio.to_thread(resources.generator)


async def get_treehop(resources: Resources = Depends(get_resources)) -> Callable[[], Any]:
    """A loader of the TreeHop model (the shipped checkpoint), called only when a request
    needs multi-hop retrieval."""
    return resources.treehop


def get_completer(resources: Resources = Depends(get_resources), generator=Depends(get_generator)):
    return resources.completer(generator)


async def require_api_key(request: Request, resources: Resources = Depends(get_resources)) -> None:
    """When [server] api_key is set: `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    expected = resources.settings.server.api_key
    if not expected:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise StarletteHTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")

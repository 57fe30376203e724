"""`codehop serve --ray`: the REST app as a Ray Serve application over a sharded collection.

Deployments of the application "codehop" (Ray Serve, on the cluster `ray.init` reaches):
- `shard-<i>`, one per shard, one replica each: the replica opens shard i (an ordinary
  Collection, index.sharded) and answers the three scatter-gather rounds (statistics,
  candidates, rows) and the writes its documents get. Serve places the replicas across the
  cluster's nodes, checks their health (`check_health`, [ray] health_check_period_s) and
  starts a new replica when one dies; it reopens the shard from disk, so no committed
  document is lost.
- `ingress`: the REST app of codehop.rest (every route unchanged) with [ray] ingress_replicas
  replicas, or Serve autoscaling between [ray] min_replicas and max_replicas. Its collection
  is a `RayShardedCollection`: the query is embedded once in the ingress, then scattered to
  the shards and gathered (index.sharded.scatter_gather). A shard that does not answer within
  [ray] shard_timeout_s is left out: the search answers from the others with
  `"partial": true` and `"missing_shards": [...]`, never an error.

The workspace must be readable at the same path on every node (a shared filesystem, or each
node holding the shards it serves). Ray is imported only here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codehop.config import RaySettings
from index.types import SearchFilter, SearchResult
from runtime.errors import CodehopError

APP = "codehop"


class NotOnRayError(CodehopError):
    """A route that reads a collection's store directly, which the ingress does not have."""

    exit_code = 2
    http_status = 501


def shard_deployment(i: int) -> str:
    return f"shard-{i}"


def shard_count(workspace: Path, name: str) -> int:
    """The shards of collection `name` (1: an unsharded collection, served as one shard)."""
    from index.sharded import sharding
    from index.store import Store
    from runtime.errors import NotFoundError

    count = sharding(workspace, name)
    if count:
        return count
    store_path = Path(workspace) / "store.sqlite"
    if store_path.exists():
        store = Store(store_path)
        try:
            if store.collection(name) is not None:
                return 1
        finally:
            store.close()
    raise NotFoundError(f"no collection {name!r} in {workspace}: index it first (codehop index PATH [--ray])")


# ---------------------------------------------------------------- the shard replica


class ShardReplica:
    """One shard's Collection, serving the scatter-gather rounds and its documents' writes."""

    def __init__(self, workspace: str, name: str, shard: int, embedding: dict[str, Any]) -> None:
        from index.collection import Collection
        from index.sharded import directory, sharding

        self.shard, self.name = shard, name
        # An unsharded collection is served as one shard, from the workspace itself.
        where = directory(Path(workspace), name) / str(shard) if sharding(Path(workspace), name) else workspace
        self.collection = Collection.open(Path(where), name, create=False, **embedding)
        len(self.collection.pending_ids())  # loads the indexes now, not on the first query

    def statistics(self, tokens: list[str]):
        from index.sharded import shard_statistics

        return shard_statistics(self.collection, tokens)

    def candidates(self, tokens, vector, n, mode, statistics, filters, prefetch=0, query=""):
        from index.sharded import shard_candidates

        return shard_candidates(self.collection, tokens, vector, n, mode, statistics, filters, prefetch, query)

    def results(self, ids: list[int]) -> dict[int, SearchResult]:
        from index.sharded import shard_results

        return shard_results(self.collection, ids)

    def info(self) -> dict[str, Any]:
        import ray

        return {"shard": self.shard, "chunks": len(self.collection),
                "documents": self.collection.store.counts(self.name)["documents"],
                "dense_weight": self.collection.dense_weight(), "config": self.collection.config.to_dict(),
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def add_texts(self, texts: list[str], paths: list[str], metadatas) -> list[str]:
        return self.collection.add_texts(texts, paths, metadatas)

    def delete(self, key: str) -> int:
        return self.collection.delete(key)

    def check_health(self) -> None:
        """Serve's health check: the shard's store answers."""
        self.collection.store.counts(self.name)


# ---------------------------------------------------------------- the ingress's collection


class _RayShard:
    """A shard behind a Serve handle: each method returns a response that `scatter` awaits."""

    def __init__(self, handle, name: str) -> None:
        self.handle, self.name = handle, name

    def statistics(self, tokens):
        return self.handle.statistics.remote(tokens)

    def candidates(self, tokens, vector, n, mode, statistics, filters, prefetch=0, query=""):
        return self.handle.candidates.remote(tokens, vector, n, mode, statistics, filters, prefetch, query)

    def results(self, ids):
        return self.handle.results.remote(ids)


class RayShardedCollection:
    """The collection an ingress replica searches: shards behind Serve handles.

    Args:
        name: the collection's name.
        shards: how many shards it has.
        timeout_s: how long a round waits for a shard before leaving it out.
        embedding: Collection.open's embedding arguments (the query embedder's server/device).
        reranker: the [reranker] (index.rerank.ServedReranker) or None.
    """

    def __init__(self, name: str, shards: int, timeout_s: float, embedding: dict[str, Any],
                 reranker=None, app: str = APP) -> None:
        from ray import serve

        from index.collection_config import CollectionConfig

        self.name, self.timeout_s, self.reranker = name, timeout_s, reranker
        self.shards = [_RayShard(serve.get_deployment_handle(shard_deployment(i), app_name=app), f"{name}/{i}")
                       for i in range(shards)]
        infos = self._infos(wait=True)
        first = next(info for info in infos if info is not None)
        self.config = CollectionConfig.from_dict(first["config"])
        self._dense_weight = float(np.mean([i["dense_weight"] for i in infos if i is not None]))
        self._embedding = embedding
        self._embedder = None

    def _infos(self, wait: bool = False) -> list[dict[str, Any] | None]:
        deadline = time.monotonic() + (120.0 if wait else self.timeout_s)
        while True:
            infos = self._scatter_infos(max(0.1, deadline - time.monotonic()))
            if not wait or any(info is not None for info in infos) or time.monotonic() > deadline:
                return infos
            time.sleep(0.5)

    def _scatter_infos(self, timeout_s: float) -> list[dict[str, Any] | None]:
        answers = _gather([s.handle.info.remote() for s in self.shards], timeout_s)
        return [None if isinstance(a, BaseException) else a for a in answers]

    @property
    def embedder(self):
        """The query embedder (no vector cache: an ingress writes nothing)."""
        if self._embedder is None:
            from runtime.embed import Embedder, EmbedderConfig

            c = self.config
            self._embedder = Embedder(EmbedderConfig(
                model=c.embedding_model, batch_size=c.embed_batch_size, backend=c.embedding_backend,
                endpoint=self._embedding.get("embedding_endpoint"), device=self._embedding.get("device", "cpu")))
        return self._embedder

    def _scatter(self, shards, call) -> list[Any]:
        responses = []
        for shard in shards:
            try:
                responses.append(call(shard))
            except Exception as error:  # noqa: BLE001 - a handle that cannot even send
                responses.append(error)
        return _gather(responses, self.timeout_s)

    def search_outcome(self, query: str, k: int = 10, mode: str = "hybrid",
                       filters: SearchFilter | None = None, group_by: str | None = None):
        from index.sharded import scatter_gather

        return scatter_gather(self.shards, query, k, mode, self.config, lambda text: self.embedder.encode_query(text),
                              self._dense_weight, filters, group_by, scatter=self._scatter,
                              reranker=self.reranker)

    def search(self, query: str, k: int = 10, mode: str = "hybrid", filters: SearchFilter | None = None,
               group_by: str | None = None) -> list[SearchResult]:
        return self.search_outcome(query, k, mode, filters, group_by).results

    def dense_fraction(self) -> float:
        return 1.0

    @property
    def store(self):
        raise NotOnRayError(
            f"collection {self.name!r} is served by `codehop serve --ray`, whose ingress holds no store: "
            "search, ask and adding texts work here; index files or delete documents with `codehop index "
            "[--ray]` against the workspace (the shard replicas reopen a shard after each commit)")

    def pending_ids(self) -> np.ndarray:
        return np.empty(0, dtype=np.int64)

    def stats(self) -> dict[str, Any]:
        infos = self._infos()
        up = [i for i in infos if i is not None]
        out = {"name": self.name, "documents": sum(i["documents"] for i in up),
               "chunks": sum(i["chunks"] for i in up), "dense": self.config.dense,
               "embedding_model": self.config.embedder_name, "context": bool(self.config.context),
               "fusion": {"method": self.config.fusion, "dense_weight": self._dense_weight,
                          "source": "shards"},
               "shards": len(self.shards), "shard_nodes": [i["node"] if i else None for i in infos]}
        missing = [s.name for s, i in zip(self.shards, infos) if i is None]
        if missing:
            out["missing_shards"] = missing
        return out

    def indexed_texts(self, texts, paths=None, metadatas=None) -> list[str]:
        return []  # the owning shard embeds into its own cache

    def add_texts(self, texts: list[str], paths: list[str] | None = None, metadatas=None) -> list[str]:
        from index.collection import unnamed_text_path
        from index.sharded import shard_of

        keys = [paths[i] if paths else unnamed_text_path(t) for i, t in enumerate(texts)]
        groups: dict[int, list[int]] = {}
        for at, key in enumerate(keys):
            groups.setdefault(shard_of(key, len(self.shards)), []).append(at)
        ids: list[str | None] = [None] * len(texts)
        for shard, positions in groups.items():
            got = self.shards[shard].handle.add_texts.remote(
                [texts[a] for a in positions], [keys[a] for a in positions],
                [metadatas[a] for a in positions] if metadatas else None).result(timeout_s=600)
            for at, chunk_id in zip(positions, got):
                ids[at] = chunk_id
        return ids  # type: ignore[return-value]

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()

    def __len__(self) -> int:
        return self.stats()["chunks"]


def _gather(responses: list[Any], timeout_s: float) -> list[Any]:
    """Each response's result, or the exception standing for a shard that did not answer in
    time (one deadline for all: the round takes at most `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    out = []
    for response in responses:
        if isinstance(response, BaseException):
            out.append(response)
            continue
        try:
            out.append(response.result(timeout_s=max(0.01, deadline - time.monotonic())))
        except Exception as error:  # noqa: BLE001 - died, restarting, timed out: all "down"
            response.cancel() if hasattr(response, "cancel") else None
            out.append(error)
    return out


# ---------------------------------------------------------------- the application


@dataclass(frozen=True)
class RayServePlan:
    """What `deploy` starts: one collection of `shards` shards on host:port, with the replica,
    autoscaling, CPU, timeout and health-check settings of [ray] (codehop.config.RaySettings)."""

    workspace: str
    collection: str
    shards: int
    host: str = "127.0.0.1"
    port: int = 8000
    ray: RaySettings = field(default_factory=RaySettings)


def build_app(plan: RayServePlan, settings):
    """The Serve application: the shard deployments and the ingress (not yet running)."""
    from ray import serve

    from codehop.rest import create_app

    embedding = {"embedding_endpoint": settings.embedding_endpoint(), "device": settings.embedding.device}
    health = {"health_check_period_s": plan.ray.health_check_period_s,
              "health_check_timeout_s": plan.ray.health_check_timeout_s}
    shards = [serve.deployment(ShardReplica, name=shard_deployment(i), num_replicas=1,
                               ray_actor_options={"num_cpus": plan.ray.shard_cpus},
                               max_ongoing_requests=plan.ray.max_ongoing_requests, **health)
              .bind(plan.workspace, plan.collection, i, embedding)
              for i in range(plan.shards)]

    def builder():
        def attach(resources) -> None:  # made on first use: off the event loop the lifespan runs on
            resources.attach(plan.collection, lambda: RayShardedCollection(
                plan.collection, plan.shards, plan.ray.shard_timeout_s, embedding, settings.open_reranker()))

        return create_app(settings, workspace=Path(plan.workspace), roots=[], background=attach)

    class Ingress:
        def __init__(self, *shard_apps) -> None:  # bound to the shards: Serve deploys them first
            pass

    scaling: dict[str, Any] = {"num_replicas": plan.ray.ingress_replicas}
    if plan.ray.min_replicas is not None and plan.ray.max_replicas is not None:
        scaling = {"autoscaling_config": {"min_replicas": plan.ray.min_replicas, "max_replicas": plan.ray.max_replicas,
                                          "target_ongoing_requests": plan.ray.target_ongoing_requests}}
    ingress = serve.deployment(serve.ingress(builder)(Ingress), name="ingress",
                               ray_actor_options={"num_cpus": plan.ray.ingress_cpus},
                               max_ongoing_requests=plan.ray.max_ongoing_requests, **scaling, **health)
    return ingress.bind(*shards)


def deploy(plan: RayServePlan, settings, address: str | None = None, blocking: bool = True) -> None:
    """Join (or start) Ray, run the application with its HTTP proxy on plan.host:port."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 runtime_env=_runtime_env())
    serve.start(http_options={"host": plan.host, "port": plan.port})
    serve.run(build_app(plan, settings), name=APP, route_prefix="/", blocking=blocking)


def _runtime_env() -> dict[str, Any]:
    """Workers import codehop from this checkout (an editable install on every node works too)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {"env_vars": {"PYTHONPATH": root + (os.pathsep + path if path else ""),
                         "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}}

"""The serving cells of the Ray Serve bench, run inside the cluster's namespace (tests.ray_cluster
calls `serving_cells` there): the single-process server, then the Serve application with 1 and
2 ingress replicas over 1 and 3 shards, each loaded the same way."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SINGLE_PORT, SERVE_PORT = 8100, 8000


def load(url: str, queries: list[str], mode: str, concurrency: int, requests: int) -> dict:
    """`requests` POSTs to /v1/search from `concurrency` clients: latency, throughput, errors."""
    import httpx

    latencies: list[float] = []
    errors = partial = 0
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with httpx.Client(timeout=120, limits=limits) as client:
        def one(i: int) -> None:
            nonlocal errors, partial
            started = time.perf_counter()
            response = client.post(f"{url}/v1/search", json={"query": queries[i % len(queries)], "mode": mode, "k": 10})
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors += response.status_code != 200
                partial += response.status_code == 200 and bool(response.json().get("missing_shards"))

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"mode": mode, "concurrency": concurrency, "requests": requests, "errors": errors,
            "partial": partial, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "qps": requests / wall}


def _wait(url: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.post(f"{url}/v1/search", json={"query": "warm up", "mode": "bm25", "k": 1}, timeout=30)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def _cells(url: str, label: dict, questions: list[str], offset: int, requests: int, concurrency: int) -> list[dict]:
    """bm25 then hybrid (hybrid with questions no replica has seen: query vectors are cached)."""
    import httpx

    rows = []
    for mode in ("bm25", "hybrid"):
        httpx.post(f"{url}/v1/search", json={"query": "warm up the embedder", "mode": mode, "k": 10}, timeout=120)
        batch = questions if mode == "bm25" else questions[offset:] + questions[:offset]
        rows.append({**label, **load(url, batch, mode, concurrency, requests)})
    return rows


def serving_cells(workspaces: dict[str, str], questions: list[str], requests: int, concurrency: int,
                  address: str) -> dict:
    """Every serving cell, one after the other on the same cluster; returns rows and notes."""
    import ray
    from ray import serve

    from codehop.config import RaySettings, Settings
    from codehop.serve_ray import APP, RayServePlan, deploy, shard_count

    rows: list[dict] = []
    offset = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # 1. the single-process server of the unsharded workspace (uvicorn, one worker)
    single = subprocess.Popen([sys.executable, "-m", "codehop", "serve", "--no-index", "--no-warm-up",
                               "--workspace", workspaces["1"], "--port", str(SINGLE_PORT),
                               "--source", workspaces["1"]], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{SINGLE_PORT}"
        _wait(url)
        rows += _cells(url, {"server": "single process", "shards": 1, "ingress": "-"}, questions, offset,
                       requests, concurrency)
        offset += requests
    finally:
        single.terminate()
        single.wait(timeout=60)
    # 2. Ray Serve: 1 and 3 shards, 1 and 2 ingress replicas
    settings = Settings()
    for shards_key in ("1", "3"):
        workspace = workspaces[shards_key]
        for replicas in (1, 2):
            settings_here = dataclasses.replace(settings, collection=dataclasses.replace(settings.collection,
                                                                                         name="default"))
            plan = RayServePlan(workspace=workspace, collection="default",
                                shards=shard_count(Path(workspace), "default"), port=SERVE_PORT,
                                ray=RaySettings(ingress_replicas=replicas, shard_cpus=0.5, ingress_cpus=0.5,
                                                shard_timeout_s=30.0))
            started = time.perf_counter()
            deploy(plan, settings_here, address=address, blocking=False)
            url = f"http://127.0.0.1:{SERVE_PORT}"
            _wait(url)
            deploy_s = time.perf_counter() - started
            rows += _cells(url, {"server": "ray serve", "shards": plan.shards, "ingress": replicas,
                                 "deploy_s": round(deploy_s, 1)}, questions, offset, requests, concurrency)
            offset += requests
            serve.delete(APP)
    serve.shutdown()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    return {"rows": rows, "nodes": len(nodes), "cluster_cpus": ray.cluster_resources().get("CPU")}

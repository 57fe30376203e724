"""codehop past one machine, on a real two-node Ray cluster started by the test (tests.ray_cluster):
`codehop index --ray` writes the files of a single-process build; `codehop serve --ray` answers
/v1/search (as the collection does in process) and /v1/ask; with a shard's actor killed it
answers from the others with `partial: true` naming the shard, then recovers.

One cluster for the module (starting one costs ~30 s), a 3-shard collection of a dozen real
source and documentation files, the shipped MiniLM.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests import ray_cluster
from tests.ray_cluster import REPO

pytestmark = pytest.mark.slow

FILES = ["index/atomic.py", "index/persist.py", "index/bm25.py", "index/hybrid.py", "index/store.py",
         "index/walk.py", "index/files.py", "index/query.py", "docs/architecture.md", "docs/methods.md",
         "docs/sandbox.md", "README.md"]
CONFIG = """
[collection]
name = "docs"
shards = 3

[ray]
ingress_replicas = 2
shard_cpus = 0.5
ingress_cpus = 0.5
shard_timeout_s = 2.0
health_check_period_s = 1.0
"""
URL = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def cluster():
    reason = ray_cluster.available()
    if reason:
        pytest.skip(reason)
    with ray_cluster.ray_cluster(head_cpus=2, worker_cpus=2) as cluster:
        yield cluster


def _spread(base: Path) -> Path:
    """A project folder below `base` whose sources every shard owns at least two of.

    A file's shard hashes its absolute path (index.sharded.shard_of), so the temporary folder
    decides the spread: for about one folder in fifty a shard would own none of the 12 files
    (no vectors to compare), and the best hits of a query could all sit on one shard.
    """
    from collections import Counter

    from index.sharded import shard_of

    for n in range(200):
        root = (base / f"project{n}").resolve()
        owners = Counter(shard_of(str(root / "src" / name), 3) for name in FILES)
        if len(owners) == 3 and min(owners.values()) >= 2:
            return root
    raise AssertionError(f"no folder below {base} spreads the files over 3 shards")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with the sources, codehop.toml, and workspaces single/ (plain) and ray/ (--ray)."""
    root = _spread(tmp_path_factory.mktemp("rayproject"))
    for name in FILES:
        target = root / "src" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, target)
    (root / "codehop.toml").write_text(CONFIG)
    return root


def _codehop(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "codehop", "--config", str(project / "codehop.toml"), *args]


@pytest.fixture(scope="module")
def indexed(cluster, project) -> Path:
    """Both builds of src/: single-process (here) and `--ray` (in the cluster)."""
    import subprocess

    single = subprocess.run(_codehop(project, "index", str(project / "src"), "--workspace", str(project / "single"),
                                     "--no-progress"), cwd=project, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    code, out, err = cluster.call(ray_cluster.run, _codehop(
        project, "index", str(project / "src"), "--workspace", str(project / "ray"), "--ray",
        "--address", cluster.address), str(project))
    assert code == 0, err
    project.joinpath("ray-index.log").write_text(out + err)
    return project


def _rows(store: Path) -> dict[str, list]:
    with sqlite3.connect(store) as conn:
        return {"documents": conn.execute("SELECT id, collection, path, hash, metadata FROM documents ORDER BY id").fetchall(),
                "chunks": conn.execute("SELECT * FROM chunks ORDER BY id").fetchall(),
                "collections": conn.execute("SELECT name, config, generation FROM collections").fetchall()}


def test_index_ray_writes_the_files_of_a_single_process_build(indexed):
    log = (indexed / "ray-index.log").read_text()
    assert "(0 embedded)" in log  # the commit found every vector: the Ray job embedded them all
    assert "collection 'docs' now has 12 documents" in log
    for shard in range(3):
        a = indexed / "single" / "shards" / "docs" / str(shard)
        b = indexed / "ray" / "shards" / "docs" / str(shard)
        assert _rows(a / "store.sqlite") == _rows(b / "store.sqlite")
        files_a = sorted(p.relative_to(a) for p in (a / "collections").rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b) for p in (b / "collections").rglob("*") if p.is_file())
        assert files_a == files_b and any(p.name == "flat_vectors.npy" for p in files_a)
        for path in files_a:
            if path.name == "manifest.json":
                one, two = (json.loads((root / path).read_text()) for root in (a, b))
                one.pop("written_at"), two.pop("written_at")
                assert one == two
            elif path.name != ".lock":
                assert (a / path).read_bytes() == (b / path).read_bytes(), path


def _search(cluster, body: dict) -> tuple[int, dict]:
    return cluster.call(ray_cluster.http, "POST", f"{URL}/v1/search", body)


def _full_search(cluster, body: dict) -> tuple[int, dict]:
    """A search every shard answered: one that came back partial because a live shard was
    slower than shard_timeout_s on a loaded machine is asked again (up to 3 times)."""
    for _ in range(3):
        status, answer = _search(cluster, body)
        if status != 200 or answer["partial"] is None:
            break
    return status, answer


@pytest.fixture(scope="module")
def served(cluster, indexed):
    """`codehop serve --ray` of the --ray workspace, until the module ends."""
    pid = cluster.call(ray_cluster.start, _codehop(
        indexed, "serve", "--ray", "--address", cluster.address, "--workspace", str(indexed / "ray"), "--port", "8000"),
        str(indexed), str(indexed / "serve.log"))
    try:
        deadline = time.monotonic() + 240
        while True:
            status, body = _search(cluster, {"query": "atomic write", "k": 1, "mode": "bm25"})
            if status == 200:
                break
            assert time.monotonic() < deadline, (indexed / "serve.log").read_text()[-3000:]
            time.sleep(1)
        yield indexed
    finally:
        cluster.call(ray_cluster.stop, pid)


QUERIES = ["How are index writes made atomic?", "reciprocal rank fusion", "BM25Index search top k",
           "sqlite store transaction", "gitignore walk skip generated files"]


def test_serve_ray_answers_search_as_the_collection_does(cluster, served):
    from index.sharded import ShardedCollection

    replicas = cluster.call(ray_cluster.serve_replicas)
    assert replicas.count("ingress") == 2 and all(replicas.count(f"shard-{i}") == 1 for i in range(3))
    nodes = {cluster.call(ray_cluster.deployment_call, f"shard-{i}", "info")["node"] for i in range(3)}
    assert len(nodes) == 2  # Serve spreads the shard replicas over both nodes
    with ShardedCollection.open(served / "ray", "docs") as collection:
        for query in QUERIES:
            for mode in ("bm25", "hybrid"):
                status, body = _full_search(cluster, {"query": query, "k": 5, "mode": mode})
                assert status == 200 and body["partial"] is None and body["missing_shards"] is None
                expected = collection.search(query, k=5, mode=mode)
                assert [h["id"] for h in body["results"]] == [r.id for r in expected], (query, mode)
                assert [h["score"] for h in body["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)


def test_serve_ray_answers_ask(cluster, served):
    status, body = cluster.call(ray_cluster.http, "POST", f"{URL}/v1/ask",
                                {"query": "How are index writes made atomic?", "generate": False, "k": 3})
    assert status == 200, body
    assert body["sources"] and body["sources"][0]["path"].endswith("atomic.py")
    # a route that needs the store directly says what to do instead, never a 500
    status, body = cluster.call(ray_cluster.http, "DELETE", f"{URL}/v1/collections/docs/documents/1")
    assert status == 501 and "codehop index" in body["error"]["message"]


def _shard(hit: dict) -> int:
    return int(hit["id"].split(":")[0]) >> 40  # chunk ids name their shard


def test_a_killed_shard_gives_partial_answers_then_recovers(cluster, served):
    for text in QUERIES:  # one whose hits come from more than one shard
        query = {"query": text, "k": 10, "mode": "bm25"}
        status, before = _full_search(cluster, query)
        assert status == 200 and before["partial"] is None
        if len({_shard(h) for h in before["results"]}) >= 2:
            break
    else:
        raise AssertionError("every query's hits came from one shard")
    down = _shard(before["results"][0])  # the shard of the best hit
    assert cluster.call(ray_cluster.kill_replicas, f"shard-{down}") == 1
    status, during = _search(cluster, query)
    assert status == 200, during
    assert during["partial"] is True and during["missing_shards"] == [f"docs/{down}"]
    assert during["results"] and all(_shard(h) != down for h in during["results"])
    deadline = time.monotonic() + 120
    while True:  # Serve's controller starts a new replica, which reopens the shard from disk
        status, after = _search(cluster, query)
        if status == 200 and not after["partial"]:
            break
        assert time.monotonic() < deadline, after
        time.sleep(1)
    assert [h["id"] for h in after["results"]] == [h["id"] for h in before["results"]]
    assert [h["score"] for h in after["results"]] == pytest.approx([h["score"] for h in before["results"]])


def test_plain_serve_searches_a_sharded_collection(tmp_path):
    """Without Ray, `codehop serve` opens a sharded collection as one (index.sharded) too."""
    from fastapi.testclient import TestClient

    from codehop.config import Settings
    from codehop.rest import create_app
    from index.collection_config import CollectionConfig
    from index.sharded import ShardedCollection
    from tests.static_model import tiny_static_model

    config = CollectionConfig(embedding_backend="static", embedding_model=str(tiny_static_model(tmp_path / "m")))
    with ShardedCollection.open(tmp_path / "ws", "docs", shards=3, config=config) as collection:
        collection.add_texts([f"note {i} about topic {i % 7}" for i in range(30)], [f"n{i}" for i in range(30)])
        expected = collection.search("topic 3", k=5, mode="bm25")
    with TestClient(create_app(Settings(), workspace=tmp_path / "ws", roots=[])) as client:
        body = client.post("/v1/search", json={"query": "topic 3", "k": 5, "mode": "bm25",
                                               "collection": "docs"}).json()
    assert "results" in body, body
    assert [h["id"] for h in body["results"]] == [r.id for r in expected]
    assert body["partial"] is None and body["missing_shards"] is None

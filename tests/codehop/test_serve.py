"""`codehop serve` end to end: BM25 answers first, vectors follow in the background, a kill -9
mid-way and a restart finish without re-embedding what was committed, and the final results
equal a one-shot index. The tiny static embedder (tests/static_model.py) is held after a set
number of chunks (tests/codehop/embed_gate.py), so the partial state lasts until the test kills
the server, however slow or fast the machine."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("model2vec")

from tests.static_model import tiny_static_model  # noqa: E402

FILES, PARAGRAPHS = 150, 16  # 2,400 chunks


def _tree(root: Path) -> Path:
    root.mkdir(parents=True)
    for f in range(FILES):
        text = "\n\n".join(f"Section {p} of page {f}: token{f}x{p} alpha{f} beta{p} " + "lorem ipsum " * 60
                           for p in range(PARAGRAPHS))
        (root / f"page{f:03d}.txt").write_text(text)
    return root


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(config: Path, tree: Path, workspace: Path, port: int, log: Path, *extra: str,
           hold_after: int | None = None):
    """`codehop serve` in a subprocess; with `hold_after`, its embedder stops for good after
    that many document chunks (tests/codehop/embed_gate.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = ["-m", "codehop"] if hold_after is None else [str(Path(__file__).with_name("embed_gate.py")),
                                                             str(hold_after)]
    return subprocess.Popen(
        [sys.executable, *command, "--config", str(config), "serve", "--source", str(tree),
         "--workspace", str(workspace), "--port", str(port), "--progress-interval", "1",
         "--embed-batch", "100", "--embed-commit-s", "0.5", *extra],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=tree)


def _wait(predicate, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited ({process.returncode}) while waiting for {what}")
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _search(port: int, query: str, mode: str) -> dict:
    response = httpx.post(f"http://127.0.0.1:{port}/v1/search", json={"query": query, "mode": mode, "k": 10},
                          timeout=10)
    response.raise_for_status()
    return response.json()


def _status(port: int) -> dict | None:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["indexing"].get("default")


def _cache_rows(workspace: Path) -> int:
    total = 0
    for path in (workspace / "embeddings").glob("*.sqlite"):
        with sqlite3.connect(path) as conn:
            total += conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
    return total


def _hits(answer: dict) -> list[tuple]:
    return [(h["id"], h["path"], h["start_line"], round(h["score"], 5)) for h in answer["results"]]


def test_serve_answers_first_embeds_after_and_resumes_after_kill(tmp_path):
    model = tiny_static_model(tmp_path / "tiny")
    config = tmp_path / "codehop.toml"
    config.write_text(f'[embedding]\nbackend = "static"\nmodel = "{model}"\n')
    tree, workspace, port = _tree(tmp_path / "tree"), tmp_path / "ws", _port()

    # 700 of the 2,400 chunks are embedded, in batches of 100 each committed, then the rest waits
    first = _start(config, tree, workspace, port, tmp_path / "first.log", "--embed-commit-s", "0",
                   hold_after=700)
    try:
        # the server is up at once and scans in the background: wait for the BM25 commit
        answer = _wait(lambda: (a := _search(port, "token7x3 alpha7", "bm25"))["results"] and a, 45,
                       "the first answer", first)
        assert answer["results"][0]["path"].endswith("page007.txt") and answer["partial"] is None
        hybrid = _search(port, "token7x3 alpha7", "hybrid")
        assert hybrid["results"] and 0.0 <= hybrid["partial"]["dense"] < 1.0  # says it is partial
        status = _wait(lambda: (s := _status(port)) and s["commits"] >= 6 and s["chunks_done"] >= 700 and s,
                       45, "the committed batches before the hold", first)
        assert status["state"] == "embedding" and status["chunks_total"] == FILES * PARAGRAPHS
        assert status["chunks_done"] == 700  # held: nothing past the gate
        assert status["documents_total"] == FILES and status["rate_chunks_per_s"] and status["eta_s"] is not None
        assert 0 < status["dense_fraction"] < 1
        _wait(lambda: "chunks/s, ETA" in (tmp_path / "first.log").read_text(), 45, "a progress line", first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    cached = _cache_rows(workspace)
    assert cached == 700  # what was embedded before the hold, kept by the kill -9
    log = (tmp_path / "first.log").read_text()
    assert "BM25 search is ready" in log and "chunks/s, ETA" in log  # progress lines, not a tty
    assert f"codehop: scanning default: 0/{FILES} files" in log  # the scan's first status line

    second = _start(config, tree, workspace, port, tmp_path / "second.log")
    try:
        final = _wait(lambda: (s := _status(port)) and s["state"] == "done" and s, 60, "the end", second)
        # only what the cache lacked was embedded; the rest came from the cache or the index
        assert final["embedded"] == FILES * PARAGRAPHS - cached
        assert final["chunks_done"] == final["chunks_total"] and final["dense_fraction"] == 1.0
        answers = {(q, m): _search(port, q, m) for q in ("token12x5 beta5", "alpha140 lorem")
                   for m in ("hybrid", "dense")}
        assert all(a["partial"] is None for a in answers.values())
    finally:
        second.terminate()
        second.wait(20)

    from codehop.commands.index import _code_chunker
    from codehop.config import load_settings
    from index import Collection

    settings = load_settings(str(config))
    with Collection.open(tmp_path / "one-shot", config=settings.collection_config()) as one_shot:
        one_shot.add_paths([tree], chunker=_code_chunker(), progress=False)
        for (query, mode), answer in answers.items():
            expected = [(r.id, r.path, r.start_line, round(r.score, 5)) for r in one_shot.search(query, k=10, mode=mode)]
            assert _hits(answer) == expected


def test_serve_no_index_resumes_the_vectors_a_stopped_run_left(tmp_path):
    from index import Collection, CollectionConfig

    model = tiny_static_model(tmp_path / "tiny")
    config = tmp_path / "codehop.toml"
    config.write_text(f'[embedding]\nbackend = "static"\nmodel = "{model}"\n')
    tree, workspace, port = tmp_path / "tree", tmp_path / "ws", _port()
    tree.mkdir()
    for f in range(10):
        (tree / f"page{f}.txt").write_text(f"Page {f}: alpha{f} " + "lorem ipsum " * 20)
    # what a `codehop serve` killed before its first vector leaves: BM25 committed, chunks pending
    with Collection.open(workspace, config=CollectionConfig(embedding_backend="static",
                                                            embedding_model=str(model))) as collection:
        collection.add_paths([tree], progress=False, defer_dense=True)
        assert len(collection.pending_ids()) == 10
    (tree / "later.txt").write_text("A file written after that run: not scanned under --no-index.")
    server = _start(config, tree, workspace, port, tmp_path / "serve.log", "--no-index")
    try:
        final = _wait(lambda: (s := _status(port)) and s["state"] == "done" and s, 60, "the end", server)
        assert final["embedded"] == 10 and final["dense_fraction"] == 1.0 and final["files_total"] == 0
        assert not _search(port, "written after that run", "bm25")["results"]
        assert _search(port, "alpha3", "dense")["partial"] is None
    finally:
        server.terminate()
        server.wait(20)


def test_serve_on_a_busy_port_fails_before_saying_it_serves(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        ran = subprocess.run([sys.executable, "-m", "codehop", "serve", "--port", str(port), "--no-index",
                              "--workspace", str(tmp_path / "ws")], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert ran.returncode == 6, ran.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in ran.stderr and "another --port" in ran.stderr
    assert "serving http" not in ran.stderr

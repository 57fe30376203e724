"""The served re-ranker, against a real HTTP server on 127.0.0.1 that scores like a tiny
cross-encoder: the number of query words a document holds, over its length in words."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from index import Collection, CollectionConfig
from runtime.errors import ModelServerError
from runtime.openai_http import OpenAIEndpoint
from index.rerank import ServedReranker
from index.types import SearchResult


def _score(query: str, document: str) -> float:
    words = document.lower().split()
    return sum(w.strip(".,?") in query.lower().split() for w in words) / max(1, len(words))


@pytest.fixture
def rerank_server():
    seen: list[dict] = []
    shape = {"tei": False}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.path not in ("/v1/rerank", "/rerank"):  # a server without the route
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            seen.append({"path": self.path, **body})
            scored = [{"index": i, ("score" if shape["tei"] else "relevance_score"): _score(body["query"], d)}
                      for i, d in enumerate(body.get("documents") or body.get("texts"))]
            scored.sort(key=lambda item: -list(item.values())[1])
            reply = json.dumps(scored if shape["tei"] else {"results": scored}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen, shape
    server.shutdown()


def _results(*texts: str) -> list[SearchResult]:
    return [SearchResult(f"1:{i}", 1.0 - i / 10, f"doc{i}.txt", 1, 1, t) for i, t in enumerate(texts)]


def test_results_come_back_in_the_servers_order_with_its_scores(rerank_server):
    url, seen, shape = rerank_server
    reranker = ServedReranker(OpenAIEndpoint(url, "tiny-reranker"), candidates=3)
    results = _results("nothing here at all", "atomic writes", "writes are renamed", "outside the head")
    for tei in (False, True):
        shape["tei"] = tei
        ranked = reranker.rerank("how are writes atomic", results)
        assert [r.id for r in ranked] == ["1:1", "1:2", "1:0", "1:3"]  # the 4th is past candidates
        assert ranked[0].score == pytest.approx(1.0) and ranked[3].score == results[3].score
    assert seen[-1]["path"] == "/v1/rerank" and seen[-1]["model"] == "tiny-reranker"
    assert seen[-1]["documents"] == [r.text for r in results[:3]] and seen[-1]["top_n"] == 3


def test_a_server_that_is_not_a_reranker_is_named(rerank_server):
    url, _, _ = rerank_server
    bad = ServedReranker(OpenAIEndpoint(url.replace("/v1", "/nope"), "m"))
    with pytest.raises(ModelServerError):
        bad.rerank("q", _results("a", "b"))


def test_hybrid_search_is_reranked_and_other_modes_are_not(rerank_server, tmp_path):
    url, seen, _ = rerank_server
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "long.txt").write_text("Writes writes writes: the store commits writes in a WAL, and "
                                   "readers keep reading the last committed state while it does.\n")
    (tree / "short.txt").write_text("Atomic writes.\n")
    config = CollectionConfig()
    with Collection.open(tmp_path / "ws", config=config) as plain:
        plain.add_paths([tree], progress=False)
    reranker = ServedReranker(OpenAIEndpoint(url, "tiny-reranker"), candidates=10)
    with Collection.open(tmp_path / "ws", reranker=reranker) as collection:
        query = "writes atomic"
        bm25 = collection.search(query, k=2, mode="bm25")
        hybrid = collection.search(query, k=2)
        assert len(seen) == 1 and seen[0]["query"] == query  # only the hybrid search asked
        expected = sorted(bm25, key=lambda r: -_score(query, r.text))
        assert [h.path for h in hybrid] == [e.path for e in expected]
        assert hybrid[0].path.endswith("short.txt")

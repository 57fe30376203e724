"""A served re-ranker over the fused top-k: the `/v1/rerank` shape that vLLM, Jina, Cohere and
TEI serve (a cross-encoder reads the query and each candidate together, which the shipped
sentence embedder cannot).

    ServedReranker(OpenAIEndpoint("http://127.0.0.1:8000/v1", "bge-reranker-v2-m3")).rerank(
        "how are writes made atomic?", results)  -> the same results, best first by the server

Request: {"model", "query", "documents": [texts], "top_n"}; reply: {"results": [{"index",
"relevance_score"}]} (vLLM, Jina, Cohere) or a bare list of {"index", "score"} (TEI, whose
route is /rerank at the server root: give its root as base_url). A candidate the server
leaves out keeps its place after the scored ones; the score shown becomes the server's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from runtime.errors import InvalidInputError, ModelServerError
from runtime.openai_http import OpenAIClient, OpenAIEndpoint
from index.types import SearchResult

DEFAULT_CANDIDATES = 50


class ServedReranker:
    """Re-orders search results by a re-ranking server's scores."""

    def __init__(self, endpoint: OpenAIEndpoint, candidates: int = DEFAULT_CANDIDATES) -> None:
        if candidates <= 0:
            raise InvalidInputError(f"[reranker] candidates must be positive, got {candidates}")
        self.endpoint, self.candidates = endpoint, candidates
        self._client = OpenAIClient(endpoint)

    @property
    def name(self) -> str:
        return f"{self.endpoint.model} at {self.endpoint.base_url}"

    def rerank(self, query: str, results: list[SearchResult]) -> list[SearchResult]:
        """`results` (the first `candidates` of them re-scored) best first by the server."""
        head, tail = results[: self.candidates], results[self.candidates:]
        if len(head) < 2:
            return results
        reply = self._client.post("/rerank", {"model": self.endpoint.model, "query": query,
                                             "documents": [r.text for r in head], "top_n": len(head)})
        scores = _scores(reply.body, len(head), self._client.url("/rerank"))
        order = sorted(scores, key=lambda at: -scores[at])
        scored = [dataclasses.replace(head[at], score=scores[at]) for at in order]
        return scored + [r for at, r in enumerate(head) if at not in scores] + tail

    def close(self) -> None:
        self._client.close()


def _scores(body: Any, count: int, url: str) -> dict[int, float]:
    """index -> score from either reply shape; a malformed reply names the server."""
    items = body.get("results") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise ModelServerError(f"{url} answered without a 'results' list: is it a re-ranking server?")
    scores: dict[int, float] = {}
    for item in items:
        try:
            at = int(item["index"])
            score = float(item["relevance_score"] if "relevance_score" in item else item["score"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelServerError(f"{url} answered a result without index and score ({item!r})") from error
        if 0 <= at < count:
            scores[at] = score
    return scores

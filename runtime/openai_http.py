"""HTTP plumbing for OpenAI-compatible model servers (Ollama, `vllm serve`, llama.cpp's server,
LM Studio, OpenAI itself, or another codehop): one client that both the embedding backend
(runtime.embed) and the generator backend (rag.openai_generator) use.

What it owns: the endpoint settings, JSON requests, server-sent-event streams, retries with
backoff on 429/503 (honouring `Retry-After`), and turning every transport failure into one
`ModelServerError` that names the URL and, where there is one, the HTTP status.

Example::

    client = OpenAIClient(OpenAIEndpoint("http://127.0.0.1:11434/v1", model="llama3.1"))
    client.post("/chat/completions", {"model": "llama3.1", "messages": [...]})
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from runtime.errors import InvalidInputError, ModelServerError

RETRY_STATUSES = (429, 503)


@dataclass(frozen=True)
class OpenAIEndpoint:
    """Where an OpenAI-compatible server lives and how patiently to talk to it.

    Args:
        base_url: the API root including its version, e.g. "http://127.0.0.1:8000/v1".
        model: the model name the server knows.
        api_key: sent as `Authorization: Bearer ...` (None: no header). The faces read it from
            the environment variable the settings name; it is never stored in a file.
        timeout_s: per-request timeout (connect, read gaps of a stream included).
        max_retries: extra attempts after a 429/503 or a refused connection.
        backoff_s: first wait between attempts; it doubles each time (capped at 30 s).
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 3
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidInputError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model.strip():
            raise InvalidInputError("an OpenAI-compatible backend needs a model name (the server's)")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0:
            raise InvalidInputError("need timeout_s > 0, max_retries >= 0 and backoff_s >= 0")

    @property
    def root(self) -> str:
        """The server root (base_url without a trailing /v1): vLLM's and llama.cpp's own
        routes such as /tokenize and /infill live there."""
        url = self.base_url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class Response:
    """A finished JSON response: its body and headers (lower-case names)."""

    body: Any
    headers: dict[str, str]
    status: int


class OpenAIClient:
    """JSON and SSE requests against one endpoint, with retries and clear errors.

    `sleep` is injectable so tests of the backoff do not wait.
    """

    def __init__(self, endpoint: OpenAIEndpoint, sleep: Callable[[float], None] = time.sleep) -> None:
        import httpx

        self.endpoint = endpoint
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(endpoint.timeout_s))

    def close(self) -> None:
        self._http.close()

    def url(self, path: str, root: bool = False) -> str:
        base = self.endpoint.root if root else self.endpoint.base_url.rstrip("/")
        return base + path

    # ---------------------------------------------------------------- requests

    def get(self, path: str, root: bool = False) -> Response:
        return self._send("GET", self.url(path, root), None)

    def post(self, path: str, body: dict[str, Any], root: bool = False) -> Response:
        return self._send("POST", self.url(path, root), body)

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST with `"stream": true` and yield each SSE `data:` payload until `[DONE]`."""
        import httpx

        url = self.url(path)
        for attempt in self._attempts(url):
            try:
                # llama.cpp's server drops a connection after a stream while announcing
                # keep-alive, so the next request on it would fail: a stream has its own.
                with self._http.stream("POST", url, json={**body, "stream": True},
                                       headers={"connection": "close"}) as response:
                    if response.status_code in RETRY_STATUSES and attempt.more:
                        attempt.wait(response.headers.get("retry-after"))
                        continue
                    if response.status_code >= 400:
                        response.read()
                        raise self._status_error(url, response.status_code, response.text)
                    yield from _sse_payloads(url, response.iter_lines())
                    return
            except httpx.TransportError as error:
                self._retry_or_raise(url, error, attempt)

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> Response:
        import httpx

        stale_retried = False
        for attempt in self._attempts(url):
            try:
                response = self._http.request(method, url, json=body)
            except httpx.RemoteProtocolError as error:
                # A pooled keep-alive connection the server had closed: it never saw the
                # request, so one fresh connection is safe (and not counted as a retry).
                if stale_retried or "without sending a response" not in str(error):
                    raise self._transport_error(url, error) from error
                stale_retried = True
                response = self._send_fresh(method, url, body)
            except httpx.TransportError as error:
                self._retry_or_raise(url, error, attempt)
                continue
            if response.status_code in RETRY_STATUSES and attempt.more:
                attempt.wait(response.headers.get("retry-after"))
                continue
            if response.status_code >= 400:
                raise self._status_error(url, response.status_code, response.text)
            try:
                payload = response.json()
            except ValueError as error:
                raise ModelServerError(f"model server {url} answered {response.status_code} with a body "
                                       f"that is not JSON: {response.text[:200]!r}") from error
            return Response(payload, {k.lower(): v for k, v in response.headers.items()},
                            response.status_code)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send_fresh(self, method: str, url: str, body: dict[str, Any] | None):
        import httpx

        try:
            return self._http.request(method, url, json=body, headers={"connection": "close"})
        except httpx.TransportError as error:
            raise self._transport_error(url, error) from error

    # ---------------------------------------------------------------- errors and retries

    def _attempts(self, url: str) -> Iterator["_Attempt"]:
        total = self.endpoint.max_retries + 1
        for number in range(total):
            yield _Attempt(number, total, self.endpoint.backoff_s, self._sleep)

    @staticmethod
    def _status_error(url: str, status: int, text: str) -> ModelServerError:
        try:
            detail = json.loads(text).get("error", text)
            detail = detail.get("message", detail) if isinstance(detail, dict) else detail
        except (ValueError, AttributeError):
            detail = text
        hint = " (check api_key_env)" if status in (401, 403) else ""
        return ModelServerError(f"model server {url} answered HTTP {status}{hint}: {str(detail)[:300]}",
                                status=status, detail=str(detail))

    def _retry_or_raise(self, url: str, error: Exception, attempt: "_Attempt") -> None:
        """After a failed connection: wait for the next attempt (refused, tries left), or raise
        the error that names the URL (timeouts are not retried: the server is busy or gone)."""
        import httpx

        if isinstance(error, httpx.TimeoutException):
            raise ModelServerError(f"model server {url} did not answer within "
                                   f"{self.endpoint.timeout_s:g} s (timeout_s): {error}", timed_out=True) from error
        if _refused(error) and attempt.more:
            attempt.wait(None)
            return
        raise self._transport_error(url, error) from error

    def _transport_error(self, url: str, error: Exception) -> ModelServerError:
        reason = "connection refused" if _refused(error) else str(error) or type(error).__name__
        return ModelServerError(f"cannot reach the model server at {url}: {reason}; is it running, "
                                f"and is base_url ({self.endpoint.base_url}) right?")


@dataclass
class _Attempt:
    number: int
    total: int
    backoff_s: float
    sleep: Callable[[float], None]

    @property
    def more(self) -> bool:
        return self.number + 1 < self.total

    def wait(self, retry_after: str | None) -> None:
        delay = min(30.0, self.backoff_s * 2 ** self.number)
        if retry_after:
            try:
                delay = min(30.0, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        self.sleep(delay)


def _refused(error: Exception) -> bool:
    import httpx

    return isinstance(error, httpx.ConnectError)


def _sse_payloads(url: str, lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of an SSE stream; a stream that ends without `[DONE]` is an error."""
    import httpx

    try:
        for line in lines:
            if not line or line.startswith(":") or not line.startswith("data:"):
                continue  # blank separators, comments, `event:` lines
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                payload = json.loads(data)
            except ValueError as error:
                raise ModelServerError(f"model server {url} sent a malformed stream event: {data[:200]!r}") from error
            if isinstance(payload, dict) and "error" in payload:
                raise ModelServerError(f"model server {url} reported an error mid-stream: {payload['error']}")
            yield payload
    except httpx.TransportError as error:  # the connection dropped mid-stream
        raise ModelServerError(f"model server {url} cut the stream off: {error or type(error).__name__}") from error
    raise ModelServerError(f"model server {url} ended the stream without [DONE] (cut off mid-way?)")

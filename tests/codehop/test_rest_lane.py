"""codehop/rest_lane.py through a real server: generation has a bounded lane of its own, and
search and /health never wait behind it (issue 32).

The server is uvicorn on a loopback socket, in a thread, so a client that hangs up really
closes its connection. The generator is a real implementation of the generation contract
whose calls block until the test releases them; every wait is on an event or on the lane's
own state (GenerationLane.wait_until), never a sleep.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest

pytest.importorskip("model2vec")

from codehop.config import EmbeddingSettings, ServerSettings, Settings  # noqa: E402
from codehop.rest import create_app, get_generator  # noqa: E402
from codehop.rest_lane import GenerationLane  # noqa: E402
from runtime.errors import OverloadedError  # noqa: E402
from runtime.generation import Generation, GenerationConfig  # noqa: E402
from tests.static_model import tiny_static_model  # noqa: E402

WAIT_S = 30  # upper bound on any one wait; the events normally arrive in milliseconds


class GatedGenerator:
    """The generation contract; each call announces its prompt on `started` and blocks until
    `release` is set. `stream` yields one piece, then waits for `release` before the rest,
    and records in `closed` whether it was stopped early."""

    name, supports_fim, parameters = "gated", False, None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: queue.Queue[str] = queue.Queue()
        self.order: list[str] = []
        self.threads: list[str] = []
        self.closed = threading.Event()
        self.streamed: list[str] = []

    def _begin(self, prompt: str) -> None:
        self.order.append(prompt)
        self.threads.append(threading.current_thread().name)
        self.started.put(prompt)

    def complete(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        self._begin(prompt)
        assert self.release.wait(WAIT_S), "the test never released the generator"
        return Generation(f"answer to {prompt[-40:]}", [1, 2], None, "stop", 3, 0.0)

    def stream(self, prompt: str, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        self._begin(prompt)
        pieces = ["first", " second", " third", " fourth"]
        try:
            for i, piece in enumerate(pieces):
                if i == 1:
                    assert self.release.wait(WAIT_S), "the test never released the generator"
                self.streamed.append(piece)
                yield piece
        finally:
            if len(self.streamed) < len(pieces):
                self.closed.set()

    def chat(self, messages, config: GenerationConfig = GenerationConfig()) -> Generation:
        return self.complete(messages[-1]["content"], config)

    def chat_stream(self, messages, config: GenerationConfig = GenerationConfig()) -> Iterator[str]:
        return self.stream(messages[-1]["content"], config)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def fim_prompt(self, prefix: str, suffix: str) -> str | None:
        return None

    def complete_fim(self, prefix: str, suffix: str, config: GenerationConfig = GenerationConfig()) -> Generation:
        return self.complete(prefix, config)


def _one_thread_pool(app):
    """The app, with Starlette's shared thread pool cut to one thread: anything generation
    left on that pool would then block every sync route (issue 32's 34 s search)."""
    async def wrapped(scope, receive, send):
        if scope["type"] == "lifespan":
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        await app(scope, receive, send)
    return wrapped


@contextmanager
def serving(app) -> Iterator[str]:
    """uvicorn serving `app` on a loopback socket that listens before the thread starts (so
    requests queue in the backlog until it is up: nothing to poll). Yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(_one_thread_pool(app), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        # Answered once the lifespan has built the resources and the lanes.
        assert httpx.get(f"{url}/health", timeout=WAIT_S).status_code == 200
        yield url
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()


@pytest.fixture()
def server(tmp_path):
    """(base url, app, generator): a workspace with one static-embedder collection; lane of
    one generating request and two waiting."""
    from index import Collection, CollectionConfig

    model = str(tiny_static_model(tmp_path / "static"))
    config = CollectionConfig(embedding_backend="static", embedding_model=model)
    with Collection.open(tmp_path / "ws", "default", config=config) as collection:
        collection.add_texts(["Penguins live in Antarctica and eat krill.",
                              "The zebra service listens on port 9000 behind nginx."],
                             paths=["penguins", "zebra"])
    settings = Settings(embedding=EmbeddingSettings(backend="static", model=model),
                        server=ServerSettings(generation_concurrency=1, generation_queue=2))
    app = create_app(settings, workspace=tmp_path / "ws", roots=[])
    generator = GatedGenerator()
    app.dependency_overrides[get_generator] = lambda: generator
    with serving(app) as url:
        yield url, app, generator
    generator.release.set()


def _ask(url: str, question: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/ask", timeout=WAIT_S, json={
        "query": question, "mode": "bm25", "rewrite": "off", "filter": "off", "k": 1, "max_tokens": 8})


def _lane(app) -> GenerationLane:
    return app.state.lane


def test_search_and_health_answer_while_the_lane_is_full_and_asks_finish_in_order(server):
    url, app, generator = server
    with ThreadPoolExecutor(3) as clients:
        first = clients.submit(_ask, url, "Where do penguins live? (A)")
        assert "(A)" in generator.started.get(timeout=WAIT_S)  # A holds the only model slot
        second = clients.submit(_ask, url, "What eats krill? (B)")
        assert _lane(app).wait_until(lambda s: s.queued == 1, WAIT_S)
        third = clients.submit(_ask, url, "Which port does zebra use? (C)")
        assert _lane(app).wait_until(lambda s: s.queued == 2, WAIT_S)

        # The lane is full and the generator blocked: the cheap paths still answer.
        search = httpx.post(f"{url}/v1/search", json={"query": "penguins krill", "mode": "bm25", "k": 1},
                            timeout=WAIT_S)
        assert search.status_code == 200 and search.json()["results"][0]["path"] == "penguins"
        health = httpx.get(f"{url}/health", timeout=WAIT_S).json()["generation"]
        assert (health["running"], health["queued"], health["queue_size"]) == (1, 2, 2)

        refused = _ask(url, "One too many? (D)")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) == health["retry_after_s"] >= 1
        assert "generation_queue" in refused.json()["error"]["message"]
        metrics = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
        assert "codehop_generation_queue_depth 2" in metrics
        assert "codehop_generation_rejected_total 1" in metrics

        generator.release.set()
        answers = [future.result(timeout=WAIT_S) for future in (first, second, third)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert _tags(generator.order) == ["(A)", "(B)", "(C)"]
    assert all(name.startswith("codehop-generation") for name in generator.threads)
    status = _lane(app).status()
    assert (status.admitted, status.completed_total, status.rejected_total) == (0, 3, 1)
    assert status.wait_s_mean > 0 and status.service_s_ewma is not None


def _tags(prompts: list[str]) -> list[str]:
    """Which ask each prompt answered, by the tag its question carries."""
    return [next(tag for tag in ("(A)", "(B)", "(C)", "(D)") if tag in prompt) for prompt in prompts]


def _raw_post(url: str, path: str, body: dict) -> socket.socket:
    """Send a POST on a raw socket and leave it open; closing it is a client hanging up."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    conn = socket.create_connection((host, int(port)), timeout=WAIT_S)
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return conn


def test_a_queued_request_whose_client_leaves_is_dropped(server):
    url, app, generator = server
    with ThreadPoolExecutor(1) as clients:
        first = clients.submit(_ask, url, "Where do penguins live? (A)")
        generator.started.get(timeout=WAIT_S)
        waiting = _raw_post(url, "/v1/ask", {"query": "Gone? (B)", "mode": "bm25", "rewrite": "off",
                                             "filter": "off", "k": 1})
        assert _lane(app).wait_until(lambda s: s.queued == 1, WAIT_S)
        waiting.close()
        assert _lane(app).wait_until(lambda s: s.queued == 0 and s.cancelled_total == 1, WAIT_S)
        generator.release.set()
        assert first.result(timeout=WAIT_S).status_code == 200
    assert _lane(app).wait_until(lambda s: s.admitted == 0, WAIT_S)
    assert len(generator.order) == 1  # B never reached the model


def test_a_stream_whose_client_leaves_stops_and_frees_the_model(server):
    url, app, generator = server
    conn = _raw_post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                   "stream": True, "max_tokens": 8})
    assert generator.started.get(timeout=WAIT_S) == "hi"
    received = b""
    while b"first" not in received:  # the first piece reached the client
        chunk = conn.recv(4096)
        assert chunk, received  # the server must not close before the first piece
        received += chunk
    conn.close()
    assert _lane(app).wait_until(lambda s: s.cancelled_total == 1, WAIT_S)
    generator.release.set()  # the producer's next piece finds the ticket cancelled
    assert generator.closed.wait(WAIT_S)
    assert _lane(app).wait_until(lambda s: s.admitted == 0 and s.running == 0, WAIT_S)
    assert len(generator.streamed) < 4


def test_a_slow_stream_reader_does_not_hold_the_model(server):
    """The producer writes the whole answer into the buffer and gives the slot back while the
    client has not read a byte of it."""
    url, app, generator = server
    generator.release.set()
    conn = _raw_post(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                   "stream": True, "max_tokens": 8})
    assert _lane(app).wait_until(lambda s: s.completed_total == 1 and s.running == 0, WAIT_S)
    received = b""
    while b"[DONE]" not in received:
        chunk = conn.recv(4096)
        assert chunk, received
        received += chunk
    conn.close()
    assert generator.streamed == ["first", " second", " third", " fourth"]


def test_retry_after_is_the_measured_service_time_times_the_queue_position():
    now = [0.0]
    lane = GenerationLane(concurrency=1, queue_size=0, clock=lambda: now[0])
    assert lane.status().retry_after_s == 1  # nothing measured yet: one second per request
    for held in (10.0, 20.0):
        ticket = lane.admit()
        with ticket.hold():
            now[0] += held
        lane._finish(ticket)
    assert lane.status().service_s_ewma == pytest.approx(0.3 * 20 + 0.7 * 10)
    busy = lane.admit()
    with pytest.raises(OverloadedError) as refused:
        lane.admit()
    assert refused.value.retry_after == 13  # ceil(13 s x position 1 / 1 slot)
    lane._finish(busy)
    lane.close()


def test_transformers_generation_stops_when_cancelled(tiny_llama):
    from runtime.cancel import cancellable
    from rag.llm import TransformersGenerator

    generator = TransformersGenerator.from_model(*tiny_llama, name="tiny")
    config = GenerationConfig(max_new_tokens=20)
    stop = threading.Event()
    pieces = []
    with cancellable(stop):
        for piece in generator.stream("def fib(n):", config):
            pieces.append(piece)
            stop.set()  # the client left after the first piece
    assert len(pieces) == 1
    with cancellable(stop):
        cut = generator.complete("def fib(n):", config)
    assert cut.finish_reason == "cancelled" and cut.token_ids == []
    assert len(generator.complete("def fib(n):", config).token_ids) > 1  # outside: runs to the end
    assert not generator._lock.locked()


def test_an_agent_holds_the_model_only_for_its_model_turns():
    """Between two model turns (while a tool runs) the agent's request holds no slot, so a
    queued ask can generate; each turn queues again."""
    from codehop.rest_generation import _HeldGenerator

    lane = GenerationLane(concurrency=1, queue_size=1)
    seen = []

    class Recorder(GatedGenerator):
        def complete(self, prompt, config=GenerationConfig()):
            seen.append(lane.status().running)
            return Generation("ok", [1], None, "stop", 1, 0.0)

    generator = Recorder()
    agent = lane.admit()
    held = _HeldGenerator(generator, agent)
    held.chat([{"role": "user", "content": "turn 1"}])
    between = lane.status()
    ask = lane.admit()  # the lane has room for one more: it generates while the agent's tool runs
    with ask.hold():
        assert lane.status().running == 1
    held.chat([{"role": "user", "content": "turn 2"}])
    assert seen == [1, 1] and (between.running, between.admitted) == (0, 1)
    assert held.count_tokens("a b c") == 3 and held.name == "gated"  # the rest passes through
    lane._finish(agent)
    lane._finish(ask)
    lane.close()

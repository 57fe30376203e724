"""OpenAIClient against a real scripted HTTP server: retries, clear errors, SSE parsing."""

from __future__ import annotations

import socket

import pytest

from runtime.errors import ModelServerError
from runtime.openai_http import OpenAIClient, OpenAIEndpoint
from tests.scripted_server import Reply, ScriptedServer


@pytest.fixture
def server():
    with ScriptedServer() as running:
        yield running


def client_for(base_url: str, retries: int = 2, sleeps: list | None = None) -> OpenAIClient:
    endpoint = OpenAIEndpoint(base_url, "m", api_key="secret", timeout_s=5, max_retries=retries)
    return OpenAIClient(endpoint, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_429_then_success_retries_after_the_servers_delay(server):
    server.script("/v1/models", Reply(429, {"error": "slow down"}, {"retry-after": "2"}),
                  Reply(200, {"data": [{"id": "m"}]}))
    sleeps: list[float] = []
    response = client_for(server.base_url, sleeps=sleeps).get("/models")
    assert response.body["data"][0]["id"] == "m"
    assert sleeps == [2.0]
    assert len(server.bodies("/v1/models")) == 2


def test_503_until_retries_run_out_names_url_and_status(server):
    server.script("/v1/models", *[Reply(503, {"error": {"message": "loading model"}})] * 3)
    sleeps: list[float] = []
    with pytest.raises(ModelServerError) as caught:
        client_for(server.base_url, retries=2, sleeps=sleeps).get("/models")
    assert caught.value.status == 503
    assert f"{server.base_url}/models" in str(caught.value) and "loading model" in str(caught.value)
    assert sleeps == [0.5, 1.0]  # exponential backoff


def test_server_down_is_a_clear_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(ModelServerError, match="cannot reach the model server.*connection refused"):
        client_for(f"http://127.0.0.1:{port}/v1", retries=1, sleeps=sleeps).post("/chat/completions", {})
    assert len(sleeps) == 1  # refused connections are retried (a server starting up)


def test_non_json_body_is_a_clear_error(server):
    server.script("/v1/completions", Reply(200, b"<html>proxy login</html>"))
    with pytest.raises(ModelServerError, match="not JSON.*proxy login"):
        client_for(server.base_url).post("/completions", {"prompt": "x"})


def test_unauthorised_hints_at_the_key_and_sends_it(server):
    server.script("/v1/models", Reply(401, {"error": {"message": "bad key"}}))
    with pytest.raises(ModelServerError, match="HTTP 401 \\(check api_key_env\\): bad key"):
        client_for(server.base_url).get("/models")


def test_stream_yields_payloads_until_done(server):
    server.script("/v1/chat/completions", Reply(200, [": keep-alive", 'data: {"n": 1}', 'data: {"n": 2}',
                                                      "data: [DONE]"]))
    payloads = list(client_for(server.base_url).stream("/chat/completions", {"messages": []}))
    assert payloads == [{"n": 1}, {"n": 2}]
    assert server.bodies("/v1/chat/completions")[0]["stream"] is True


def test_stream_cut_mid_way_is_an_error_not_a_short_answer(server):
    server.script("/v1/chat/completions", Reply(200, ['data: {"n": 1}'], cut=True))
    got = []
    with pytest.raises(ModelServerError, match="cut the stream off|without \\[DONE\\]"):
        for payload in client_for(server.base_url).stream("/chat/completions", {}):
            got.append(payload)
    assert got == [{"n": 1}]


def test_malformed_stream_event_and_mid_stream_error(server):
    server.script("/v1/completions", Reply(200, ["data: {not json"]),
                  Reply(200, ['data: {"error": "out of memory"}']))
    client = client_for(server.base_url)
    with pytest.raises(ModelServerError, match="malformed stream event"):
        list(client.stream("/completions", {}))
    with pytest.raises(ModelServerError, match="error mid-stream: out of memory"):
        list(client.stream("/completions", {}))


def test_endpoint_validation():
    with pytest.raises(Exception, match="http:// or https://"):
        OpenAIEndpoint("localhost:8000", "m")
    assert OpenAIEndpoint("http://h:1/v1/", "m").root == "http://h:1"

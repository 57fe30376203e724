"""Tabby's own editor agent (npm `tabby-agent` 1.5.0, the core of Tabby's IDE plugins) against
a real `codehop serve`, driven as an editor drives it: `tabby-agent --lsp --stdio`, configured
by $HOME/.tabby-client/agent/config.toml.

What the agent does (read in its dist/cli.js): on `initialize` it calls GET /v1/health; a 2xx
with a HealthState makes it "ready", a 401/403 there "unauthorized", anything else
"disconnected"; the two bad states reach the editor as a `window/showMessage` warning
("Tabby agent status: ..."). Its LSP mode offers `textDocument/completion` (no inline
completion in 1.5.0), answered from POST /v1/completions. Its debug log records each status
change; the test reads it to tell "ready" apart from "nothing happened yet". Its older
JSON-lines protocol (`--stdio` alone) exposes the agent's functions directly: there the test
compares the agent's view of the server with /v1/health and posts completion events.

scripts/test_tools.sh installs the agent (npm ci in tests/editors/tabby_agent); the server runs
a tiny Llama built to write one known completion (`slugify_model_dir`).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from lsprotocol import types
from pygls import uris
from pytest_lsp import ClientServerConfig

from tests.editors.conftest import MAIN, REPO_ROOT, SERVER_ENV, need
from tests.servers import free_port, start_server, stop_server

AGENT = REPO_ROOT / "tests" / "editors" / "tabby_agent" / "node_modules" / "tabby-agent" / "dist" / "cli.js"
TOKEN = "codehop-test-token"


def _serve(project: Path, model: Path, tmp_path: Path, api_key: str | None) -> tuple:
    config = tmp_path / "codehop.toml"
    config.write_text(f'[generator]\nmodel = "{model}"\n'
                      + (f'\n[server]\napi_key = "{api_key}"\n' if api_key else ""))
    port = free_port()
    process = start_server(
        [sys.executable, "-m", "codehop", "--config", str(config), "serve", "--no-index",
         "--source", str(project), "--workspace", str(tmp_path / "ws"), "--port", str(port)],
        # up once the app serves; /openapi.json needs no key and nothing but the app itself
        f"http://127.0.0.1:{port}/openapi.json", tmp_path / "serve.log", 120, cwd=project,
        env={**os.environ, **SERVER_ENV})
    return process, f"http://127.0.0.1:{port}"


def _wait_warm(log: Path, timeout_s: float = 120) -> None:
    """Until serve's warm-up (codehop.warm_up) says the generator and repository are loaded."""
    deadline = time.monotonic() + timeout_s
    while "ready for completions" not in log.read_text():
        assert "warm-up failed" not in log.read_text(), log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no warm-up within {timeout_s} s: {log.read_text()[-3000:]}"
        time.sleep(0.2)


def _agent_home(home: Path, endpoint: str, token: str | None) -> Path:
    """The agent's own config file, as a user writes it (telemetry off: the test is offline)."""
    config = home / ".tabby-client" / "agent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[server]\nendpoint = "{endpoint}"\n'
                      + (f'token = "{token}"\n' if token else "")
                      + '\n[logs]\nlevel = "debug"\n\n[anonymousUsageTracking]\ndisable = true\n')
    return home


def _agent_log(home: Path) -> list[dict]:
    """The agent's debug log (~/.tabby-client/agent/logs), one dict per line."""
    logs = (home / ".tabby-client" / "agent" / "logs").glob("*.log")
    return [json.loads(line) for log in sorted(p for p in logs if not p.is_symlink())  # current.log
            for line in log.read_text().splitlines() if line.strip()]              # links to today's


@pytest.fixture(autouse=True)
def _agent_writes_its_logs_in_tmp(tmp_path, monkeypatch):
    """The agent writes a log-rotation file (audit.json) into its working directory: keep it
    out of the repository."""
    monkeypatch.chdir(tmp_path)


async def _session(home: Path, project: Path, complete: bool) -> dict:
    """Start the agent, initialize, optionally ask for a completion after `slugify(`, shut down."""
    node = need("node", "Node.js runs Tabby's agent")
    config = ClientServerConfig(server_command=[node, str(AGENT), "--lsp", "--stdio"],
                                server_env={"HOME": str(home), "PATH": os.environ.get("PATH", "")})
    client = await config.start()
    out: dict = {}
    try:
        result = await asyncio.wait_for(client.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            client_info=types.ClientInfo(name="codehop-test", version="1"))), 60)
        out["server_info"] = result.server_info
        if complete:
            uri = uris.from_fs_path(str(project / "main.py"))
            client.text_document_did_open(types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=MAIN)))
            lines = MAIN.split("\n")
            out["completion"] = await asyncio.wait_for(client.text_document_completion_async(
                types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri),
                                       position=types.Position(line=len(lines) - 1,
                                                               character=len(lines[-1])))), 120)
    finally:
        await client.shutdown_session()
    out["messages"] = [m.message for m in client.messages]
    log = _agent_log(home)
    out["statuses"] = [e["event"]["status"] for e in log if e.get("event", {}).get("event") == "statusChanged"]
    out["issues"] = [e["issue"] for e in log if e.get("msg") == "Issues Pushed"]
    out["requests"] = [e["url"].split("/", 3)[3] for e in log if e.get("url")]
    data = home / ".tabby-client" / "agent" / "data.json"  # what the agent keeps between runs
    out["data"] = json.loads(data.read_text()) if data.exists() else {}
    return out


class _JsonLines:
    """tabby-agent's older protocol (`--stdio` without `--lsp`, used by earlier Tabby plugins):
    one JSON array a line, `[id, {"func": name, "args": [...]}]` -> `[id, result]`; events
    arrive as `[0, event]`."""

    def __init__(self, home: Path) -> None:
        node = need("node", "Node.js runs Tabby's agent")
        self.process = subprocess.Popen([node, str(AGENT), "--stdio"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")})
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.process.stdout],
                         daemon=True).start()
        self.next_id = 0

    def call(self, func: str, *args, timeout_s: float = 60):
        self.next_id += 1
        self.process.stdin.write(json.dumps([self.next_id, {"func": func, "args": list(args)}]) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if not line.startswith("["):  # its log-file library prints notes on stdout too
                continue
            answer = json.loads(line)
            if answer[0] == self.next_id:
                return answer[1]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def slugify_model_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A Llama on SmolLM2's vocabulary whose greedy decoding always writes "title)": its one
    layer adds nothing to the residual stream (output projections zeroed), so the next token
    depends only on the last one, and the embeddings and LM head encode the chain
    any -> "title" -> ")" -> end of text. A random model's greedy output repeats one token,
    which the agent's post-processing drops ("Remove line ends with repetition"), and the
    135M model completes `slugify(` with nothing."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm2_tokenizer
    title, close = (tokenizer.encode(t, add_special_tokens=False) for t in ("title", ")"))
    assert len(title) == len(close) == 1
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        head.zero_()
        embed[:, 0] = 1.0  # every token -> state 0
        embed[title[0]] = 0.0
        embed[title[0], 1] = 1.0  # "title" -> state 1
        embed[close[0]] = 0.0
        embed[close[0], 2] = 1.0  # ")" -> state 2
        head[title[0], 0] = head[close[0], 1] = head[tokenizer.eos_token_id, 2] = 10.0
    target = tmp_path_factory.mktemp("slugify-model")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def _stdio_session(home: Path, project: Path) -> dict:
    """The agent over JSON lines: initialize, status, health, a completion, two events."""
    agent = _JsonLines(home)
    try:
        out = {"initialized": agent.call("initialize", {"clientProperties": {"session": {"client": "codehop-test"}}})}
        out["status"] = agent.call("getStatus")
        out["health"] = agent.call("getServerHealthState")
        out["completion"] = agent.call("provideCompletions", {
            "filepath": str(project / "main.py"), "language": "python", "text": MAIN,
            "position": len(MAIN)}, timeout_s=120)
        event = {"completion_id": out["completion"]["id"], "choice_index": 0}
        out["posted"] = [agent.call("postEvent", {**event, "type": "view"}),
                         agent.call("postEvent", {**event, "type": "select", "select_kind": "line"})]
        agent.call("finalize")
    finally:
        agent.close()
    return out


@pytest.fixture
def agent() -> Path:
    need(str(AGENT), "Tabby's agent: scripts/test_tools.sh runs npm ci in tests/editors/tabby_agent")
    return AGENT


def _assert_connected_with_a_completion(out: dict) -> None:
    assert out["server_info"].name == "tabby-agent"
    # finalized: our shutdown (when the agent's log is flushed before it exits)
    assert out["statuses"] in (["ready"], ["ready", "finalized"]), out["statuses"]
    assert out["requests"][0] == "v1/health" and "v1/completions" in out["requests"]
    assert not any("status" in m for m in out["messages"]), out["messages"]  # no warning shown
    items = out["completion"].items
    assert len(items) == 1 and items[0].label_details.description == "Tabby"
    assert items[0].label == items[0].text_edit.new_text == "title)"  # what the model writes


@pytest.mark.slow
def test_tabby_agent_connects_and_completes(agent, project, slugify_model_dir, tmp_path):
    process, endpoint = _serve(project, slugify_model_dir, tmp_path, api_key=None)
    try:
        _wait_warm(tmp_path / "serve.log")  # as when an editor opens after the server started
        out = asyncio.run(_session(_agent_home(tmp_path / "home", endpoint, None), project, True))
        stdio = _stdio_session(_agent_home(tmp_path / "stdio", endpoint, None), project)
        health = httpx.get(f"{endpoint}/v1/health", timeout=10).json()
        metrics = httpx.get(f"{endpoint}/metrics", timeout=10).text
    finally:
        stop_server(process)
    _assert_connected_with_a_completion(out)
    # the older protocol: the agent's own view of the server is our HealthState, its
    # completion events reach /metrics
    assert stdio["status"] == "ready" and stdio["health"] == health
    assert [c["text"] for c in stdio["completion"]["choices"]] == ["title)"]
    assert stdio["posted"] == [True, True]
    assert 'codehop_tabby_events_total{type="view"} 1' in metrics
    assert 'codehop_tabby_events_total{type="select"} 1' in metrics
    # warmed up, the first completion is fast: the agent flags no slow response (> 5 s)
    assert out["issues"] == [], out["issues"]
    # the agent asks for the server setting unless git_describe reads as a Tabby older than
    # 0.9 (semver.coerce of a commit id like "0a1b2c3"); when it asks, it turns telemetry off
    if "v1beta/server_setting" in out["requests"]:
        assert out["data"]["serverConfig"][endpoint] == {"anonymousUsageTracking": {"disable": True}}


@pytest.mark.slow
def test_tabby_agent_with_the_token_connects_and_without_it_is_unauthorized(agent, project, slugify_model_dir,
                                                                          tmp_path):
    process, endpoint = _serve(project, slugify_model_dir, tmp_path, api_key=TOKEN)
    try:
        good = asyncio.run(_session(_agent_home(tmp_path / "good", endpoint, TOKEN), project, True))
        wrong = asyncio.run(_session(_agent_home(tmp_path / "wrong", endpoint, "not-the-token"), project, False))
        missing = asyncio.run(_session(_agent_home(tmp_path / "missing", endpoint, None), project, False))
    finally:
        stop_server(process)
    _assert_connected_with_a_completion(good)
    for out in (wrong, missing):
        # (the log may end before "finalized": the agent exits without flushing it)
        assert out["statuses"] in (["unauthorized"], ["unauthorized", "finalized"]), out["statuses"]
        assert out["messages"] == ["Tabby agent status: unauthorized"]

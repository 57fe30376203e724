"""Tabby's routes (codehop/rest_tabby.py) through the real app: HealthState with true values,
the API key on /v1/health, the server setting, events counted in /metrics. Tabby's own agent
drives a real `codehop serve` in tests/editors/test_tabby_agent.py."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from fastapi.testclient import TestClient

from codehop.config import GeneratorSettings, ServerSettings, Settings
from codehop.rest import create_app

REPO_ROOT = Path(__file__).resolve().parents[2]


def _client(tmp_path: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(**settings), workspace=tmp_path / "ws", roots=[]))


def test_health_state_holds_this_server_and_machine(tmp_path):
    with _client(tmp_path, generator=GeneratorSettings(model="my-coder")) as client:
        get, post = client.get("/v1/health"), client.post("/v1/health")
    assert get.status_code == post.status_code == 200 and get.json() == post.json()
    state = get.json()
    assert state["model"] == state["chat_model"] == "my-coder"
    assert state["device"] == "cpu"  # the transformers backend loads on the CPU; nothing loaded
    assert state["arch"] == platform.machine() and state["cpu_count"] == os.cpu_count()
    assert state["cpu_info"] and state["cpu_info"] != "unknown"  # /proc/cpuinfo on Linux
    assert state["cuda_devices"] == []  # the CPU torch build sees no GPU
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    version = state["version"]
    assert version["git_sha"] == head  # this checkout is what serves
    assert version["git_describe"].startswith(head[:7]) or version["git_describe"].startswith("v")
    assert version["build_date"] == version["build_timestamp"][:10] != "unknown"


def test_health_device_of_a_server_backend_is_remote(tmp_path):
    generator = GeneratorSettings(model="qwen", backend="openai", base_url="http://127.0.0.1:9/v1")
    with _client(tmp_path, generator=generator) as client:
        assert client.get("/v1/health").json()["device"] == "remote"


def test_api_key_guards_v1_health_but_not_health(tmp_path):
    with _client(tmp_path, server=ServerSettings(api_key="s3cret")) as client:
        # the agent reads a 401 on /v1/health (and only there) as "unauthorized"
        assert client.get("/v1/health").status_code == 401
        assert client.get("/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/health").status_code == 401
        assert client.get("/v1/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/v1beta/server_setting").status_code == 401
        assert client.post("/v1/events", json={"type": "view"}).status_code == 401
        assert client.get("/health").status_code == 200  # codehop's own status stays open


def test_server_setting_turns_client_telemetry_off(tmp_path):
    with _client(tmp_path) as client:
        answer = client.get("/v1beta/server_setting")
    assert answer.status_code == 200 and answer.json() == {"disable_client_side_telemetry": True}


def test_events_are_counted_by_type_in_metrics(tmp_path):
    event = {"completion_id": "cmpl-1", "choice_index": 0, "view_id": "v1", "elapsed": 120}
    with _client(tmp_path) as client:
        for kind in ("view", "view", "select", "dismiss", "made-up"):
            answer = client.post("/v1/events", params={"select_kind": "line"}, json={**event, "type": kind})
            assert answer.status_code == 200 and answer.text == ""
        assert client.post("/v1/events", json={}).status_code == 200  # no type: "other"
        metrics = client.get("/metrics").text
    assert 'codehop_tabby_events_total{type="view"} 2' in metrics
    assert 'codehop_tabby_events_total{type="select"} 1' in metrics
    assert 'codehop_tabby_events_total{type="dismiss"} 1' in metrics
    assert 'codehop_tabby_events_total{type="other"} 2' in metrics  # unknown kinds never become labels
    assert "made-up" not in metrics

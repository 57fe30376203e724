"""What Tabby's editor agent (npm `tabby-agent`, under every Tabby IDE plugin) asks of a server,
besides `/v1/completions` (codehop/rest_generation.py):

- `GET /v1/health` (POST when GET answers 405): Tabby's HealthState. The agent calls it on
  start and every 30 s while disconnected; anything but a 2xx marks it "disconnected", and
  only a 401/403 *here* marks it "unauthorized" (a 401 on a completion is an "unknown error"),
  so this route requires the API key exactly as every /v1 route does.
- `GET /v1beta/server_setting`: `disable_client_side_telemetry` is true, so the agent stops
  sending anonymous usage events to Tabby's cloud on behalf of a self-hosted, offline server.
- `POST /v1/events`: completion views/selects/dismisses; counted by type in /metrics
  (`codehop_tabby_events_total`), nothing else is kept.

The HealthState holds true values: the configured generator (codehop has one model for
completions and chat), the device it runs on, this machine, and codehop's version and git
commit (codehop/build_info.py; "unknown" where it cannot be known).
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from codehop.build_info import UNKNOWN, build_info
from codehop.rest_resources import Resources, get_resources

router = APIRouter(tags=["tabby"])
# Where each generator backend runs: llama.cpp's wheel runs on the CPU, vLLM on a GPU, a
# server ("openai") somewhere codehop cannot see.
_BACKEND_DEVICE = {"vllm": "cuda", "llamacpp": "cpu", "openai": "remote"}
# Tabby's event types; anything else is counted as "other" so that clients cannot grow the
# metric's label set.
EVENT_TYPES = ("view", "select", "dismiss")


class TabbyVersion(BaseModel):
    build_date: str
    build_timestamp: str
    git_sha: str
    git_describe: str


class TabbyHealthState(BaseModel):
    """Tabby's HealthState (tabby-agent's `components["schemas"]["HealthState"]`)."""

    model: str | None = Field(description="the completion model")
    chat_model: str | None = Field(description="the chat model (codehop's one generator)")
    device: str = Field(description="where the generator runs: cpu, cuda..., or remote (a server)")
    arch: str
    cpu_info: str
    cpu_count: int
    cuda_devices: list[str]
    version: TabbyVersion


class TabbyServerSetting(BaseModel):
    disable_client_side_telemetry: bool


def _generator_device(resources: Resources) -> str:
    """The loaded generator's torch device; before it loads, where its backend puts it (the
    transformers backend loads on the CPU: codehop.model_setup passes no device)."""
    backend = resources.settings.generator.backend
    if backend in _BACKEND_DEVICE:
        return _BACKEND_DEVICE[backend]
    loaded = getattr(resources, "_generator", None)  # never load a model for a health check
    device = getattr(getattr(loaded, "model", None), "device", None)
    return str(device) if device is not None else "cpu"


@functools.cache
def _cpu_info() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or UNKNOWN


@functools.cache
def _cuda_devices() -> tuple[str, ...]:
    """Names of the CUDA devices torch sees (torch is imported once, then remembered)."""
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    return tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))


def health_state(resources: Resources) -> TabbyHealthState:
    info = build_info()
    model = resources.settings.generator.model
    return TabbyHealthState(
        model=model, chat_model=model, device=_generator_device(resources),
        arch=platform.machine() or UNKNOWN, cpu_info=_cpu_info(), cpu_count=os.cpu_count() or 0,
        cuda_devices=list(_cuda_devices()),
        version=TabbyVersion(build_date=info.build_date, build_timestamp=info.build_timestamp,
                             git_sha=info.git_sha, git_describe=info.git_describe))


@router.get("/v1/health", response_model=TabbyHealthState)
def tabby_health(resources: Resources = Depends(get_resources)):
    """Tabby's health check (the unauthenticated codehop status is `/health`)."""
    return health_state(resources)


@router.post("/v1/health", response_model=TabbyHealthState)
def tabby_health_post(resources: Resources = Depends(get_resources)):
    """The same, for clients that POST (tabby-agent does when GET answers 405)."""
    return health_state(resources)


@router.get("/v1beta/server_setting", response_model=TabbyServerSetting)
def server_setting():
    return TabbyServerSetting(disable_client_side_telemetry=True)


@router.post("/v1/events", status_code=200, response_class=Response)
def events(request: Request, event: dict[str, Any] = Body(default_factory=dict),
           select_kind: str | None = Query(default=None, max_length=32)):
    """Tabby's completion events; answered with an empty 200, as Tabby does."""
    kind = event.get("type")
    request.app.state.metrics.count_event(kind if kind in EVENT_TYPES else "other")
    return Response(status_code=200)

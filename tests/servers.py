"""Start a server as a subprocess and wait until it answers: the real-server fixtures share it."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(argv: list[str], ready_url: str, log_path: Path, timeout_s: float, **popen) -> subprocess.Popen:
    """Popen `argv` (output to `log_path`) and poll `ready_url` until it answers 200; a server
    that exits or stays silent fails the test with the end of its log."""
    log = open(log_path, "w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **popen)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.close()
            pytest.fail(f"{argv[0]} exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    log.close()
    pytest.fail(f"{' '.join(argv[:3])} did not answer {ready_url} within {timeout_s:g} s")


def stop_server(process: subprocess.Popen, timeout_s: float = 60) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

"""The sandbox contains infinite loops, memory bombs, network attempts and output floods."""

from __future__ import annotations

import socket
import threading

import pytest

from code_tools.sandbox import (SandboxLimits, netns_available, network_isolation, run_python,
                                run_tests)
from index.errors import InvalidInputError

FAST = SandboxLimits(timeout_s=4, cpu_s=2, memory_mb=512, max_output_bytes=10_000)


def test_normal_program_output_and_exit_code():
    result = run_python("import sys\nprint('hi')\nprint('err', file=sys.stderr)\nsys.exit(3)", FAST)
    assert result.stdout == "hi\n" and "err" in result.stderr
    assert result.returncode == 3 and result.killed_reason is None and not result.passed


def test_infinite_loop_is_killed_and_run_continues():
    result = run_python("while True:\n    pass", FAST)
    assert result.killed_reason in ("cpu", "timeout") and result.returncode != 0
    assert result.elapsed_s < FAST.timeout_s + 2
    assert run_python("print(7)", FAST).stdout == "7\n"  # the next sample still runs


def test_sleeping_program_and_its_children_hit_the_wall_clock():
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)"
    result = run_python(code, SandboxLimits(timeout_s=1, cpu_s=5, memory_mb=512))
    assert result.timed_out and result.killed_reason == "timeout"
    assert result.elapsed_s < 3


def test_memory_bomb_is_stopped():
    result = run_python("x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))", FAST)
    assert result.killed_reason == "memory" and "MemoryError" in result.stderr


def test_output_flood_is_capped():
    result = run_python("while True:\n    print('x' * 1000)", FAST)
    assert result.killed_reason == "output"
    assert len(result.stdout.encode()) <= FAST.max_output_bytes


def test_temporary_working_directory():
    first = run_python("import os\nopen('f.txt', 'w').write('1')\nprint(os.getcwd())", FAST)
    second = run_python("import os\nprint(os.path.exists('f.txt'), os.getcwd())", FAST)
    assert second.stdout.split()[0] == "False"
    assert first.stdout.strip() != second.stdout.split()[1]


@pytest.mark.parametrize("mode", ["auto", "audit"])
def test_network_is_blocked(mode):
    # A listener on this machine's loopback: reachable from any unsandboxed process.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "print('connected')")
    limits = SandboxLimits(timeout_s=5, memory_mb=512, network=mode)
    try:
        result = run_python(code, limits)
    finally:
        server.close()
    assert "connected" not in result.stdout and result.returncode != 0
    if network_isolation(limits) == "audit":
        assert "network access is disabled" in result.stderr


def test_netns_mode_reports_availability():
    if netns_available():
        assert network_isolation(SandboxLimits(network="netns")) == "netns"
    else:
        with pytest.raises(InvalidInputError):
            network_isolation(SandboxLimits(network="netns"))


def test_run_tests_verdicts():
    program = "def add(a, b):\n    return a + b\n"
    assert run_tests(program, "assert add(2, 3) == 5", FAST).passed
    failed = run_tests(program, "assert add(2, 3) == 6", FAST)
    assert not failed.passed and "AssertionError" in failed.stderr


def test_bad_limits_rejected():
    with pytest.raises(InvalidInputError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(InvalidInputError):
        SandboxLimits(network="none")

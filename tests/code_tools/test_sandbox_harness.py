"""Verdicts that a program cannot fake, as root and as nobody.

A wrong solution must fail whatever exit path it takes; a right one must pass (so each probe
can fail); kills are reported from the signal that really ended the program, not its exit code.
"""

from __future__ import annotations

import signal

import pytest

from code_tools.sandbox_harness import Channel, Report, kill_reason
from tests.code_tools.jail_users import made_dirs  # noqa: F401 (autouse: removes nobody's dirs)
from tests.code_tools.jail_users import USERS, jail, need_user

LIMITS = {"timeout_s": 20, "cpu_s": 10, "memory_mb": 512, "max_output_bytes": 50_000}
WRONG = "def add(a, b):\n    return a - b\n"
TESTS = "assert add(2, 3) == 5\n"
FAKES = {
    "os._exit(0)": WRONG + "import os\nos._exit(0)\n",
    "sys.exit(0) in __main__": WRONG + "if __name__ == '__main__':\n    import sys\n    sys.exit(0)\n",
    "sys.exit(0) at import": WRONG + "import sys\nsys.exit(0)\n",
    "sys.excepthook": WRONG + "import os, sys\nsys.excepthook = lambda *args: os._exit(0)\n",
    "atexit": WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "fake report on every fd": WRONG + (
        "import os\nfor fd in os.listdir('/proc/self/fd'):\n    try:\n"
        "        os.write(int(fd), b'00' * 16 + b' exit 0 1 0.000\\n')\n    except OSError:\n        pass\n"),
    "forked copy runs the tests": WRONG + "import os\nif os.fork():\n    os._exit(0)\nadd = lambda a, b: a + b\n",
}


@pytest.fixture(params=USERS)
def as_user(request):
    need_user(request.param)
    return request.param


@pytest.mark.parametrize("fake", list(FAKES))
def test_a_wrong_solution_cannot_fake_a_pass(as_user, fake):
    result = jail(as_user, FAKES[fake], LIMITS, fn="run_tests", tests=TESTS)["result"]
    assert not (result["returncode"] == 0 and result["killed_reason"] is None and result["completed"]), result


def test_a_right_solution_passes_and_its_main_block_does_not_run(as_user):
    right = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print('main block ran')\n"
    result = jail(as_user, right, LIMITS, fn="run_tests", tests=TESTS)["result"]
    assert result["returncode"] == 0 and result["completed"] and result["killed_reason"] is None, result
    assert "main block ran" not in result["stdout"]


def test_exit_137_is_an_exit_code_and_a_cpu_kill_is_a_signal(as_user):
    result = jail(as_user, "import sys\nsys.exit(137)", LIMITS)["result"]
    assert result["returncode"] == 137 and result["killed_reason"] is None and result["completed"]
    spin = jail(as_user, "while True:\n    pass", dict(LIMITS, cpu_s=1))["result"]
    assert spin["killed_reason"] == "cpu" and spin["returncode"] == -signal.SIGXCPU, spin
    assert not spin["completed"]


def test_report_needs_this_runs_nonce():
    channel = Channel()
    try:
        import os

        os.write(channel.write_fd, b"0" * 32 + b" exit 0 1 0.000\n")  # someone else's nonce
        assert channel.report() is None
        os.write(channel.write_fd, channel.nonce + b" signal 9 0 2.000\n")
        assert channel.report() == Report(-9, True, False, 2.0)
    finally:
        channel.close()


def test_kill_reason_from_the_signal_and_cpu_time():
    assert kill_reason(Report(-signal.SIGXCPU, True, False, 1.0), 1) == "cpu"
    assert kill_reason(Report(-signal.SIGKILL, True, False, 2.0), 2) == "cpu"  # hard RLIMIT_CPU
    assert kill_reason(Report(-signal.SIGKILL, True, False, 0.1), 2) == "signal"  # kill -9 itself
    assert kill_reason(Report(137, False, True, 0.1), 2) is None

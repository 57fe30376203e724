"""The sandbox runs programs, reports what stopped them and refuses when it cannot jail them."""

from __future__ import annotations

import pytest

import code_tools.sandbox as sandbox
from code_tools.sandbox import (SandboxLimits, SandboxUnavailableError, run_python, run_tests,
                                sandbox_status)
from runtime.errors import InvalidInputError

FAST = SandboxLimits(timeout_s=4, cpu_s=2, memory_mb=512, max_output_bytes=10_000)


def test_normal_program_output_and_exit_code():
    result = run_python("import sys\nprint('hi')\nprint('err', file=sys.stderr)\nsys.exit(3)", FAST)
    assert result.stdout == "hi\n" and "err" in result.stderr
    assert result.returncode == 3 and result.killed_reason is None and not result.passed
    assert result.mechanism == sandbox_status(FAST).mechanism == "bwrap"


def test_status_names_the_mechanism_and_tree_limits():
    status = sandbox_status()
    assert status.mechanism == "bwrap" and status.tree_limits in ("cgroup2", "cgroup1", "rlimit")
    assert status.describe().startswith("bwrap (") and status.tree_limits in status.describe()
    assert run_python("pass", FAST).tree_limits == status.tree_limits


def test_jail_sees_only_the_interpreter_and_its_packages():
    code = ("import os, numpy, pytest\nprint(os.getcwd(), os.getuid())\n"
            "print(sorted(os.listdir('/')))\n"
            "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
            "print(os.getpid())")
    result = run_python(code, SandboxLimits(timeout_s=30, cpu_s=20, memory_mb=2048))
    assert result.passed, result.stderr
    cwd, listing, caps, pid = result.stdout.splitlines()
    assert cwd.startswith("/tmp ") and caps == "0000000000000000"
    assert "home" not in listing and "sys" not in listing and "var" not in listing
    assert int(pid) < 10  # a fresh PID namespace


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


def test_private_working_directory():
    first = run_python("open('f.txt', 'w').write('1')\nimport os\nprint(os.listdir('.'))", FAST)
    second = run_python("import os\nprint(os.path.exists('f.txt'))", FAST)
    assert "f.txt" in first.stdout and second.stdout == "False\n"


def test_writable_directory_is_bound_read_write(tmp_path):
    (tmp_path / "in.txt").write_text("from the host")
    code = (f"import os\nos.chdir({str(tmp_path)!r})\nprint(open('in.txt').read())\n"
            "open('out.txt', 'w').write('from the jail')")
    result = run_python(code, FAST, writable=[tmp_path])
    assert result.passed and result.stdout == "from the host\n"
    assert (tmp_path / "out.txt").read_text() == "from the jail"
    with pytest.raises(InvalidInputError):
        run_python("pass", FAST, writable=[tmp_path / "missing"])


def test_run_tests_verdicts():
    program = "def add(a, b):\n    return a + b\n"
    assert run_tests(program, "assert add(2, 3) == 5", FAST).passed
    failed = run_tests(program, "assert add(2, 3) == 6", FAST)
    assert not failed.passed and "AssertionError" in failed.stderr


def test_no_jail_is_refused_with_the_override_named(monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap", lambda: (None, "bwrap is not installed"))
    assert sandbox_status().mechanism == "unavailable"
    with pytest.raises(SandboxUnavailableError, match="--unsafe-exec") as error:
        run_python("print(1)", FAST)
    assert "bubblewrap" in str(error.value) and "isolation='unsafe'" in str(error.value)


def test_without_a_cgroup_rlimit_nproc_binds_even_as_root(monkeypatch):
    # As root the jail runs as a fresh unprivileged uid, so RLIMIT_NPROC binds it: a fork bomb
    # is capped without a cgroup (before, root without a writable cgroup was refused).
    monkeypatch.setattr(sandbox._Cgroup, "available", staticmethod(lambda: ""))
    assert sandbox_status().tree_limits == "rlimit"
    code = ("import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(5)\n"
            "        os._exit(0)\n    n += 1\nprint(n)")
    result = run_python(code, SandboxLimits(timeout_s=8, cpu_s=4, memory_mb=512, max_processes=8))
    assert result.passed and result.tree_limits == "rlimit", result.stderr
    assert 0 < int(result.stdout) < 8  # the program itself is one of the 8


def test_rlimit_tree_limits_when_no_cgroup(monkeypatch):
    monkeypatch.setattr(sandbox._Cgroup, "available", staticmethod(lambda: ""))
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    code = "import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC)[0])"
    result = run_python(code, FAST)
    assert result.passed and result.tree_limits == "rlimit"
    assert int(result.stdout) == FAST.max_processes + 1  # + the harness


def test_unsafe_runner_is_explicit_and_named():
    limits = SandboxLimits(timeout_s=4, cpu_s=2, memory_mb=512, isolation="unsafe")
    result = run_python("import os\nprint(os.path.exists('/proc/1/cmdline'))", limits)
    assert result.passed and result.mechanism == "unsafe"
    assert sandbox_status(limits).describe().startswith("unsafe")


def test_bad_limits_rejected():
    with pytest.raises(InvalidInputError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(InvalidInputError):
        SandboxLimits(max_processes=0)
    with pytest.raises(InvalidInputError):
        SandboxLimits(isolation="none")

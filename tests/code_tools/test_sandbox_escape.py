"""Escape probes: real programs run through the sandbox, each trying to leave it.

Each probe asserts that the attempt failed and the host is unharmed. Long-lived processes of
the probes exec a command line that carries MARKER, and files they try to create carry it in
their names, so the last test can check that nothing of the sandbox is left on the host.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from code_tools.sandbox import SandboxLimits, run_python, sandbox_status

MARKER = f"codehop-escape-{uuid.uuid4().hex[:10]}"
REPO = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(timeout_s=8, cpu_s=4, memory_mb=512, max_output_bytes=20_000, max_processes=16)
# A process that carries MARKER on its command line (for the leftover check).
SLEEPER = f"[sys.executable, '-c', 'import time; time.sleep(30)', {MARKER!r}]"


def test_the_escape_suite_runs_in_a_jail():
    assert sandbox_status(LIMITS).mechanism == "bwrap", sandbox_status(LIMITS).describe()


def test_read_outside(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    code = "\n".join([
        "for path in [%r, %r, '/etc/shadow', '/etc/passwd', '/root/.bashrc', '/proc/1/environ']:" % (
            str(secret), str(REPO / "pyproject.toml")),
        "    try:",
        "        print('READ', path, open(path).read()[:40].replace('\\n', ' '))",
        "    except OSError as error:",
        "        print('denied', path, type(error).__name__)",
    ])
    result = run_python(code, LIMITS)
    assert result.passed, result.stderr
    assert "host secret" not in result.stdout and "[project]" not in result.stdout
    assert "READ" not in result.stdout.replace("READ /proc/1/environ", "")  # its own env only


def test_write_outside(tmp_path):
    targets = [tmp_path / f"{MARKER}.txt", REPO / f"{MARKER}.txt", Path(sys.prefix) / f"{MARKER}.txt",
               Path("/tmp") / MARKER / "x"]
    code = "\n".join([
        "import os",
        f"for path in {[str(t) for t in targets]!r}:",
        "    try:",
        "        os.makedirs(os.path.dirname(path), exist_ok=True)",
        "        open(path, 'w').write('escaped')",
        "        print('WROTE', path)",
        "    except OSError as error:",
        "        print('denied', path, type(error).__name__)",
    ])
    result = run_python(code, LIMITS)
    assert result.passed, result.stderr
    for target in targets:
        assert not target.exists(), target  # /tmp inside is the jail's own tmpfs


@pytest.fixture
def listener():
    """A TCP listener on the host's 127.0.0.1 that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(timeout=2)
    server.close()


CONNECT = "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')"
CTYPES = """\
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.socket(2, 1, 0)
address = struct.pack('!HH4s8x', 2, {port}, socket.inet_aton('127.0.0.1'))
address = struct.pack('=H', 2) + address[2:]
rc = libc.connect(fd, ctypes.c_char_p(address), len(address))
print('CONNECTED' if rc == 0 else 'failed errno %d' % ctypes.get_errno())
"""


@pytest.mark.parametrize("how", ["direct", "subprocess", "ctypes"])
def test_connect_to_a_host_listener(listener, how):
    port, accepted = listener
    code = {"direct": CONNECT.format(port=port),
            "subprocess": ("import subprocess, sys\n"
                           f"subprocess.run([sys.executable, '-c', {CONNECT.format(port=port)!r}])"),
            "ctypes": CTYPES.format(port=port)}[how]
    result = run_python(code, LIMITS)
    time.sleep(0.3)  # let the listener accept anything that did arrive
    assert "CONNECTED" not in result.stdout, result.stdout
    assert not accepted
    # The same probe unsandboxed does connect: the listener is reachable from the host.
    if how == "direct":
        subprocess.run([sys.executable, "-c", CONNECT.format(port=port)], check=True, timeout=10)
        time.sleep(0.3)
        assert accepted


def test_fork_bomb():
    code = "\n".join([
        "import os, sys",
        "children = 0",
        "while True:",
        "    try:",
        "        pid = os.fork()",
        "    except OSError:",
        "        break",
        "    if pid == 0:",
        f"        os.execv(sys.executable, {SLEEPER})",
        "    children += 1",
        "print('children', children, flush=True)",
    ])
    result = run_python(code, SandboxLimits(timeout_s=10, cpu_s=5, memory_mb=512, max_processes=16))
    assert result.passed, result.stderr
    assert 0 < int(result.stdout.split()[1]) <= 16
    assert _leftovers() == []  # the sleepers died with the jail


def test_setsid_grandchild_does_not_outlive_the_timeout(tmp_path):
    shared = tmp_path / "bound"
    shared.mkdir()
    late = shared / f"{MARKER}-late.txt"
    code = "\n".join([
        "import os, time",
        "if os.fork() == 0:",
        "    os.setsid()",
        "    if os.fork() == 0:",
        "        time.sleep(2.5)",
        f"        open({str(late)!r}, 'w').write('outlived the timeout')",
        "        os._exit(0)",
        "    os._exit(0)",
        "time.sleep(60)",
    ])
    result = run_python(code, SandboxLimits(timeout_s=1, cpu_s=5, memory_mb=512), writable=[shared])
    assert result.killed_reason == "timeout"
    time.sleep(3)
    assert not late.exists()
    assert _leftovers() == []


def test_memory_spread_over_children():
    limits = SandboxLimits(timeout_s=20, cpu_s=10, memory_mb=600, max_processes=16)
    chunk = 200
    code = "\n".join([
        "import os, time",
        "pids = []",
        "for _ in range(6):",
        "    pid = os.fork()",
        "    if pid == 0:",
        f"        block = bytearray({chunk} * 2**20)",
        "        block[::4096] = b'x' * len(block[::4096])",  # touch every page
        "        time.sleep(3)",
        "        os._exit(0)",
        "    pids.append(pid)",
        "held = sum(os.waitpid(p, 0)[1] == 0 for p in pids)",
        "print('held', held)",
    ])
    result = run_python(code, limits)
    assert result.returncode == 0, result.stderr
    held = int(result.stdout.split()[1])
    if result.tree_limits.startswith("cgroup"):
        # Every child that exited 0 held its block at the same time as the others.
        assert held * chunk <= limits.memory_mb + 16 and result.killed_reason == "memory"
    else:  # per-process RLIMIT_AS with at most max_processes processes
        assert held <= limits.max_processes


def test_unbounded_output():
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)", LIMITS)
    assert result.killed_reason == "output" and len(result.stdout) <= LIMITS.max_output_bytes


def test_infinite_loop():
    result = run_python("while True:\n    pass", SandboxLimits(timeout_s=3, cpu_s=1, memory_mb=512))
    assert result.killed_reason in ("cpu", "timeout") and result.elapsed_s < 6


def test_kill_all_signal_reaches_no_host_process():
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        code = ("import os, subprocess, sys, time\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
                "time.sleep(0.5)\nos.kill(-1, 9)\n"  # everything it may signal (not itself)
                "print('still here', child.wait())")
        result = run_python(code, LIMITS)
        assert result.stdout == "still here -9\n", result.stderr  # only its own child died
        assert sentinel.poll() is None  # the host process next to us is alive
        assert run_python("print(1)", LIMITS).stdout == "1\n"
    finally:
        sentinel.send_signal(signal.SIGKILL)
        sentinel.wait()


def _leftovers() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if MARKER.encode() in cmdline:
                found.append(entry.name)
    return found


def test_zz_nothing_of_the_sandbox_is_left_on_the_host():
    deadline = time.monotonic() + 5
    while _leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _leftovers() == []
    for directory in (Path("/tmp"), REPO, Path(sys.prefix), Path.home()):
        assert not [p for p in os.listdir(directory) if MARKER in p], directory
    for base in (Path("/sys/fs/cgroup"),):
        mine = f"codehop-sandbox-{os.getpid()}-"
        assert not [p for p in base.rglob(f"{mine}*")] if base.is_dir() else True

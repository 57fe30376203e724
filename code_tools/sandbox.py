"""Run untrusted (generated) Python in a separate, limited process: one process per sample.

Each call starts a fresh interpreter in its own session/process group and temporary working
directory, with:

- CPU-time, address-space, file-size and core-dump limits (`resource.setrlimit`, set in the
  child before exec);
- a wall-clock timeout: on expiry the whole process group is SIGKILLed (children included);
- no network: the child runs in a fresh network namespace (`unshare -rn`, user + net
  namespace, only loopback, which is down) when the kernel allows it; otherwise an audit hook
  (PEP 578) installed before the program runs refuses socket creation, connect, bind and name
  lookups. `network_isolation()` says which one is active;
- stdout/stderr capped at `max_output_bytes` each: a child that writes more is killed;
- a minimal environment (no proxies, HOME = the temp dir, single-threaded BLAS).

A crash, hang or memory bomb of one sample never affects the caller: it comes back as a
`SandboxResult` with `killed_reason` set. This is isolation against accidents of generated
code (the HumanEval/MBPP/DS-1000 threat model), not a jail against a determined attacker:
the file system stays readable and the audit-hook fallback can be bypassed with ctypes.

Example::

    >>> run_python("print(1 + 1)", SandboxLimits()).stdout
    '2\\n'
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from index.errors import InvalidInputError

NETWORK_MODES = ("auto", "netns", "audit")

# Installed in the child before the program runs when no network namespace is available.
_AUDIT_BOOTSTRAP = """\
import sys
_BLOCKED = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
            "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto"}
def _codehop_no_network(event, args):
    if event in _BLOCKED:
        raise PermissionError("network access is disabled in the codehop sandbox")
sys.addaudithook(_codehop_no_network)
del _codehop_no_network
"""
_RUNNER = "import runpy, sys; sys.argv = ['main.py']; runpy.run_path('main.py', run_name='__main__')"


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run.

    Args:
        timeout_s: wall-clock limit; the process group is killed after it.
        cpu_s: CPU-time limit (RLIMIT_CPU); the kernel kills the child after it.
        memory_mb: address-space limit (RLIMIT_AS). numpy/pandas imports need ~1 GiB of
            address space, torch much more: raise it for such tasks.
        max_output_bytes: cap on each of stdout and stderr; more kills the child.
        max_file_mb: largest file the child may write (RLIMIT_FSIZE).
        network: "auto" (namespace if permitted, else audit hook), "netns" (fail if the
            namespace is not permitted) or "audit".
        python: interpreter to run (default: this one, so the same packages are importable).
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 2048
    max_output_bytes: int = 1_000_000
    max_file_mb: int = 64
    network: str = "auto"
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.cpu_s <= 0 or self.memory_mb <= 0:
            raise InvalidInputError("sandbox limits must be positive (timeout_s, cpu_s, memory_mb)")
        if self.max_output_bytes <= 0 or self.max_file_mb <= 0:
            raise InvalidInputError("sandbox limits must be positive (max_output_bytes, max_file_mb)")
        if self.network not in NETWORK_MODES:
            raise InvalidInputError(f"network must be one of {NETWORK_MODES}, not {self.network!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    `killed_reason` is None for a normal exit (any return code) and otherwise one of
    "timeout", "cpu", "memory", "output", "signal".
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None
    elapsed_s: float

    @property
    def passed(self) -> bool:
        """True when the program exited 0 without being killed."""
        return self.returncode == 0 and self.killed_reason is None


@functools.lru_cache(maxsize=1)
def netns_available() -> bool:
    """Whether `unshare -rn` (unprivileged user + network namespace) works here."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return False
    try:
        done = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def network_isolation(limits: SandboxLimits = SandboxLimits()) -> str:
    """"netns" or "audit": the network isolation `run_python` uses with these limits."""
    if limits.network == "audit":
        return "audit"
    if netns_available():
        return "netns"
    if limits.network == "netns":
        raise InvalidInputError("network namespaces are not permitted here (`unshare -rn true` "
                                "fails); use SandboxLimits(network='auto') or 'audit'")
    return "audit"


def _limit_child(limits: SandboxLimits) -> None:
    """Runs in the child between fork and exec: new session, then the rlimits."""
    os.setsid()
    cpu = int(limits.cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.max_file_mb * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _child_env(workdir: str) -> dict[str, str]:
    keep = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    return {**keep, "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}


class _Capped:
    """Drains one pipe on a thread, keeping at most `cap` bytes; flags overflow."""

    def __init__(self, pipe, cap: int, overflow: threading.Event) -> None:
        self.data = bytearray()
        self._pipe, self._cap, self._overflow = pipe, cap, overflow
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            block = self._pipe.read1(65536) if hasattr(self._pipe, "read1") else self._pipe.read(65536)
            if not block:
                break
            room = self._cap - len(self.data)
            if len(block) > room:
                self.data += block[:max(room, 0)]
                self._overflow.set()
            else:
                self.data += block

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", errors="replace")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` as `main.py` in a fresh sandboxed interpreter.

    Args:
        code: a Python program.
        limits: resource limits and network isolation mode.
    Returns:
        a SandboxResult; never raises for anything the program does.
    """
    if not isinstance(code, str):
        raise InvalidInputError("run_python needs the program as a str")
    mode = network_isolation(limits)
    workdir = tempfile.mkdtemp(prefix="codehop-sandbox-")
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as handle:
            handle.write(code)
        bootstrap = (_AUDIT_BOOTSTRAP if mode == "audit" else "") + _RUNNER
        argv = [limits.python, "-B", "-c", bootstrap]
        if mode == "netns":
            argv = [shutil.which("unshare") or "unshare", "-rn", *argv]
        started = time.perf_counter()
        overflow = threading.Event()
        process = subprocess.Popen(
            argv, cwd=workdir, env=_child_env(workdir), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
            preexec_fn=functools.partial(_limit_child, limits))
        out = _Capped(process.stdout, limits.max_output_bytes, overflow)
        err = _Capped(process.stderr, limits.max_output_bytes, overflow)
        reason = None
        deadline = started + limits.timeout_s
        while process.poll() is None:
            if overflow.is_set():
                reason = "output"
            elif time.perf_counter() >= deadline:
                reason = "timeout"
            if reason:
                _kill_group(process)
                break
            try:
                process.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
        returncode = process.wait()
        _kill_group(process)  # grandchildren left behind by a program that exited
        out.thread.join(timeout=2)
        err.thread.join(timeout=2)
        elapsed = time.perf_counter() - started
        if reason is None and overflow.is_set():
            reason = "output"
        stderr = err.text()
        if reason is None:
            reason = _classify(returncode, stderr)
        return SandboxResult(returncode, out.text(), stderr, reason == "timeout", reason, elapsed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _classify(returncode: int, stderr: str) -> str | None:
    """Why the kernel or the interpreter stopped a child that we did not kill."""
    # SIGXCPU at the soft RLIMIT_CPU; SIGKILL at the hard one if SIGXCPU was ignored.
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu"
    if returncode < 0:
        return "signal"
    tail = stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "std::bad_alloc" in tail:
        return "memory"
    return None


def run_tests(program: str, test_code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `program` followed by `test_code` (asserts / a check call) in one sandboxed process.

    Args:
        program: the candidate solution.
        test_code: code that raises (non-zero exit) when the program is wrong.
        limits: resource limits.
    Returns:
        the SandboxResult; `.passed` is the verdict.
    """
    return run_python(program.rstrip() + "\n\n\n" + test_code.lstrip("\n") + "\n", limits)

"""Run untrusted (generated) Python in a jail built from OS tools: one jail per run.

The jail is bubblewrap (`bwrap`, Debian package `bubblewrap`) with new user, mount, PID,
network, IPC and UTS namespaces, started as an unprivileged host user: when codehop is root,
a fresh uid/gid per run (code_tools.sandbox_guard), never host root; as a user, that user.
The program sees:

- a read-only view of the interpreter only: /usr (merged-/usr symlinks), the interpreter's
  prefix and base prefix (its stdlib) and the virtual environment with its site-packages, plus
  /etc/ld.so.cache and /etc/localtime; nothing else of the host (no home, no repository, no
  /etc/passwd, no /sys);
- a private writable tmpfs at /tmp (its working directory, HOME and TMPDIR; `main.py` is copied
  in) and, read-write, only the directories the caller names in `writable` (refused when they
  overlap a read-only path);
- a fresh /proc for its PID namespace with /proc/sys read-only, a minimal /dev, no network
  (only a down loopback), no capabilities, no further user namespaces, an empty session
  keyring of its own, and a seccomp filter (sandbox_guard.REFUSED_CALLS: keyrings, io_uring,
  bpf, userfaultfd, perf_event_open, ptrace, mounts, ...; setuid/setgid modes).

Limits: a wall-clock timeout that kills the jail's init, and with it every process in the PID
namespace; RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE and no core dumps per process;
stdout/stderr capped at `max_output_bytes` each; the writable directories' growth capped at
`disk_mb` (measured while the run goes on and after it: the run is killed and failed, and what
it created there removed). Memory, process count and CPU share of the whole tree come from a
cgroup when one is writable here (v2: memory.max, pids.max, cpu.max; v1: memory, pids, cpu
hierarchies), else from RLIMIT_AS per process, RLIMIT_NPROC set inside the jail's user
namespace and nice 10. After the run, files in the writable directories are never setuid or
setgid, and (as root) pre-existing ones get their owners back while new ones keep a non-root
owner.

The jail's PID 1 is a harness (code_tools.sandbox_harness) that reports, with a per-run
nonce on a descriptor the program cannot reach, how the program really ended: a program's own
`exit(137)` is an exit code, a SIGKILL is a signal. `SandboxResult.completed` is that report.

`sandbox_status()` says what this machine allows; every SandboxResult names the mechanism
and the tree limits it ran under. When no jail is possible, `run_python` raises
SandboxUnavailableError naming the fix and the override: `SandboxLimits(isolation="unsafe")`
(`--unsafe-exec` on the CLI) runs a plain subprocess, which isolates nothing (the program
reads and writes what the user can, reaches the network, and its setsid() children outlive
the timeout). It exists for trusted code and to measure the jail's cost.

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
from typing import Sequence

from code_tools.sandbox_cgroup import Cgroup as _Cgroup
from code_tools.sandbox_guard import (JailUids, WritableDirs, check_writable, drop_to, seccomp_fd,
                                      seccomp_program, stage_mounts, staged_paths)
from code_tools.sandbox_harness import HARNESS, Channel, kill_reason
from runtime.errors import InvalidInputError, MissingDependencyError

ISOLATION_MODES = ("auto", "bwrap", "unsafe")
_JAIL_HOME = "/tmp"
# Exit codes of bwrap for a child killed by signal N are 128 + N.
_SIGNAL_BASE = 128
# Processes of the jail besides the program's tree: bwrap outside, the harness (PID 1) inside.
_JAIL_PROCESSES = 2
# How often the writable directories' growth is measured during a run.
_DISK_POLL_S = 0.2
# The jail's private tmpfs mounts; a writable path may lie below them, not be or contain them.
_JAIL_TMPFS = ("/tmp", "/dev/shm")
# Files of the host the jail mounts read-only besides the interpreter's directories.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
                 "/etc/ld.so.cache", "/etc/localtime", "/proc", "/dev", "/sys")


class SandboxUnavailableError(MissingDependencyError):
    """No jail can be built on this machine and the unsafe runner was not asked for."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run.

    Args:
        timeout_s: wall-clock limit; the whole process tree is killed after it.
        cpu_s: CPU-time limit per process (RLIMIT_CPU).
        memory_mb: address-space limit per process (RLIMIT_AS) and memory limit of the whole
            tree when a cgroup is usable. numpy/pandas imports need ~1 GiB of address space.
        max_output_bytes: cap on each of stdout and stderr; more kills the run.
        max_file_mb: largest file the program may write (RLIMIT_FSIZE); also the size of /tmp.
        max_processes: processes of the whole tree (cgroup pids.max, else RLIMIT_NPROC).
        cpu_share: CPUs the whole tree may use at once (cgroup cpu.max; else nice 10 only).
        max_open_files: open files per process (RLIMIT_NOFILE).
        disk_mb: how much the `writable` directories may grow in total during the run.
        isolation: "auto" (the strongest jail this machine allows; refuse when there is none),
            "bwrap" (the same, named), or "unsafe": a plain subprocess with rlimits and no
            isolation at all (trusted code and overhead measurements only).
        python: interpreter to run (default: this one, so the same packages are importable).
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 2048
    max_output_bytes: int = 1_000_000
    max_file_mb: int = 64
    max_processes: int = 64
    cpu_share: float = 1.0
    max_open_files: int = 256
    disk_mb: int = 256
    isolation: str = "auto"
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.cpu_s <= 0 or self.memory_mb <= 0:
            raise InvalidInputError("sandbox limits must be positive (timeout_s, cpu_s, memory_mb)")
        if self.max_output_bytes <= 0 or self.max_file_mb <= 0 or self.max_processes <= 0:
            raise InvalidInputError("sandbox limits must be positive "
                                    "(max_output_bytes, max_file_mb, max_processes)")
        if self.cpu_share < 0.01 or self.max_open_files < 16 or self.disk_mb <= 0:
            raise InvalidInputError("sandbox limits: cpu_share must be >= 0.01, max_open_files "
                                    ">= 16 (the interpreter needs a few) and disk_mb positive")
        if self.isolation not in ISOLATION_MODES:
            raise InvalidInputError(f"isolation must be one of {ISOLATION_MODES}, not {self.isolation!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    `killed_reason` is None for a normal exit (any return code) and otherwise one of
    "timeout", "cpu", "memory", "output", "disk", "signal". A negative `returncode` is the
    signal that ended the program, as its harness saw it (a program's own exit(137) stays 137).
    `completed` is the harness's report under this run's nonce: the program ended by itself
    (run_python) or the tests ran to their end (run_tests). `mechanism` is "bwrap" or
    "unsafe"; `tree_limits` is "cgroup2", "cgroup1" or "rlimit" (per-process RLIMIT_AS +
    RLIMIT_NPROC), "" for the unsafe runner.
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None
    elapsed_s: float
    mechanism: str = "bwrap"
    tree_limits: str = ""
    completed: bool = False

    @property
    def passed(self) -> bool:
        """True when the program exited 0 by itself, not killed, as its harness reported."""
        return self.returncode == 0 and self.killed_reason is None and self.completed


@dataclass(frozen=True)
class SandboxStatus:
    """What `run_python` would use here: `mechanism` "bwrap", "unsafe" or "unavailable".

    `cpu` is "cgroup" when the tree's CPU share is capped, "nice" when only lowered; `user` is
    "per-run uid" (codehop is root) or "uid N" (the caller).
    """

    mechanism: str
    tree_limits: str = ""
    detail: str = ""
    cpu: str = ""
    user: str = ""

    def describe(self) -> str:
        """One line, e.g. "bwrap (bubblewrap 0.8.0), tree limits: cgroup1, cpu: cgroup, ..."."""
        if self.mechanism == "bwrap":
            return (f"bwrap ({self.detail}), tree limits: {self.tree_limits}, cpu share: "
                    f"{self.cpu}, jail user: {self.user}, seccomp")
        if self.mechanism == "unsafe":
            return "unsafe (plain subprocess, no isolation: --unsafe-exec)"
        return f"unavailable: {self.detail}"


# ------------------------------------------------------------------------------ detection

@functools.lru_cache(maxsize=1)
def _bwrap() -> tuple[str | None, str]:
    """(path, version) of a bwrap that can build a jail here as the jail's user, or (None, why)."""
    exe = shutil.which("bwrap")
    if exe is None or not sys.platform.startswith("linux"):
        return None, "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        seccomp_program()
    except MissingDependencyError as error:
        return None, str(error)
    uid = JailUids.claim()
    argv = [exe, *_namespace_args(), *_root_args(()), "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                              preexec_fn=functools.partial(drop_to, uid))
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"bwrap does not start: {error}"
    finally:
        JailUids.release(uid)
    if done.returncode != 0:
        return None, (f"bwrap cannot create namespaces here as an unprivileged user: "
                      f"{done.stderr.strip()[-300:]} (unprivileged user namespaces must be "
                      "enabled: sysctl user.max_user_namespaces > 0)")
    return exe, version.stdout.strip() or "bubblewrap"


def _limits_cgroup_or_why() -> tuple[str, str]:
    """("cgroup2"|"cgroup1"|"rlimit", ""). RLIMIT_NPROC binds: the jail's uid is never root."""
    return _Cgroup.available() or "rlimit", ""


def sandbox_status(limits: SandboxLimits = SandboxLimits()) -> SandboxStatus:
    """The mechanism `run_python` uses with `limits` on this machine (probed once)."""
    if limits.isolation == "unsafe":
        return SandboxStatus("unsafe")
    exe, detail = _bwrap()
    if exe is None:
        return SandboxStatus("unavailable", detail=detail)
    tree, why = _limits_cgroup_or_why()
    if not tree:
        return SandboxStatus("unavailable", detail=why)
    cpu = "cgroup" if tree != "rlimit" and _Cgroup.cpu_available() else "nice"
    user = "per-run uid" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return SandboxStatus("bwrap", tree, detail, cpu, user)


def _require_jail(limits: SandboxLimits) -> SandboxStatus:
    status = sandbox_status(limits)
    if status.mechanism == "unavailable":
        raise SandboxUnavailableError(
            f"refusing to run generated code: no sandbox on this machine ({status.detail}). "
            "Install bubblewrap (apt-get install bubblewrap), or accept running it with no "
            "isolation: --unsafe-exec on the CLI, SandboxLimits(isolation='unsafe') in code")
    return status


# ------------------------------------------------------------------------------ the jail

def _namespace_args() -> list[str]:
    # --as-pid-1: the harness is the namespace's init, which its program cannot signal.
    return ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
            "--as-pid-1"]


@functools.lru_cache(maxsize=8)
def _readonly_paths(python: str) -> tuple[str, ...]:
    """Host paths the interpreter needs: its venv, its prefix and base prefix (outside /usr)."""
    paths = {os.path.dirname(os.path.dirname(os.path.abspath(python))),
             os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        paths |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    keep = set()
    for path in paths:
        if path in ("/", "/usr") or path.startswith("/usr/") or not os.path.isdir(path):
            continue
        keep.add(path)
    return tuple(sorted(keep))


def _root_args(readonly: Sequence[tuple[str, str]], tmp_bytes: int = 64 * 2**20) -> list[str]:
    """The jail's file system: /usr and the interpreter read-only, tmpfs /tmp, /proc, /dev.

    `readonly` holds (source, path in the jail) pairs; as root the sources are staged copies
    of the mounts (sandbox_guard.stage_mounts), reachable by the jail's uid.

    bwrap's --proc covers /proc/sys, /proc/sysrq-trigger, /proc/irq and /proc/bus read-only;
    that alone did not stop writes when the jail's user was host root, the uid change does.
    """
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        host = f"/{name}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    for name in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(name):
            args += ["--ro-bind", name, name]
    # tmpfs /tmp first: a venv or checkout that lives under /tmp (a CI clone) is bound on top of
    # it afterwards; mounted the other way round, the tmpfs would hide the interpreter.
    args += ["--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    for source, path in readonly:
        args += ["--ro-bind", source, path]
    # /proc/keys lists by name every key the jail's uid may view: as a user, that user's own
    # keys elsewhere on the host. Covered with an empty file, like key-users' per-uid counts.
    return args + ["--proc", "/proc", "--ro-bind", "/dev/null", "/proc/keys", "--ro-bind", "/dev/null",
                   "/proc/key-users", "--dev", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm"]


def _child_env(home: str, python: str) -> dict[str, str]:
    path = os.pathsep.join(dict.fromkeys([os.path.dirname(os.path.abspath(python)),
                                          "/usr/local/bin", "/usr/bin", "/bin"]))
    return {"PATH": path, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home, "TMPDIR": home,
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
            "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": ""}


def _limit_child(limits: SandboxLimits, cgroup_procs: Sequence[str], nice: bool,
                 uid: int | None, stage: Sequence[str] = (), staged: Sequence[str] = ()) -> None:
    """Runs in the child between fork and exec: cgroup, mounts, rlimits, then the jail's uid."""
    for procs in cgroup_procs:  # while still privileged: cgroup.procs belongs to root
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # 0 = the writing process, before it starts anything
        finally:
            os.close(fd)
    os.setsid()
    if stage:
        stage_mounts(stage, staged)
    cpu = int(limits.cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.max_file_mb * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
    if nice:  # no cgroup CPU share here: at least yield to the host's own work
        os.setpriority(os.PRIO_PROCESS, 0, 10)
    drop_to(uid)


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


def run_python(code: str, limits: SandboxLimits = SandboxLimits(),
               writable: Sequence[str | os.PathLike] = ()) -> SandboxResult:
    """Run `code` as `main.py` in a fresh jail (see the module docstring).

    Args:
        code: a Python program.
        limits: resource limits and the isolation mode.
        writable: host directories bound read-write into the jail at the same path (e.g. a
            scratch copy of a repository); everything else of the host stays invisible.
    Returns:
        a SandboxResult; never raises for anything the program does.
    Raises:
        SandboxUnavailableError: no jail is possible here and `limits.isolation` is not "unsafe".
        InvalidInputError: a writable path is not a directory or overlaps a read-only path.
    """
    if not isinstance(code, str):
        raise InvalidInputError("run_python needs the program as a str")
    return _run({"main.py": code}, "run", limits, writable)


# The agent's tools: pytest of a small repository fits in 20 CPU seconds and 1 GiB of address space.
AGENT_LIMITS = SandboxLimits(timeout_s=60, cpu_s=20, memory_mb=1024)


def runner(limits: SandboxLimits = AGENT_LIMITS):
    """`run_python` with `limits` bound, `(code, writable=[dirs]) -> SandboxResult`: what a face
    hands the agent's tools (agents.tools.build_toolbox), which may not import code_tools."""
    return functools.partial(run_python, limits=limits)


def run_tests(program: str, test_code: str, limits: SandboxLimits = SandboxLimits(),
              writable: Sequence[str | os.PathLike] = ()) -> SandboxResult:
    """Import `program` as module `solution`, then run `test_code` in its namespace.

    The verdict cannot be faked by the program's exit paths (os._exit(0), sys.exit(0) in its
    `__main__` block, sys.excepthook, atexit): `.passed` needs the harness's report, under
    this run's nonce, that the tests ran to their end (code_tools.sandbox_harness).

    Args:
        program: the candidate solution.
        test_code: code that raises when the program is wrong (asserts / a check call).
        limits: resource limits.
        writable: as for run_python.
    Returns:
        the SandboxResult; `.passed` is the verdict.
    """
    if not isinstance(program, str) or not isinstance(test_code, str):
        raise InvalidInputError("run_tests needs the program and the tests as str")
    return _run({"main.py": program, "tests.py": test_code}, "tests", limits, writable)


def _writable_dirs(writable: Sequence[str | os.PathLike], python: str) -> list[str]:
    binds = []
    for path in writable:
        path = os.path.realpath(path)
        if not os.path.isdir(path) or path == "/":
            raise InvalidInputError(f"writable path {path!r} is not a directory to bind")
        binds.append(path)
    check_writable(binds, [*_readonly_paths(python), *_SYSTEM_PATHS, os.path.realpath(python)])
    for path in binds:
        # The jail's own tmpfs mounts: bound over them, the host's /tmp would become the
        # jail's home (and, as root, every file in it would be handed to the jail's uid).
        if any(mount == path or mount.startswith(path.rstrip("/") + "/") for mount in _JAIL_TMPFS):
            raise InvalidInputError(f"writable path {path!r} is or contains {' or '.join(_JAIL_TMPFS)}, "
                                    "the jail's private tmpfs: give a directory below it, e.g. "
                                    "tempfile.mkdtemp()")
    return binds


def _run(files: dict[str, str], mode: str, limits: SandboxLimits,
         writable: Sequence[str | os.PathLike]) -> SandboxResult:
    binds = _writable_dirs(writable, limits.python)
    if limits.isolation == "unsafe":
        return _run_unsafe(files, mode, limits)
    status = _require_jail(limits)
    exe, _ = _bwrap()
    cgroup, uid, sources, filter_fd = None, JailUids.claim(), [], -1
    dirs = WritableDirs(binds, uid, limits.disk_mb * 2**20)
    channel = Channel()
    try:
        if status.tree_limits.startswith("cgroup"):
            # The tree's memory; headroom for bwrap and the harness.
            cgroup = _Cgroup(status.tree_limits, limits.memory_mb * 2**20 + 32 * 2**20,
                             limits.max_processes + _JAIL_PROCESSES,
                             limits.cpu_share if status.cpu == "cgroup" else None)
        mounts = [*_readonly_paths(limits.python), *binds]
        staged = staged_paths(len(mounts)) if uid is not None else list(mounts)
        readonly = list(zip(staged, mounts))[:len(mounts) - len(binds)]
        argv = [exe, *_namespace_args(), *_root_args(readonly, limits.max_file_mb * 2**20)]
        for source, path in list(zip(staged, mounts))[len(readonly):]:
            argv += ["--bind", source, path]
        for name, text in files.items():
            sources.append(os.memfd_create(f"codehop-{name}"))
            os.write(sources[-1], text.encode("utf-8"))
            os.lseek(sources[-1], 0, os.SEEK_SET)
            argv += ["--file", str(sources[-1]), f"{_JAIL_HOME}/{name}"]
        filter_fd = seccomp_fd()
        argv += ["--seccomp", str(filter_fd), "--chdir", _JAIL_HOME, limits.python, "-B", "-c", HARNESS,
                 *channel.argv(mode, None if cgroup else limits.max_processes + 1)]
        dirs.prepare()
        preexec = functools.partial(_limit_child, limits, cgroup.procs if cgroup else (),
                                    status.cpu != "cgroup", uid, mounts if uid is not None else (),
                                    staged if uid is not None else ())
        return _execute(argv, limits, _child_env(_JAIL_HOME, limits.python), None,
                        (*sources, filter_fd, channel.write_fd, channel.nonce_fd), preexec,
                        cgroup, status, channel, dirs)
    finally:
        for fd in (*sources, filter_fd):
            if fd >= 0:
                os.close(fd)
        channel.close()
        if cgroup is not None:
            cgroup.remove()
        dirs.restore()  # a no-op after a run; owners back if the jail failed to start
        JailUids.release(uid)


def _run_unsafe(files: dict[str, str], mode: str, limits: SandboxLimits) -> SandboxResult:
    """A plain subprocess in a temp dir with rlimits, under the same harness. Isolates nothing."""
    workdir = tempfile.mkdtemp(prefix="codehop-unsafe-")
    channel = Channel()
    try:
        for name, text in files.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as handle:
                handle.write(text)
        argv = [limits.python, "-B", "-c", HARNESS, *channel.argv(mode, None)]
        preexec = functools.partial(_limit_child, limits, (), False, None)
        return _execute(argv, limits, _child_env(workdir, limits.python), workdir,
                        (channel.write_fd, channel.nonce_fd), preexec, None,
                        SandboxStatus("unsafe"), channel, WritableDirs([], None, 0))
    finally:
        channel.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _execute(argv: list[str], limits: SandboxLimits, env: dict[str, str], cwd: str | None,
             pass_fds: tuple[int, ...], preexec, cgroup: _Cgroup | None, status: SandboxStatus,
             channel: Channel, dirs: WritableDirs) -> SandboxResult:
    started = time.perf_counter()
    overflow = threading.Event()
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, close_fds=True, pass_fds=pass_fds, preexec_fn=preexec)
    channel.child_started()
    out = _Capped(process.stdout, limits.max_output_bytes, overflow)
    err = _Capped(process.stderr, limits.max_output_bytes, overflow)
    reason = _watch(process, started, limits, overflow, dirs)
    returncode = process.wait()
    _kill_group(process)
    if cgroup is not None:
        cgroup.kill_all()
        _wait_empty(cgroup)
    out.thread.join(timeout=2)
    err.thread.join(timeout=2)
    dirs.restore()  # every jail process is dead: nothing races the sweep
    if reason is None and dirs.exceeded:
        reason = "disk"
    elapsed = time.perf_counter() - started
    report = channel.report()
    if report is not None:
        returncode = report.returncode
    elif status.mechanism == "bwrap" and _SIGNAL_BASE < returncode <= _SIGNAL_BASE + 64:
        returncode = -(returncode - _SIGNAL_BASE)  # the harness itself died of this signal
    if reason is None and overflow.is_set():
        reason = "output"
    stderr = err.text()
    if reason is None and cgroup is not None and cgroup.oom_kills():
        reason = "memory"
    if reason is None:
        reason = _classify(returncode, stderr, report, limits)
    return SandboxResult(returncode, out.text(), stderr, reason == "timeout", reason, elapsed,
                         status.mechanism, status.tree_limits,
                         completed=report is not None and report.completed)


def _watch(process: subprocess.Popen, started: float, limits: SandboxLimits,
           overflow: threading.Event, dirs: WritableDirs) -> str | None:
    """Wait for the run; kill its group at the first limit it crosses and say which."""
    deadline = started + limits.timeout_s
    next_disk_check = started + _DISK_POLL_S
    while process.poll() is None:
        reason = None
        now = time.perf_counter()
        if overflow.is_set():
            reason = "output"
        elif now >= deadline:
            reason = "timeout"
        elif dirs.paths and now >= next_disk_check:
            next_disk_check = now + _DISK_POLL_S
            reason = "disk" if dirs.over_quota() else None
        if reason:
            # Killing bwrap kills the jail's PID 1 (--die-with-parent), and the kernel then
            # kills every process of the namespace.
            _kill_group(process)
            return reason
        try:
            process.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            pass
    return None


def _wait_empty(cgroup: _Cgroup, limit_s: float = 2.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cgroup.empty() and time.monotonic() < deadline:
        time.sleep(0.005)


def _classify(returncode: int, stderr: str, report, limits: SandboxLimits) -> str | None:
    """Why the kernel or the interpreter stopped a program that we did not kill."""
    if report is not None:
        reason = kill_reason(report, limits.cpu_s)
    else:  # no harness report: the harness itself was killed
        reason = "signal" if returncode < 0 else None
    if reason is None:
        tail = stderr[-2000:]
        if "MemoryError" in tail or "Cannot allocate memory" in tail or "std::bad_alloc" in tail:
            return "memory"
    return reason

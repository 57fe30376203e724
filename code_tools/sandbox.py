"""Run untrusted (generated) Python in a jail built from OS tools: one jail per run.

The jail is bubblewrap (`bwrap`, Debian package `bubblewrap`) with new user, mount, PID,
network, IPC and UTS namespaces. The program sees:

- a read-only view of the interpreter only: /usr (merged-/usr symlinks), the interpreter's
  prefix and base prefix (its stdlib) and the virtual environment with its site-packages, plus
  /etc/ld.so.cache and /etc/localtime; nothing else of the host (no home, no repository, no
  /etc/passwd, no /sys);
- a private writable tmpfs at /tmp (its working directory, HOME and TMPDIR; `main.py` is copied
  in) and, read-write, only the directories the caller names in `writable`;
- a fresh /proc for its PID namespace, a minimal /dev, no network (a network namespace with
  only a down loopback), no capabilities and no further user namespaces.

Limits: a wall-clock timeout that kills the jail's init, and with it every process in the PID
namespace (a `setsid()` grandchild included; `--die-with-parent` does the same if the caller
dies); RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE and no core dumps per process; stdout/stderr capped
at `max_output_bytes` each. Memory and process count of the whole tree come from a cgroup
when one is writable here (v2: memory.max + pids.max; v1: memory + pids hierarchies), else
from RLIMIT_AS per process plus RLIMIT_NPROC set inside the jail's user namespace (it counts
only the jail's processes there). RLIMIT_NPROC never binds uid 0 of the host, so as root
without a writable cgroup the jail is refused rather than run without a process cap.

`sandbox_status()` says what this machine allows; every SandboxResult names the mechanism
and the tree limits it ran under. When no jail is possible, `run_python` raises
SandboxUnavailableError naming the fix and the override: `SandboxLimits(isolation="unsafe")`
(`--unsafe-exec` on the CLI) runs the old plain-subprocess runner, which isolates nothing
(the program reads and writes what the user can, reaches the network, and its setsid()
children outlive the timeout). It exists for trusted code and to measure the jail's cost.

Example::

    >>> run_python("print(1 + 1)", SandboxLimits()).stdout
    '2\\n'
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from index.errors import InvalidInputError, MissingDependencyError

ISOLATION_MODES = ("auto", "bwrap", "unsafe")
_JAIL_HOME = "/tmp"
# Exit codes of bwrap for a child killed by signal N are 128 + N.
_SIGNAL_BASE = 128


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
    isolation: str = "auto"
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.cpu_s <= 0 or self.memory_mb <= 0:
            raise InvalidInputError("sandbox limits must be positive (timeout_s, cpu_s, memory_mb)")
        if self.max_output_bytes <= 0 or self.max_file_mb <= 0 or self.max_processes <= 0:
            raise InvalidInputError("sandbox limits must be positive "
                                    "(max_output_bytes, max_file_mb, max_processes)")
        if self.isolation not in ISOLATION_MODES:
            raise InvalidInputError(f"isolation must be one of {ISOLATION_MODES}, not {self.isolation!r}")


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    `killed_reason` is None for a normal exit (any return code) and otherwise one of
    "timeout", "cpu", "memory", "output", "signal". A negative `returncode` is the signal that
    ended the program (in the jail, a program's own `sys.exit(128 + n)` reads the same).
    `mechanism` is "bwrap" or "unsafe"; `tree_limits` is "cgroup2", "cgroup1" or "rlimit"
    (per-process RLIMIT_AS + RLIMIT_NPROC), "" for the unsafe runner.
    """

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    killed_reason: str | None
    elapsed_s: float
    mechanism: str = "bwrap"
    tree_limits: str = ""

    @property
    def passed(self) -> bool:
        """True when the program exited 0 without being killed."""
        return self.returncode == 0 and self.killed_reason is None


@dataclass(frozen=True)
class SandboxStatus:
    """What `run_python` would use here: `mechanism` "bwrap", "unsafe" or "unavailable"."""

    mechanism: str
    tree_limits: str = ""
    detail: str = ""

    def describe(self) -> str:
        """One line, e.g. "bwrap (bubblewrap 0.8.0), tree limits: cgroup1"."""
        if self.mechanism == "bwrap":
            return f"bwrap ({self.detail}), tree limits: {self.tree_limits}"
        if self.mechanism == "unsafe":
            return "unsafe (plain subprocess, no isolation: --unsafe-exec)"
        return f"unavailable: {self.detail}"


# ------------------------------------------------------------------------------ detection

@functools.lru_cache(maxsize=1)
def _bwrap() -> tuple[str | None, str]:
    """(path, version) of a bwrap that can build a jail here, or (None, why not)."""
    exe = shutil.which("bwrap")
    if exe is None or not sys.platform.startswith("linux"):
        return None, "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    argv = [exe, *_namespace_args(), *_root_args(()), "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"bwrap does not start: {error}"
    if done.returncode != 0:
        return None, f"bwrap cannot create namespaces here: {done.stderr.strip()[-300:]}"
    return exe, version.stdout.strip() or "bubblewrap"


def _limits_cgroup_or_why() -> tuple[str, str]:
    """("cgroup2"|"cgroup1"|"rlimit", "") or ("", why the process cap cannot be enforced)."""
    kind = _Cgroup.available()
    if kind:
        return kind, ""
    if os.geteuid() == 0:
        return "", ("running as root without a writable cgroup (v2 memory+pids or v1 memory and "
                    "pids under /sys/fs/cgroup): RLIMIT_NPROC does not bind root, so a fork bomb "
                    "would be uncapped; run as a non-root user or give codehop a writable cgroup")
    return "rlimit", ""


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
    return SandboxStatus("bwrap", tree, detail)


def _require_jail(limits: SandboxLimits) -> SandboxStatus:
    status = sandbox_status(limits)
    if status.mechanism == "unavailable":
        raise SandboxUnavailableError(
            f"refusing to run generated code: no sandbox on this machine ({status.detail}). "
            "Install bubblewrap (apt-get install bubblewrap), or accept running it with no "
            "isolation: --unsafe-exec on the CLI, SandboxLimits(isolation='unsafe') in code")
    return status


# ------------------------------------------------------------------------------ cgroups

class _Cgroup:
    """One child cgroup holding a jail: memory and pids limits of the whole tree."""

    _names = itertools.count()

    def __init__(self, kind: str, memory_bytes: int, pids: int) -> None:
        self.kind = kind
        name = f"codehop-sandbox-{os.getpid()}-{next(self._names)}"
        self.dirs = [base / name for base in _cgroup_bases(kind)]
        for directory in self.dirs:
            directory.mkdir()
        try:
            if kind == "cgroup2":
                self._write("memory.max", memory_bytes)
                self._write("memory.swap.max", 0, optional=True)
                self._write("memory.oom.group", 1, optional=True)
                self._write("pids.max", pids)
            else:
                self._write("memory.limit_in_bytes", memory_bytes)
                self._write("memory.memsw.limit_in_bytes", memory_bytes, optional=True)
                self._write("pids.max", pids)
        except OSError:
            self.remove()
            raise
        self.procs = [str(d / "cgroup.procs") for d in self.dirs]

    def _write(self, name: str, value: int, optional: bool = False) -> None:
        for directory in self.dirs:
            if (directory / name).exists():
                (directory / name).write_text(str(value))
                return
        if not optional:
            raise OSError(f"no {name} in {self.dirs}")

    def oom_kills(self) -> int:
        for directory in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    text = (directory / name).read_text()
                except OSError:
                    continue
                match = re.search(r"^oom_kill (\d+)", text, re.M)
                if match:
                    return int(match.group(1))
        return 0

    def kill_all(self) -> None:
        if self.kind == "cgroup2" and (self.dirs[0] / "cgroup.kill").exists():
            (self.dirs[0] / "cgroup.kill").write_text("1")
            return
        for procs in self.procs:
            for pid in Path(procs).read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self) -> None:
        """Kill what is left and remove the cgroup (a cgroup with tasks cannot be removed)."""
        deadline = time.monotonic() + 5
        for directory in self.dirs:
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    try:
                        self.kill_all()
                    except OSError:
                        pass
                    time.sleep(0.01)

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def available() -> str:
        """"cgroup2" or "cgroup1" when a child cgroup with memory+pids limits works, else ""."""
        for kind in ("cgroup2", "cgroup1"):
            try:
                if not _cgroup_bases(kind):
                    continue
                probe = _Cgroup(kind, 64 * 2**20, 8)
                probe.remove()
                return kind
            except OSError:
                continue
        return ""


def _cgroup_bases(kind: str) -> list[Path]:
    """The cgroup directories this process sits in: one for v2, memory then pids for v1."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fstype, _, options = (right.split() + ["", "", ""])[:3]
            mount_point = Path(left.split()[4])
            if fstype == "cgroup2" and kind == "cgroup2":
                mounts.setdefault("", mount_point)
            elif fstype == "cgroup" and kind == "cgroup1":
                for controller in ("memory", "pids"):
                    if controller in options.split(","):
                        mounts.setdefault(controller, mount_point)
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in (controllers.split(",") if controllers else [""]):
                paths[controller] = path.lstrip("/")
    wanted = [""] if kind == "cgroup2" else ["memory", "pids"]
    if any(c not in mounts for c in wanted):
        return []
    bases = []
    for controller in wanted:
        base = mounts[controller] / paths.get(controller, "")
        bases.append(base if base.is_dir() else mounts[controller])
    if kind == "cgroup2":
        enabled = (bases[0] / "cgroup.subtree_control").read_text().split()
        if not {"memory", "pids"} <= set(enabled):
            return []
    return bases


# ------------------------------------------------------------------------------ the jail

def _namespace_args() -> list[str]:
    return ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox"]


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


def _root_args(readonly: Sequence[str], tmp_bytes: int = 64 * 2**20) -> list[str]:
    """The jail's file system: /usr and the interpreter read-only, tmpfs /tmp, /proc, /dev."""
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
    for path in readonly:
        args += ["--ro-bind", path, path]
    return args + ["--proc", "/proc", "--dev", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm"]


def _child_env(home: str, python: str) -> dict[str, str]:
    path = os.pathsep.join(dict.fromkeys([os.path.dirname(os.path.abspath(python)),
                                          "/usr/local/bin", "/usr/bin", "/bin"]))
    return {"PATH": path, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home, "TMPDIR": home,
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
            "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": ""}


def _runner(nproc: int | None) -> str:
    # RLIMIT_NPROC is set here, inside the jail's user namespace, where it counts the jail's
    # processes only (set before bwrap it would also count every process of the host user).
    # The program cannot raise it again: it has no capabilities.
    limit = (f"import resource; resource.setrlimit(resource.RLIMIT_NPROC, ({nproc}, {nproc}))\n"
             if nproc else "")
    return limit + "import runpy, sys; sys.argv = ['main.py']; runpy.run_path('main.py', run_name='__main__')"


def _limit_child(limits: SandboxLimits, cgroup_procs: Sequence[str]) -> None:
    """Runs in the child between fork and exec: into the cgroup, new session, the rlimits."""
    for procs in cgroup_procs:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # 0 = the writing process, before it starts anything
        finally:
            os.close(fd)
    os.setsid()
    cpu = int(limits.cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    size = limits.max_file_mb * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


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
    """
    if not isinstance(code, str):
        raise InvalidInputError("run_python needs the program as a str")
    binds = []
    for path in writable:
        path = os.path.abspath(path)
        if not os.path.isdir(path) or path == "/":
            raise InvalidInputError(f"writable path {path!r} is not a directory to bind")
        binds.append(path)
    if limits.isolation == "unsafe":
        return _run_unsafe(code, limits)
    status = _require_jail(limits)
    exe, _ = _bwrap()
    cgroup = None
    if status.tree_limits.startswith("cgroup"):
        # The tree's memory; a bit of headroom for bwrap's own two processes.
        cgroup = _Cgroup(status.tree_limits, limits.memory_mb * 2**20 + 16 * 2**20,
                         limits.max_processes + 2)
    source = os.memfd_create("codehop-main.py")
    try:
        os.write(source, code.encode("utf-8"))
        os.lseek(source, 0, os.SEEK_SET)
        argv = [exe, *_namespace_args(),
                *_root_args(_readonly_paths(limits.python), limits.max_file_mb * 2**20)]
        for path in binds:
            argv += ["--bind", path, path]
        argv += ["--file", str(source), f"{_JAIL_HOME}/main.py", "--chdir", _JAIL_HOME,
                 limits.python, "-B", "-c", _runner(None if cgroup else limits.max_processes + 2)]
        return _execute(argv, limits, _child_env(_JAIL_HOME, limits.python), None, (source,),
                        cgroup, status)
    finally:
        os.close(source)
        if cgroup is not None:
            cgroup.remove()


def _run_unsafe(code: str, limits: SandboxLimits) -> SandboxResult:
    """The old runner: a plain subprocess in a temp dir with rlimits. Isolates nothing."""
    workdir = tempfile.mkdtemp(prefix="codehop-unsafe-")
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as handle:
            handle.write(code)
        argv = [limits.python, "-B", "-c", _runner(None)]
        return _execute(argv, limits, _child_env(workdir, limits.python), workdir, (), None,
                        SandboxStatus("unsafe"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _execute(argv: list[str], limits: SandboxLimits, env: dict[str, str], cwd: str | None,
             pass_fds: tuple[int, ...], cgroup: _Cgroup | None, status: SandboxStatus) -> SandboxResult:
    started = time.perf_counter()
    overflow = threading.Event()
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, close_fds=True, pass_fds=pass_fds,
        preexec_fn=functools.partial(_limit_child, limits, cgroup.procs if cgroup else ()))
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
            # In the jail, killing bwrap kills its PID namespace's init (--die-with-parent),
            # and the kernel then kills every process of the namespace.
            _kill_group(process)
            break
        try:
            process.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            pass
    returncode = process.wait()
    _kill_group(process)
    if cgroup is not None:
        cgroup.kill_all()
    out.thread.join(timeout=2)
    err.thread.join(timeout=2)
    elapsed = time.perf_counter() - started
    if status.mechanism == "bwrap" and _SIGNAL_BASE < returncode <= _SIGNAL_BASE + 64:
        returncode = -(returncode - _SIGNAL_BASE)
    if reason is None and overflow.is_set():
        reason = "output"
    stderr = err.text()
    if reason is None and cgroup is not None and cgroup.oom_kills():
        reason = "memory"
    if reason is None:
        reason = _classify(returncode, stderr)
    return SandboxResult(returncode, out.text(), stderr, reason == "timeout", reason, elapsed,
                         status.mechanism, status.tree_limits)


def _classify(returncode: int, stderr: str) -> str | None:
    """Why the kernel or the interpreter stopped a program that we did not kill."""
    # SIGXCPU at the soft RLIMIT_CPU; SIGKILL at the hard one if SIGXCPU was ignored.
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu"
    if returncode < 0:
        return "signal"
    tail = stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "std::bad_alloc" in tail:
        return "memory"
    return None


def run_tests(program: str, test_code: str, limits: SandboxLimits = SandboxLimits(),
              writable: Sequence[str | os.PathLike] = ()) -> SandboxResult:
    """Run `program` followed by `test_code` (asserts / a check call) in one sandboxed run.

    Args:
        program: the candidate solution.
        test_code: code that raises (non-zero exit) when the program is wrong.
        limits: resource limits.
        writable: as for run_python.
    Returns:
        the SandboxResult; `.passed` is the verdict.
    """
    return run_python(program.rstrip() + "\n\n\n" + test_code.lstrip("\n") + "\n", limits, writable)

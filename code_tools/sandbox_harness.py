"""The jail's first process: it runs the program as its child and reports how it really ended.

In the jail the harness is PID 1 (`bwrap --as-pid-1`), so the program cannot kill it (the
kernel drops signals sent to a namespace's init from inside), and it is not dumpable, so the
program cannot open its /proc/1/fd or /proc/1/mem. It forks the program (the child closes the
harness's descriptors before running a line of it), waits for it with wait4(), and only then
reads the run's nonce from a memfd and writes one line to the report pipe:

    <nonce> exit|signal <n> <completed 0|1> <cpu seconds>

`completed`: in "run" mode, the program ended by itself (not by a signal); in "tests" mode,
the tests ran to their end. There the solution is imported as module `solution` (its
`if __name__ == "__main__":` block does not run), then the tests run in its namespace; any
exception, SystemExit included, is a failure (sys.excepthook is never consulted), and the
child leaves with os._exit, so atexit handlers never run. The child says "done <its pid>" on
a private pipe after the last test; os._exit(0) from the solution, or from a forked copy of
it, says nothing. A run with no report line carrying the nonce has not completed.

What this does not stop: a solution that deliberately finds the private "done" pipe through
/proc/self/fd and writes the child's message, or that returns objects whose __eq__ always
answers True. It stops exits, exit codes and excepthook tricks, and printing a fake verdict.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
from dataclasses import dataclass

NONCE_BYTES = 16

HARNESS = r'''
import os, signal, sys
def _harness():
    import ctypes
    mode, report_fd, nonce_fd, nproc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    libc = ctypes.CDLL(None)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as PID 1, a signal without handler is dropped
    if nproc:
        import resource
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(report_fd); os.close(nonce_fd); os.close(done_r)
        libc.prctl(4, 1, 0, 0, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return done_w
    os.close(done_w)
    while True:
        try:
            wpid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            os._exit(70)
        if wpid == pid:
            break
    os.set_blocking(done_r, False)
    try:
        said = os.read(done_r, 64)
    except BlockingIOError:
        said = b""
    if mode == "tests":
        completed = said == b"done %d" % pid
    else:
        completed = os.WIFEXITED(status)
    how = ("signal %d" % os.WTERMSIG(status)) if os.WIFSIGNALED(status) else ("exit %d" % os.WEXITSTATUS(status))
    nonce = os.read(nonce_fd, 64)
    os.write(report_fd, nonce + (" %s %d %.3f\n" % (how, completed, usage.ru_utime + usage.ru_stime)).encode())
    os._exit(0)
_done = _harness()
del _harness
if sys.argv[1] == "run":
    os.close(_done)
    sys.argv = ["main.py"]
    import runpy
    runpy.run_path("main.py", run_name="__main__")
else:
    def _tests(done, write=os.write, exit=os._exit, getpid=os.getpid):
        import traceback, types
        module = types.ModuleType("solution")
        module.__file__ = "main.py"
        sys.modules["solution"] = module
        try:
            with open("main.py", encoding="utf-8") as f:
                solution = compile(f.read(), "main.py", "exec")
            with open("tests.py", encoding="utf-8") as f:
                tests = compile(f.read(), "tests.py", "exec")
            exec(solution, module.__dict__)
            module.__dict__["__name__"] = "__main__"
            exec(tests, module.__dict__)
            sys.stdout.flush(); sys.stderr.flush()
        except BaseException:
            try:
                traceback.print_exc(); sys.stdout.flush(); sys.stderr.flush()
            finally:
                exit(1)
        write(done, b"done %d" % getpid())
        exit(0)
    _tests(_done)
'''


@dataclass(frozen=True)
class Report:
    """What the harness saw: a real exit code or signal, completion, the child's CPU time."""

    returncode: int
    signalled: bool
    completed: bool
    cpu_s: float


class Channel:
    """The host's ends: a memfd holding the nonce and the pipe the report comes back on."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(NONCE_BYTES).encode()
        self.nonce_fd = os.memfd_create("codehop-nonce")
        os.write(self.nonce_fd, self.nonce)
        os.lseek(self.nonce_fd, 0, os.SEEK_SET)
        self.read_fd, self.write_fd = os.pipe()

    def argv(self, mode: str, nproc: int | None) -> list[str]:
        """The harness's arguments after `python -c HARNESS`."""
        return [mode, str(self.write_fd), str(self.nonce_fd), str(nproc or 0)]

    def child_started(self) -> None:
        """Close the ends only the jail needs, so the report pipe reaches EOF when it exits."""
        os.close(self.write_fd)
        os.close(self.nonce_fd)
        self.write_fd = self.nonce_fd = -1

    def report(self) -> Report | None:
        """The harness's line carrying this run's nonce, or None (the harness never reported)."""
        os.set_blocking(self.read_fd, False)
        data = b""
        try:
            while chunk := os.read(self.read_fd, 4096):
                data += chunk
        except BlockingIOError:
            pass
        for line in data.decode("ascii", errors="replace").splitlines():
            match = re.fullmatch(r"(\S+) (exit|signal) (\d+) ([01]) ([\d.]+)", line)
            if match and secrets.compare_digest(match.group(1).encode(), self.nonce):
                number = int(match.group(3))
                signalled = match.group(2) == "signal"
                return Report(-number if signalled else number, signalled, match.group(4) == "1",
                              float(match.group(5)))
        return None

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd, self.nonce_fd):
            if fd >= 0:
                os.close(fd)


def kill_reason(report: Report, cpu_limit_s: int) -> str | None:
    """"cpu" for RLIMIT_CPU's SIGXCPU (or SIGKILL at the hard limit), "signal" for others."""
    if not report.signalled:
        return None
    if -report.returncode == signal.SIGXCPU or (-report.returncode == signal.SIGKILL
                                                 and report.cpu_s >= cpu_limit_s - 0.05):
        return "cpu"
    return "signal"

"""Run the sandbox as codehop would run as root, and as a non-root user (`nobody`).

Every escape probe of the jail's guards runs twice: `as_user="root"` calls the sandbox from a
helper process of this interpreter, as root (CI is root); `as_user="nobody"` starts the same
helper under `setpriv --reuid 65534 --regid 65534 --clear-groups`. The nobody helper cannot
read a checkout or interpreter under /root, so it runs the system Python on a copy of the
sandbox's modules (code_tools/sandbox*.py, runtime/errors.py, pyseccomp.py) in a directory
anyone may read, and the jail runs that same system Python.

The helper can also plant a key in a fresh session keyring of its own before the run and list
that keyring afterwards (the host side of the keyring probe).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
USERS = ["root", "nobody"]
# Directories made outside tmp_path (nobody cannot traverse pytest's /tmp/pytest-of-root):
# removed by the `made_dirs` fixture at the end of each test module.
_MADE: list[Path] = []

HELPER = r'''
import ctypes, dataclasses, json, os, platform, sys
request = json.load(sys.stdin)
from code_tools.sandbox import SandboxLimits, run_python, run_tests, sandbox_status
from runtime.errors import CodehopError
libc = ctypes.CDLL(None, use_errno=True)
KEYCTL, ADD_KEY = {"x86_64": (250, 248), "aarch64": (219, 217)}[platform.machine()]
SESSION = ctypes.c_int(-3)
out = {"uid": os.getuid()}
if request.get("plant_key"):
    libc.syscall(KEYCTL, 1, b"codehop-probe-session")  # KEYCTL_JOIN_SESSION_KEYRING
    description = request["plant_key"].encode()
    out["planted"] = libc.syscall(ADD_KEY, b"user", description, b"host secret", 11, SESSION)
limits = SandboxLimits(**request["limits"])
try:
    run = run_tests if request["fn"] == "run_tests" else run_python
    out["result"] = dataclasses.asdict(run(*request["args"], limits, request["writable"]))
except CodehopError as error:
    out["error"] = type(error).__name__ + ": " + str(error)
out["status"] = dataclasses.asdict(sandbox_status(limits))
if request.get("plant_key"):
    buffer = ctypes.create_string_buffer(4096)
    size = libc.syscall(KEYCTL, 11, SESSION, buffer, 4096)  # KEYCTL_READ: the key ids
    ids = [int.from_bytes(buffer.raw[i:i + 4], sys.byteorder) for i in range(0, max(size, 0), 4)]
    names = []
    for key in ids:
        text = ctypes.create_string_buffer(512)
        libc.syscall(KEYCTL, 6, ctypes.c_int(key), text, 512)  # KEYCTL_DESCRIBE
        names.append(text.value.decode().rsplit(";", 1)[-1])
    out["keys"] = names
print(json.dumps(out))
'''


def need_user(as_user: str) -> None:
    """Skip (with the reason) a variant this machine cannot run."""
    if os.geteuid() != 0:
        pytest.skip("the root/nobody variants need root (CI runs as root)")
    if as_user == "nobody" and (shutil.which("setpriv") is None or not os.path.exists(SYSTEM_PYTHON)):
        pytest.skip("the nobody variant needs setpriv (util-linux) and /usr/bin/python3")


def _nobody_tree() -> str:
    """The sandbox's modules copied where `nobody` can read them (made once per session)."""
    if getattr(_nobody_tree, "path", None):
        return _nobody_tree.path
    import pyseccomp

    root = Path(tempfile.mkdtemp(prefix="codehop-nobody-"))
    _MADE.append(root)
    root.chmod(0o755)
    for package, names in {"code_tools": ["sandbox.py", "sandbox_cgroup.py", "sandbox_guard.py",
                                          "sandbox_harness.py"], "runtime": ["errors.py"]}.items():
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
        for name in names:
            shutil.copy(REPO / package / name, root / package / name)
    shutil.copy(pyseccomp.__file__, root / "pyseccomp.py")
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    _nobody_tree.path = str(root)
    return str(root)


def nobody_dir() -> Path:
    """A fresh directory owned by nobody, under a path nobody can traverse."""
    path = Path(tempfile.mkdtemp(prefix="codehop-nobody-rw-"))
    _MADE.append(path)
    os.chown(path, NOBODY, NOBODY)
    return path


@pytest.fixture(scope="module", autouse=True)
def made_dirs():
    """Remove what nobody_dir() and the nobody helper's module copy left in /tmp."""
    yield
    while _MADE:
        shutil.rmtree(_MADE.pop(), ignore_errors=True)
    _nobody_tree.path = None


def writable_dir(as_user: str, tmp_path: Path) -> Path:
    """A directory the variant's user may bind into its jail."""
    if as_user == "root":
        path = tmp_path / "rw"
        path.mkdir()
        return path
    return nobody_dir()


def start(as_user: str, fn: str, args: list[str], limits: dict, writable=(), plant_key: str = ""):
    """Start the helper; `finish(process)` returns its answer."""
    request = {"fn": fn, "args": args, "limits": dict(limits), "writable": [str(w) for w in writable],
               "plant_key": plant_key}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if as_user == "root":
        argv, cwd = [sys.executable, "-c", HELPER], str(REPO)
    else:
        request["limits"]["python"] = SYSTEM_PYTHON
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                SYSTEM_PYTHON, "-c", HELPER]
        cwd = env["PYTHONPATH"] = _nobody_tree()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdin.write(json.dumps(request))
    process.stdin.close()
    return process


def finish(process: subprocess.Popen, timeout: float = 120) -> dict:
    out = process.stdout.read()
    err = process.stderr.read()
    process.wait(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out)


def jail(as_user: str, code: str, limits: dict, writable=(), fn: str = "run_python",
         tests: str | None = None, plant_key: str = "") -> dict:
    """Run `code` (and `tests` for run_tests) as `as_user`; the helper's answer."""
    args = [code] if tests is None else [code, tests]
    return finish(start(as_user, fn, args, limits, writable, plant_key))

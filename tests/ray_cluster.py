"""A real two-node Ray cluster for tests, private to the test that starts it.

`ray_cluster()` starts `python -m tests.ray_cluster` under `unshare --net --pid --mount-proc`:
a network namespace of its own (only `lo`, so Ray binds 127.0.0.1 and two test workers never
share a port) and a PID namespace (so `ray stop` there sees only this cluster's processes,
and every one of them dies with the namespace). Inside, `ray start --head` and a second
`ray start --address ...` make two nodes, each with its own CPU count, and the driver then
serves calls over a Unix socket (a path in the shared filesystem crosses the network
namespace): `cluster.call(function, *args)` runs an importable function in there, with Ray
initialised on the cluster, and returns its result (or raises its error).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
PORT = 6390  # inside the namespace: no other cluster can be there
AUTHKEY = b"codehop-ray-tests"


def available() -> str:
    """'' when clusters can be started here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed: pip install -e '.[dev]' (the dev extra brings ray[data,serve])"
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode:
        return f"cannot make namespaces ({probe.stderr.decode().strip()}): run as root"
    return ""


class Cluster:
    def __init__(self, process: subprocess.Popen, socket: str, temp: str) -> None:
        self.process, self.socket, self.temp = process, socket, temp
        self.address = f"127.0.0.1:{PORT}"

    def call(self, function: Callable, *args: Any, timeout_s: float = 300, **kwargs: Any) -> Any:
        with Client(self.socket, authkey=AUTHKEY) as conn:
            conn.send((function.__module__, function.__qualname__, args, kwargs))
            if not conn.poll(timeout_s):
                raise TimeoutError(f"{function.__qualname__} took over {timeout_s} s in the Ray cluster")
            ok, value = conn.recv()
        if not ok:
            raise RuntimeError(f"{function.__qualname__} failed in the Ray cluster:\n{value}")
        return value


@contextmanager
def ray_cluster(head_cpus: int = 2, worker_cpus: int = 2, start_timeout_s: float = 180) -> Iterator[Cluster]:
    reason = available()
    if reason:
        raise RuntimeError(reason)
    temp = tempfile.mkdtemp(prefix="cr", dir="/tmp")  # short: Ray's socket paths have a length limit
    socket = os.path.join(temp, "driver.sock")
    log = open(os.path.join(temp, "driver.log"), "w")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-m", "tests.ray_cluster",
         socket, temp, str(head_cpus), str(worker_cpus)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not os.path.exists(socket):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not start:\n{Path(temp, 'driver.log').read_text()[-4000:]}")
            time.sleep(0.2)
        yield Cluster(process, socket, temp)
    finally:
        try:
            if process.poll() is None and os.path.exists(socket):
                with Client(socket, authkey=AUTHKEY) as conn:
                    conn.send(None)  # stop: ray stop, then the namespace ends
            process.wait(timeout=60)
        except Exception:  # noqa: BLE001 - whatever happened, the namespace must go
            process.kill()  # its PID 1: the kernel then ends every process inside
            process.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------- inside the namespace


def _ray(*args: str) -> None:
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=180)


def _loopback_up() -> None:
    """`ip link set lo up` without iproute2: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    import fcntl
    import socket as sockets
    import struct

    with sockets.socket(sockets.AF_INET, sockets.SOCK_DGRAM) as handle:
        flags = struct.unpack("16sH", fcntl.ioctl(handle, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(handle, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))


def _serve(socket: str, temp: str, head_cpus: int, worker_cpus: int) -> None:
    _loopback_up()
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--object-store-memory", str(200 << 20)]
    _ray("start", "--head", "--port", str(PORT), "--num-cpus", str(head_cpus), "--temp-dir", os.path.join(temp, "r"),
         "--include-dashboard", "false", *common)
    _ray("start", "--address", f"127.0.0.1:{PORT}", "--num-cpus", str(worker_cpus), *common)
    import ray

    ray.init(address=f"127.0.0.1:{PORT}", log_to_driver=False)
    deadline = time.monotonic() + 60
    while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    listener = Listener(socket, authkey=AUTHKEY)
    try:
        while True:
            with listener.accept() as conn:
                message = conn.recv()
                if message is None:
                    break
                module, name, args, kwargs = message
                try:
                    target: Any = importlib.import_module(module)
                    for part in name.split("."):
                        target = getattr(target, part)
                    conn.send((True, target(*args, **kwargs)))
                except BaseException:  # noqa: BLE001 - reported to the test
                    conn.send((False, traceback.format_exc()))
    finally:
        listener.close()
        ray.shutdown()
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "stop", "--force"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)



# ---------------------------------------------------------------- calls the tests send in


def run(args: list[str], cwd: str | None = None, timeout_s: float = 600) -> tuple[int, str, str]:
    """Run a command inside the namespace; (exit status, stdout, stderr)."""
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    return done.returncode, done.stdout, done.stderr


def start(args: list[str], cwd: str, log: str) -> int:
    """Start a long-running command (e.g. codehop serve --ray); returns its pid."""
    with open(log, "w") as handle:
        return subprocess.Popen(args, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT).pid


def stop(pid: int, timeout_s: float = 60) -> None:
    """Interrupt a command `start` started (as Ctrl-C would) and reap it."""
    import signal

    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def http(method: str, url: str, body: Any = None, timeout_s: float = 60) -> tuple[int, Any]:
    """One request from inside the namespace: (status, JSON body or text; 0 when refused)."""
    import httpx

    try:
        response = httpx.request(method, url, json=body, timeout=timeout_s)
    except httpx.TransportError as error:
        return 0, str(error)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def serve_replicas() -> list[str]:
    """Deployment names of the live Serve replicas, one entry per replica."""
    from ray.util import list_named_actors

    return sorted(a["name"].split("#")[1] for a in list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::"))


def kill_replicas(deployment: str) -> int:
    """Kill every replica of a Serve deployment (Serve's controller starts new ones)."""
    import ray
    from ray.util import list_named_actors

    killed = 0
    for actor in list_named_actors(all_namespaces=True):
        if actor["name"].startswith("SERVE_REPLICA::") and actor["name"].split("#")[1] == deployment:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            killed += 1
    return killed


def deployment_call(deployment: str, method: str, *args: Any, app: str = "codehop") -> Any:
    """One call to a Serve deployment of the running application (e.g. a shard's `info`)."""
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=app)
    return getattr(handle, method).remote(*args).result(timeout_s=60)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
